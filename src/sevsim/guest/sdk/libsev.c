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
