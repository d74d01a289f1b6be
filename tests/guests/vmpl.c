/*
 * vmpl.c - VMPL0 starts code at VMPL1 and gives it only some of its pages.
 *
 * VMPL0 plants a secret in a page of its own, gives VMPL1 its code (read and
 * supervisor execute), rodata (read), data, bss and stack (read/write) and one
 * page read-only, then starts VMPL1 and halts.  The host's one input byte says
 * what VMPL1 does:
 *   'r'  ask for a report (REPORT_DATA from the rest of the input) and hand it out
 *   's'  read VMPL0's secret page              (must fault)
 *   'w'  write the page it may only read       (must fault)
 *   'x'  nothing: VMPL0 gave its code no execute permission (must fault)
 *   'p'  try what VMPL1 may not: print each result
 */
#include <sevsim.h>

extern char __text_start[], __rodata_start[], __data_start[], _end[];

#define SECRET_PAGE ((volatile char *)(_end + 16 * SEV_PAGE_SIZE))
#define READONLY_PAGE ((volatile char *)(_end + 17 * SEV_PAGE_SIZE))
#define STACK_PAGES 4

static uint8_t input[1 + SEV_SNP_REPORT_DATA_SIZE];
static uint8_t report[SEV_SNP_REPORT_SIZE];
static uint8_t vmpl1_stack[STACK_PAGES * SEV_PAGE_SIZE] __attribute__((aligned(4096)));

static size_t pages(const char *from, const char *to)
{
    return (size_t)(to - from + SEV_PAGE_SIZE - 1) / SEV_PAGE_SIZE;
}

static void at_vmpl1(void *arg)
{
    (void)arg;
    switch (input[0]) {
    case 'r': {
        long rc = sev_snp_report(input + 1, report);
        sev_printf("VMPL%u report rc %ld\n", sev_vmpl(), rc);
        if (rc == 0)
            sev_host_output(report, sizeof report);
        break;
    }
    case 's':
        sev_printf("secret byte %d\n", SECRET_PAGE[0]);
        break;
    case 'w':
        sev_printf("read-only byte %d\n", READONLY_PAGE[0]);
        READONLY_PAGE[0] = 1;
        sev_printf("wrote the read-only page\n");
        break;
    case 'p':
        sev_printf("rmpadjust same VMPL %ld\n",
                   sev_rmpadjust(vmpl1_stack, 1, 1, SEV_RMP_READ));
        sev_printf("rmpadjust more than held %ld\n",
                   sev_rmpadjust((void *)READONLY_PAGE, 1, 2, SEV_RMP_READ | SEV_RMP_WRITE));
        sev_printf("rmpadjust read to VMPL2 %ld\n",
                   sev_rmpadjust((void *)READONLY_PAGE, 1, 2, SEV_RMP_READ));
        sev_printf("set shared %ld\n", sev_set_shared((void *)READONLY_PAGE, 1));
        sev_printf("vmpl start %ld\n", sev_vmpl_start(2, at_vmpl1, 0, vmpl1_stack));
        break;
    }
    sev_exit(0);
}

int main(void)
{
    if (sev_host_input(input, sizeof input) < 1)
        return 1;
    for (int i = 0; i < 16; i++)
        SECRET_PAGE[i] = "VMPL0-ONLY-SECRT"[i];
    READONLY_PAGE[0] = 42;
    unsigned code = input[0] == 'x' ? SEV_RMP_READ : SEV_RMP_READ | SEV_RMP_EXEC_SUPER;
    long rc = sev_rmpadjust(__text_start, pages(__text_start, __rodata_start), 1, code);
    rc |= sev_rmpadjust(__rodata_start, pages(__rodata_start, __data_start), 1, SEV_RMP_READ);
    rc |= sev_rmpadjust(__data_start, pages(__data_start, _end), 1,
                        SEV_RMP_READ | SEV_RMP_WRITE);
    rc |= sev_rmpadjust((void *)READONLY_PAGE, 1, 1, SEV_RMP_READ);
    long index = sev_vmpl_start(1, at_vmpl1, 0, vmpl1_stack + sizeof vmpl1_stack);
    sev_printf("VMPL%u: rmpadjust %ld, VMPL1 on vCPU %ld\n", sev_vmpl(), rc, index);
    if (rc || index < 0)
        return 2;
    sev_vcpu_halt();
}
