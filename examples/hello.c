/*
 * hello.c - the smallest useful sevsim guest.
 *
 * Prints a greeting, then the memory-encryption mode as the guest itself
 * sees it: the SEV_STATUS MSR (via the guest kernel) and CPUID 0x8000001F,
 * whose EBX[5:0] is the C-bit position in page-table entries.
 */
#include <sevsim.h>

int main(void)
{
    uint32_t regs[4];
    uint64_t status = sev_status();

    sev_puts("Hello from a sevsim guest!");
    sev_printf("SEV_STATUS=0x%llx sev=%d es=%d snp=%d\n", (unsigned long long)status,
               (status & SEV_SEV_STATUS_SEV) != 0, (status & SEV_SEV_STATUS_ES) != 0,
               (status & SEV_SEV_STATUS_SNP) != 0);

    sev_cpuid(SEV_CPUID_MEM_ENCRYPT, 0, regs);
    sev_printf("cpuid 8000001f: eax=0x%08x ebx=0x%08x c-bit=%u\n", regs[0], regs[1],
               regs[1] & 0x3F);
    return 0;
}
