/* sev_kbs_get_resource's refusals before and after any network traffic: one line per call
 * ("name rc"), then "survived".  A shared buffer is refused (the kernel never puts a secret
 * where the host reads), so is a malformed path; a buffer too small gets -SEV_ENOSPC and
 * nothing; an unknown resource is the KBS's 404. */
#include <sevsim.h>

static uint8_t shared[SEV_PAGE_SIZE] SEV_PAGE_ALIGNED;
static uint8_t small[4];
static uint8_t big[4096];

static void check(const char *name, long got)
{
    sev_printf("%s %ld\n", name, got);
}

int main(void)
{
    check("set_shared", sev_set_shared(shared, 1));
    check("shared", sev_kbs_get_resource("default/key/1", shared, sizeof shared));
    check("path-two-parts", sev_kbs_get_resource("default/key", big, sizeof big));
    check("path-dotdot", sev_kbs_get_resource("default/../1", big, sizeof big));
    check("path-empty", sev_kbs_get_resource("default//1", big, sizeof big));
    check("small", sev_kbs_get_resource("default/key/1", small, sizeof small));
    for (size_t i = 0; i < sizeof small; i++)
        if (small[i])
            check("small-touched", i);
    check("unknown", sev_kbs_get_resource("default/key/none", big, sizeof big));
    check("good", sev_kbs_get_resource("default/key/1", big, sizeof big));
    sev_printf("survived\n");
    return 0;
}
