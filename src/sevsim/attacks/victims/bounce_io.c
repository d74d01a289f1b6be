/* A6 victim: a block device driven through a bounce page the guest shares with the host (as
 * SWIOTLB does for a virtio disk). "W" writes the private block buffer out (private -> bounce
 * copy), "R" reads the bounce page in (bounce -> private). A 32-byte secret sits on another
 * private page. */
#include "secret.h"

volatile uint64_t secret[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;
volatile char block[SEV_PAGE_SIZE] SEV_PAGE_ALIGNED = "block 0 of /var/log/public.log\n";
volatile char bounce[SEV_PAGE_SIZE] SEV_PAGE_ALIGNED;

#define BLOCK_BYTES 64

int main(void)
{
    plant_secret(secret);
    if (sev_set_shared((void *)bounce, 1) != 0)
        return 1;
    char request;
    unsigned done = 0;
    while (sev_host_input(&request, 1) == 1) {
        if (request == 'W') {
            for (unsigned i = 0; i < BLOCK_BYTES; i++)
                bounce[i] = block[i];
        } else if (request == 'R') {
            for (unsigned i = 0; i < BLOCK_BYTES; i++)
                block[i] = bounce[i];
        }
        sev_host_output("done", 4); /* the completion the device model waits for */
        done++;
    }
    sev_printf("%u block requests\n", done);
    return 0;
}
