/* A victim guarding a PIN with an attempt counter, as a phone or an HSM does: three wrong
 * guesses and it locks for good. The PIN (10..99) comes from the secret; guesses arrive one
 * per request from the host channel (sev_host_input), which the untrusted host supplies.
 * The counter lives in private memory: rolling its ciphertext back to an earlier state
 * gives the guesser as many tries as it wants. */
#include <sevsim.h>

volatile uint64_t attempts_left SEV_PAGE_ALIGNED;

int main(void)
{
    const uint64_t pin = 10 + SECRET_0 % 90;
    attempts_left = 3;
    for (;;) {
        if (attempts_left == 0) {
            sev_printf("LOCKED OUT\n");
            return 0;
        }
        char buf[8] = {0};
        long got = sev_host_input(buf, sizeof buf - 1);
        if (got <= 0) {
            sev_printf("no more guesses\n");
            return 0;
        }
        uint64_t guess = 0;
        for (long i = 0; i < got && buf[i] >= '0' && buf[i] <= '9'; i++)
            guess = guess * 10 + (uint64_t)(buf[i] - '0');
        if (guess == pin) {
            sev_printf("PIN OK: ACCESS GRANTED\n");
            return 0;
        }
        attempts_left = attempts_left - 1;
    }
}
