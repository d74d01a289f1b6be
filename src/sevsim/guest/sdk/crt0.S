/*
 * crt0.S - entry points of a sevsim guest program.
 *
 * _start: the guest kernel enters here on the boot vCPU with RSP = top of
 * this vCPU's stack and RDI = vCPU index.  The kernel has already zeroed
 * .bss, so nothing is cleared here.  main's return value becomes the exit code.
 *
 * __sev_ap_trampoline: the entry sev_vcpu_start() hands to SYS_VCPU_START.
 * The kernel starts the AP with RDI = arg, RSI = fn, RSP = stack_top; the
 * trampoline calls fn(arg) and then halts the vCPU.
 *
 * A program built with -DSEV_KERNEL_OPTIONS=<SEV_KOPT_* bits> turns those guest-kernel
 * hardening options on before main (and exits with 126 if the kernel refuses them): the
 * options are part of the measured image, so the host cannot take them away.
 */

#define SYS_EXIT 60
#define SYS_VCPU_HALT 105
#define SYS_KERNEL_OPTIONS 117

    .section .text.start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    xorl    %ebp, %ebp              /* outermost frame for debuggers/backtraces */
    andq    $-16, %rsp              /* SysV: RSP % 16 == 0 at the call */
#ifdef SEV_KERNEL_OPTIONS
    movq    %rdi, %r12              /* keep the vCPU index across the system call */
    movl    $SEV_KERNEL_OPTIONS, %edi
    movl    $SYS_KERNEL_OPTIONS, %eax
    syscall
    testq   %rax, %rax
    jns     2f
    movl    $126, %edi
    movl    $SYS_EXIT, %eax
    syscall
2:  movq    %r12, %rdi
#endif
    call    main
    movl    %eax, %edi              /* exit code = main's return value */
    movl    $SYS_EXIT, %eax
    syscall
1:  hlt                             /* SYS_EXIT never returns; never fall through */
    jmp     1b
    .size _start, . - _start

    .text
    .globl __sev_ap_trampoline
    .type __sev_ap_trampoline, @function
__sev_ap_trampoline:
    xorl    %ebp, %ebp
    andq    $-16, %rsp
    call    *%rsi                   /* fn(arg): arg is already in RDI */
    movl    $SYS_VCPU_HALT, %eax
    syscall
1:  hlt
    jmp     1b
    .size __sev_ap_trampoline, . - __sev_ap_trampoline

    /*
     * SDK ABI version word.  It also keeps the RW segment from ever being
     * empty: ld would otherwise emit a zero-sized PT_LOAD at address 0 for
     * programs without .data/.bss.
     */
    .data
    .balign 8
    .globl __sev_sdk_abi_version
    .type __sev_sdk_abi_version, @object
__sev_sdk_abi_version:
    .quad 1
    .size __sev_sdk_abi_version, 8

    /* No executable stack: keeps ld from warning and from marking the image. */
    .section .note.GNU-stack, "", @progbits
