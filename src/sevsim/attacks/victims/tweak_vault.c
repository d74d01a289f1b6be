/* A victim with an echo service and a role: what SEVurity needs. Each request from the host
 * channel is copied into a private buffer (`vault.echo`) and echoed back on the console, as a
 * network service returns what it received; the session's role sits in the same page. The
 * binary is public: the role constants, the layout and the protocol (a request, then a one-
 * byte acknowledgement before the echo goes out) are known to everyone.
 *
 * The role check is fail-open by default (anything but GUEST is privileged, a common bug);
 * built with FAIL_CLOSED_CHECKS it grants only on ROLE_ADMIN exactly and reports any other
 * value as tampering, as fault-injection-hardened code does. */
#include <sevsim.h>

#define ROLE_GUEST 0x6e6f6d6973616e6fULL /* public constants of the protocol */
#define ROLE_ADMIN 0x21746f6f72212121ULL
#define ROUNDS 2
#define ECHO 16

struct vault {
    volatile uint8_t echo[64];
    volatile uint64_t role;
    volatile uint64_t role_pad; /* the rest of the role's 16-byte block */
};

struct vault vault SEV_PAGE_ALIGNED;

static int privileged(uint64_t role)
{
#ifdef FAIL_CLOSED_CHECKS
    if (role != ROLE_ADMIN && role != ROLE_GUEST)
        sev_printf("tampering detected\n");
    return role == ROLE_ADMIN;
#else
    return role != ROLE_GUEST;
#endif
}

int main(void)
{
    vault.role = ROLE_GUEST;
    vault.role_pad = 0;
    for (unsigned round = 0; round < ROUNDS; round++) {
        uint8_t request[ECHO] = {0};
        char ack;
        sev_host_input(request, ECHO);
        for (unsigned i = 0; i < ECHO; i++)
            vault.echo[i] = request[i];
        sev_host_input(&ack, 1);
        sev_printf("echo:");
        for (unsigned i = 0; i < ECHO; i++)
            sev_printf(" %02x", vault.echo[i]);
        sev_printf("\n");
    }
    uint64_t role = vault.role;
    sev_printf("role %016lx: access %s\n", (unsigned long)role,
               privileged(role) ? "granted" : "denied");
    return 0;
}
