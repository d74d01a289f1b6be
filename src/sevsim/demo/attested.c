/*
 * attested.c - the demo's SNP tenant proves what it runs, then gets its key (`sevsim demo`).
 *
 * The host gives 64 bytes (sev_host_input): the relying party's REPORT_DATA, whose first 32
 * bytes are also the nonce of the vTPM quote. The program hands back, through the host
 * channel, (0) an extended SNP report over that REPORT_DATA, (1) its certificate table,
 * (2) the SNP-bound vTPM's evidence quoting the PCRs the boot extends (0-8) and (3) the
 * boot's event log; then it asks the key broker for KBS_RESOURCE, which the kernel decrypts
 * into `secret` (private memory). The console gets only the secret's length and FNV-1a.
 */
#include <sevsim.h>

#ifndef KBS_RESOURCE
#define KBS_RESOURCE "default/demo/key"
#endif
#define BOOT_PCRS 0x1FFU

static uint8_t report_data[SEV_SNP_REPORT_DATA_SIZE];
static uint8_t report[SEV_SNP_REPORT_SIZE];
static uint8_t certs[4 * SEV_PAGE_SIZE];
static uint8_t evidence[8192];
static uint8_t event_log[16384];
static uint8_t secret[4096];

static uint64_t fnv1a64(const uint8_t *p, size_t n)
{
    uint64_t h = 0xCBF29CE484222325ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001B3ULL;
    return h;
}

int main(void)
{
    if (sev_host_input(report_data, sizeof report_data) != sizeof report_data)
        return 1;
    uint64_t certs_len = sizeof certs;
    long rc = sev_snp_ext_report(report_data, report, certs, &certs_len);
    if (rc < 0) {
        sev_printf("report: failed (%ld)\n", rc);
        return 2;
    }
    sev_host_output(report, sizeof report);
    sev_host_output(certs, certs_len);
    long size = sev_vtpm_evidence(report_data, 32, BOOT_PCRS, evidence, sizeof evidence);
    long length = sev_vtpm_event_log(event_log, sizeof event_log);
    if (size < 0 || length < 0) {
        sev_printf("vtpm: failed (%ld, %ld)\n", size, length);
        return 3;
    }
    sev_host_output(evidence, (size_t)size);
    sev_host_output(event_log, (size_t)length);
    sev_printf("attested: report, %ld-byte vTPM evidence, %ld-byte event log\n", size, length);
    long n = sev_kbs_get_resource(KBS_RESOURCE, secret, sizeof secret);
    if (n < 0) {
        sev_printf("kbs: %s: refused (%ld)\n", KBS_RESOURCE, n);
        return 4;
    }
    sev_printf("kbs: got %ld-byte secret %s, fnv1a64 %016lx\n", n, KBS_RESOURCE,
               (unsigned long)fnv1a64(secret, (size_t)n));
    return 0;
}
