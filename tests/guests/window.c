/* Prints the first 32 bytes of a page-aligned window; the hypervisor may map anything there. */
#include <sevsim.h>

volatile unsigned char window[4096] SEV_PAGE_ALIGNED = {1};

int main(void)
{
    sev_printf("window at 0x%llx:", (unsigned long long)(uintptr_t)window);
    for (int i = 0; i < 32; i++)
        sev_printf(" %02x", (unsigned)window[i]);
    sev_printf("\n");
    return 0;
}
