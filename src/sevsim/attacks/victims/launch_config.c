/* A victim whose behaviour rests on data in its measured image: a page of settings (the
 * maintenance shell is off) and a page of lookup data. The guest owner attests the image
 * and trusts what it computes; the program prints whether the maintenance shell is open. */
#include <sevsim.h>

#define SHELL_OFF 0x66666f5f6c6c6568ULL /* "hell_off" */

/* Each table fills its own page, so the two are separate launched pages. */
volatile const uint64_t settings[512] SEV_PAGE_ALIGNED = {SHELL_OFF, 3, 600};
volatile const uint64_t crc_table[512] SEV_PAGE_ALIGNED = {
    0x77073096ee0e612cULL, 0x990951ba076dc419ULL, 0x706af48fe963a535ULL};

int main(void)
{
    uint64_t check = 0;
    for (unsigned i = 0; i < 512; i++)
        check ^= crc_table[i];
    if (settings[0] == SHELL_OFF)
        sev_printf("maintenance shell: closed (%lx)\n", (unsigned long)(check & 0xff));
    else
        sev_printf("maintenance shell: OPEN (%lx)\n", (unsigned long)(check & 0xff));
    return 0;
}
