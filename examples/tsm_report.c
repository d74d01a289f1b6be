/*
 * tsm_report.c - an SEV-SNP attestation report the way Linux programs get one:
 * through configfs-tsm (/sys/kernel/config/tsm/report).
 *
 * The program makes a report entry, writes the host's 64-byte nonce to its
 * inblob, reads the generation, the outblob (the signed report) and the auxblob
 * (the host's certificate table), then the generation again: unchanged, so both
 * blobs answer this inblob and nobody wrote in between.  It hands both blobs to
 * the host, as report.c does.
 */
#include <sevsim.h>

#define ENTRY SEV_TSM_REPORT_DIR "/r0"

static uint8_t nonce[SEV_SNP_REPORT_DATA_SIZE];
static uint8_t outblob[SEV_SNP_REPORT_SIZE];
static uint8_t auxblob[4 * SEV_PAGE_SIZE];
static char text[32];

static long read_text(const char *path)
{
    long n = sev_tsm_read(path, text, sizeof text - 1);
    text[n > 0 ? n : 0] = '\0';
    return n;
}

int main(void)
{
    if (sev_host_input(nonce, sizeof nonce) < 0)
        return 1;
    long rc = sev_tsm_mkdir(ENTRY);
    if (rc < 0 || sev_tsm_write(ENTRY "/inblob", nonce, sizeof nonce) < 0) {
        sev_printf("configfs-tsm unavailable: %ld\n", rc);
        return 2;
    }
    read_text(ENTRY "/provider");
    sev_printf("provider %s", text);
    read_text(ENTRY "/generation");
    long before = 0;
    for (const char *p = text; *p >= '0' && *p <= '9'; p++)
        before = before * 10 + (*p - '0');
    long out = sev_tsm_read(ENTRY "/outblob", outblob, sizeof outblob);
    long aux = sev_tsm_read(ENTRY "/auxblob", auxblob, sizeof auxblob);
    read_text(ENTRY "/generation");
    long after = 0;
    for (const char *p = text; *p >= '0' && *p <= '9'; p++)
        after = after * 10 + (*p - '0');
    sev_printf("outblob %ld bytes, auxblob %ld bytes, generation %ld -> %ld\n", out, aux,
               before, after);
    if (out != SEV_SNP_REPORT_SIZE || aux < 0 || before != after)
        return 3;
    if (sev_host_output(outblob, (size_t)out) < 0 || sev_host_output(auxblob, (size_t)aux) < 0)
        return 4;
    return sev_tsm_rmdir(ENTRY) == 0 ? 0 : 5;
}
