/*
 * libsev.c - the tiny runtime linked into every sevsim guest program.
 *
 * gcc emits calls to memcpy/memset/memmove/memcmp (struct copies, large
 * initialisers) even with -ffreestanding, so they must exist.  They are
 * built with loop-pattern recognition off: otherwise gcc would turn the
 * byte loops below back into calls to themselves.
 */
#include <sevsim.h>

#define SEV_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))

/* A 64-bit word that may alias anything, for the word-at-a-time loops. */
typedef uint64_t __attribute__((may_alias)) word_t;

SEV_NO_LIBCALLS void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    /* Word copies when both pointers share 8-byte alignment: bench-sized copies matter. */
    if ((((uintptr_t)d ^ (uintptr_t)s) & 7) == 0) {
        while (n && ((uintptr_t)d & 7)) {
            *d++ = *s++;
            n--;
        }
        for (; n >= 8; n -= 8, d += 8, s += 8)
            *(word_t *)(void *)d = *(const word_t *)(const void *)s;
    }
    while (n--)
        *d++ = *s++;
    return dst;
}

SEV_NO_LIBCALLS void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    if (d == s || n == 0)
        return dst;
    if (d < s || d >= s + n)
        return memcpy(dst, src, n);
    /* Overlap with dst above src: copy backwards. */
    d += n;
    s += n;
    while (n--)
        *--d = *--s;
    return dst;
}

SEV_NO_LIBCALLS void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    uint64_t w = (uint64_t)(unsigned char)c * 0x0101010101010101ULL;

    while (n && ((uintptr_t)d & 7)) {
        *d++ = (unsigned char)c;
        n--;
    }
    for (; n >= 8; n -= 8, d += 8)
        *(word_t *)(void *)d = w;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

SEV_NO_LIBCALLS int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *p = a, *q = b;

    for (; n; n--, p++, q++) {
        if (*p != *q)
            return *p < *q ? -1 : 1;
    }
    return 0;
}

SEV_NO_LIBCALLS size_t strlen(const char *s)
{
    const char *p = s;

    while (*p)
        p++;
    return (size_t)(p - s);
}

/* ------------------------------------------------------------------------ */
/* Formatting                                                                */
/* ------------------------------------------------------------------------ */

/* Where formatted characters go: a buffer flushed to SYS_WRITE, or a string. */
struct sink {
    char *buf;
    size_t cap;       /* usable bytes in buf */
    size_t len;       /* bytes currently in buf */
    size_t total;     /* characters produced so far */
    int flush_to_console;
};

static void sink_flush(struct sink *k)
{
    if (k->flush_to_console && k->len) {
        sev_write(k->buf, k->len);
        k->len = 0;
    }
}

static void sink_putc(struct sink *k, char c)
{
    k->total++;
    if (k->len == k->cap) {
        if (!k->flush_to_console)
            return; /* string sink: truncate, keep counting */
        sink_flush(k);
    }
    k->buf[k->len++] = c;
}

static void sink_pad(struct sink *k, char c, int n)
{
    while (n-- > 0)
        sink_putc(k, c);
}

/* Emit digits/text `s` of length n inside a field of `width`. */
static void emit_field(struct sink *k, const char *prefix, const char *s, int n, int width,
                       int left, int zero)
{
    int plen = (int)strlen(prefix);
    int pad = width - n - plen;

    if (left) {
        while (*prefix)
            sink_putc(k, *prefix++);
        while (n--)
            sink_putc(k, *s++);
        sink_pad(k, ' ', pad);
        return;
    }
    if (!zero)
        sink_pad(k, ' ', pad);
    while (*prefix)
        sink_putc(k, *prefix++);
    if (zero)
        sink_pad(k, '0', pad);
    while (n--)
        sink_putc(k, *s++);
}

/* Digits of v in `base`, most significant first, written to the end of tmp. */
static int utoa(unsigned long long v, unsigned base, int upper, char *tmp_end)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    int n = 0;

    do {
        *--tmp_end = digits[v % base];
        v /= base;
        n++;
    } while (v);
    return n;
}

static void format(struct sink *k, const char *fmt, va_list ap)
{
    char tmp[24];

    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            sink_putc(k, *fmt);
            continue;
        }
        const char *start = fmt++;
        int left = 0, zero = 0, width = 0, lng = 0;

        for (;; fmt++) {
            if (*fmt == '-')
                left = 1;
            else if (*fmt == '0')
                zero = 1;
            else
                break;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        if (*fmt == 'l') {
            lng = 1;
            if (*++fmt == 'l') {
                lng = 2;
                fmt++;
            }
        } else if (*fmt == 'z') {
            lng = 1; /* size_t is unsigned long on x86-64 */
            fmt++;
        }

        unsigned long long u;
        const char *prefix = "";
        int n;

        switch (*fmt) {
        case '%':
            sink_putc(k, '%');
            break;
        case 'c':
            tmp[0] = (char)va_arg(ap, int);
            emit_field(k, "", tmp, 1, width, left, 0);
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            emit_field(k, "", s, (int)strlen(s), width, left, 0);
            break;
        }
        case 'd':
        case 'i': {
            long long v = lng == 2 ? va_arg(ap, long long)
                          : lng == 1 ? va_arg(ap, long)
                                     : va_arg(ap, int);
            /* Negate in unsigned arithmetic so LLONG_MIN does not overflow. */
            u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
            if (v < 0)
                prefix = "-";
            n = utoa(u, 10, 0, tmp + sizeof(tmp));
            emit_field(k, prefix, tmp + sizeof(tmp) - n, n, width, left, zero);
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            u = lng == 2 ? va_arg(ap, unsigned long long)
                : lng == 1 ? va_arg(ap, unsigned long)
                           : va_arg(ap, unsigned int);
            unsigned base = *fmt == 'u' ? 10 : 16;
            n = utoa(u, base, *fmt == 'X', tmp + sizeof(tmp));
            emit_field(k, "", tmp + sizeof(tmp) - n, n, width, left, zero);
            break;
        }
        case 'p':
            u = (uintptr_t)va_arg(ap, void *);
            n = utoa(u, 16, 0, tmp + sizeof(tmp));
            emit_field(k, "0x", tmp + sizeof(tmp) - n, n, width, left, zero);
            break;
        case '\0':
            /* Lone '%' at the end: print it and stop. */
            while (start < fmt)
                sink_putc(k, *start++);
            return;
        default:
            /* Unknown conversion: print the directive verbatim so the bug is visible. */
            while (start <= fmt)
                sink_putc(k, *start++);
            break;
        }
    }
}

int sev_vprintf(const char *fmt, va_list ap)
{
    char buf[256];
    struct sink k = {buf, sizeof(buf), 0, 0, 1};

    format(&k, fmt, ap);
    sink_flush(&k);
    return (int)k.total;
}

int sev_printf(const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = sev_vprintf(fmt, ap);
    va_end(ap);
    return n;
}

int sev_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct sink k = {buf, size ? size - 1 : 0, 0, 0, 0};

    format(&k, fmt, ap);
    if (size)
        buf[k.len] = '\0';
    return (int)k.total;
}

int sev_snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = sev_vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

int sev_print(const char *s)
{
    size_t n = strlen(s);

    sev_write(s, n);
    return (int)n;
}

int sev_puts(const char *s)
{
    /* Through printf's buffer, so short lines leave in one SYS_WRITE. */
    return sev_printf("%s\n", s);
}

/* ------------------------------------------------------------------------ */
/* TPM 2.0 commands (TCG TPM 2.0 Library, Part 3), marshalled big-endian     */
/* ------------------------------------------------------------------------ */

#define TPM_ST_NO_SESSIONS 0x8001
#define TPM_ST_SESSIONS 0x8002
#define TPM_RS_PW 0x40000009U
#define TPM_RH_ENDORSEMENT 0x4000000BU
#define TPM_CC_CREATE_PRIMARY 0x0131
#define TPM_CC_QUOTE 0x0158
#define TPM_CC_FLUSH_CONTEXT 0x0165
#define TPM_CC_PCR_READ 0x017E
#define TPM_CC_PCR_EXTEND 0x0182
#define TPM_ALG_NULL 0x0010
#define TPM_PCR_SELECT_BYTES 3 /* 24 PCRs */
#define TPM_RETRIES 10

/* The ECC P-256 attestation key's TPMT_PUBLIC: type ECC, nameAlg SHA-256, attributes
 * fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|restricted|sign, no policy, no
 * symmetric, ECDSA-SHA256, NIST P-256, no KDF, empty unique (the TPM derives the key). */
static const uint8_t ak_template[] = {
    0x00, 0x23, 0x00, 0x0B, 0x00, 0x05, 0x00, 0x72, 0x00, 0x00, 0x00, 0x10,
    0x00, 0x18, 0x00, 0x0B, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00,
};

struct tpm_out {
    uint8_t buf[SEV_TPM_BUFFER_SIZE];
    size_t len;
    int overflow;
};

struct tpm_in {
    uint8_t p[SEV_TPM_BUFFER_SIZE]; /* the response (on the caller's stack: no .bss) */
    size_t len, pos;
    int short_read;
};

static void put(struct tpm_out *o, uint64_t value, unsigned n)
{
    if (o->len + n > sizeof(o->buf)) {
        o->overflow = 1;
        return;
    }
    for (unsigned i = 0; i < n; i++)
        o->buf[o->len + i] = (uint8_t)(value >> (8 * (n - 1 - i)));
    o->len += n;
}

static void put_bytes(struct tpm_out *o, const void *data, size_t n)
{
    if (o->len + n > sizeof(o->buf)) {
        o->overflow = 1;
        return;
    }
    memcpy(o->buf + o->len, data, n);
    o->len += n;
}

static void tpm_begin(struct tpm_out *o, uint16_t tag, uint32_t cc)
{
    o->len = 0;
    o->overflow = 0;
    put(o, tag, 2);
    put(o, 0, 4); /* commandSize, set when sent */
    put(o, cc, 4);
}

/* An authorization area of one TPM_RS_PW session with an empty password. */
static void tpm_password(struct tpm_out *o)
{
    put(o, 9, 4);
    put(o, TPM_RS_PW, 4);
    put(o, 0, 2); /* nonceCaller */
    put(o, 0, 1); /* sessionAttributes */
    put(o, 0, 2); /* hmac: the password */
}

static uint64_t get(struct tpm_in *in, unsigned n)
{
    uint64_t value = 0;

    if (in->pos + n > in->len) {
        in->short_read = 1;
        return 0;
    }
    for (unsigned i = 0; i < n; i++)
        value = value << 8 | in->p[in->pos + i];
    in->pos += n;
    return value;
}

static const uint8_t *get_bytes(struct tpm_in *in, size_t n)
{
    const uint8_t *at = in->p + in->pos;

    if (in->pos + n > in->len) {
        in->short_read = 1;
        return in->p;
    }
    in->pos += n;
    return at;
}

static int tpm_retry(uint32_t rc)
{
    return rc == 0x908 || rc == 0x90A || rc == 0x922; /* YIELDED, TESTING, RETRY */
}

/* Send the command, again while the TPM asks for a retry; `in` reads the response after
 * its header.  Returns 0, -errno, or -(SEV_TPM_RC_BASE + rc). */
static long tpm_call(struct tpm_out *o, struct tpm_in *in)
{
    uint32_t rc = 0;

    if (o->overflow)
        return -SEV_EINVAL;
    for (unsigned i = 0; i < 4; i++)
        o->buf[2 + i] = (uint8_t)(o->len >> (8 * (3 - i)));
    for (int attempt = 0; attempt < TPM_RETRIES; attempt++) {
        long n = sev_tpm_transmit(o->buf, o->len, in->p, sizeof(in->p));

        if (n < 0)
            return n;
        in->len = (size_t)n;
        in->pos = 0;
        in->short_read = 0;
        get(in, 2);
        get(in, 4);
        rc = (uint32_t)get(in, 4);
        if (in->short_read)
            return -SEV_EPROTO;
        if (!tpm_retry(rc))
            break;
    }
    return rc ? -(SEV_TPM_RC_BASE + (long)rc) : 0;
}

static long tpm_digest_size(uint16_t alg)
{
    if (alg == SEV_TPM_ALG_SHA256)
        return 32;
    if (alg == SEV_TPM_ALG_SHA384)
        return 48;
    return -SEV_EINVAL;
}

long sev_tpm_pcr_extend(unsigned pcr, uint16_t alg, const void *digest)
{
    struct tpm_out o;
    struct tpm_in in;
    long size = tpm_digest_size(alg);

    if (size < 0)
        return size;
    tpm_begin(&o, TPM_ST_SESSIONS, TPM_CC_PCR_EXTEND);
    put(&o, pcr, 4);
    tpm_password(&o);
    put(&o, 1, 4); /* TPML_DIGEST_VALUES.count */
    put(&o, alg, 2);
    put_bytes(&o, digest, (size_t)size);
    return tpm_call(&o, &in);
}

static void put_selection(struct tpm_out *o, const struct sev_tpm_bank *banks, unsigned n)
{
    put(o, n, 4);
    for (unsigned i = 0; i < n; i++) {
        put(o, banks[i].alg, 2);
        put(o, TPM_PCR_SELECT_BYTES, 1);
        for (unsigned b = 0; b < TPM_PCR_SELECT_BYTES; b++)
            put(o, (banks[i].pcrs >> (8 * b)) & 0xFF, 1);
    }
}

long sev_tpm_pcr_read(unsigned pcr, uint16_t alg, void *digest, size_t cap)
{
    struct tpm_out o;
    struct tpm_in in;
    struct sev_tpm_bank bank = {alg, 1U << pcr};
    long ret;

    if (pcr >= 24)
        return -SEV_EINVAL;
    tpm_begin(&o, TPM_ST_NO_SESSIONS, TPM_CC_PCR_READ);
    put_selection(&o, &bank, 1);
    ret = tpm_call(&o, &in);
    if (ret)
        return ret;
    get(&in, 4); /* pcrUpdateCounter */
    for (uint64_t banks = get(&in, 4); banks && !in.short_read; banks--) {
        get(&in, 2);
        get_bytes(&in, get(&in, 1));
    }
    if (get(&in, 4) != 1 || in.short_read)
        return -SEV_ENOENT; /* the TPM has no such bank */
    size_t size = get(&in, 2);
    const uint8_t *value = get_bytes(&in, size);
    if (in.short_read)
        return -SEV_EPROTO;
    if (size > cap)
        return -SEV_ENOSPC;
    memcpy(digest, value, size);
    return (long)size;
}

long sev_tpm_create_ak(uint32_t *handle, void *pub, size_t cap)
{
    struct tpm_out o;
    struct tpm_in in;
    long ret;

    tpm_begin(&o, TPM_ST_SESSIONS, TPM_CC_CREATE_PRIMARY);
    put(&o, TPM_RH_ENDORSEMENT, 4);
    tpm_password(&o);
    put(&o, 4, 2); /* inSensitive: an empty userAuth and data */
    put(&o, 0, 2);
    put(&o, 0, 2);
    put(&o, sizeof(ak_template), 2);
    put_bytes(&o, ak_template, sizeof(ak_template));
    put(&o, 0, 2); /* outsideInfo */
    put(&o, 0, 4); /* creationPCR */
    ret = tpm_call(&o, &in);
    if (ret)
        return ret;
    uint32_t object = (uint32_t)get(&in, 4);
    get(&in, 4); /* parameterSize */
    size_t size = get(&in, 2);
    const uint8_t *public_area = get_bytes(&in, size);
    if (in.short_read)
        return -SEV_EPROTO;
    if (size > cap)
        return -SEV_ENOSPC;
    memcpy(pub, public_area, size);
    *handle = object;
    return (long)size;
}

long sev_tpm_quote(uint32_t ak, const void *nonce, size_t nonce_len,
                   const struct sev_tpm_bank *banks, unsigned nbanks, void *attest,
                   size_t *attest_len, void *sig, size_t *sig_len)
{
    struct tpm_out o;
    struct tpm_in in;
    long ret;

    if (nonce_len > 64 || nbanks > 4)
        return -SEV_EINVAL;
    tpm_begin(&o, TPM_ST_SESSIONS, TPM_CC_QUOTE);
    put(&o, ak, 4);
    tpm_password(&o);
    put(&o, nonce_len, 2);
    put_bytes(&o, nonce, nonce_len);
    put(&o, TPM_ALG_NULL, 2); /* inScheme: the key's own */
    put_selection(&o, banks, nbanks);
    ret = tpm_call(&o, &in);
    if (ret)
        return ret;
    size_t params = get(&in, 4);
    size_t quoted = get(&in, 2);
    const uint8_t *body = get_bytes(&in, quoted);
    if (in.short_read || params < 2 + quoted)
        return -SEV_EPROTO;
    size_t signature = params - 2 - quoted; /* TPMT_SIGNATURE: the rest of the parameters */
    const uint8_t *signature_bytes = get_bytes(&in, signature);
    if (in.short_read)
        return -SEV_EPROTO;
    if (quoted > *attest_len || signature > *sig_len)
        return -SEV_ENOSPC;
    memcpy(attest, body, quoted);
    memcpy(sig, signature_bytes, signature);
    *attest_len = quoted;
    *sig_len = signature;
    return 0;
}

long sev_tpm_flush(uint32_t handle)
{
    struct tpm_out o;
    struct tpm_in in;

    tpm_begin(&o, TPM_ST_NO_SESSIONS, TPM_CC_FLUSH_CONTEXT);
    put(&o, handle, 4);
    return tpm_call(&o, &in);
}
