/* Misbehaving guests, selected at build time with -DCRASH=n. */
#include <sevsim.h>

int main(void)
{
    sev_printf("about to misbehave\n");
#if CRASH == 1
    return *(volatile int *)0x7f000000UL; /* beyond guest RAM: an unresolved #NPF */
#elif CRASH == 2
    __asm__ volatile("ud2"); /* #UD with no handler: triple fault */
#elif CRASH == 3
    for (;;) /* never halts */
        __asm__ volatile("" ::: "memory");
#elif CRASH == 4
    return (int)sev_rdmsr(0xC0DE0001U); /* an MSR the hypervisor does not know: #GP */
#elif CRASH == 5
    volatile int zero = 0;
    return 10 / zero; /* #DE */
#endif
    return 0;
}
