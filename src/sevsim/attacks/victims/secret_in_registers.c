/* A victim that keeps its 32-byte secret in registers only (R12-R15, callee-saved) across an
 * instruction that exits to the hypervisor (OUT to the POST port 0x80), then reports a digest
 * of what the registers hold afterwards. The secret never sits in memory the host can read
 * in plaintext: only a host that reads the saved register state learns it. */
#include <sevsim.h>

int main(void)
{
    uint64_t w0 = SECRET_0, w1 = SECRET_1, w2 = SECRET_2, w3 = SECRET_3;
    __asm__ volatile("mov %[w0], %%r12\n\t"
                     "mov %[w1], %%r13\n\t"
                     "mov %[w2], %%r14\n\t"
                     "mov %[w3], %%r15\n\t"
                     "mov $0x5a, %%eax\n\t"
                     "outb %%al, $0x80\n\t"
                     "mov %%r12, %[w0]\n\t"
                     "mov %%r13, %[w1]\n\t"
                     "mov %%r14, %[w2]\n\t"
                     "mov %%r15, %[w3]"
                     : [w0] "+r"(w0), [w1] "+r"(w1), [w2] "+r"(w2), [w3] "+r"(w3)
                     :
                     : "rax", "r12", "r13", "r14", "r15", "memory");
    uint64_t h = 0xcbf29ce484222325ULL;
    h = (h ^ w0) * 0x100000001b3ULL;
    h = (h ^ w1) * 0x100000001b3ULL;
    h = (h ^ w2) * 0x100000001b3ULL;
    h = (h ^ w3) * 0x100000001b3ULL;
    sev_printf("registers used, digest %016lx\n", (unsigned long)h);
    return 0;
}
