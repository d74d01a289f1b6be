/* Calls a function, exits to the hypervisor (OUT to port 0x80), calls it again. A hypervisor
 * that rewrote the function's code in between (a plain VM's memory is its to write) shows
 * whether the vCPU dropped the code it had already translated from that page. */
#include <sevsim.h>

__attribute__((noinline, aligned(4096))) int answer(void)
{
    int value;
    __asm__ volatile("mov $1, %0" : "=r"(value)); /* B8+r imm32: the immediate is patched */
    return value;
}

int main(void)
{
    int before = answer();
    sev_outb(0x80, 0);
    sev_printf("answer at 0x%llx: %d then %d\n", (unsigned long long)(uintptr_t)&answer, before,
               answer());
    return 0;
}
