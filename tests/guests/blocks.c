/* Two known 16-byte blocks in a launched (measured) data page; the guest prints what it
 * finds there, so tests can see how host writes of ciphertext decrypt for the guest. */
#include <sevsim.h>

volatile char page[4096] SEV_PAGE_ALIGNED = "BLOCK-ZERO-16-B!BLOCK-ONE--16-B!";

int main(void)
{
    sev_printf("page at 0x%llx\n", (unsigned long long)(uintptr_t)page);
    for (int b = 0; b < 2; b++) {
        sev_printf("block %d:", b);
        for (int i = 0; i < 16; i++)
            sev_printf(" %02x", (unsigned)(unsigned char)page[16 * b + i]);
        sev_printf("\n");
    }
    return 0;
}
