/* Boot data files from C: read each (sev_boot_file) until SEV_ENOENT, print its name, length
 * and FNV-1a hash, and hand the host "name\0data" (sev_host_output) so it can check the bytes
 * are the ones measured.  A too-small buffer must get SEV_ENOSPC.  Exits with the number of
 * files read, or 100 on a failure. */
#include <sevsim.h>

static uint8_t data[65536];
static uint8_t out[SEV_BOOT_FILE_NAME_MAX + sizeof(data)];

int main(void)
{
    char name[SEV_BOOT_FILE_NAME_MAX];
    unsigned long index;
    long len;

    for (index = 0;; index++) {
        len = sev_boot_file(index, name, sizeof(name), data, sizeof(data));
        if (len == -SEV_ENOENT)
            break;
        if (len < 0) {
            sev_printf("boot file %lu: %ld\n", index, len);
            return 100;
        }
        if (len > 0 && sev_boot_file(index, name, sizeof(name), data, (size_t)len - 1) !=
                           -SEV_ENOSPC) {
            sev_printf("boot file %lu: a short buffer was not refused\n", index);
            return 100;
        }
        uint32_t hash = 2166136261U;
        for (long i = 0; i < len; i++)
            hash = (hash ^ data[i]) * 16777619U;
        sev_printf("boot file %lu %s %ld fnv %08x\n", index, name, len, hash);
        size_t name_len = strlen(name) + 1;
        memcpy(out, name, name_len);
        memcpy(out + name_len, data, (size_t)len);
        if (sev_host_output(out, name_len + (size_t)len) < 0)
            return 100;
    }
    sev_printf("boot files: %lu\n", index);
    return (int)index;
}
