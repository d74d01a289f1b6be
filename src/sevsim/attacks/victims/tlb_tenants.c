/* A9 victim: one VM, two processes, one per vCPU: the service on vCPU 0 and an untrusted
 * tenant job on vCPU 1 (the attacker's unprivileged foothold in the VM, as in the paper).
 * Each points window page 0 of its own address space at a page of its own: the service at
 * its key vault, the tenant at its scratch page. The service stores its 32-byte key through
 * its window; the tenant reports what its scratch page holds (zeros, if isolation holds). */
#include "secret.h"

#define WINDOW ((volatile uint64_t *)SEV_WINDOW_BASE)

volatile uint64_t vault[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;
volatile uint64_t scratch[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;
volatile uint64_t tenant_ready, key_stored, tenant_done;
static unsigned char tenant_stack[16384] SEV_ALIGNED(16);

static void tenant(void *arg)
{
    (void)arg;
    sev_map_window((void *)WINDOW, (void *)scratch);
    WINDOW[8] = 1; /* the tenant works through its window */
    tenant_ready = 1;
    while (!key_stored)
        sev_pause();
    sev_host_output((const void *)scratch, 32);
    tenant_done = 1;
}

int main(void)
{
    if (sev_map_window((void *)WINDOW, (void *)vault) != 0)
        return 1;
    if (sev_vcpu_start(1, tenant, 0, tenant_stack + sizeof tenant_stack) != 0)
        return 2;
    while (!tenant_ready)
        sev_pause();
    plant_secret(WINDOW); /* the service stores its key in its vault, through its window */
    key_stored = 1;
    while (!tenant_done)
        sev_pause();
    uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned i = 0; i < 4; i++)
        h = (h ^ vault[i]) * 0x100000001b3ULL;
    sev_printf("key stored, vault digest %016lx\n", (unsigned long)h);
    return 0;
}
