/* A small deterministic workload for scheduling tests: a splitmix64-seeded array, rounds of
 * streaming and data-dependent scattered updates, folded into one checksum line. -DWORDS and
 * -DROUNDS scale it (the defaults run about 300,000 instructions). */
#include <sevsim.h>

#ifndef WORDS
#define WORDS 2048
#endif
#ifndef ROUNDS
#define ROUNDS 8
#endif

static uint64_t words[WORDS];

int main(void)
{
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (uint64_t i = 0; i < WORDS; i++) {
        x += 0x9E3779B97F4A7C15ULL;
        uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        words[i] = z ^ (z >> 31);
    }
    uint64_t acc = 0;
    for (int r = 0; r < ROUNDS; r++) {
        for (uint64_t i = 0; i < WORDS; i++) {
            acc = (acc ^ words[i]) * 0x100000001B3ULL;
            words[acc % WORDS] += acc >> 7;
        }
    }
    sev_printf("mix checksum: 0x%016llx\n", (unsigned long long)acc);
    return 0;
}
