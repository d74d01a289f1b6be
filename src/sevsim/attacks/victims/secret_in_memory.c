/* A victim holding a 32-byte secret in private memory: it receives the secret (SECRET_0..3,
 * the lab's stand-in for a key the guest fetched at run time), keeps it in `secret`, uses it
 * (a hash to the console, so the stores cannot be optimised away) and halts with the secret
 * still in memory, where the host may look for it. */
#include "secret.h"

volatile uint64_t secret[4] SEV_PAGE_ALIGNED;

int main(void)
{
    plant_secret(secret);
    uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned i = 0; i < 4; i++)
        h = (h ^ secret[i]) * 0x100000001b3ULL;
    sev_printf("secret in place, digest %016lx\n", (unsigned long)h);
    return 0;
}
