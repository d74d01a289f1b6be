/*
 * The memory encryption engine's inner loop: AES-128 (OpenSSL's EVP, AES-NI where the CPU
 * has it) with address tweaks whitening each 16-byte block before and/or after the cipher.
 *
 * Why C: OpenSSL has no mode with this linear tweak, and doing the whitening as numpy passes
 * around an ECB call streams every chunk through memory four times (about half of OpenSSL's
 * speed is lost). Here each 4 KiB piece is whitened, encrypted and whitened again while it
 * sits in L1. The GIL is released, so large runs can be split across cores.
 *
 * Key(key16).transform(encrypt, pre, post, src, dst, unit_tweaks, base_tweaks)
 *   src and dst: equal-length buffers (dst may be src); the run is cut into units of
 *   len(unit_tweaks) bytes; block j of unit u is whitened with unit_tweaks[j] ^ base_tweaks[u]
 *   (the tweak is linear, so T(unit base + offset) = T(base) ^ T(offset)).
 *   pre: whiten before AES; post: whiten after (XEX: both; XE: pre to encrypt, post to decrypt).
 * The raw key stays in this object's C memory and is wiped when the object goes away.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdint.h>

#define KEY_BYTES 16
#define PIECE_WORDS 512 /* 4 KiB: the scratch buffer and one OpenSSL call */

typedef struct {
    PyObject_HEAD
    unsigned char key[KEY_BYTES];
} Key;

static int key_init(Key *self, PyObject *args, PyObject *kwargs)
{
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "y*", &key))
        return -1;
    if (key.len != KEY_BYTES) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "the memory encryption key is AES-128 (16 bytes)");
        return -1;
    }
    memcpy(self->key, key.buf, KEY_BYTES);
    PyBuffer_Release(&key);
    return 0;
}

static void key_dealloc(Key *self)
{
    OPENSSL_cleanse(self->key, KEY_BYTES);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Whiten, cipher and whiten one run; returns 0 on success. Runs without the GIL.
 * Indices are size_t: with Python's -fwrapv, signed indices keep gcc from vectorising. */
static int run(const unsigned char *key, int encrypt, int pre, int post, const uint64_t *src,
               uint64_t *dst, size_t words, const uint64_t *restrict unit, size_t unit_words,
               const uint64_t *restrict base)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx || !EVP_CipherInit_ex(ctx, EVP_aes_128_ecb(), NULL, key, NULL, encrypt)
        || !EVP_CIPHER_CTX_set_padding(ctx, 0)) {
        EVP_CIPHER_CTX_free(ctx);
        return -1;
    }
    _Alignas(64) uint64_t scratch[PIECE_WORDS]; /* unaligned, AES-NI loads run ~30% slower */
    int ok = 1;
    for (size_t start = 0; start < words && ok; start += unit_words) {
        const uint64_t b0 = base[2 * (start / unit_words)], b1 = base[2 * (start / unit_words) + 1];
        for (size_t at = 0; at < unit_words && ok; at += PIECE_WORDS) {
            const size_t n = unit_words - at < PIECE_WORDS ? unit_words - at : PIECE_WORDS;
            const uint64_t *in = src + start + at;
            const uint64_t *restrict t = unit + at;
            uint64_t *out = dst + start + at;
            if (pre) {
                for (size_t i = 0; i < n; i += 2) {
                    scratch[i] = in[i] ^ t[i] ^ b0;
                    scratch[i + 1] = in[i + 1] ^ t[i + 1] ^ b1;
                }
                in = scratch;
            }
            int written = 0;
            ok = EVP_CipherUpdate(ctx, (unsigned char *)out, &written, (const unsigned char *)in,
                                  (int)(n * 8)) && (size_t)written == n * 8;
            if (post)
                for (size_t i = 0; i < n; i += 2) {
                    out[i] ^= t[i] ^ b0;
                    out[i + 1] ^= t[i + 1] ^ b1;
                }
        }
    }
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : -1;
}

static PyObject *key_transform(Key *self, PyObject *args)
{
    int encrypt, pre, post;
    Py_buffer src, dst, unit, base;
    if (!PyArg_ParseTuple(args, "pppy*w*y*y*", &encrypt, &pre, &post, &src, &dst, &unit, &base))
        return NULL;
    PyObject *result = NULL;
    const Py_ssize_t n = src.len, unit_len = unit.len;
    if (dst.len != n || unit_len == 0 || unit_len % 16 || n % unit_len
        || base.len != n / unit_len * 16) {
        PyErr_SetString(PyExc_ValueError,
                        "transform: dst must match src, which must be whole units of "
                        "len(unit_tweaks) (a multiple of 16), with one base tweak per unit");
        goto done;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run(self->key, encrypt, pre, post, src.buf, dst.buf, (size_t)n / 8, unit.buf,
                 (size_t)unit_len / 8, base.buf);
    Py_END_ALLOW_THREADS
    if (status) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL AES-128-ECB failed");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&unit);
    PyBuffer_Release(&base);
    return result;
}

static PyMethodDef key_methods[] = {
    {"transform", (PyCFunction)key_transform, METH_VARARGS,
     "transform(encrypt, pre, post, src, dst, unit_tweaks, base_tweaks)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KeyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sevsim.hw._xex.Key",
    .tp_doc = "An AES-128 key slot of the memory controller; the key never leaves it.",
    .tp_basicsize = sizeof(Key),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)key_init,
    .tp_dealloc = (destructor)key_dealloc,
    .tp_methods = key_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_xex", "AES-128 with address-tweak whitening over OpenSSL.", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__xex(void)
{
    if (PyType_Ready(&KeyType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddObjectRef(m, "Key", (PyObject *)&KeyType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
