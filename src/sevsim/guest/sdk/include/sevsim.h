/*
 * sevsim.h - the guest SDK for sevsim confidential-VM programs.
 *
 * Guest programs are freestanding x86-64 C: flat 64-bit long mode, ring 0,
 * identity mapped, no paging, interrupts off, no libc.  This single header
 * gives them the guest kernel's system-call ABI, wrappers for the
 * instructions that exit to the hypervisor, and the few runtime routines
 * implemented in libsev.c (string functions and a small printf).
 *
 * System-call ABI: `syscall` with RAX = number, arguments in RDI, RSI, RDX,
 * R10, R8; the result comes back in RAX (negative errno on failure).  The
 * instruction clobbers RCX and R11.  A buffer the program cannot reach (outside
 * its RAM, or not readable or writable at its VMPL) makes the call return
 * -SEV_EFAULT, as Linux does, and the program goes on.
 */
#ifndef SEVSIM_H
#define SEVSIM_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Constants                                                                 */
/* ------------------------------------------------------------------------ */

#define SEV_PAGE_SIZE 4096UL
#define SEV_ALIGNED(n) __attribute__((aligned(n)))
#define SEV_PAGE_ALIGNED SEV_ALIGNED(SEV_PAGE_SIZE)
#define SEV_NORETURN __attribute__((noreturn))

/* System-call numbers (the guest kernel's ABI; do not renumber). */
#define SYS_WRITE 1
#define SYS_EXIT 60
#define SYS_SET_SHARED 100
#define SYS_SET_PRIVATE 101
#define SYS_SEV_STATUS 102
#define SYS_VCPU_INFO 103
#define SYS_VCPU_START 104
#define SYS_VCPU_HALT 105
#define SYS_SNP_REPORT 106
#define SYS_SNP_EXT_REPORT 107
#define SYS_SNP_DERIVED_KEY 108
#define SYS_HOST_INPUT 109
#define SYS_HOST_OUTPUT 110
#define SYS_VMPL_START 111
#define SYS_RMPADJUST 112
#define SYS_TSM_MKDIR 113
#define SYS_TSM_RMDIR 114
#define SYS_TSM_WRITE 115
#define SYS_TSM_READ 116
#define SYS_KERNEL_OPTIONS 117
#define SYS_SET_PTE_ATTRS 118
#define SYS_MAP_WINDOW 119
#define SYS_KBS_RESOURCE 120
#define SYS_TPM_TRANSMIT 130
#define SYS_TPM_EVENT_LOG 131
#define SYS_VTPM_EXTEND 132
#define SYS_VTPM_EVIDENCE 133
#define SYS_BOOT_FILE 134
#define SYS_VTPM_EVENT_LOG 135

/* Hardening options of the guest kernel (sev_kernel_options). */
#define SEV_KOPT_VC_INSN_CHECK (1UL << 0)     /* #VC: check the instruction matches the exit */
#define SEV_KOPT_NO_IA32_EMULATION (1UL << 1) /* no int 0x80 (ia32_emulation=0) */

/* Error numbers returned (negated) by system calls. */
#define SEV_EPERM 1
#define SEV_ENOENT 2
#define SEV_EIO 5
#define SEV_ENXIO 6
#define SEV_EACCES 13
#define SEV_EFAULT 14
#define SEV_EBUSY 16
#define SEV_EEXIST 17
#define SEV_ENODEV 19
#define SEV_ENOTDIR 20
#define SEV_EISDIR 21
#define SEV_EINVAL 22
#define SEV_EFBIG 27
#define SEV_ENOSPC 28
#define SEV_ERANGE 34
#define SEV_ENAMETOOLONG 36
#define SEV_EPROTO 71
#define SEV_ETIMEDOUT 110
#define SEV_ECONNREFUSED 111

/* SEV-SNP guest requests: sizes of what the Secure Processor answers. */
#define SEV_SNP_REPORT_DATA_SIZE 64
#define SEV_SNP_REPORT_SIZE 0x4A0
#define SEV_SNP_KEY_REQ_SIZE 0x28
#define SEV_SNP_KEY_SIZE 32

/* SEV_STATUS MSR and its bits as the guest reads them. */
#define SEV_MSR_SEV_STATUS 0xC0010131U
#define SEV_MSR_GHCB 0xC0010130U
#define SEV_SEV_STATUS_SEV (1ULL << 0)
#define SEV_SEV_STATUS_ES (1ULL << 1)
#define SEV_SEV_STATUS_SNP (1ULL << 2)

/* CPUID leaf describing memory encryption; EBX[5:0] is the C-bit position. */
#define SEV_CPUID_MEM_ENCRYPT 0x8000001FU

/* The COM1 serial port, for programs that talk to the "UART" directly. */
#define SEV_SERIAL_PORT 0x3F8

/* ------------------------------------------------------------------------ */
/* Boot information page                                                     */
/* ------------------------------------------------------------------------ */

#define SEV_BOOTINFO_MAGIC "SEVSIMBI"

/* Guest memory mode, as in sev_bootinfo.mode. */
#define SEV_MODE_NONE 0
#define SEV_MODE_SEV 1
#define SEV_MODE_SEV_ES 2
#define SEV_MODE_SNP 3

/* Filled in by the VMM at guest address 0x1000 and measured at launch; read-only. */
struct sev_bootinfo {
    char magic[8];        /* "SEVSIMBI", not NUL terminated */
    uint64_t ram_size;    /* bytes of guest RAM */
    uint64_t nvcpus;      /* number of vCPUs */
    uint64_t heap_start;  /* first free byte after the image (page aligned) */
    uint64_t heap_end;    /* end of the free region */
    uint64_t mode;        /* SEV_MODE_* */
    uint64_t secret_gpa;  /* the launch-secret page (private, measured), or 0 */
    uint64_t secret_size; /* its size in bytes, or 0 */
};

_Static_assert(offsetof(struct sev_bootinfo, secret_gpa) == 0x30, "boot-info layout");
_Static_assert(sizeof(struct sev_bootinfo) == 0x40, "boot-info layout");

#define SEV_BOOTINFO ((const volatile struct sev_bootinfo *)0x1000)

/* The guest owner's secret, which the Secure Processor wrote into the secret page with
 * LAUNCH_SECRET after the owner checked the launch measurement.  The page holds a
 * little-endian u32 length and then the data.  Returns the data and sets *len, or
 * returns NULL with *len = 0 when no secret was injected.  The page is private: the
 * hypervisor only ever sees its ciphertext. */
static inline const void *sev_secret(size_t *len)
{
    const volatile struct sev_bootinfo *bi = SEV_BOOTINFO;
    const volatile uint32_t *page = (const volatile uint32_t *)(uintptr_t)bi->secret_gpa;
    size_t n = page && bi->secret_size >= 4 ? page[0] : 0;

    if (n == 0 || n > bi->secret_size - 4) {
        *len = 0;
        return NULL;
    }
    *len = n;
    return (const void *)(page + 1);
}

/* Linker-script symbols: end of .bss, page aligned (the heap starts here). */
extern char _end[];

/* ------------------------------------------------------------------------ */
/* Raw system calls                                                          */
/* ------------------------------------------------------------------------ */

static inline long sev_syscall0(long nr)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr) : "rcx", "r11", "memory");
    return ret;
}

static inline long sev_syscall1(long nr, long a0)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a0) : "rcx", "r11", "memory");
    return ret;
}

static inline long sev_syscall2(long nr, long a0, long a1)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a0), "S"(a1)
                     : "rcx", "r11", "memory");
    return ret;
}

static inline long sev_syscall3(long nr, long a0, long a1, long a2)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a0), "S"(a1), "d"(a2)
                     : "rcx", "r11", "memory");
    return ret;
}

static inline long sev_syscall5(long nr, long a0, long a1, long a2, long a3, long a4)
{
    long ret;
    register long r10 __asm__("r10") = a3;
    register long r8 __asm__("r8") = a4;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a0), "S"(a1), "d"(a2), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return ret;
}

/* ------------------------------------------------------------------------ */
/* System-call wrappers                                                      */
/* ------------------------------------------------------------------------ */

/* Write len bytes to the console; returns len or a negative errno. */
static inline long sev_write(const void *buf, size_t len)
{
    return sev_syscall2(SYS_WRITE, (long)buf, (long)len);
}

/* Terminate the whole guest with an exit code. */
static inline SEV_NORETURN void sev_exit(int code)
{
    sev_syscall1(SYS_EXIT, code);
    __builtin_unreachable();
}

/* Make npages pages at addr (page aligned) shared with the hypervisor.
 * Their contents are undefined afterwards: write them again. */
static inline long sev_set_shared(void *addr, size_t npages)
{
    return sev_syscall2(SYS_SET_SHARED, (long)addr, (long)npages);
}

/* Make npages shared pages at addr private again; contents undefined afterwards. */
static inline long sev_set_private(void *addr, size_t npages)
{
    return sev_syscall2(SYS_SET_PRIVATE, (long)addr, (long)npages);
}

/* The SEV_STATUS MSR as the guest kernel read it (SEV_SEV_STATUS_* bits). */
static inline uint64_t sev_status(void)
{
    return (uint64_t)sev_syscall0(SYS_SEV_STATUS);
}

static inline unsigned sev_vcpu_index(void)
{
    return (unsigned)((uint64_t)sev_syscall0(SYS_VCPU_INFO) & 0xFFFFU);
}

/* SEV-SNP: the VMPL this vCPU runs at (0 for every vCPU the VM booted with). */
static inline unsigned sev_vmpl(void)
{
    return (unsigned)(((uint64_t)sev_syscall0(SYS_VCPU_INFO) >> 16) & 0xFFU);
}

static inline unsigned sev_vcpu_count(void)
{
    return (unsigned)((uint64_t)sev_syscall0(SYS_VCPU_INFO) >> 32);
}

/* Defined in crt0.S: entered with RDI = arg, RSI = fn; calls fn(arg), then halts. */
void __sev_ap_trampoline(void);

/* Start application processor `index` running fn(arg) on the stack whose top
 * is stack_top.  When fn returns the vCPU halts.  Returns 0 or -SEV_EINVAL. */
static inline long sev_vcpu_start(unsigned index, void (*fn)(void *), void *arg,
                                  void *stack_top)
{
    return sev_syscall5(SYS_VCPU_START, (long)index, (long)&__sev_ap_trampoline, (long)arg,
                        (long)fn, (long)stack_top);
}

/* RMP permission bits a VMPL gives a less privileged VMPL (RMPADJUST). */
#define SEV_RMP_READ 1U
#define SEV_RMP_WRITE 2U
#define SEV_RMP_EXEC_USER 4U
#define SEV_RMP_EXEC_SUPER 8U /* sevsim's guests run at CPL 0: what lets them fetch */

/* SEV-SNP: give VMPL `vmpl` (below the caller's) `perms` on the npages pages at
 * page-aligned `addr` (the program's own memory); never more than the caller
 * holds.  Returns 0, -SEV_EINVAL, -SEV_EPERM or -SEV_ENODEV outside SNP. */
static inline long sev_rmpadjust(void *addr, size_t npages, unsigned vmpl, unsigned perms)
{
    return sev_syscall5(SYS_RMPADJUST, (long)addr, (long)npages, (long)vmpl, (long)perms, 0);
}

/* SEV-SNP, VMPL0 only: run fn(arg) at VMPL `vmpl` (1-3) on a new vCPU, on the stack
 * whose top is stack_top, as an SVSM starts the OS below it.  That VMPL sees only
 * the pages given to it with sev_rmpadjust (its code and stack included) and asks
 * for reports with its own VMPCK.  Returns the new vCPU's index or -SEV_E*. */
static inline long sev_vmpl_start(unsigned vmpl, void (*fn)(void *), void *arg,
                                  void *stack_top)
{
    return sev_syscall5(SYS_VMPL_START, (long)vmpl, (long)&__sev_ap_trampoline, (long)arg,
                        (long)fn, (long)stack_top);
}

/* SEV-SNP: an ATTESTATION_REPORT (SEV_SNP_REPORT_SIZE bytes into `report`) for the
 * caller's VMPL carrying the 64 bytes at `report_data`, signed by the chip's VCEK.  Returns 0,
 * -SEV_ENODEV outside SNP, or -SEV_EIO (after which the kernel stops using that VMPCK). */
static inline long sev_snp_report(const void *report_data, void *report)
{
    return sev_syscall2(SYS_SNP_REPORT, (long)report_data, (long)report);
}

/* The same, plus the host's certificate table (VCEK, ASK, ARK) into `certs`, whose
 * size is *certs_len.  Returns the table's size (also in *certs_len), or -SEV_ENOSPC
 * with the size needed in *certs_len, -SEV_ENODEV or -SEV_EIO. */
static inline long sev_snp_ext_report(const void *report_data, void *report, void *certs,
                                      uint64_t *certs_len)
{
    return sev_syscall5(SYS_SNP_EXT_REPORT, (long)report_data, (long)report, (long)certs,
                        (long)certs_len, 0);
}

/* A key derived by the Secure Processor from the MSG_KEY_REQ at `key_request`
 * (SEV_SNP_KEY_REQ_SIZE bytes) into `key` (SEV_SNP_KEY_SIZE bytes).  0 or -errno. */
static inline long sev_snp_derived_key(const void *key_request, void *key)
{
    return sev_syscall2(SYS_SNP_DERIVED_KEY, (long)key_request, (long)key);
}

/* configfs-tsm attestation reports, shaped as Linux's /sys/kernel/config/tsm/report
 * (Documentation/ABI/testing/configfs-tsm).  Make an entry with
 * sev_tsm_mkdir(SEV_TSM_REPORT_DIR "/r0"), write up to 64 bytes of REPORT_DATA to its
 * "inblob" and optionally a VMPL ("0".."3", no lower than "privlevel_floor") to its
 * "privlevel", then read "outblob" (the SEV_SNP_REPORT_SIZE-byte report) and "auxblob"
 * (the host's certificate table).  Every write bumps "generation"; reading the blobs asks
 * the Secure Processor again only if an input changed since the last report, so read
 * "generation" before and after to be sure nobody wrote in between.  Read-only attributes:
 * outblob, auxblob, generation, provider ("sev_guest\n"), privlevel_floor (the caller's
 * VMPL); write-only: inblob, privlevel.  Each VMPL has its own entries, at most 4.
 * Paths are absolute and canonical.  Errors (negated): ENOENT (no such entry, attribute
 * or path), EEXIST (mkdir twice), EACCES (reading a write-only attribute or the reverse),
 * EFBIG (inblob over 64 bytes), EINVAL (privlevel out of range or below the floor, blobs
 * read before inblob was written, a non-canonical path), ENXIO (mkdir outside SEV-SNP),
 * ENOSPC (no free entry), EIO (the report request failed). */
#define SEV_TSM_REPORT_DIR "/sys/kernel/config/tsm/report"

/* mkdir(2) of a report entry; 0 or -errno. */
static inline long sev_tsm_mkdir(const char *path)
{
    return sev_syscall1(SYS_TSM_MKDIR, (long)path);
}

/* rmdir(2) of a report entry; 0 or -errno. */
static inline long sev_tsm_rmdir(const char *path)
{
    return sev_syscall1(SYS_TSM_RMDIR, (long)path);
}

/* Write an attribute whole (inblob, privlevel).  Returns len or -errno. */
static inline long sev_tsm_write(const char *path, const void *buf, size_t len)
{
    return sev_syscall3(SYS_TSM_WRITE, (long)path, (long)buf, (long)len);
}

/* Read an attribute from its start: up to len bytes into buf.  Returns the bytes read
 * (fewer than len only at the attribute's end) or -errno. */
static inline long sev_tsm_read(const char *path, void *buf, size_t len)
{
    return sev_syscall3(SYS_TSM_READ, (long)path, (long)buf, (long)len);
}

/* Turn guest-kernel hardening options on (SEV_KOPT_*), for good: a program built to run
 * hardened calls this first.  Returns the options now in effect, or -SEV_EINVAL. */
static inline long sev_kernel_options(unsigned long options)
{
    return sev_syscall1(SYS_KERNEL_OPTIONS, (long)options);
}

/* Write page-table attribute bits for npages pages from addr (page aligned, past the
 * kernel's area), as early boot firmware does with the encryption mask it computed from
 * CPUID Fn8000_001F EBX[5:0]: the MMU decides what they mean.  0 or -SEV_EINVAL. */
static inline long sev_set_pte_attrs(void *addr, size_t npages, uint64_t attrs)
{
    return sev_syscall3(SYS_SET_PTE_ATTRS, (long)addr, (long)npages, (long)attrs);
}

/* Up to len bytes (at most a page) the VMM offers as input; untrusted.  Returns the count. */
static inline long sev_host_input(void *buf, size_t len)
{
    return sev_syscall2(SYS_HOST_INPUT, (long)buf, (long)len);
}

/* Hand the VMM one public blob (it collects them in order).  Returns len or -errno. */
static inline long sev_host_output(const void *buf, size_t len)
{
    return sev_syscall2(SYS_HOST_OUTPUT, (long)buf, (long)len);
}

/* SEV-SNP, VMPL0: fetch a secret from a key broker (Trustee's KBS protocol) into buf.
 * The guest kernel attests over the VMM's virtual NIC (`sevsim run --kbs URL`): it makes an
 * ephemeral EC P-256 key pair in its private memory, binds the KBS's nonce and the public
 * key into REPORT_DATA, posts the report, and opens the resource's JWE straight into buf.
 * `path` is "repository/type/tag".  buf must be private memory (the kernel never puts a
 * secret where the host reads).  Returns the secret's length, or -errno: SEV_EINVAL (a bad
 * path), SEV_EPERM (buf is shared), SEV_ENOSPC (the secret is longer than len; nothing is
 * copied), SEV_ENODEV (no NIC, or not SEV-SNP), SEV_ECONNREFUSED (no connection to the
 * KBS), SEV_ETIMEDOUT, SEV_EPROTO (a malformed answer), SEV_EACCES (the KBS refused: the
 * attestation or the resource policy failed), SEV_ENOENT (no such resource), SEV_EIO (no
 * report). */
static inline long sev_kbs_get_resource(const char *path, void *buf, size_t len)
{
    return sev_syscall3(SYS_KBS_RESOURCE, (long)path, (long)buf, (long)len);
}

/* ------------------------------------------------------------------------ */
/* Boot data files (`sevsim run --boot-file`), as GRUB loads an initrd        */
/* ------------------------------------------------------------------------ */

#define SEV_BOOT_FILES_MAX 16          /* files a VM boots with */
#define SEV_BOOT_FILE_SIZE_MAX 1048576 /* bytes in one (1 MiB) */
#define SEV_BOOT_FILE_NAME_MAX 129     /* a name with its NUL */
/* Boot data file `index` (0, 1, ... in the order the host gave them): its name with a NUL
 * into name, its bytes into data.  The kernel read them once at boot into its private memory
 * and, with a vTPM, measured exactly these bytes into PCR 9.  Returns the data's length, or
 * -SEV_ENOENT past the last file, -SEV_ENOSPC (nothing copied) when either does not fit. */
static inline long sev_boot_file(unsigned long index, char *name, size_t name_cap, void *data,
                                 size_t data_cap)
{
    return sev_syscall5(SYS_BOOT_FILE, (long)index, (long)name, (long)name_cap, (long)data,
                        (long)data_cap);
}

/* ------------------------------------------------------------------------ */
/* The vTPM (`sevsim run --vtpm`): TPM 2.0 commands through the guest kernel  */
/* ------------------------------------------------------------------------ */

#define SEV_TPM_BUFFER_SIZE 4096 /* the longest command or response */
#define SEV_TPM_ALG_SHA256 0x000B
#define SEV_TPM_ALG_SHA384 0x000C
/* The helpers below return -errno for the kernel's refusals and -(SEV_TPM_RC_BASE + rc) when
 * the TPM answers with a non-zero TPM_RC (SEV_TPM_RC(ret) recovers it). */
#define SEV_TPM_RC_BASE 0x10000L
#define SEV_TPM_IS_RC(ret) ((ret) <= -SEV_TPM_RC_BASE)
#define SEV_TPM_RC(ret) ((uint32_t)(-(ret) - SEV_TPM_RC_BASE))

/* VMPL0, with a vTPM: send one whole TPM 2.0 command (len bytes; its header's commandSize
 * must say len) and put the response in rsp.  Returns the response's length, or -errno:
 * SEV_EINVAL (len and the header disagree, or more than SEV_TPM_BUFFER_SIZE), SEV_ENOSPC
 * (the response is longer than cap; the TPM ran the command), SEV_ENODEV (no vTPM),
 * SEV_EIO (the VMM refused).  The host sees the command and the response. */
static inline long sev_tpm_transmit(const void *cmd, size_t len, void *rsp, size_t cap)
{
    return sev_syscall5(SYS_TPM_TRANSMIT, (long)cmd, (long)len, (long)rsp, (long)cap, 0);
}

/* The TCG crypto-agile event log of the measured boot (SHA-256 and SHA-384 banks) into buf.
 * Returns its length, or -SEV_ENOSPC (nothing copied) / -SEV_ENODEV (no vTPM). */
static inline long sev_tpm_event_log(void *buf, size_t cap)
{
    return sev_syscall2(SYS_TPM_EVENT_LOG, (long)buf, (long)cap);
}

/* One bank of a PCR selection: a hash algorithm and a bitmap of PCRs 0..23. */
struct sev_tpm_bank {
    uint16_t alg;
    uint32_t pcrs;
};

/* TPM2_PCR_Extend of one bank of PCR `pcr` with `digest` (32 bytes for SHA-256, 48 for
 * SHA-384).  Returns 0. */
long sev_tpm_pcr_extend(unsigned pcr, uint16_t alg, const void *digest);
/* TPM2_PCR_Read of one PCR in one bank into digest.  Returns the digest's length, or
 * -SEV_ENOENT when the TPM has no such bank. */
long sev_tpm_pcr_read(unsigned pcr, uint16_t alg, void *digest, size_t cap);
/* TPM2_CreatePrimary of an attestation key in the endorsement hierarchy: ECC P-256,
 * restricted, ECDSA-SHA256.  *handle gets its transient handle, pub its TPMT_PUBLIC
 * (what a verifier needs).  Returns the TPMT_PUBLIC's length. */
long sev_tpm_create_ak(uint32_t *handle, void *pub, size_t cap);
/* TPM2_Quote with key `ak` over the PCRs of `banks`, qualifyingData = nonce (at most 64
 * bytes).  *attest_len and *sig_len are the buffers' sizes in and the TPMS_ATTEST's and
 * TPMT_SIGNATURE's lengths out.  Returns 0. */
long sev_tpm_quote(uint32_t ak, const void *nonce, size_t nonce_len,
                   const struct sev_tpm_bank *banks, unsigned nbanks, void *attest,
                   size_t *attest_len, void *sig, size_t *sig_len);
/* TPM2_FlushContext: unload a transient object (an AK).  Returns 0. */
long sev_tpm_flush(uint32_t handle);

/* The SNP-bound vTPM: a TPM 2.0 the guest kernel runs at VMPL0 with its state in private
 * memory, which the host can neither read nor forge (SEV-SNP only; VMPL0 callers).
 * sev_vtpm_extend measures len bytes: SHA-256 of them is extended into SHA-256 PCR `pcr`.
 * sev_vtpm_evidence writes the evidence for a 1..64-byte nonce into buf: an SNP report
 * (VMPL0) whose REPORT_DATA is SHA-512(nonce || AK TPMT_PUBLIC), the AK's TPMT_PUBLIC, a
 * quote of the SHA-256 PCRs set in pcr_mask over the same nonce, and their values (layout:
 * sevsim.abi.svsm_vtpm).  Returns 0 / the evidence's size, or -errno: SEV_ENODEV (not
 * SEV-SNP), SEV_EPERM (below VMPL0), SEV_EINVAL (a bad PCR, mask or nonce), SEV_ERANGE (buf
 * too small), SEV_EIO (the TPM or the report failed). */
static inline long sev_vtpm_extend(unsigned pcr, const void *data, size_t len)
{
    return sev_syscall3(SYS_VTPM_EXTEND, (long)pcr, (long)data, (long)len);
}

static inline long sev_vtpm_evidence(const void *nonce, size_t nonce_len, unsigned pcr_mask,
                                     void *buf, size_t len)
{
    return sev_syscall5(SYS_VTPM_EVIDENCE, (long)nonce, (long)nonce_len, (long)pcr_mask,
                        (long)buf, (long)len);
}

/* The event log of the boot the kernel measured into the SNP-bound vTPM before the program
 * ran (GCE's events, as sev_tpm_event_log's: the same log when the VM has both vTPMs) into
 * buf. It is public: hand it to the relying party with the evidence.  Returns its length, or
 * -SEV_ENOSPC (nothing copied) / -SEV_ENODEV (not SEV-SNP) / -SEV_EPERM (below VMPL0). */
static inline long sev_vtpm_event_log(void *buf, size_t cap)
{
    return sev_syscall2(SYS_VTPM_EVENT_LOG, (long)buf, (long)cap);
}

/* Window pages: guest-virtual pages above the program's memory that the process on one
 * vCPU points at its own pages, as a page table does (SEV_WINDOW_PAGES of them). */
#define SEV_WINDOW_BASE 0x7F0000000000UL
#define SEV_WINDOW_PAGES 16

/* Point the window page `window` (page aligned, from SEV_WINDOW_BASE) at the program's
 * private page `page`, for the calling vCPU.  Returns 0 or -SEV_EINVAL. */
static inline long sev_map_window(void *window, void *page)
{
    return sev_syscall2(SYS_MAP_WINDOW, (long)window, (long)page);
}

/* Stop the calling vCPU for good. */
static inline SEV_NORETURN void sev_vcpu_halt(void)
{
    sev_syscall0(SYS_VCPU_HALT);
    __builtin_unreachable();
}

/* ------------------------------------------------------------------------ */
/* Instructions that exit to the hypervisor                                  */
/* ------------------------------------------------------------------------ */

/* regs[0..3] = EAX, EBX, ECX, EDX. */
static inline void sev_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t regs[4])
{
    uint32_t a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(subleaf));
    regs[0] = a;
    regs[1] = b;
    regs[2] = c;
    regs[3] = d;
}

static inline uint8_t sev_inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %w1, %b0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}

static inline void sev_outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %b0, %w1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint16_t sev_inw(uint16_t port)
{
    uint16_t v;
    __asm__ volatile("inw %w1, %w0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}

static inline void sev_outw(uint16_t port, uint16_t v)
{
    __asm__ volatile("outw %w0, %w1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint32_t sev_inl(uint16_t port)
{
    uint32_t v;
    __asm__ volatile("inl %w1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}

static inline void sev_outl(uint16_t port, uint32_t v)
{
    __asm__ volatile("outl %0, %w1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint64_t sev_rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr) : "memory");
    return ((uint64_t)hi << 32) | lo;
}

static inline void sev_wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr"
                     :
                     : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32))
                     : "memory");
}

/* Hypercall: RAX = nr, RBX/RCX/RDX = arguments, result in RAX.  RBX is
 * callee-saved, so it is an in/out operand: the compiler then saves and
 * restores it around the call instead of us clobbering it behind its back. */
static inline uint64_t sev_vmmcall(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2)
{
    uint64_t ret = nr;
    __asm__ volatile("vmmcall" : "+a"(ret), "+b"(a0), "+c"(a1), "+d"(a2) : : "memory");
    return ret;
}

static inline void sev_hlt(void)
{
    __asm__ volatile("hlt" : : : "memory");
}

static inline void sev_pause(void)
{
    __builtin_ia32_pause();
}

/* ------------------------------------------------------------------------ */
/* Runtime (libsev.c)                                                        */
/* ------------------------------------------------------------------------ */

/* gcc emits calls to these even in freestanding code, so libsev provides them. */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* Console output.  Formats: %s %c %d %i %u %x %X %p %% with optional '-',
 * '0' flags, a width, and the length modifiers l, ll, z (e.g. %08x, %16llx).
 * Return the number of characters produced. */
int sev_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int sev_vprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
/* Like snprintf: always NUL-terminates when size > 0, returns the full length. */
int sev_snprintf(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int sev_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* Write s followed by a newline. */
int sev_puts(const char *s);
/* Write s without a newline. */
int sev_print(const char *s);

#ifdef __cplusplus
}
#endif

#endif /* SEVSIM_H */
