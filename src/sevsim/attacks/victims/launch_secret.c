/* A victim that receives its secret the legacy SEV way: the guest owner checks the launch
 * measurement and only then sends the secret, wrapped for this platform's PDH, which the
 * firmware writes into the secret page (LAUNCH_SECRET). The program copies it into private
 * memory and uses it (a hash on the console). */
#include <sevsim.h>

static volatile uint8_t key[64];

int main(void)
{
    size_t len = 0;
    const volatile uint8_t *secret = sev_secret(&len);
    if (secret == NULL || len > sizeof(key)) {
        sev_printf("no launch secret\n");
        return 1;
    }
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        key[i] = secret[i];
        h = (h ^ key[i]) * 0x100000001b3ULL;
    }
    sev_printf("launch secret of %lu bytes, digest %016lx\n", (unsigned long)len,
               (unsigned long)h);
    return 0;
}
