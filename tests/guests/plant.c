/* Keeps the first two words of a run-time secret (the page examples/secret.c generates) in
 * callee-saved registers R12 and R13 across three instructions that exit to the hypervisor
 * (OUT to port 0x80, CPUID, VMMCALL), then reports what the registers hold afterwards. A
 * hypervisor that can read registers learns the secret; one that can write them changes the
 * result. Neither word is ever in memory the program shares. */
#include <sevsim.h>

static volatile uint64_t secret_page[SEV_PAGE_SIZE / 8] SEV_PAGE_ALIGNED;

static uint64_t fnv1a(uint64_t h, uint64_t w)
{
    for (unsigned b = 0; b < 8; b++) {
        h ^= (w >> (8 * b)) & 0xFF;
        h *= 0x100000001b3ULL;
    }
    return h;
}

int main(void)
{
    uint64_t x = 0x5EC12E75EED0F00DULL;
    for (unsigned i = 0; i < SEV_PAGE_SIZE / 8; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        secret_page[i] = x * 0x2545F4914F6CDD1DULL;
    }
    uint64_t a = secret_page[0], b = secret_page[1], after_a, after_b;
    __asm__ volatile("mov %[a], %%r12\n\t"
                     "mov %[b], %%r13\n\t"
                     "mov $0x5a, %%eax\n\t"
                     "mov $0x80, %%edx\n\t"
                     "outb %%al, %%dx\n\t"
                     "mov $0x8000001f, %%eax\n\t"
                     "xor %%ecx, %%ecx\n\t"
                     "cpuid\n\t"
                     "mov $0x5e5ec0de, %%eax\n\t"
                     "xor %%ebx, %%ebx\n\t"
                     "xor %%ecx, %%ecx\n\t"
                     "xor %%edx, %%edx\n\t"
                     "xor %%esi, %%esi\n\t"
                     "vmmcall\n\t"
                     "mov %%r12, %[after_a]\n\t"
                     "mov %%r13, %[after_b]"
                     : [after_a] "=r"(after_a), [after_b] "=r"(after_b)
                     : [a] "r"(a), [b] "r"(b)
                     : "rax", "rbx", "rcx", "rdx", "rsi", "r12", "r13", "memory");
    sev_printf("registers kept: %s\n", after_a == a && after_b == b ? "yes" : "no");
    sev_printf("register digest: 0x%016llx\n",
               (unsigned long long)fnv1a(fnv1a(0xcbf29ce484222325ULL, after_a), after_b));
    return 0;
}
