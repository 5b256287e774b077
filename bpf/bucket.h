/* bucket.h - per-CPU token buckets: how the datapath bounds what it makes up itself (its own
 * ICMP answers, events for `eniplane monitor`).
 * Contract: a bucket holds at most `burst` tokens and gains `rate` a second; bucket_take takes one
 * (1) or finds none (0; always 0 at rate 0). The fraction of a token is kept, so the long-run
 * rate is the rate asked for. Each CPU has its own bucket: no atomics.
 */
#ifndef ENIPLANE_BUCKET_H
#define ENIPLANE_BUCKET_H

#include "consts.h"

static __always_inline int bucket_take(__u64 *last_ns, __u32 *tokens_p, __u32 rate, __u32 burst,
                                       __u64 now)
{
    if (!rate)
        return 0;
    __u64 elapsed = now - *last_ns;
    __u32 tokens = *tokens_p;
    if (elapsed >= NSEC_PER_SEC) {
        tokens = burst;
        *last_ns = now;
    } else {
        __u64 add = elapsed * rate / NSEC_PER_SEC; /* < 2^62: elapsed < 1 s, rate < 2^32 */
        if (add) {
            tokens = tokens + add > burst ? burst : tokens + add;
            *last_ns += add * NSEC_PER_SEC / rate;
        }
    }
    if (!tokens) {
        *tokens_p = 0;
        return 0;
    }
    *tokens_p = tokens - 1;
    return 1;
}

#endif
