/* A guest that never stops: it loops on console writes of WRITE_SIZE bytes, so its time goes
 * to system calls (the guest kernel and the hypervisor) rather than to its own code. */
#include <sevsim.h>

#ifndef WRITE_SIZE
#define WRITE_SIZE 4096
#endif

static char buf[WRITE_SIZE];

int main(void)
{
    for (uint64_t i = 0; i < WRITE_SIZE; i++)
        buf[i] = (char)('a' + i % 26);
    for (;;)
        sev_write(buf, WRITE_SIZE);
}
