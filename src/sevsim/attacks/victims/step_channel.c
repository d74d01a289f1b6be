/* A11 victim: a square-and-multiply style loop over the bits of its 32-byte secret. Both
 * paths of the secret-dependent branch run on the same code page and touch the same data
 * pages (`start` before, `result` after), so a page-fault trace looks the same for every
 * bit; only the number of instructions between the two stores differs. */
#include "secret.h"

volatile uint64_t secret[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;
volatile uint64_t start[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;
volatile uint64_t result[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;

int main(void)
{
    plant_secret(secret);
    uint64_t acc = 1;
    for (unsigned i = 0; i < 256; i++) {
        start[0] = i;
        acc = acc * acc + 7; /* square */
        if ((secret[i / 64] >> (i % 64)) & 1)
        {
            acc = acc * 0x9E3779B97F4A7C15ULL + i; /* multiply: only for a 1 bit */
            __asm__ volatile("" : "+r"(acc)); /* a real branch, not a conditional move */
        }
        result[0] = acc;
    }
    sev_printf("acc %016lx\n", (unsigned long)acc);
    return 0;
}
