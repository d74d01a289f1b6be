/* A victim running constant-time code over its secret, CipherLeaks' target: every step does
 * the same work whatever the bit, including one port write (a progress beacon to POST port
 * 0x80, always the value 0), but the bit sits in a register (R12, beside a zeroed R13) when
 * that write leaves the VM. Under SEV-ES and SNP the CPU saves the registers into the VMSA
 * at that exit, encrypted deterministically: same bit, same SPA, same ciphertext. The first
 * eight steps process a public header byte (0xA5), as a protocol run does before any key
 * material: known plaintext for the attacker's dictionary. */
#include <sevsim.h>

#define HEADER 0xA5u

static void step(uint64_t bit)
{
    __asm__ volatile("mov %0, %%r12\n\t"
                     "xor %%r13d, %%r13d\n\t"
                     "xor %%eax, %%eax\n\t"
                     "outb %%al, $0x80"
                     : : "r"(bit) : "rax", "r12", "r13", "memory");
}

int main(void)
{
    const uint64_t secret[4] = {SECRET_0, SECRET_1, SECRET_2, SECRET_3};
    for (unsigned i = 0; i < 8; i++)
        step((HEADER >> i) & 1);
    for (unsigned i = 0; i < 256; i++)
        step((secret[i / 64] >> (i % 64)) & 1);
    sev_printf("processed 256 key bits\n");
    return 0;
}
