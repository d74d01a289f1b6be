/* System calls given buffers the program cannot reach: each returns -SEV_EFAULT and
 * the program goes on (Linux's copy_from_user/copy_to_user).  Prints one line per call,
 * then "survived" and exits 0. */
#include <sevsim.h>

#define BAD ((void *)0x7f000000UL) /* beyond guest RAM */
#define HUGE ((void *)0xffffffffffff0000UL) /* wraps the address space */

static void check(const char *name, long got)
{
    sev_printf("%s %ld\n", name, got);
}

int main(void)
{
    static char ok[SEV_SNP_REPORT_SIZE];
    uint64_t len = 4096;

    check("write", sev_write(BAD, 16));
    check("write-wrap", sev_write(HUGE, 0x20000));
    check("host_input", sev_host_input(BAD, 64));
    check("host_output", sev_host_output(BAD, 64));
    check("tsm_mkdir", sev_tsm_mkdir(BAD));
    check("tsm_write", sev_tsm_write(SEV_TSM_REPORT_DIR "/r0/inblob", BAD, 64));
    if (sev_status() & SEV_SEV_STATUS_SNP) {
        check("snp_report-in", sev_snp_report(BAD, ok));
        check("snp_report-out", sev_snp_report(ok, BAD));
        check("snp_ext_report-len", sev_snp_ext_report(ok, ok, ok, BAD));
        check("snp_ext_report-certs", sev_snp_ext_report(ok, ok, BAD, &len));
        check("snp_derived_key", sev_snp_derived_key(BAD, ok));
        check("snp_report-good", sev_snp_report(ok, ok));
    }
    sev_printf("survived\n");
    return 0;
}
