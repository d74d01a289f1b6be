/*
 * snp_key.c - three MSG_KEY_REQs (VCEK root, the measurement mixed in), each
 * result printed ("key N rc R") and each key handed to the host; a failed
 * request outputs 32 zero bytes.  -DVARIANT=N builds another image (another measurement).
 */
#include <sevsim.h>

#ifndef VARIANT
#define VARIANT 0
#endif

static uint8_t key_request[SEV_SNP_KEY_REQ_SIZE];
static uint8_t key[SEV_SNP_KEY_SIZE];

int main(void)
{
    sev_printf("variant %d\n", VARIANT);
    key_request[8] = 1 << 3; /* GUEST_FIELD_SELECT: MEASUREMENT */
    for (int i = 0; i < 3; i++) {
        memset(key, 0, sizeof key);
        long rc = sev_snp_derived_key(key_request, key);
        sev_printf("key %d rc %ld\n", i, rc);
        sev_host_output(key, sizeof key);
    }
    return 0;
}
