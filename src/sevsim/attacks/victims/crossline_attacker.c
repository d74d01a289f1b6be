/* A8: the attacker's own VM, an ordinary guest built like the victim's (same kernel, same
 * memory layout). It says it is ready through the host channel, which shares the same
 * bounce page the victim's kernel shares, so its C-bits match the victim's where the two
 * kernels share pages, then idles; the hypervisor then runs its vCPU with the victim's ASID
 * in the VMCB. */
#include <sevsim.h>

int main(void)
{
    sev_host_output("ready", 5);
    for (;;)
        sev_pause();
}
