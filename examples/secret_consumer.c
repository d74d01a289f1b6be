/*
 * secret_consumer.c - use the guest owner's launch secret without ever showing it.
 *
 * The owner checks this VM's launch measurement and only then has the Secure
 * Processor write its secret into the VM's private secret page (LAUNCH_SECRET);
 * sev_secret() finds it there.  The program prints the secret's length and its
 * SHA-256 (compare with `sha256sum` of the secret file on the owner's side),
 * plus a key derived from it, SHA-256("sevsim-example-key" || secret): the
 * kind of value a real guest would go on to use.  The secret itself is never
 * printed: the console is visible to the hypervisor.
 *
 * Exit code: 0 when a secret was there, 2 when none was injected.
 */
#include <sevsim.h>

struct sha256 {
    uint32_t h[8];
    uint8_t block[64];
    size_t used;
    uint64_t bytes;
};

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
};

static uint32_t ror(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32 - n));
}

static void sha256_block(struct sha256 *s)
{
    uint32_t w[64], v[8];

    for (unsigned i = 0; i < 16; i++)
        w[i] = (uint32_t)s->block[4 * i] << 24 | (uint32_t)s->block[4 * i + 1] << 16 |
               (uint32_t)s->block[4 * i + 2] << 8 | s->block[4 * i + 3];
    for (unsigned i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(v, s->h, sizeof(v));
    for (unsigned i = 0; i < 64; i++) {
        uint32_t t1 = v[7] + (ror(v[4], 6) ^ ror(v[4], 11) ^ ror(v[4], 25)) +
                      ((v[4] & v[5]) ^ (~v[4] & v[6])) + K[i] + w[i];
        uint32_t t2 = (ror(v[0], 2) ^ ror(v[0], 13) ^ ror(v[0], 22)) +
                      ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
        memmove(v + 1, v, 7 * sizeof(v[0]));
        v[4] += t1;
        v[0] = t1 + t2;
    }
    for (unsigned i = 0; i < 8; i++)
        s->h[i] += v[i];
}

static void sha256_init(struct sha256 *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof(iv));
    s->used = 0;
    s->bytes = 0;
}

static void sha256_update(struct sha256 *s, const volatile uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        s->block[s->used++] = data[i];
        if (s->used == 64) {
            sha256_block(s);
            s->used = 0;
        }
    }
    s->bytes += len;
}

static void sha256_final(struct sha256 *s, uint8_t out[32])
{
    uint64_t bits = s->bytes * 8;
    static const uint8_t pad = 0x80, zero = 0;

    sha256_update(s, &pad, 1);
    while (s->used != 56)
        sha256_update(s, &zero, 1);
    for (int i = 7; i >= 0; i--) {
        uint8_t b = (uint8_t)(bits >> (8 * i));
        sha256_update(s, &b, 1);
    }
    for (unsigned i = 0; i < 32; i++)
        out[i] = (uint8_t)(s->h[i / 4] >> (24 - 8 * (i % 4)));
}

static void print_hex(const char *label, const uint8_t digest[32])
{
    sev_printf("%s", label);
    for (unsigned i = 0; i < 32; i++)
        sev_printf("%02x", digest[i]);
    sev_printf("\n");
}

int main(void)
{
    static const uint8_t label[] = "sevsim-example-key";
    struct sha256 s;
    uint8_t digest[32];
    size_t len;
    const uint8_t *secret = sev_secret(&len);

    if (!secret) {
        sev_printf("no secret was injected\n");
        return 2;
    }
    sha256_init(&s);
    sha256_update(&s, secret, len);
    sha256_final(&s, digest);
    sev_printf("secret: %zu bytes\n", len);
    print_hex("secret sha256: ", digest);

    sha256_init(&s);
    sha256_update(&s, label, sizeof(label) - 1);
    sha256_update(&s, secret, len);
    sha256_final(&s, digest);
    print_hex("derived key sha256: ", digest);
    return 0;
}
