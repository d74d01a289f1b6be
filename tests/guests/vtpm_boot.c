/* The boot the kernel measured into the SNP-bound vTPM, for a relying party: the evidence for
 * the host's 32-byte nonce over the PCRs the boot extends (0-8), then the boot's event log,
 * each through the host channel (outputs[0], outputs[1]). */
#include <sevsim.h>

#define BOOT_PCRS 0x1FFU

static uint8_t nonce[32];
static uint8_t evidence[8192];
static uint8_t event_log[16384];

int main(void)
{
    if (sev_host_input(nonce, sizeof nonce) != sizeof nonce)
        return 1;
    long size = sev_vtpm_evidence(nonce, sizeof nonce, BOOT_PCRS, evidence, sizeof evidence);
    long length = sev_vtpm_event_log(event_log, sizeof event_log);
    sev_printf("evidence %ld log %ld\n", size, length);
    if (size < 0 || length < 0)
        return 2;
    sev_host_output(evidence, (size_t)size);
    sev_host_output(event_log, (size_t)length);
    return 0;
}
