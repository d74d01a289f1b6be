/* A victim whose decision rests on one store (CacheWarp's "Dropforge"): before it reads
 * requests, the guest locks its debug interface (`locked`, alone on its page, is 0 in the
 * launched image), then serves a request only if the interface is unlocked. Honestly it
 * always answers "access denied"; the secret is used so the program is the lab's victim. */
#include "secret.h"

volatile uint64_t locked SEV_PAGE_ALIGNED;
volatile uint64_t key[4];

int main(void)
{
    plant_secret(key);
    locked = 1;
    if (locked)
        sev_printf("access denied\n");
    else
        sev_printf("access granted\n");
    return 0;
}
