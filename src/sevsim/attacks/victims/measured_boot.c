/* A victim that measures the boot command line the VMM hands it into PCR 8 (as firmware and
 * boot loader measure the kernel command line), then answers the relying party's nonce with
 * its SNP-bound vTPM's evidence through the host channel. Host input: the 32-byte nonce, then
 * the command line. Outside SEV-SNP there is no in-VM vTPM: it says so and stops. */
#include <sevsim.h>

#define NONCE_LEN 32
#define PCR_MASK (1U << 8)

static uint8_t input[4096];
static uint8_t evidence[8192];

int main(void)
{
    long got = sev_host_input(input, sizeof input);
    if (got < NONCE_LEN) {
        sev_printf("no nonce from the host (%ld)\n", got);
        return 1;
    }
    long rc = sev_vtpm_extend(8, input + NONCE_LEN, (size_t)(got - NONCE_LEN));
    if (rc == -SEV_ENODEV) {
        sev_printf("no SNP-bound vTPM\n");
        return 0;
    }
    if (rc < 0) {
        sev_printf("measuring the command line failed: %ld\n", rc);
        return 1;
    }
    long size = sev_vtpm_evidence(input, NONCE_LEN, PCR_MASK, evidence, sizeof evidence);
    if (size < 0) {
        sev_printf("no vTPM evidence: %ld\n", size);
        return 1;
    }
    sev_host_output(evidence, (size_t)size);
    sev_printf("vTPM evidence: %ld bytes\n", size);
    return 0;
}
