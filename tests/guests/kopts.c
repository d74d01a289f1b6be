/* Reports the guest-kernel hardening options in effect when main starts (crt0 turns on those
 * the build names in -DSEV_KERNEL_OPTIONS), then tries to turn an unknown option on. */
#include <sevsim.h>

int main(void)
{
    long before = sev_kernel_options(0);
    long unknown = sev_kernel_options(1UL << 7);
    long both = sev_kernel_options(SEV_KOPT_VC_INSN_CHECK);
    sev_printf("options %ld, unknown %ld, then %ld\n", before, unknown, both);
    return 0;
}
