/*
 * kbs_client.c - an SEV-SNP guest fetches a secret from a key broker service (KBS).
 *
 * One call does it all: the guest kernel attests to the KBS over the VMM's virtual NIC
 * (Trustee's protocol: auth, attest with an SNP report binding an ephemeral key, resource as
 * a JWE to that key) and decrypts the secret into `secret`, which is private memory.  The
 * program prints only the secret's length and a fingerprint: the console is the host's.
 *
 *   sevsim kbs serve --port 8080 &          # the key broker, with a resource and a policy
 *   sevsim guest build examples/kbs_client.c -o kbs_client.elf
 *   sevsim run kbs_client.elf --mode snp --kbs http://127.0.0.1:8080
 *
 * Build with -DKBS_RESOURCE='"repo/type/tag"' to ask for another resource.
 */
#include <sevsim.h>

#ifndef KBS_RESOURCE
#define KBS_RESOURCE "default/key/1"
#endif

static uint8_t secret[4096];

static uint64_t fnv1a64(const uint8_t *p, size_t n)
{
    uint64_t h = 0xCBF29CE484222325ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001B3ULL;
    return h;
}

static const char *why(long rc)
{
    switch (-rc) {
    case SEV_EACCES: return "the KBS refused (attestation or resource policy)";
    case SEV_ENOENT: return "no such resource";
    case SEV_ECONNREFUSED: return "cannot reach the KBS";
    case SEV_ETIMEDOUT: return "the KBS did not answer in time";
    case SEV_EPROTO: return "malformed answer from the KBS";
    case SEV_ENODEV: return "no virtual NIC (run with --kbs URL) or not SEV-SNP";
    case SEV_ENOSPC: return "the secret does not fit the buffer";
    default: return "error";
    }
}

int main(void)
{
    long n = sev_kbs_get_resource(KBS_RESOURCE, secret, sizeof secret);
    if (n < 0) {
        sev_printf("kbs: %s: %s (%ld)\n", KBS_RESOURCE, why(n), n);
        return 1;
    }
    sev_printf("kbs: got %ld-byte secret %s, fnv1a64 %016lx\n", n, KBS_RESOURCE,
               (unsigned long)fnv1a64(secret, (size_t)n));
    return 0;
}
