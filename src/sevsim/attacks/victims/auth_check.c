/* Heckler's target in miniature: a login check whose decision is the return value of
 * `check_password`, alone on its page (as OpenSSH's mm_answer_authpassword is found by its
 * page). The password is derived from the secret, the client's guess is wrong: honestly the
 * victim always answers "access denied". */
#include "secret.h"

volatile uint64_t key[4];
static const char guess[] = "guess";

__attribute__((noinline, aligned(4096))) int check_password(const char *given)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const char *p = given; *p; p++)
        h = (h ^ (uint8_t)*p) * 0x100000001b3ULL;
    return h == (key[0] ^ key[1] ^ key[2] ^ key[3]);
}

__attribute__((noinline, aligned(4096))) int main(void)
{
    plant_secret(key);
    if (check_password(guess))
        sev_printf("access granted\n");
    else
        sev_printf("access denied\n");
    return 0;
}
