/* Asks for AP 1 twice (the second request must be refused, not replace the first) and for
 * an AP that does not exist, then reports which request the AP ran. */
#include <sevsim.h>

static volatile uint64_t ran;
static unsigned char stack[16384] SEV_ALIGNED(16);

static void worker(void *arg)
{
    ran = (uint64_t)(uintptr_t)arg;
}

int main(void)
{
    long first = sev_vcpu_start(1, worker, (void *)1, stack + sizeof stack);
    long second = sev_vcpu_start(1, worker, (void *)2, stack + sizeof stack);
    long missing = sev_vcpu_start(7, worker, (void *)3, stack + sizeof stack);
    while (!ran)
        sev_pause();
    sev_printf("first %ld second %ld missing %ld ran %llu\n", first, second, missing,
               (unsigned long long)ran);
    return 0;
}
