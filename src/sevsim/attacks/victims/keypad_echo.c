/* A victim with a low-entropy secret and an echo service. Its 32 secret bytes (SECRET_0..3)
 * sit one per 16-byte record, as a keypad driver keeps one key press per record; then it
 * stores what the network (the host channel) sends into a receive ring of private pages, a
 * page per packet, which the attacker chooses. */
#include <sevsim.h>

#define RING_PAGES 256

struct press {
    uint8_t key;
    uint8_t pad[15];
};

static const uint64_t secret_words[4] = {SECRET_0, SECRET_1, SECRET_2, SECRET_3};
volatile struct press presses[SEV_PAGE_SIZE / sizeof(struct press)] SEV_PAGE_ALIGNED;
uint8_t ring[RING_PAGES][SEV_PAGE_SIZE] SEV_PAGE_ALIGNED;

int main(void)
{
    for (unsigned i = 0; i < 32; i++)
        presses[i].key = (uint8_t)(secret_words[i / 8] >> (8 * (i % 8)));
    unsigned pages = 0;
    while (pages < RING_PAGES && sev_host_input(ring[pages], SEV_PAGE_SIZE) > 0)
        pages++;
    sev_printf("received %u packets\n", pages);
    return 0;
}
