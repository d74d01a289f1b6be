/* A7 victim: secret-dependent memory accesses at page granularity (a table lookup, a branch
 * between two code paths): for each bit of its 32-byte secret it counts the bit on page
 * `zeros` or page `ones`, after a bookkeeping store on page `tick`. */
#include "secret.h"

volatile uint64_t secret[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;
volatile uint64_t tick[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;
volatile uint64_t zeros[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;
volatile uint64_t ones[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;

int main(void)
{
    plant_secret(secret);
    for (unsigned i = 0; i < 256; i++) {
        tick[0] = i;
        if ((secret[i / 64] >> (i % 64)) & 1)
            ones[0]++;
        else
            zeros[0]++;
    }
    sev_printf("%lu ones, %lu zeros\n", (unsigned long)ones[0], (unsigned long)zeros[0]);
    return 0;
}
