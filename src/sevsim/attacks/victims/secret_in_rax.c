/* A victim that passes each word of its secret through RAX around a call to `checkpoint`, an
 * empty function alone on its page (where a real program would call a library function); the
 * call is followed by a 3-byte NOP, alignment padding a compiler may emit. The words never sit
 * in host-readable memory: the host sees only which code page the vCPU fetches from. */
#include "secret.h"

volatile uint64_t key[4];

__attribute__((noinline, aligned(4096))) void checkpoint(void)
{
    __asm__ volatile("");
}

__attribute__((noinline, aligned(4096))) int main(void)
{
    plant_secret(key);
    uint64_t sum = 0;
    for (unsigned i = 0; i < 4; i++) {
        uint64_t w = key[i];
        __asm__ volatile("mov %[w], %%rax\n\t"
                         "call checkpoint\n\t"
                         "nopl (%%rax)\n\t"
                         "add %%rax, %[sum]"
                         : [sum] "+r"(sum)
                         : [w] "r"(w)
                         : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11",
                           "memory", "cc");
    }
    sev_printf("key used, sum %016lx\n", (unsigned long)sum);
    return 0;
}
