/* The victim's secret: the lab compiles each victim with four 64-bit words of its own as
 * SECRET_0..3, the stand-in for a key the guest would fetch at run time, and judges an attack
 * by whether these words leak. */
#ifndef VICTIM_SECRET_H
#define VICTIM_SECRET_H

#include <sevsim.h>

#define SECRET_WORDS 4

/* Store the secret's words at `dst` (volatile: the stores are the point, keep them all). */
static inline __attribute__((always_inline)) void plant_secret(volatile uint64_t *dst)
{
    dst[0] = SECRET_0;
    dst[1] = SECRET_1;
    dst[2] = SECRET_2;
    dst[3] = SECRET_3;
}

#endif
