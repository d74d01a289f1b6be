/*
 * report.c - an SEV-SNP guest asks the Secure Processor for a signed attestation report.
 *
 * The 64 bytes of REPORT_DATA (a verifier's nonce) come from the host channel
 * (zeros if the host offers none): untrusted input is fine here, the verifier
 * checks that its own nonce comes back inside the signed report.  The program
 * requests an extended report, prints its key fields, then hands the report
 * and the host's certificate table (VCEK, ASK, ARK) back through the host
 * channel: both are public, the report's signature is what makes it trustworthy.
 * Run with `sevsim run report.elf --mode snp --report-data HEX --report-out F`.
 */
#include <sevsim.h>

#ifndef CERTS_SIZE
#define CERTS_SIZE (4 * SEV_PAGE_SIZE)
#endif

static uint8_t report_data[SEV_SNP_REPORT_DATA_SIZE];
static uint8_t report[SEV_SNP_REPORT_SIZE];
static uint8_t certs[CERTS_SIZE];

static uint32_t u32_at(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void print_hex(const char *label, const uint8_t *p, size_t n)
{
    sev_printf("%s", label);
    for (size_t i = 0; i < n; i++)
        sev_printf("%02x", p[i]);
    sev_printf("\n");
}

int main(void)
{
    long got = sev_host_input(report_data, sizeof report_data);
    if (got < 0) {
        sev_printf("host input failed: %ld\n", got);
        return 1;
    }
    uint64_t certs_len = sizeof certs;
    long rc = sev_snp_ext_report(report_data, report, certs, &certs_len);
    if (rc < 0) {
        sev_printf("extended report failed: %ld (cert table needs %lu bytes)\n", rc,
                   (unsigned long)certs_len);
        return 2;
    }
    sev_printf("report version %u, VMPL %u, %ld-byte certificate table\n", u32_at(report),
               u32_at(report + 0x30), rc);
    print_hex("measurement ", report + 0x90, 48);
    print_hex("chip id     ", report + 0x1A0, 8);
    if (sev_host_output(report, sizeof report) < 0 || sev_host_output(certs, certs_len) < 0) {
        sev_printf("host output failed\n");
        return 3;
    }
    return 0;
}
