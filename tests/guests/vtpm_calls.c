/* The SNP-bound vTPM's system calls, refusals first: each prints what it returned.
 *   (host input) the 32-byte nonce; then runs every call, and at VMPL1 the same extend. */
#include <sevsim.h>

extern char __text_start[], __rodata_start[], __data_start[], _end[];

static uint8_t nonce[32];
static uint8_t evidence[8192];
static uint8_t vmpl1_stack[4 * SEV_PAGE_SIZE] __attribute__((aligned(4096)));

static void at_vmpl1(void *arg)
{
    (void)arg;
    sev_printf("vmpl1 extend %ld\n", sev_vtpm_extend(8, "x", 1));
    sev_printf("vmpl1 log %ld\n", sev_vtpm_event_log(evidence, sizeof evidence));
    sev_exit(0);
}

static size_t pages(const char *from, const char *to)
{
    return (size_t)(to - from + SEV_PAGE_SIZE - 1) / SEV_PAGE_SIZE;
}

int main(void)
{
    if (sev_host_input(nonce, sizeof nonce) != sizeof nonce)
        return 1;
    sev_printf("extend pcr 24 %ld\n", sev_vtpm_extend(24, "x", 1));
    sev_printf("extend bad pointer %ld\n", sev_vtpm_extend(8, (void *)0x7fff00000000UL, 8));
    sev_printf("no nonce %ld\n", sev_vtpm_evidence(nonce, 0, 1U << 8, evidence,
                                                   sizeof evidence));
    sev_printf("long nonce %ld\n", sev_vtpm_evidence(evidence, 65, 1U << 8, evidence,
                                                     sizeof evidence));
    sev_printf("no pcrs %ld\n", sev_vtpm_evidence(nonce, 32, 0, evidence, sizeof evidence));
    sev_printf("pcr 24 %ld\n", sev_vtpm_evidence(nonce, 32, 1U << 24, evidence,
                                                 sizeof evidence));
    sev_printf("small buffer %ld\n", sev_vtpm_evidence(nonce, 32, 1U << 8, evidence, 100));
    sev_printf("log small buffer %ld\n", sev_vtpm_event_log(evidence, 16));
    sev_printf("extend %ld\n", sev_vtpm_extend(8, "x", 1));
    long size = sev_vtpm_evidence(nonce, 32, (1U << 8) | (1U << 9), evidence, sizeof evidence);
    sev_printf("evidence %ld\n", size);
    if (size > 0)
        sev_host_output(evidence, (size_t)size);
    long rc = sev_rmpadjust(__text_start, pages(__text_start, __rodata_start), 1,
                            SEV_RMP_READ | SEV_RMP_EXEC_SUPER);
    rc |= sev_rmpadjust(__rodata_start, pages(__rodata_start, __data_start), 1, SEV_RMP_READ);
    rc |= sev_rmpadjust(__data_start, pages(__data_start, _end), 1,
                        SEV_RMP_READ | SEV_RMP_WRITE);
    long index = sev_vmpl_start(1, at_vmpl1, 0, vmpl1_stack + sizeof vmpl1_stack);
    if (rc || index < 0)
        return 2;
    sev_vcpu_halt();
    return 0;
}
