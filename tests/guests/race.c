/* Two vCPUs race on shared memory: a counter updated without a lock (load, then store: a
 * preemption between the two loses updates), one updated under a spin lock, and a log of
 * which vCPU took each ticket. The console shows the interleaving, so two runs print the same
 * only if the scheduler interleaves them the same way. */
#include <sevsim.h>

#ifndef ROUNDS
#define ROUNDS 3000
#endif

static volatile uint64_t racy, locked, lockword, ticket;
static volatile uint8_t order[2 * ROUNDS];
static volatile uint64_t done[2];
static unsigned char stack[16384] SEV_ALIGNED(16);

static void worker(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    for (int i = 0; i < ROUNDS; i++) {
        uint64_t seen = racy;
        racy = seen + 1;
        while (__atomic_exchange_n(&lockword, 1, __ATOMIC_ACQUIRE))
            sev_pause();
        locked = locked + 1;
        __atomic_store_n(&lockword, 0, __ATOMIC_RELEASE);
        order[__atomic_fetch_add(&ticket, 1, __ATOMIC_RELAXED)] = (uint8_t)id;
    }
    done[id] = 1;
}

int main(void)
{
    if (sev_vcpu_start(1, worker, (void *)1, stack + sizeof stack))
        return 3;
    worker(0);
    while (!done[1])
        sev_pause();
    uint64_t hash = 0xCBF29CE484222325ULL, switches = 0;
    for (uint64_t i = 0; i < 2 * ROUNDS; i++) {
        hash = (hash ^ order[i]) * 0x100000001B3ULL;
        switches += i && order[i] != order[i - 1];
    }
    sev_printf("racy %llu locked %llu tickets %llu switches %llu order 0x%016llx\n",
               (unsigned long long)racy, (unsigned long long)locked,
               (unsigned long long)ticket, (unsigned long long)switches,
               (unsigned long long)hash);
    return 0;
}
