/* A secret in private memory (examples/secret.c's, generated at run time), its first two
 * words also held in registers R12 and R13, a page shared with the host, then a long
 * computation over the secret: long enough for a host to pause the VM half-way, migrate it
 * and let it finish elsewhere. The last lines depend on every round and on the registers, so
 * a VM that resumes with any byte or register wrong prints something else. */
#include <sevsim.h>

#ifndef ROUNDS
#define ROUNDS 400000
#endif

static volatile uint64_t secret_page[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;
static volatile char shared_page[SEV_PAGE_SIZE] SEV_PAGE_ALIGNED;
static const char public_message[] = "PUBLIC-MESSAGE-FOR-THE-HOST";

int main(void)
{
    uint64_t x = 0x5EC12E75EED0F00DULL, h = 0xcbf29ce484222325ULL;

    for (unsigned i = 0; i < SEV_PAGE_SIZE / 8; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        secret_page[i] = x * 0x2545F4914F6CDD1DULL;
    }
    if (sev_set_shared((void *)shared_page, 1) != 0)
        return 1;
    for (unsigned i = 0; i < SEV_PAGE_SIZE; i++)
        shared_page[i] = i < sizeof(public_message) ? public_message[i] : 0;
    sev_printf("secret ready at 0x%llx\n", (unsigned long long)(uintptr_t)secret_page);

    register uint64_t keep_a __asm__("r12") = secret_page[0];
    register uint64_t keep_b __asm__("r13") = secret_page[1];
    for (unsigned r = 0; r < ROUNDS; r++) {
        __asm__ volatile("" : "+r"(keep_a), "+r"(keep_b));
        for (unsigned i = 0; i < SEV_PAGE_SIZE / 8; i++) {
            h ^= secret_page[i] + r;
            h *= 0x100000001b3ULL;
        }
        if (r % (ROUNDS / 4) == 0)
            sev_printf("round %u\n", r);
    }
    __asm__ volatile("" : "+r"(keep_a), "+r"(keep_b));
    sev_printf("registers kept: %s\n",
               keep_a == secret_page[0] && keep_b == secret_page[1] ? "yes" : "no");
    sev_printf("rounds %u digest 0x%016llx\n", (unsigned)ROUNDS, (unsigned long long)h);
    return 0;
}
