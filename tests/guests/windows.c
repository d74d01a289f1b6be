/* sev_map_window: what the kernel refuses, and a window that works. */
#include <sevsim.h>

static volatile uint64_t page[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;

int main(void)
{
    volatile uint64_t *window = (volatile uint64_t *)(SEV_WINDOW_BASE + SEV_PAGE_SIZE);
    long below = sev_map_window((void *)(SEV_WINDOW_BASE - SEV_PAGE_SIZE), (void *)page);
    long beyond = sev_map_window((void *)(SEV_WINDOW_BASE + SEV_WINDOW_PAGES * SEV_PAGE_SIZE),
                                 (void *)page);
    long unaligned = sev_map_window((void *)window, (void *)((char *)page + 8));
    long kernel = sev_map_window((void *)window, (void *)0x1000);
    long ok = sev_map_window((void *)window, (void *)page);
    window[3] = 0x5eed;
    sev_printf("%ld %ld %ld %ld %ld %lx\n", below, beyond, unaligned, kernel, ok,
               (unsigned long)page[3]);
    return 0;
}
