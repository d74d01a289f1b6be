/* Requests REPORTS attestation reports back to back (SNP): the guest-request round trip
 * (guest kernel seals, VMGEXIT, hypervisor, Secure Processor, back) timed by the host. */
#include <sevsim.h>

#ifndef REPORTS
#define REPORTS 200
#endif

static uint8_t report_data[SEV_SNP_REPORT_DATA_SIZE];
static uint8_t report[SEV_SNP_REPORT_SIZE];

int main(void)
{
    for (int i = 0; i < REPORTS; i++) {
        report_data[0] = (uint8_t)i;
        if (sev_snp_report(report_data, report) < 0)
            return 1;
    }
    sev_printf("reports %d\n", REPORTS);
    return 0;
}
