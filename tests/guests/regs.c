/* Leaves a known value in RBX across a VMMCALL and reads SEV_STATUS with RDMSR itself. */
#include <sevsim.h>

int main(void)
{
    uint64_t status = sev_rdmsr(SEV_MSR_SEV_STATUS);
    uint64_t tsc_msr = sev_rdmsr(0x10);
    (void)tsc_msr;
    sev_vmmcall(0x5E5EC0DE, 0x1122334455667788ULL, 0, 0);
    sev_printf("rdmsr SEV_STATUS=0x%llx\n", (unsigned long long)status);
    return (int)status;
}
