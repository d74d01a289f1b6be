/* The vTPM from C: extend PCR 16 in both banks, read it back, create an attestation key and
 * quote PCRs 0, 4, 7, 8 and 16 (SHA-256) and 0 and 16 (SHA-384) over the host's nonce; hand
 * the host the AK's public area, the quote and the event log (sev_host_output, in order).  A secret made at run time
 * sits right after a raw command in the same page: it must never reach the host.
 * Prints "tpm ok" and exits 0, or the first failure and exits 1. */
#include <sevsim.h>

#define PCRS ((1U << 0) | (1U << 4) | (1U << 7) | (1U << 8) | (1U << 16))
#define PCRS_384 ((1U << 0) | (1U << 16)) /* tpm2_checkquote 5.4 takes at most 7 PCRs */

/* A raw TPM2_GetRandom(8) followed by the secret, in one page of private memory. */
static struct {
    uint8_t command[12];
    uint8_t secret[64];
} SEV_PAGE_ALIGNED page = {{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7B, 0, 8}, {0}};

static uint8_t response[SEV_TPM_BUFFER_SIZE];
static uint8_t log[16384];

static int fail(const char *what, long ret)
{
    sev_printf("%s failed: %ld (tpm rc 0x%x)\n", what, ret,
               SEV_TPM_IS_RC(ret) ? SEV_TPM_RC(ret) : 0);
    return 1;
}

int main(void)
{
    uint8_t nonce[32], digest[48], value[48], pub[256], attest[512], sig[256];
    size_t attest_len = sizeof(attest), sig_len = sizeof(sig);
    struct sev_tpm_bank banks[2] = {{SEV_TPM_ALG_SHA256, PCRS}, {SEV_TPM_ALG_SHA384, PCRS_384}};
    uint32_t ak;
    long nonce_len, ret, pub_len, log_len;
    static volatile uint64_t seed = 0x7E57AB1E5EC2E7ULL; /* volatile: computed at run time */
    uint64_t x = seed;

    for (unsigned i = 0; i < sizeof(page.secret); i++) { /* "TPM-SECRET", then run-time bytes */
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        page.secret[i] = i < 10 ? (uint8_t)"TPM-SECRET"[i] : (uint8_t)(x >> 56);
    }
    nonce_len = sev_host_input(nonce, sizeof(nonce));
    if (nonce_len <= 0)
        return fail("host nonce", nonce_len);
    for (unsigned i = 0; i < sizeof(digest); i++)
        digest[i] = (uint8_t)(0xA0 + i);
    if ((ret = sev_tpm_pcr_extend(16, SEV_TPM_ALG_SHA256, digest)) != 0)
        return fail("extend sha256", ret);
    if ((ret = sev_tpm_pcr_extend(16, SEV_TPM_ALG_SHA384, digest)) != 0)
        return fail("extend sha384", ret);
    if ((ret = sev_tpm_pcr_read(16, SEV_TPM_ALG_SHA256, value, sizeof(value))) != 32)
        return fail("read sha256", ret);
    sev_printf("pcr16 sha256 %02x%02x%02x%02x\n", value[0], value[1], value[2], value[3]);
    if ((ret = sev_tpm_pcr_read(16, SEV_TPM_ALG_SHA384, value, sizeof(value))) != 48)
        return fail("read sha384", ret);
    sev_printf("pcr16 sha384 %02x%02x%02x%02x\n", value[0], value[1], value[2], value[3]);

    /* the raw channel: a good command, a bad tag, a length that disagrees with the header */
    ret = sev_tpm_transmit(page.command, sizeof(page.command), response, sizeof(response));
    sev_printf("get_random %ld\n", ret);
    page.command[1] = 0x77;
    ret = sev_tpm_transmit(page.command, sizeof(page.command), response, sizeof(response));
    sev_printf("bad tag %ld rc 0x%02x%02x\n", ret, response[8], response[9]);
    page.command[1] = 0x01;
    ret = sev_tpm_transmit(page.command, sizeof(page.command) + 8, response, sizeof(response));
    sev_printf("bad length %ld\n", ret);
    ret = sev_tpm_transmit(page.command, sizeof(page.command), response, 4);
    sev_printf("small buffer %ld\n", ret);

    if ((pub_len = sev_tpm_create_ak(&ak, pub, sizeof(pub))) <= 0)
        return fail("create ak", pub_len);
    ret = sev_tpm_quote(ak, nonce, (size_t)nonce_len, banks, 2, attest, &attest_len, sig,
                        &sig_len);
    if (ret)
        return fail("quote", ret);
    if ((ret = sev_tpm_flush(ak)) != 0)
        return fail("flush", ret);
    if ((ret = sev_tpm_flush(ak)) >= 0 || !SEV_TPM_IS_RC(ret))
        return fail("second flush refused", ret);
    if ((log_len = sev_tpm_event_log(log, sizeof(log))) <= 0)
        return fail("event log", log_len);
    sev_printf("event log %ld bytes, short buffer %ld\n", log_len, sev_tpm_event_log(log, 8));
    sev_host_output(pub, (size_t)pub_len);
    sev_host_output(attest, attest_len);
    sev_host_output(sig, sig_len);
    sev_host_output(log, (size_t)log_len);
    sev_printf("tpm ok\n");
    return 0;
}
