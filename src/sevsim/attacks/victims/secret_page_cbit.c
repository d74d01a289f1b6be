/* What early boot firmware did before the SNP CPUID page: learn the C-bit position from CPUID
 * Fn8000_001F EBX[5:0] (an instruction the hypervisor answers), build the page-table entry of
 * its private page with that bit as the encryption mask, and put its secret there. */
#include "secret.h"

volatile uint64_t secret[4] SEV_PAGE_ALIGNED;

int main(void)
{
    uint32_t regs[4];
    sev_cpuid(SEV_CPUID_MEM_ENCRYPT, 0, regs);
    unsigned c_bit = regs[1] & 0x3F;
    if (sev_set_pte_attrs((void *)secret, 1, 1ULL << c_bit) != 0) {
        sev_printf("cannot map the secret page\n");
        return 1;
    }
    plant_secret(secret);
    uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned i = 0; i < 4; i++)
        h = (h ^ secret[i]) * 0x100000001b3ULL;
    sev_printf("secret page mapped with C-bit %u, digest %016lx\n", c_bit, (unsigned long)h);
    return 0;
}
