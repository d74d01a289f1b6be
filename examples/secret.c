/*
 * secret.c - a secret that lives only in private (encrypted) guest memory.
 *
 * The secret never appears in the ELF: it is generated at run time into the
 * page-aligned 4096-byte buffer `secret_page` by xorshift64*, exactly:
 *
 *     x = 0x5EC12E75EED0F00D                  (uint64 state)
 *     for i in 0..511:
 *         x ^= x >> 12
 *         x ^= x << 25                        (mod 2**64)
 *         x ^= x >> 27
 *         secret_page[i] = x * 0x2545F4914F6CDD1D   (mod 2**64, stored little-endian)
 *
 * i.e. bytes 8*i .. 8*i+7 of the page are output i in little-endian order.
 * The program then "uses" the secret (a 64-bit FNV-1a hash over the 4096
 * bytes: offset basis 0xcbf29ce484222325, prime 0x100000001b3) and leaves
 * the page in memory after exit, so a host can look for it in what it sees.
 *
 * A second page-aligned page is converted to shared with SYS_SET_SHARED and
 * filled with a public message the host is meant to read in plaintext.
 */
#include <sevsim.h>

#ifndef SECRET_SEED /* -DSECRET_SEED=0x...ULL plants another secret (sevsim demo --seed) */
#define SECRET_SEED 0x5EC12E75EED0F00DULL
#endif
#define SECRET_MULT 0x2545F4914F6CDD1DULL
#define FNV64_BASIS 0xcbf29ce484222325ULL
#define FNV64_PRIME 0x100000001b3ULL

static const char public_message[] = "PUBLIC-MESSAGE-FOR-THE-HOST";

/* volatile: every store must reach memory and stay there after main returns. */
static volatile uint64_t secret_page[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;
static volatile char shared_page[SEV_PAGE_SIZE] SEV_PAGE_ALIGNED;

static void generate_secret(void)
{
    uint64_t x = SECRET_SEED;

    for (unsigned i = 0; i < SEV_PAGE_SIZE / 8; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        secret_page[i] = x * SECRET_MULT; /* x86 is little-endian */
    }
}

static uint64_t secret_digest(void)
{
    uint64_t h = FNV64_BASIS;

    for (unsigned i = 0; i < SEV_PAGE_SIZE / 8; i++) {
        uint64_t w = secret_page[i];
        for (unsigned b = 0; b < 8; b++) {
            h ^= (w >> (8 * b)) & 0xFF;
            h *= FNV64_PRIME;
        }
    }
    return h;
}

int main(void)
{
    long rc;

    generate_secret();
    sev_printf("secret page at 0x%llx (%lu bytes, private)\n",
               (unsigned long long)(uintptr_t)secret_page, (unsigned long)sizeof(secret_page));
    sev_printf("secret digest: 0x%016llx\n", (unsigned long long)secret_digest());

    rc = sev_set_shared((void *)shared_page, 1);
    if (rc != 0) {
        sev_printf("SYS_SET_SHARED failed: %ld\n", rc);
        return 1;
    }
    /* The conversion left the page's contents undefined: write all of it. */
    for (unsigned i = 0; i < SEV_PAGE_SIZE; i++)
        shared_page[i] = i < sizeof(public_message) ? public_message[i] : 0;
    sev_printf("shared page at 0x%llx\n", (unsigned long long)(uintptr_t)shared_page);
    return 0;
}
