/* A5 victim: a service that answers each request from the host with its response page (a
 * static document, public) and keeps a 32-byte secret on another private page. The answer
 * is copied by the program's own code (as a web server copies a file into its socket buffer)
 * into an output buffer that the kernel hands out through its shared bounce page. */
#include "secret.h"

volatile uint64_t secret[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;
volatile char response[SEV_PAGE_SIZE] SEV_PAGE_ALIGNED =
    "HTTP/1.0 200 OK\r\nContent-Length: 14\r\n\r\nhello, world\r\n";

#define REQUEST 8
#define ANSWER 64

int main(void)
{
    plant_secret(secret);
    char request[REQUEST];
    char answer[ANSWER];
    unsigned served = 0;
    while (sev_host_input(request, REQUEST) == REQUEST) {
        for (unsigned i = 0; i < ANSWER; i++)
            answer[i] = response[i];
        sev_host_output(answer, ANSWER);
        served++;
    }
    sev_printf("served %u requests\n", served);
    return 0;
}
