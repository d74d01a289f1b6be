/* The boot vCPU starts every other vCPU; each adds its share of a sum into its own slot. */
#include <sevsim.h>

#define MAX_CPUS 8
static volatile uint64_t partial[MAX_CPUS];
static volatile uint64_t done[MAX_CPUS];
static unsigned char stacks[MAX_CPUS][16384] SEV_ALIGNED(16);

static void worker(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    unsigned step = sev_vcpu_count();
    uint64_t sum = 0;
    for (uint64_t i = id; i < 2000000; i += step)
        sum += i * i;
    partial[id] = sum;
    done[id] = 1;
}

int main(void)
{
    unsigned n = sev_vcpu_count();
    if (n > MAX_CPUS)
        n = MAX_CPUS;
    for (unsigned i = 1; i < n; i++)
        if (sev_vcpu_start(i, worker, (void *)(uintptr_t)i, stacks[i] + sizeof stacks[i]))
            return 3;
    worker(0);
    uint64_t total = 0;
    for (unsigned i = 0; i < n; i++) {
        while (!done[i])
            sev_pause();
        total += partial[i];
    }
    sev_printf("vcpus %u sum %llu\n", n, (unsigned long long)total);
    return 0;
}
