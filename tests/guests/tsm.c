/*
 * tsm.c - exercises configfs-tsm report entries; the host's first input byte says how:
 *   'c'  caching: outblob twice, auxblob, then privlevel 1 and outblob again (blobs out)
 *   'e'  refusals: each operation's result printed, then a report still works (blob out)
 *   '1'  the same as 'c' at VMPL1, where privlevel 0 is below the floor
 * The rest of the input is the inblob.  Every line is "<what> <result>".
 */
#include <sevsim.h>

#define R0 SEV_TSM_REPORT_DIR "/r0"

extern char __text_start[], __rodata_start[], __data_start[], _end[];

static uint8_t input[1 + SEV_SNP_REPORT_DATA_SIZE + 1];
static uint8_t blob[4 * SEV_PAGE_SIZE];
static char text[64];
static uint8_t vmpl1_stack[4 * SEV_PAGE_SIZE] __attribute__((aligned(4096)));

static void show(const char *what, const char *path)
{
    long n = sev_tsm_read(path, text, sizeof text - 1);
    text[n > 0 ? n : 0] = '\0';
    if (n > 0 && text[n - 1] == '\n')
        text[n - 1] = '\0';
    sev_printf("%s %s\n", what, n >= 0 ? text : "error");
}

static void blob_out(const char *what, const char *path)
{
    long n = sev_tsm_read(path, blob, sizeof blob);
    sev_printf("%s %ld\n", what, n);
    if (n > 0)
        sev_host_output(blob, (size_t)n);
}

static void caching(void)
{
    sev_printf("mkdir %ld\n", sev_tsm_mkdir(R0));
    show("provider", R0 "/provider");
    show("floor", R0 "/privlevel_floor");
    show("generation", R0 "/generation");
    sev_printf("inblob %ld\n", sev_tsm_write(R0 "/inblob", input + 1, 64));
    show("generation", R0 "/generation");
    blob_out("outblob", R0 "/outblob");
    blob_out("outblob", R0 "/outblob");
    blob_out("auxblob", R0 "/auxblob");
    sev_printf("privlevel 0 %ld\n", sev_tsm_write(R0 "/privlevel", "0\n", 2));
    show("generation", R0 "/generation");
    sev_printf("privlevel 2 %ld\n", sev_tsm_write(R0 "/privlevel", "2\n", 2));
    show("generation", R0 "/generation");
    blob_out("outblob", R0 "/outblob");
}

static void refusals(void)
{
    sev_printf("mkdir %ld\n", sev_tsm_mkdir(R0));
    sev_printf("mkdir again %ld\n", sev_tsm_mkdir(R0));
    sev_printf("outblob before inblob %ld\n", sev_tsm_read(R0 "/outblob", blob, sizeof blob));
    sev_printf("inblob 65 %ld\n", sev_tsm_write(R0 "/inblob", input + 1, 65));
    sev_printf("privlevel 4 %ld\n", sev_tsm_write(R0 "/privlevel", "4", 1));
    sev_printf("privlevel x %ld\n", sev_tsm_write(R0 "/privlevel", "x", 1));
    sev_printf("unknown entry %ld\n", sev_tsm_write(SEV_TSM_REPORT_DIR "/r1/inblob", "a", 1));
    sev_printf("unknown attribute %ld\n", sev_tsm_read(R0 "/nonsense", blob, 8));
    sev_printf("read inblob %ld\n", sev_tsm_read(R0 "/inblob", blob, 8));
    sev_printf("write outblob %ld\n", sev_tsm_write(R0 "/outblob", "a", 1));
    sev_printf("outside %ld\n", sev_tsm_mkdir("/sys/kernel/config/tsm/other"));
    sev_printf("relative %ld\n", sev_tsm_read("tsm/report/r0/generation", blob, 8));
    sev_printf("dotdot %ld\n", sev_tsm_read(R0 "/../r0/generation", blob, 8));
    sev_printf("double slash %ld\n", sev_tsm_read(SEV_TSM_REPORT_DIR "//r0/generation",
                                                  blob, 8));
    sev_printf("directory %ld\n", sev_tsm_read(R0, blob, 8));
    sev_printf("below attribute %ld\n", sev_tsm_read(R0 "/outblob/x", blob, 8));
    sev_printf("rmdir unknown %ld\n", sev_tsm_rmdir(SEV_TSM_REPORT_DIR "/r1"));
    show("generation", R0 "/generation");
    sev_printf("inblob %ld\n", sev_tsm_write(R0 "/inblob", input + 1, 64));
    blob_out("outblob", R0 "/outblob");
    sev_printf("rmdir %ld\n", sev_tsm_rmdir(R0));
    sev_printf("generation after rmdir %ld\n", sev_tsm_read(R0 "/generation", blob, 8));
}

static void at_vmpl1(void *arg)
{
    (void)arg;
    caching();
    sev_exit(0);
}

static size_t pages(const char *from, const char *to)
{
    return (size_t)(to - from + SEV_PAGE_SIZE - 1) / SEV_PAGE_SIZE;
}

int main(void)
{
    if (sev_host_input(input, sizeof input) < 1)
        return 1;
    if (input[0] == 'c')
        caching();
    else if (input[0] == 'e')
        refusals();
    else if (input[0] == '1') {
        long rc = sev_rmpadjust(__text_start, pages(__text_start, __rodata_start), 1,
                                SEV_RMP_READ | SEV_RMP_EXEC_SUPER);
        rc |= sev_rmpadjust(__rodata_start, pages(__rodata_start, __data_start), 1,
                            SEV_RMP_READ);
        rc |= sev_rmpadjust(__data_start, pages(__data_start, _end), 1,
                            SEV_RMP_READ | SEV_RMP_WRITE);
        long index = sev_vmpl_start(1, at_vmpl1, 0, vmpl1_stack + sizeof vmpl1_stack);
        if (rc || index < 0)
            return 2;
        sev_vcpu_halt();
    }
    return 0;
}
