/* eniplane.c - the node's two XDP programs.
 *
 * xdp_fabric (on the fabric interface): tunnel packets from registered workers are decapsulated,
 *   checked against the ENI's security groups when they open a flow, source-NATed onto the ENI's
 *   address and a port of the flow's own, and redirected to the VPC-side interface. ARP inside the
 *   tunnel is answered as the environments' gateway. Anything that is not tunnel traffic for this
 *   node goes to the kernel untouched.
 * xdp_vpc (on each VPC-side interface): replies to an ENI address are translated back with the
 *   flow's entry (one per flow, keyed by the VPC's view of it), encapsulated in the tunnel type
 *   and VNI the flow came with, and redirected to the worker that opened the flow. ARP for ENI
 *   addresses is answered. Unsolicited packets to an ENI are dropped; packets for other
 *   addresses go to the kernel.
 *
 * Nothing here consults the kernel's routing table: VPCs overlap, so the VPC is always known from
 * the ENI (forward) or the ingress interface (return). Every program ends in one record() call.
 */
#include <uapi/linux/bpf.h>
#include "consts.h"
#include "types.h"
#include "stats.h"
#include "maps.h"
#include "parse.h"
#include "csum.h"
#include "bucket.h"
#include "order.h"

static __always_inline void count(struct stats *s, __u32 id)
{
    if (s && id < STAT__MAX)
        ((__u64 *)s)[id]++;
}

/* The counter for an L4 header that parse_l4 refused; `truncated` differs per side. */
static __always_inline __u32 l4_reason(int rc, __u32 truncated)
{
    if (rc == PARSE_ICMP_OTHER)
        return STAT_drop_icmp_unsupported;
    if (rc == PARSE_PROTO_OTHER)
        return STAT_drop_proto_unsupported;
    return truncated;
}

#ifdef ENIPLANE_TEST_HOOKS
/* Test builds only: lets a datapath test change an ENI at the one point a concurrent control
 * plane could, between reading the generation and reading the ENI (tests/datapath). */
struct eni_race_hook {
    __u32 armed;
    __u32 vni;
    struct eni eni;
};
BPF_TABLE_PINNED("array", __u32, struct eni_race_hook, eni_race, 1, PIN_DIR "/eni_race");
static __always_inline void eni_race_point(struct node_cfg *cfg, __u32 vni)
{
    __u32 k = 0;
    struct eni_race_hook *h = eni_race.lookup(&k);
    if (h && h->armed && h->vni == vni) {
        h->armed = 0;
        enis.update(&vni, &h->eni);
        __sync_fetch_and_add(&cfg->eni_gen, 1);
    }
}
/* Test builds only: moves the datapath's clock forward, so that tests see flows expire without
 * waiting for minutes (user space's Datapath.now_ns adds the same shift). */
BPF_TABLE_PINNED("array", __u32, __u64, clock_shift, 1, PIN_DIR "/clock_shift");
static __always_inline __u64 clock_shifted(__u64 ns)
{
    __u32 k = 0;
    __u64 *d = clock_shift.lookup(&k);
    return d ? ns + *d : ns;
}
/* Test builds only: when armed, another CPU's takeover lands between the open path's read of
 * an expired entry and its compare-and-swap (tests/datapath/test_lifecycle.py). */
BPF_TABLE_PINNED("array", __u32, __u32, takeover_race, 1, PIN_DIR "/takeover_race");
static __always_inline void takeover_race_point(struct flow *f, __u64 now)
{
    __u32 k = 0;
    __u32 *armed = takeover_race.lookup(&k);
    if (armed && *armed) {
        *armed = 0;
        f->last_seen_ns = now; /* what the winner's flow_publish leaves */
    }
}
#else
#define eni_race_point(cfg, vni) do { } while (0)
#define clock_shifted(ns) (ns)
#define takeover_race_point(f, now) do { } while (0)
#endif

/* The coarse monotonic time, from this CPU's clock cache (types.h) while the jiffy lasts. A CPU
 * that reads it between a tick's jiffies update and its clock update keeps the previous tick's
 * time for that jiffy: last_seen_ns is exact to within two ticks, as expiry needs no more. */
static __always_inline __u64 coarse_now(void)
{
    __u32 k = 0;
    __u64 j = bpf_jiffies64();
    struct clock_cache *c = clock.lookup(&k);
    if (!c)
        return clock_shifted(bpf_ktime_get_coarse_ns());
    if (c->jiffies != j) {
        c->jiffies = j;
        c->ns = bpf_ktime_get_coarse_ns();
    }
    return clock_shifted(c->ns);
}

/* ---- events: sampled reports of what the programs did, into the `events` ring buffer.
 * Contract: emitted only from record(), each program's one exit, and only for what node_cfg's
 * flags ask (drops, new flows), within a per-CPU token bucket (event_rate, EVENT_BURST): a flood
 * of drops costs a bounded amount. An event over the rate counts event_rate_limited; one the
 * ring buffer has no room for counts event_ring_full. The record is struct event (types.h).
 */
/* One token from this CPU's events bucket. */
static __always_inline int event_token(struct event_cpu *ec, __u32 rate, __u64 now)
{
    return bucket_take(&ec->last_ns, &ec->tokens, rate, EVENT_BURST, now);
}

/* Called by record() for drops and new flows only: the rest of the packets pay the two
 * comparisons that bring them here, never more. `now` is the coarse clock. */
static __always_inline void event_emit(struct xdp_md *ctx, __u64 *counters, __u32 reason,
                                       __u32 kind, __u32 direction, __u64 now)
{
    __u32 k0 = 0;
    struct node_cfg *cfg = config.lookup(&k0);
    if (!cfg)
        return;
    __u32 want = kind == EVENT_K_DROP ? NODE_F_EVENT_DROPS : NODE_F_EVENT_FLOWS;
    if (!(cfg->flags & want))
        return;
    struct event_cpu *ec = event_cpu.lookup(&k0);
    if (!ec)
        return;
    if (!event_token(ec, cfg->event_rate, now)) {
        counters[STAT_event_rate_limited]++;
        return;
    }
    struct event *e = &ec->ev;
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    __u32 len = data_end - data;
    __u32 cap = len < EVENT_SNAP_LEN ? len : EVENT_SNAP_LEN;
    e->ts_ns = now;
    e->ifindex = ctx->ingress_ifindex;
    e->len = len;
    e->reason = reason;
    e->kind = kind;
    e->direction = direction;
    e->cpu = bpf_get_smp_processor_id();
    e->cap_len = 0;
    /* 1..EVENT_SNAP_LEN in a form the verifier can follow (cap is never 0 here) */
    cap = ((cap - 1) & (EVENT_SNAP_LEN - 1)) + 1;
    if (len && !bpf_xdp_load_bytes(ctx, 0, e->data, cap))
        e->cap_len = cap;
    if (events.ringbuf_output(e, sizeof(*e), 0))
        counters[STAT_event_ring_full]++;
}

/* Every program's one exit: counts the action and its reason, and reports a drop or a new flow
 * to `events` when the node asks for it (event_emit). */
static __always_inline int record(struct xdp_md *ctx, struct stats *s, __u32 reason, int action,
                                  __u32 direction)
{
    if (s) {
        __u64 *c = (__u64 *)s;
        if (reason < STAT__MAX)
            c[reason]++;
        if ((__u32)action <= XDP_REDIRECT)
            c[action]++;
        /* `direction` is a constant at each call: xdp_vpc, which opens no flow, is left with
         * the one comparison for drops */
        __u32 kind = (__u32)action <= XDP_DROP ? EVENT_K_DROP
                     : direction == EVENT_DIR_FABRIC && reason == STAT_fwd_new_flow
                       ? EVENT_K_FLOW_START : 0;
        if (kind)
            event_emit(ctx, c, reason, kind, direction, coarse_now());
    }
    return action;
}

static __always_inline struct eni_stats *eni_stats_of(__u32 eni_idx)
{
    return eni_stats.lookup(&eni_idx);
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
    /* A word and a half-word each side (x86 and arm64 load them unaligned at no cost; no
     * caller passes a stack pointer, where the verifier would insist on alignment): a third
     * of the instructions of six byte compares, on every established packet. */
    return ((*(const __u32 *)a ^ *(const __u32 *)b) |
            (*(const __u16 *)(a + 4) ^ *(const __u16 *)(b + 4))) == 0;
}

/* flow_guard (types.h): an insert that could let the LRU evict makes holes possible, until user
 * space recounts after deleting flows. */
static __always_inline void guard_before_insert(struct flow_guard *g)
{
    if (g && !g->holes && (__s64)g->count + 1 >= FLOW_SAFE_ENTRIES) {
        g->holes = 1;
        /* The LRU may evict from now on, which flow_hot's slots would not see: they stop
         * (hot_gen), and none is filled again until user space's recount clears the holes. */
        __u32 k = 0;
        __u32 *hg = hot_gen.lookup(&k);
        order_fence(); /* holes before the new gen: hot_install reads them the other way */
        if (hg)
            __sync_fetch_and_add(hg, 1);
    }
}

/* A flow now sits at position `depth` of its probe: walks with holes must reach that deep. */
static __always_inline void guard_depth(struct flow_guard *g, __u32 depth)
{
    __u64 bit = 1ull << (depth & 31);
    if (g && !(g->depths & bit)) /* set once: an atomic on every insert would bounce the line */
        __sync_fetch_and_or(&g->depths, bit);
}

static __always_inline void guard_count(struct flow_guard *g, __u32 depth)
{
    if (g) {
        __sync_fetch_and_add(&g->count, 1);
        guard_depth(g, depth);
    }
}

static __always_inline __u32 rotl32(__u32 x, int r)
{
    return (x << r) | (x >> (32 - r));
}

/* One word scrambled on its own (murmur3's per-block step): the five words of a flow go
 * through it side by side, so the CPU overlaps them instead of chaining one round on the next. */
static __always_inline __u32 scramble(__u32 k)
{
    k *= 0xCC9E2D51u;
    k = rotl32(k, 15);
    return k * 0x1B873593u;
}

/* Where a flow's port probe starts (RFC 6056, algorithm 3): a keyed hash of everything that
 * names the flow on the environment's side and its destination, so that flows spread over the
 * ENI's range, the port is not guessable from outside, and the forward path finds an established
 * flow's entry again without a second table. Words are taken as loaded, in network order; user
 * space computes the same function (probe.port_hash, proved equal by tests/datapath). */
static __always_inline __u32 port_hash(__u32 secret, ipv4_t worker, __u32 vni, ipv4_t env,
                                       __be16 env_port, ipv4_t remote, __be16 remote_port,
                                       __u8 proto)
{
    __u32 h = secret ^ scramble(worker) ^ rotl32(scramble(vni | (__u32)proto << 24), 7) ^
              rotl32(scramble(env), 13) ^ rotl32(scramble(remote), 19) ^
              rotl32(scramble(((__u32)env_port << 16) | remote_port), 26);
    h ^= h >> 16; /* murmur3's finaliser: every input bit reaches every output bit */
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

/* The i-th port of a probe that starts at `start` within the ENI's range, wrapping around. */
static __always_inline __be16 probe_port(__u32 lo, __u32 range, __u32 start, __u32 i)
{
    /* Wrap without a branch (one would split the verifier's walk of every probe step in two)
     * and without a division: start < range and i < PORT_TRIES, so one subtraction will do. */
    __u32 off = start + i;
    off -= range & (__u32)((__s32)(range - 1 - off) >> 31);
    return bpf_htons((__u16)(lo + off));
}

static __always_inline int flow_owned_by(struct flow *f, ipv4_t worker, __u32 vni, ipv4_t env,
                                         __be16 env_port)
{
    return f->worker == worker && f->vni == vni && f->env_addr == env && f->env_port == env_port;
}

/* ---- Flow lifecycle (types.h: FLOW_S_*) ------------------------------------------------------
 * A flow is live while it has not been idle longer than its timeout and no RST ended it. The
 * kernel alone gives ports back: an entry that is no longer live is reopened in place by its own
 * tuple, or taken over by another tuple's new flow once it has been idle past its timeout and
 * TAKEOVER_GRACE_NS, so correctness never waits for the sweeper (user space), which only removes
 * what nobody took. An entry changes hands by a compare-and-swap of last_seen_ns from the value
 * read to 0: one CPU wins, and 0 reads as "not live" to everyone until the winner has rewritten
 * the entry and stores the new time last (xchg). Readers load last_seen_ns before the fields
 * that name the owner (order_after_load, order.h): a reader that sees the new time sees the new
 * owner. */

/* All ones when cond is non-zero, without a branch (the verifier walks the flow walk's tail
 * once per exit, and branches here would double that). */
static __always_inline __u64 mask_if(__u64 cond)
{
    __u64 m = (__u64)0 - (__u64)(cond != 0);
    asm volatile("" : "+r"(m));
    return m;
}

/* The idle timeout of a flow in ns: established TCP (EST without FIN or RST), transitory TCP,
 * UDP or ICMP. */
static __always_inline __u64 flow_timeout(struct node_cfg *cfg, __u8 proto, __u8 state)
{
    __u64 est = cfg->timeout_tcp_established;
    __u64 trans = cfg->timeout_tcp_transitory;
    __u64 udp = cfg->timeout_udp;
    __u64 icmp = cfg->timeout_icmp;
    __u64 m_est = mask_if((state & (FLOW_S_EST | FLOW_S_FIN_OUT | FLOW_S_FIN_IN | FLOW_S_RST)) ==
                          FLOW_S_EST);
    __u64 tcp = (est & m_est) | (trans & ~m_est);
    __u64 m_tcp = mask_if(proto == IPPROTO_TCP);
    __u64 m_udp = mask_if(proto == IPPROTO_UDP);
    __u64 other = (udp & m_udp) | (icmp & ~m_udp);
    return ((tcp & m_tcp) | (other & ~m_tcp)) * NSEC_PER_SEC;
}

/* Live: seen (0 is an entry changing hands), idle no longer than its timeout, not reset. No
 * timeout is under a second, so a flow seen within one (most packets) needs no more. */
static __always_inline int flow_live(struct node_cfg *cfg, __u8 proto, __u8 state, __u64 seen,
                                     __u64 now)
{
    __s64 idle = (__s64)(now - seen);
    if (!seen || (state & FLOW_S_RST))
        return 0;
    return idle < (__s64)NSEC_PER_SEC || idle <= (__s64)flow_timeout(cfg, proto, state);
}

/* May another tuple take this entry over? Idle past its timeout and the grace (types.h). */
static __always_inline int flow_claimable(struct node_cfg *cfg, __u8 proto, __u8 state,
                                          __u64 seen, __u64 now)
{
    return seen &&
           (__s64)(now - seen) > (__s64)(flow_timeout(cfg, proto, state) + TAKEOVER_GRACE_NS);
}

/* The state bits a packet adds, from the environment (out) or from the VPC (in). Branch-free:
 * TCP flags are 0 for other protocols (parse_l4), which leaves their state at 0. */
static __always_inline __u8 state_bits_out(__u8 fl, __u8 state)
{
    __u8 syn = (fl >> 1) & ~(fl >> 4) & 1;      /* SYN without ACK */
    __u8 est = (fl >> 4) & (state >> 1) & 1;    /* ACK after the SYN+ACK */
    return syn * FLOW_S_SYN | est * FLOW_S_EST | (fl & TH_FIN) * FLOW_S_FIN_OUT |
           ((fl >> 2) & 1) * FLOW_S_RST;
}

static __always_inline __u8 state_bits_in(__u8 fl)
{
    __u8 synack = (fl >> 1) & (fl >> 4) & 1;
    return synack * FLOW_S_SYNACK | (fl & TH_FIN) * FLOW_S_FIN_IN | ((fl >> 2) & 1) * FLOW_S_RST;
}

/* An entry's last_seen_ns, read before any of its other fields (see the lifecycle's comment). */
static __always_inline __u64 flow_seen(struct flow **f)
{
    __u64 seen = *(volatile __u64 *)&(*f)->last_seen_ns;
    order_after_load(*f, seen);
    return seen;
}

/* Has the element `f` that `fk` named, and whose owner the caller just copied, gone to another
 * key? An LRU hash hands an evicted or deleted element to the next insert at once, even while a
 * reader holds it, so the owner copied could be another flow's. Elements go only while
 * flow_guard.holes is set (the LRU may evict; a sweep or flush deletes), so only then does it
 * cost the second lookup. */
static __always_inline int flow_vanished(struct flow_key *fk, struct flow *f)
{
    __u32 k0 = 0;
    struct flow_guard *g = flow_guard.lookup(&k0);
    order_loads(); /* holes after the owner: a delete that follows its setting follows the copy */
    return (!g || *(volatile __u32 *)&g->holes) && flows.lookup(fk) != f;
}

/* Take an entry whose last_seen_ns read `seen`: only one CPU's swap from that value succeeds. */
static __always_inline int flow_claim(struct flow *f, __u64 seen)
{
    return seen && __sync_val_compare_and_swap(&f->last_seen_ns, seen, 0) == seen;
}

/* Rewrite a claimed entry for its new flow, the time last: it makes the entry live again. */
static __always_inline void flow_publish(struct flow *f, struct flow *nf)
{
    f->tx_packets = nf->tx_packets;
    f->tx_bytes = nf->tx_bytes;
    f->rx_packets = 0;
    f->rx_bytes = 0;
    f->worker = nf->worker;
    f->vni = nf->vni;
    f->env_addr = nf->env_addr;
    f->env_port = nf->env_port;
    f->eni_idx = nf->eni_idx;
    mac_copy(f->env_mac, nf->env_mac);
    f->tunnel = nf->tunnel;
    f->state = nf->state;
    __sync_lock_test_and_set(&f->last_seen_ns, nf->last_seen_ns);
}

/* ---- flow_hot (types.h): the sending flows' per-packet state, one line each. ---------------- */

/* The two sets (of HOT_WAYS neighbouring slots each) a flow key's slot may sit in: a
 * multiply-xor hash of the key's four words, keyed by the port secret so that no sender can aim
 * flows at a set, gives the first; a further mix of the same hash the second. A flow takes its
 * first set while it has room and its second when not (types.h: flow_hot). Their twin in user
 * space is probe.hot_sets (tests/datapath/test_flow_hot.py holds them equal). */
static __always_inline void hot_sets(const struct flow_key *fk, __u32 secret, __u32 *s0,
                                     __u32 *s1)
{
    /* The words as memory holds them, put together from the fields: the key was just written
     * field by field, and a word-wide load over those narrower stores would wait for them to
     * reach the cache (no store forwarding across stores), on every packet. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    __u32 w0 = fk->vpc_idx | (__u32)fk->proto << 16 | (__u32)fk->pad << 24;
    __u32 w3 = fk->eni_port | (__u32)fk->remote_port << 16;
#else
    __u32 w0 = (__u32)fk->vpc_idx << 16 | (__u32)fk->proto << 8 | fk->pad;
    __u32 w3 = (__u32)fk->eni_port << 16 | fk->remote_port;
#endif
    __u64 a = (((__u64)(w0 ^ secret) << 32) | fk->eni_addr) * 0x9E3779B97F4A7C15ull;
    __u64 b = (((__u64)fk->remote << 32) | w3) * 0xC2B2AE3D27D4EB4Full;
    __u64 h = a ^ b;
    /* the second from all 64 bits: the low half alone depends on the ENI address and ports only */
    __u64 m = (h ^ (h >> 29)) * 0xBF58476D1CE4E5B9ull;
    *s0 = (__u32)(h >> 32) & (HOT_SLOTS / HOT_WAYS - 1);
    *s1 = (__u32)(m >> 32) & (HOT_SLOTS / HOT_WAYS - 1);
}

static __always_inline int hot_key_is(const struct flow_hot *h, const struct flow_key *fk)
{
    const __u32 *a = (const __u32 *)&h->key, *b = (const __u32 *)fk;
    /* one branch, not four: fewer paths for the verifier to walk in the scans of two sets */
    return !((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]));
}

static __always_inline int hot_owner_is(const struct flow_hot *h, ipv4_t worker, __u32 vni,
                                        ipv4_t env, __be16 env_port)
{
    return h->worker == worker && h->vni == vni && h->env_addr == env && h->env_port == env_port;
}

/* The slot of set `set` that holds `fk`, or NULL. */
static __always_inline struct flow_hot *hot_find_in(const struct flow_key *fk, __u32 set)
{
#pragma unroll
    for (__u32 w = 0; w < HOT_WAYS; w++) {
        __u32 i = set * HOT_WAYS + w;
        struct flow_hot *h = flow_hot.lookup(&i);
        if (h && hot_key_is(h, fk))
            return h;
    }
    return NULL;
}

/* The slot that holds `fk`, or NULL: its first set `s0`, then its second `s1` (hot_install
 * keeps a key in one slot at most). */
static __always_inline struct flow_hot *hot_find_at(const struct flow_key *fk, __u32 s0,
                                                    __u32 s1)
{
    struct flow_hot *h = hot_find_in(fk, s0);
    return h ? h : hot_find_in(fk, s1);
}

/* The same, its sets computed. */
static __always_inline struct flow_hot *hot_find(const struct flow_key *fk, __u32 secret)
{
    __u32 s0, s1;
    hot_sets(fk, secret, &s0, &s1);
    return hot_find_at(fk, s0, s1);
}

/* A slot's last_seen_ns, read before any of its other fields, as flow_seen reads an entry's. */
static __always_inline __u64 hot_time(struct flow_hot **h)
{
    order_loads(); /* after the key the scan matched: a new key must not come with an old time */
    __u64 seen = *(volatile __u64 *)&(*h)->last_seen_ns;
    order_after_load(*h, seen);
    return seen;
}

static __always_inline __u32 hot_gen_now(void)
{
    __u32 k = 0;
    __u32 *g = hot_gen.lookup(&k);
    return g ? *g : 0;
}

/* May a packet use this slot, and only it? The slot must be of this generation, the flow live
 * by the slot's time, and the counters far from wrapping (the packet that would go past folds
 * them into the entry on the long way). */
static __always_inline int hot_usable(struct node_cfg *cfg, const struct flow_hot *h,
                                      __u8 proto, __u32 gen, __u64 seen, __u64 now)
{
    return h->gen == gen && flow_live(cfg, proto, h->state, seen, now) &&
           h->tx_packets < HOT_PACKETS_MAX &&
           h->rx_packets < HOT_PACKETS_MAX && h->tx_bytes < HOT_BYTES_MAX &&
           h->rx_bytes < HOT_BYTES_MAX;
}

/* A flows entry's last_seen_ns as its slot may have moved it on: what every decision on the
 * long way judges by (`seen` is the entry's own, read by flow_seen). */
static __always_inline __u64 hot_seen(const struct flow_key *fk, struct flow *f, __u64 seen,
                                      __u32 secret)
{
    struct flow_hot *h = hot_find(fk, secret);
    if (h && hot_owner_is(h, f->worker, f->vni, f->env_addr, f->env_port)) {
        __u64 hs = h->last_seen_ns;
        if (hs > seen)
            return hs;
    }
    return seen;
}

/* flow_live with the entry's time as its slot may have moved it on. The slot is read only when
 * the entry's own time says the flow is gone (the slot's is never earlier). */
static __always_inline int flow_live_hot(struct node_cfg *cfg, const struct flow_key *fk,
                                         struct flow *f, __u8 state, __u64 seen, __u64 now)
{
    return flow_live(cfg, fk->proto, state, seen, now) ||
           flow_live(cfg, fk->proto, state, hot_seen(fk, f, seen, cfg->port_secret), now);
}

/* flow_claimable, likewise: only an entry that is claimable by its own time can be by its
 * slot's (which is never earlier), so the slot is read only then. */
static __always_inline int flow_claimable_hot(struct node_cfg *cfg, const struct flow_key *fk,
                                              struct flow *f, __u8 state, __u64 seen,
                                              __u64 now)
{
    return flow_claimable(cfg, fk->proto, state, seen, now) &&
           flow_claimable(cfg, fk->proto, state, hot_seen(fk, f, seen, cfg->port_secret), now);
}

/* Add a slot's counters and time to its flows entry (which the caller found for its key). */
static __always_inline void hot_fold(struct flow_hot *h, struct flow *f)
{
    f->tx_packets += h->tx_packets;
    f->tx_bytes += h->tx_bytes;
    f->rx_packets += h->rx_packets;
    f->rx_bytes += h->rx_bytes;
    /* The time by compare-and-swap: a plain store could land on the 0 of a takeover that
     * claimed the entry meanwhile (flow_claim) and make it live while it is rewritten. */
    __u64 hs = h->last_seen_ns;
    __u64 fs = *(volatile __u64 *)&f->last_seen_ns;
    if (fs && hs > fs)
        __sync_val_compare_and_swap(&f->last_seen_ns, fs, hs);
}

/* Take slot `h` for writing: its gen from what it was to HOT_GEN_BUSY (types.h) by a
 * compare-and-swap. Of two CPUs that chose the same slot, one writes it and the other leaves
 * it (its flow stays on the long way for that packet): two writers at once could leave one
 * flow's key with the other's owner, and a reply would go to that owner. No packet uses a busy
 * slot (hot_usable wants the current gen). 0 when the slot is another CPU's now. BPF has no
 * 32-bit compare-and-swap before alu32, so the swap is of the word gen shares with tx_bytes; a
 * counter that moved in between fails it, as a busy slot does. */
static __always_inline int hot_claim(struct flow_hot *h)
{
    __u64 *w = (__u64 *)&h->gen;
    __u64 old = *(volatile __u64 *)w;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    __u32 g = (__u32)old;
    __u64 busy = (old & 0xFFFFFFFF00000000ull) | HOT_GEN_BUSY;
#else
    __u32 g = (__u32)(old >> 32);
    __u64 busy = (old & 0xFFFFFFFFull) | ((__u64)HOT_GEN_BUSY << 32);
#endif
    return g != HOT_GEN_BUSY && __sync_val_compare_and_swap(w, old, busy) == old;
}

/* A slot of set `set` that a flow without one may take: an empty one or one of an old
 * generation (no packet uses it), or (`idle`) one whose flow sent nothing for HOT_IDLE_NS;
 * or NULL. */
static __always_inline struct flow_hot *hot_free_in(__u32 set, int idle, __u32 gen, __u64 now)
{
#pragma unroll
    for (__u32 w = 0; w < HOT_WAYS; w++) {
        __u32 i = set * HOT_WAYS + w;
        struct flow_hot *x = flow_hot.lookup(&i);
        if (!x)
            return NULL;
        if (idle ? x->last_seen_ns + HOT_IDLE_NS < now : !x->key.eni_addr || x->gen != gen)
            return x;
    }
    return NULL;
}

/* The slot a flow without one takes (its set in `*set`), or NULL: a free slot of its first
 * set `s0`, then of its second (a flow keeps to its first set while that has room), then (`idle`)
 * an idle flow's of either, which costs that flow the short way. One kind per scan: tracking
 * both in one pass would have the verifier walk each combination of found and not found. */
static __always_inline struct flow_hot *hot_free(__u32 s0, __u32 s1, __u32 gen, __u64 now,
                                                 int idle, __u32 *set)
{
    __u32 s[2] = {s0, s1};
#pragma unroll
    for (int pass = 0; pass < 2; pass++) {
        if (pass && !idle)
            break;
#pragma unroll
        for (int c = 0; c < 2; c++) {
            struct flow_hot *x = hot_free_in(s[c], pass, gen, now);
            if (x) {
                *set = s[c];
                return x;
            }
        }
    }
    return NULL;
}

/* Both sets of a flow full of sending flows: the slot of one of their sixteen (picked at
 * random) whose other set has a free slot, for the caller to take as it takes an idle one
 * (folding it into its flow's entry first), with its set in `*set`; or NULL. The flow that
 * gives it up finds the free slot on its next packet's long way: one step of cuckoo hashing,
 * each packet of a flow without a slot trying one. At as many sending flows as slots (the
 * default table at 64k flows, the bench's) 1.6% are left on the long way after a second of
 * traffic instead of 7.4% (docs/performance.md, "A move"). The flow is not copied across:
 * a copy could miss a change the long way of another CPU made to the slot meanwhile (a state
 * that a RST closed) and serve it; a slot that changes hands never leaves one behind. */
static __always_inline struct flow_hot *hot_movable(__u32 s0, __u32 s1, __u32 secret,
                                                    __u32 gen, __u64 now, __u32 *set)
{
    __u32 r = bpf_get_prandom_u32();
    __u32 from = r & HOT_WAYS ? s1 : s0;
    __u32 i = from * HOT_WAYS + (r & (HOT_WAYS - 1));
    struct flow_hot *v = flow_hot.lookup(&i);
    if (!v || !v->key.eni_addr)
        return NULL;
    __u32 v0, v1;
    hot_sets(&v->key, secret, &v0, &v1);
    /* a slot placed under another port secret (a test node's) has no other set to go to */
    __u32 to = v0 == from ? v1 : v1 == from ? v0 : from;
    if (to == from || !hot_free_in(to, 0, gen, now))
        return NULL;
    *set = from;
    return v;
}

/* Put flow `f` (key `fk`, its entry just updated on the long way, or just made) into one of its
 * two sets, so that its next packets take the short way. The slot that holds the key already is
 * rewritten, or emptied without `fill` (slots off, or the LRU may evict): every entry made or
 * changed on the long way passes here, so no slot outlives its flow's entry with the key and
 * owner of a new one, and none keeps a state or MAC that changed. Its
 * counters are folded into `f` first when it is this flow's (same owner) and `fresh` is 0;
 * `fresh` (a flow just opened, reopened or taken over) drops what the slot held, which was a
 * flow that is gone. Otherwise an empty slot is taken (the first set's before the second's),
 * or one of an old generation, or (`idle`) one whose flow sent nothing for HOT_IDLE_NS, or
 * (`idle`) one whose flow can move to its other set (hot_movable), after folding it into its
 * own flows entry; otherwise this flow stays on the long way until one of those turns up. */
static __always_inline void hot_install(const struct flow_key *fk, struct flow *f, __u32 secret,
                                        __u32 gen, __u64 now, int fresh, int idle, int fill)
{
    __u32 k0 = 0;
    struct flow_guard *g = flow_guard.lookup(&k0);
    order_loads(); /* holes after the gen the caller read: guard_before_insert sets it first */
    if (!g || g->holes) /* the LRU may evict, unseen by slots: flows stay on the long way */
        fill = 0;
    __u32 s0, s1;
    hot_sets(fk, secret, &s0, &s1);
    struct flow_hot *h = hot_find_at(fk, s0, s1);
    if (h) {
        if (!hot_claim(h))
            return;
        if (!fresh && hot_owner_is(h, f->worker, f->vni, f->env_addr, f->env_port))
            hot_fold(h, f);
        if (!fill) { /* emptied: what it held is in the entry now, or was a gone flow's */
            order_fence(); /* the entry's time before the slot's 0 (flow_live_hot reads both) */
            h->last_seen_ns = 0;
            order_fence();
            __builtin_memset(&h->key, 0, sizeof(h->key)); /* the key first: xdp_vpc's second look */
            order_fence();
            __builtin_memset(h, 0, sizeof(*h)); /* gen 0: the slot is free again */
            return;
        }
    } else {
        if (!fill)
            return;
        __u32 set;
        h = hot_free(s0, s1, gen, now, idle, &set);
        if (!h && idle) /* the flow's packets come this way while it has no slot */
            h = hot_movable(s0, s1, secret, gen, now, &set);
        if (!h || !hot_claim(h))
            return;
        /* Another flow's slot: its counters go to its own entry. Not a slot that was placed
         * under another port secret (a test node's), whose flow is gone. */
        if (h->key.eni_addr) {
            __u32 v0, v1;
            hot_sets(&h->key, secret, &v0, &v1);
            if (v0 == set || v1 == set) {
                struct flow_key vk = h->key;
                struct flow *vf = flows.lookup(&vk);
                if (vf && hot_owner_is(h, vf->worker, vf->vni, vf->env_addr, vf->env_port))
                    hot_fold(h, vf);
            }
        }
    }
    /* Published as flow_publish does: the time at 0 first, the time last; the gen after it
     * (the exchange orders every store before it) makes the slot usable again. */
    order_fence(); /* a folded entry's time before the slot's 0 (flow_live_hot reads both) */
    h->last_seen_ns = 0;
    order_fence();
    h->key = *fk;
    order_fence(); /* the key before the owner: xdp_vpc reads them the other way */
    __builtin_memcpy(&h->worker, &f->worker, sizeof(struct flow_owner));
    h->tx_packets = 0;
    h->rx_packets = 0;
    h->tx_bytes = 0;
    h->rx_bytes = 0;
    __sync_lock_test_and_set(&h->last_seen_ns, f->last_seen_ns);
    h->gen = gen;
}

/* The flows an ENI holds against its limit (types.h: eni_flows_added). */
static __always_inline int eni_full(__u32 eni_idx, __u32 limit)
{
    if (!limit)
        return 0;
    __u64 *added = eni_flows_added.lookup(&eni_idx);
    __u64 *removed = eni_flows_removed.lookup(&eni_idx);
    if (!added || !removed)
        return 0;
    return (__s64)(*added - *removed) >= (__s64)limit;
}

/* RFC 792's error messages: destination unreachable, time exceeded, parameter problem. */
static __always_inline int icmp_is_error(__u8 type)
{
    return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
}

/* The outer headers of a frame for a worker, written at `data`: the worker's MAC and the VLAN
 * tags its own frames carry (`depth` of `tags`), so that it travels the fabric the way the
 * worker's traffic came; IPv4 from the node's fabric address (`outer_len` long), UDP from
 * `sport` to the tunnel's port, and the tunnel header with the VNI (GENEVE without options).
 * Returns where the inner frame starts, or NULL when the frame is too short for the headers. */
static __always_inline void *encap_write(void *data, void *data_end, struct node_cfg *cfg,
                                         const __u8 *wmac, struct vlan_tag *tags, __u32 depth,
                                         ipv4_t worker, __u16 outer_len, __be16 sport,
                                         __u8 tunnel, __u32 vni)
{
    if (data + ENCAP_LEN + MAX_VLAN_DEPTH * VLAN_TAG_LEN > data_end)
        return NULL;
    struct ethhdr *oeth = data;
    mac_copy(oeth->h_dest, wmac);
    mac_copy(oeth->h_source, cfg->fabric_mac);
    __be16 *ethertype = &oeth->h_proto;
    if (depth >= 1) {
        struct vlan_hdr_ *v = data + sizeof(*oeth);
        *ethertype = tags[0].tpid;
        v->tci = tags[0].tci;
        ethertype = &v->proto;
        if (depth >= 2) {
            v = data + sizeof(*oeth) + VLAN_TAG_LEN;
            *ethertype = tags[1].tpid;
            v->tci = tags[1].tci;
            ethertype = &v->proto;
        }
    }
    *ethertype = bpf_htons(ETH_P_IPV4);
    void *l3 = data + sizeof(*oeth) + depth * VLAN_TAG_LEN;
    struct iphdr *oip = l3;
    struct udphdr *oudp = l3 + 20;
    __u8 *th = l3 + 20 + 8;
    if ((void *)(th + 8) > data_end)
        return NULL;
    oip->version = 4;
    oip->ihl = 5;
    oip->tos = 0;
    oip->tot_len = bpf_htons(outer_len);
    oip->id = 0;
    oip->frag_off = 0;
    oip->ttl = OUTER_TTL;
    oip->protocol = IPPROTO_UDP;
    oip->check = 0;
    oip->saddr = cfg->fabric_ip;
    oip->daddr = worker;
    oip->check = ipv4_csum20(oip);
    oudp->source = sport;
    oudp->len = bpf_htons(outer_len - 20);
    oudp->check = 0; /* allowed for both tunnels over IPv4 */
    if (tunnel == TUNNEL_GENEVE) {
        oudp->dest = bpf_htons(GENEVE_PORT);
        th[0] = 0; /* version 0, no options */
        th[1] = 0;
        th[2] = ETH_P_TEB >> 8;
        th[3] = ETH_P_TEB & 0xFF;
    } else {
        oudp->dest = bpf_htons(VXLAN_PORT);
        th[0] = 0x08; /* I flag */
        th[1] = 0;
        th[2] = 0;
        th[3] = 0;
    }
    th[4] = vni >> 16;
    th[5] = vni >> 8;
    th[6] = vni;
    th[7] = 0;
    return th + 8;
}

/* ---- ICMP the node generates (RFC 1812 4.3.2) -------------------------------------------
 * Time exceeded and fragmentation needed, built in place from the offending packet: a new IPv4
 * and ICMP header in front of the packet's IPv4 header and first 64 bits of data (RFC 792). */

/* May the node answer this packet with an ICMP error? Never an ICMP error itself (nor an ICMP
 * type it does not know, as Linux does), never a fragment other than the first, never a packet
 * from an address that names no single host, to a multicast or broadcast one, or sent as a
 * link-layer broadcast or multicast (`link_dst`, the frame's destination MAC) (4.3.2.7). */
static __always_inline int icmp_may_answer(struct iphdr *ip, const __u8 *link_dst,
                                           void *data_end)
{
    if (ip->frag_off & bpf_htons(IP_OFFMASK_))
        return 0;
    if (link_dst[0] & 1) /* the group bit: broadcast or multicast */
        return 0;
    __u8 s0 = ((__u8 *)&ip->saddr)[0], d0 = ((__u8 *)&ip->daddr)[0];
    if (s0 == 0 || s0 == 127 || s0 >= 224 || d0 >= 224)
        return 0;
    if (ip->protocol == IPPROTO_ICMP) {
        __u8 *t = (void *)ip + ip->ihl * 4;
        /* the type, within the datagram (what follows it is Ethernet padding) */
        if ((void *)(t + 1) > data_end || ip->ihl * 4 + 1 > bpf_ntohs(ip->tot_len))
            return 0;
        __u8 type = t[0]; /* the informational types: echo, router, timestamp, info, mask */
        if (type != 0 && (type < 8 || type > 18 || type == 11 || type == 12))
            return 0;
    }
    return 1;
}

/* The per-CPU token bucket (icmp_bucket): 1 when the node may send one more ICMP message. */
static __always_inline int icmp_allowed(struct node_cfg *cfg)
{
    __u32 k0 = 0;
    struct icmp_bucket *b = icmp_bucket.lookup(&k0);
    return b && bucket_take(&b->last_ns, &b->tokens, cfg->icmp_rate, ICMP_BURST, coarse_now());
}

/* The ICMP error's own IPv4 and ICMP headers at `nip`, in front of its quote (the `qlen` bytes
 * that follow them), both checksums computed. 0, or -1 when the frame is too short. */
static __always_inline int icmp_err_fill(struct iphdr *nip, void *data_end, ipv4_t src, ipv4_t dst,
                                         __u8 type, __u8 code, __u16 mtu, __u32 qlen)
{
    struct icmphdr *ih = (void *)(nip + 1);
    if ((void *)(ih + 1) > data_end)
        return -1;
    nip->version = 4;
    nip->ihl = 5;
    nip->tos = ICMP_TOS;
    nip->tot_len = bpf_htons(ICMP_ERR_HDRS + qlen);
    nip->id = 0;
    nip->frag_off = bpf_htons(IP_DF_); /* atomic (RFC 6864 4.2): no ID needs to be unique */
    nip->ttl = ICMP_TTL;
    nip->protocol = IPPROTO_ICMP;
    nip->check = 0;
    nip->saddr = src;
    nip->daddr = dst;
    nip->check = ipv4_csum20(nip);
    ih->type = type;
    ih->code = code;
    ih->checksum = 0;
    ih->un.frag.__unused = 0;
    ih->un.frag.mtu = bpf_htons(mtu); /* RFC 1191's next-hop MTU; 0 for the other errors */
    const __u16 *w = (const void *)ih;
    __u32 sum = (__u32)w[0] + w[1] + w[2] + w[3];
    ih->checksum = csum_fold32(csum_add_quote((__u8 *)(ih + 1), qlen, data_end, sum));
    return 0;
}

/* How much of the offending packet an ICMP error quotes: its IPv4 header and 64 bits of data,
 * or all of it when it is shorter. */
static __always_inline __u32 icmp_quote_len(struct iphdr *ip)
{
    __u32 q = ip->ihl * 4 + ICMP_QUOTE_DATA, tot = bpf_ntohs(ip->tot_len);
    return tot < q ? tot : q;
}

/* An ICMP error about a packet from the VPC, sent back out of the interface it came in on:
 * from the ENI address it was sent to (the node speaks for the flow's environment), to its
 * sender, through the MAC it came from. Returns the reason: `none` when no answer is due. */
static __always_inline __u32 vpc_icmp_answer(struct xdp_md *ctx, struct node_cfg *cfg,
                                             struct vpc *vpc, __u8 type, __u8 code, __u16 mtu,
                                             __u32 none, int *action)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);
    *action = XDP_DROP;
    if ((void *)(ip + 1) > data_end || !icmp_may_answer(ip, eth->h_dest, data_end))
        return none;
    if (!icmp_allowed(cfg))
        return STAT_drop_icmp_ratelimit;
    __u32 qlen = icmp_quote_len(ip);
    ipv4_t src = ip->daddr, dst = ip->saddr;
    __u8 peer[6];
    mac_copy(peer, eth->h_source);
    if (bpf_xdp_adjust_head(ctx, -ICMP_ERR_HDRS))
        return STAT_drop_adjust_failed;
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    eth = data;
    struct iphdr *nip = data + sizeof(*eth);
    if ((void *)(nip + 1) > data_end)
        return STAT_drop_adjust_failed;
    mac_copy(eth->h_dest, peer);
    mac_copy(eth->h_source, vpc->if_mac);
    eth->h_proto = bpf_htons(ETH_P_IPV4);
    if (icmp_err_fill(nip, data_end, src, dst, type, code, mtu, qlen))
        return STAT_drop_adjust_failed;
    int delta = (int)(sizeof(*eth) + ICMP_ERR_HDRS + qlen) - (int)(data_end - data);
    if (delta && bpf_xdp_adjust_tail(ctx, delta))
        return STAT_drop_adjust_failed;
    *action = XDP_TX;
    return type == ICMP_TIME_EXCEEDED_ ? STAT_tx_icmp_time_exceeded : STAT_tx_icmp_frag_needed;
}

/* ---- Fragments (consts.h: FRAG_TIMEOUT_NS) ----------------------------------------------- */

/* A first fragment too short to hold its transport header whole (RFC 1858's tiny fragment):
 * a later one could then supply the ports or TCP flags that the checks here never saw. */
static __always_inline int frag_tiny(struct iphdr *ip, __u8 *l4, void *data_end)
{
    __u32 have = bpf_ntohs(ip->tot_len) - ip->ihl * 4;
    __u32 need = 8;
    if (ip->protocol == IPPROTO_TCP) {
        if ((void *)(l4 + 13) > data_end)
            return 1;
        need = (l4[12] >> 4) * 4;
    }
    return have < need;
}

/* The first fragment of a datagram leaves its flow for the later ones. */
static __always_inline void frag_note(struct frag_key *k, struct flow_key *fk, struct iphdr *ip)
{
    struct frag fr;
    __builtin_memset(&fr, 0, sizeof(fr));
    fr.first_ns = coarse_now();
    fr.fk = *fk;
    fr.first_end = bpf_ntohs(ip->tot_len) - ip->ihl * 4;
    frags.update(k, &fr);
}

/* A later fragment's datagram: its first fragment's entry, or the reason there is none to
 * follow (none seen, too old, or the fragment overlaps the first). */
static __always_inline __u32 frag_find(struct frag_key *k, struct iphdr *ip, __u64 now,
                                       struct flow_key *fk)
{
    k->src = ip->saddr;
    k->dst = ip->daddr;
    k->id = ip->id;
    k->proto = ip->protocol;
    k->pad = 0;
    struct frag *fr = frags.lookup(k);
    /* signed: another CPU's clock cache may be a tick behind the first fragment's */
    if (!fr || (__s64)(now - fr->first_ns) > (__s64)FRAG_TIMEOUT_NS)
        return STAT_drop_frag_no_first;
    if ((bpf_ntohs(ip->frag_off) & IP_OFFMASK_) * 8 < fr->first_end)
        return STAT_drop_frag_overlap;
    *fk = fr->fk;
    /* An LRU hash hands a replaced or evicted element to the next insert at once, even while
     * a reader holds it: the flow copied must still be this datagram's, or it could be another
     * datagram's (another scope's) half written over it. */
    order_loads();
    if (frags.lookup(k) != fr)
        return STAT_drop_frag_no_first;
    return 0;
}

/* A SYN without ACK or RST: the one TCP segment that opens a connection. */
static __always_inline int tcp_opens(__u8 flags)
{
    return (flags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN;
}

static __always_inline void eni_flows_add(__u32 eni_idx, __s64 n)
{
    __u64 *added = eni_flows_added.lookup(&eni_idx);
    if (added)
        __sync_fetch_and_add(added, (__u64)n);
}


/* The ENI of a VNI, from this CPU's eni_cache when the slot is current, else from `enis`
 * (copied into the slot for the next packet). The generation is read before the ENI: a change
 * that lands between the two reads leaves the copy under the older generation, stale for the
 * next packet, never an old ENI under the current generation. */
static __always_inline struct eni *eni_of(struct node_cfg *cfg, __u32 vni)
{
    __u32 slot = vni % ENI_CACHE_SLOTS;
    __u32 gen = *(volatile __u32 *)&cfg->eni_gen;
    asm volatile("" ::: "memory"); /* keep the load of the generation before the lookup */
    struct eni_cache_slot *cs = eni_cache.lookup(&slot);
    if (cs && cs->gen && cs->gen == gen && cs->vni == vni)
        return &cs->eni;
    eni_race_point(cfg, vni);
    order_fence(); /* and before the ENI it copies (the slot is this CPU's alone) */
    struct eni *eni = enis.lookup(&vni);
    if (eni && cs && gen) {
        cs->vni = vni;
        cs->gen = gen;
        __builtin_memcpy(&cs->eni, eni, sizeof(*eni));
    }
    return eni;
}

/* The VPC behind an ingress interface: its own slot when it owns one, else vpc_ifs. */
static __always_inline __u32 *vpc_of_if(__u32 ifindex)
{
    __u32 slot = ifindex % VPC_IF_SLOTS;
    struct vpc_if_slot *s = vpc_if_slots.lookup(&slot);
    if (s && ifindex && s->ifindex == ifindex)
        return &s->vpc_idx;
    return vpc_ifs.lookup(&ifindex);
}

/* The worker_slots entry of a worker, if the worker owns its slot. */
static __always_inline struct worker_slot *worker_slot_of(ipv4_t addr)
{
    __u32 slot = bpf_ntohl(addr) % WORKER_SLOTS;
    struct worker_slot *s = worker_slots.lookup(&slot);
    return s && addr && s->addr == addr ? s : NULL;
}

/* A worker's entry: its slot's copy when it owns one (no hashing), else `workers`. */
static __always_inline struct worker *worker_of(ipv4_t addr)
{
    struct worker_slot *s = worker_slot_of(addr);
    if (s)
        return &s->w;
    return workers.lookup(&addr);
}

/* The frame's source MAC and outer VLAN tags become the worker's: in `workers` and in the slot's
 * copy, so that both keep saying the same. */
static __always_inline void worker_learn(ipv4_t addr, struct ethhdr *oeth, struct vlan_hdr_ *tags,
                                         __u32 depth, __u8 flags, void *data_end)
{
    struct worker nw;
    __builtin_memset(&nw, 0, sizeof(nw));
    mac_copy(nw.mac, oeth->h_source);
    nw.flags = flags;
    if (tags && depth >= 1 && (void *)(tags + 1) <= data_end) {
        nw.vlan_depth = 1;
        nw.vlans[0].tpid = oeth->h_proto;
        nw.vlans[0].tci = tags[0].tci;
        if (depth >= 2 && (void *)(tags + 2) <= data_end) {
            nw.vlan_depth = 2;
            nw.vlans[1].tpid = tags[0].proto;
            nw.vlans[1].tci = tags[1].tci;
        }
    }
    struct worker *w = workers.lookup(&addr);
    if (w)
        __builtin_memcpy(w, &nw, sizeof(nw));
    struct worker_slot *s = worker_slot_of(addr);
    if (s)
        __builtin_memcpy(&s->w, &nw, sizeof(nw));
}

/* May this frame speak for the worker whose address it carries? The worker must be registered,
 * and the frame must come from the MAC the worker is known by: learned from its first frame, or
 * set by the operator, and then kept, since replies go to it. Returns 0 or the drop reason. */
static __always_inline __u32 worker_admit(struct stats *st, ipv4_t addr, struct ethhdr *oeth,
                                          struct vlan_hdr_ *tags, __u32 depth, void *data_end)
{
    struct worker *w = worker_of(addr);
    if (!w)
        return STAT_drop_unknown_worker;
    __u8 flags = w->flags;
    int same = mac_equal(w->mac, oeth->h_source);
    if ((flags & WORKER_F_MAC) && same && w->vlan_depth == depth)
        return 0;
    if ((flags & WORKER_F_MAC) && !same && !(flags & WORKER_F_RELEARN))
        return STAT_worker_mac_conflict;
    /* First frame, a relearn the operator asked for, or a known MAC whose tags changed. */
    if (!(flags & WORKER_F_MAC) || !same)
        count(st, STAT_worker_mac_learned);
    worker_learn(addr, oeth, tags, depth,
                 WORKER_F_MAC | (same && (flags & WORKER_F_MAC) ? (flags & WORKER_F_STATIC) : 0),
                 data_end);
    return 0;
}

/* May this worker send on this VNI? Only if a function that uses the VNI's ENI is placed on it. */
static __always_inline int worker_placed(ipv4_t worker, __u32 vni)
{
    struct placement_key pk = {.worker = worker, .vni = vni};
    return placements.lookup(&pk) != NULL;
}

/* AWS semantics: allowed when any rule of any of the ENI's groups allows it. The control plane
 * has already merged the rules (see sg_rules in types.h): find the longest prefix for the
 * destination, then binary-search its sorted disjoint port ranges. */
static __always_inline int sg_allows(__u32 vni, __u8 proto, ipv4_t dst, __u16 port)
{
    struct sg_key k;
    __builtin_memset(&k, 0, sizeof(k));
    k.prefixlen = 64 + 32;
    k.vni = vni;
    k.proto = proto;
    k.addr = dst;
    struct sg_ports *sp = sg_rules.lookup(&k);
    if (!sp)
        return 0;
    __u32 lo = 0, hi = sp->n; /* the answer is the last range starting at or below port */
    if (hi == 0 || hi > SG_MAX_RANGES)
        return 0;
    /* Branch-free halvings: the verifier walks this once per path that reaches it, and the
     * flow walk before it hands it many paths; branches here would multiply them by 2^9. */
#pragma unroll
    for (int i = 0; i < SG_SEARCH_STEPS; i++) {
        __u32 mid = (lo + hi) / 2;
        /* Keep the mask: clang drops it as redundant, the verifier needs it. */
        asm volatile("" : "+r"(mid));
        mid &= SG_MAX_RANGES - 1;
        /* All ones when the range at mid starts at or below the port (both fit 16 bits). */
        __u32 le = (__u32)((__s32)((__u32)sp->ranges[mid].lo - port - 1) >> 31);
        asm volatile("" : "+r"(le)); /* hidden from clang, which would make a branch of it */
        lo = (mid & le) | (lo & ~le);
        hi = (hi & le) | (mid & ~le);
    }
    asm volatile("" : "+r"(lo));
    struct port_range *r = &sp->ranges[lo & (SG_MAX_RANGES - 1)];
    return r->lo <= port && port <= r->hi;
}

/* sg_denials: one more packet of a denied flow (every one: flow logs' REJECT records). */
static __always_inline void sg_denial_note(ipv4_t worker, __u32 vni, ipv4_t env, __be16 env_port,
                                           struct flow_key *fk, __u32 bytes, __u64 now)
{
    struct sg_denial_key k = {.worker = worker, .vni = vni, .env_addr = env,
                              .remote = fk->remote, .env_port = env_port,
                              .remote_port = fk->remote_port, .proto = fk->proto};
    struct sg_denial *d = sg_denials.lookup(&k);
    if (!d) {
        struct sg_denial nd = {.packets = 1, .bytes = bytes, .first_ns = now, .last_ns = now};
        if (!sg_denials.insert(&k, &nd))
            return;
        d = sg_denials.lookup(&k); /* another CPU inserted it first */
        if (!d)
            return;
    }
    __sync_fetch_and_add(&d->packets, 1);
    __sync_fetch_and_add(&d->bytes, bytes);
    d->last_ns = now;
}

static __always_inline __u32 tunnel_hash(struct flow_key *fk)
{
    __u32 h = fk->remote * 0x9E3779B1u;
    h ^= ((__u32)fk->eni_port << 16 | fk->remote_port) * 0x85EBCA6Bu;
    h ^= fk->eni_addr ^ fk->proto;
    h ^= h >> 15;
    h *= 0xC2B2AE35u;
    h ^= h >> 13;
    return h;
}

/* An environment's ARP request, answered in place as its gateway and sent back through the same
 * tunnel (outer addresses swapped, tunnel ports kept). Probes and gratuitous ARP get no answer. */
static __always_inline __u32 tunnel_arp(struct cursor *c, struct node_cfg *cfg, struct ethhdr *oeth,
                                        struct iphdr *oip, struct udphdr *oudp, struct ethhdr *ieth,
                                        int *action)
{
    struct arp_eth_ipv4 *arp = CURSOR_TAKE(c, struct arp_eth_ipv4);
    *action = XDP_DROP;
    if (!arp)
        return STAT_drop_inner_truncated;
    if (arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IPV4) || arp->hlen != 6 ||
        arp->plen != 4 || arp->op != bpf_htons(1))
        return STAT_drop_arp_ignored;
    if (arp->spa == 0 || arp->spa == arp->tpa)
        return STAT_drop_arp_ignored;

    ipv4_t target = arp->tpa;
    mac_copy(arp->tha, arp->sha);
    arp->tpa = arp->spa;
    mac_copy(arp->sha, cfg->gateway_mac);
    arp->spa = target;
    arp->op = bpf_htons(2);
    mac_copy(ieth->h_dest, ieth->h_source);
    mac_copy(ieth->h_source, cfg->gateway_mac);

    __u8 tmp[6];
    mac_copy(tmp, oeth->h_dest);
    mac_copy(oeth->h_dest, oeth->h_source);
    mac_copy(oeth->h_source, tmp);
    ipv4_t a = oip->saddr; /* swapping two words leaves the header checksum as it is */
    oip->saddr = oip->daddr;
    oip->daddr = a;
    oudp->check = 0;
    *action = XDP_TX;
    return STAT_tx_arp_tunnel;
}

/* What the outer headers of a tunnel packet said (stage 1 fills it, stage 3 completes it). */
struct tunnel_pkt {
    struct ethhdr *oeth;
    struct vlan_hdr_ *tags; /* the outer VLAN tags, NULL without */
    __u32 depth;
    struct iphdr *oip;
    struct udphdr *oudp;
    __u32 vni;
    __u8 tunnel; /* enum tunnel_type */
};

/* A TCP segment from an environment that has no live flow (expired, reset, flushed) is
 * answered as the remote end answers a segment for a connection it does not have: a RST (RFC 793,
 * "Reset Generation"), built in place and sent back through the tunnel it came in. AWS's NAT
 * gateway does this past its idle timeout: the client learns at once instead of retransmitting
 * into a black hole. Only the environment sees it; the VPC sees nothing. */
static __always_inline __u32 tcp_rst_answer(struct xdp_md *ctx, struct node_cfg *cfg,
                                            struct tunnel_pkt *t, struct ethhdr *ieth,
                                            struct iphdr *iip, struct tcphdr *th, int *action)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct tcphdr *nt = (void *)iip + sizeof(struct iphdr); /* options, payload: all dropped */
    *action = XDP_DROP;
    if ((void *)(nt + 1) > data_end || (void *)(th + 1) > data_end)
        return STAT_drop_inner_truncated;
    __u8 fl = ((__u8 *)th)[13];
    __u32 hdrs = iip->ihl * 4 + th->doff * 4;
    __u32 tot = bpf_ntohs(iip->tot_len);
    __u32 seg = (tot > hdrs ? tot - hdrs : 0) + ((fl >> 1) & 1) + (fl & TH_FIN);
    __be32 seq = 0, ack = 0;
    __u8 rfl = TH_RST;
    if (fl & TH_ACK) {
        seq = th->ack_seq; /* <SEQ=SEG.ACK><CTL=RST> */
    } else {
        ack = bpf_htonl(bpf_ntohl(th->seq) + seg); /* <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK> */
        rfl = TH_RST | TH_ACK;
    }
    __be16 sport = th->source, dport = th->dest;
    ipv4_t env = iip->saddr, remote = iip->daddr;

    mac_copy(ieth->h_dest, ieth->h_source);
    mac_copy(ieth->h_source, cfg->gateway_mac);
    iip->version = 4;
    iip->ihl = 5;
    iip->tos = 0;
    iip->tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct tcphdr));
    iip->id = 0;
    iip->frag_off = 0;
    iip->ttl = INNER_TTL;
    iip->protocol = IPPROTO_TCP;
    iip->check = 0;
    iip->saddr = remote;
    iip->daddr = env;
    iip->check = ipv4_csum20(iip);
    nt->source = dport;
    nt->dest = sport;
    nt->seq = seq;
    nt->ack_seq = ack;
    ((__u8 *)nt)[12] = 5 << 4; /* data offset 5, no options */
    ((__u8 *)nt)[13] = rfl;
    nt->window = 0;
    nt->check = 0;
    nt->urg_ptr = 0;
    /* The pseudo header, in the same (memory order) words as the header itself. */
    __u32 ps = (remote & 0xFFFF) + (remote >> 16) + (env & 0xFFFF) + (env >> 16) +
               bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(struct tcphdr));
    nt->check = csum_fold32(csum_add20(nt, ps));

    /* Outer headers turned around: the same tunnel, ports and tags, back to the worker. */
    __u8 tmp[6];
    mac_copy(tmp, t->oeth->h_dest);
    mac_copy(t->oeth->h_dest, t->oeth->h_source);
    mac_copy(t->oeth->h_source, tmp);
    struct iphdr *oip = t->oip;
    ipv4_t a = oip->saddr; /* swapping two words leaves the header checksum as it is */
    oip->saddr = oip->daddr;
    oip->daddr = a;
    __u32 len = (void *)(nt + 1) - data;
    __be16 olen = bpf_htons(len - ((void *)oip - data));
    oip->check = csum_replace2(oip->check, oip->tot_len, olen);
    oip->tot_len = olen;
    __u16 *ttl_word = (__u16 *)&oip->ttl;
    __u16 old_word = *ttl_word;
    oip->ttl = OUTER_TTL;
    oip->check = csum_replace2(oip->check, old_word, *ttl_word);
    t->oudp->len = bpf_htons(len - ((void *)t->oudp - data));
    t->oudp->check = 0;
    int delta = (int)len - (int)(data_end - data);
    if (delta && bpf_xdp_adjust_tail(ctx, delta))
        return STAT_drop_adjust_failed;
    *action = XDP_TX;
    return STAT_tx_tcp_rst;
}


/* Stage 1, outer headers: 0 when this is tunnel traffic for this node, else the pass_* reason
 * under which the kernel gets it (until then nothing is ours to drop). */
static __always_inline __u32 parse_outer(struct cursor *c, struct node_cfg *cfg,
                                         struct tunnel_pkt *t)
{
    __be16 proto;
    t->oeth = parse_eth_tags(c, &proto, &t->tags, &t->depth);
    if (!t->oeth)
        return STAT_pass_malformed_outer;
    if (proto != bpf_htons(ETH_P_IPV4))
        return STAT_pass_not_tunnel;
    if (parse_ipv4(c, &t->oip) != PARSE_OK)
        return STAT_pass_malformed_outer;
    if (t->oip->daddr != cfg->fabric_ip || t->oip->protocol != IPPROTO_UDP)
        return STAT_pass_not_tunnel;
    if (ipv4_is_fragment(t->oip))
        return STAT_pass_outer_fragment;
    t->oudp = CURSOR_TAKE(c, struct udphdr);
    if (!t->oudp)
        return STAT_pass_malformed_outer;
    __u16 tport = bpf_ntohs(t->oudp->dest);
    if (tport == VXLAN_PORT)
        t->tunnel = TUNNEL_VXLAN;
    else if (tport == GENEVE_PORT)
        t->tunnel = TUNNEL_GENEVE;
    else
        return STAT_pass_not_tunnel;
    return 0;
}

/* Stage 3, the tunnel header: 0 with t->vni set, or the drop reason. */
static __always_inline __u32 parse_tunnel(struct cursor *c, struct tunnel_pkt *t)
{
    if (t->tunnel == TUNNEL_VXLAN) {
        struct vxlan_hdr_ *vx = CURSOR_TAKE(c, struct vxlan_hdr_);
        if (!vx)
            return STAT_drop_tunnel_truncated;
        if (!(vx->flags & 0x08))
            return STAT_drop_vxlan_no_i_flag;
        t->vni = bpf_ntohl(vx->vni_rsvd) >> 8;
        return 0;
    }
    struct geneve_hdr_ *g = parse_geneve(c);
    if (!g)
        return STAT_drop_tunnel_truncated;
    if (g->ver_optlen >> 6)
        return STAT_drop_geneve_version;
    if (g->flags & 0x80)
        return STAT_drop_geneve_control;
    if (g->flags & 0x40)
        return STAT_drop_geneve_critical;
    if (g->proto != bpf_htons(ETH_P_TEB))
        return STAT_drop_geneve_not_ether;
    t->vni = ((__u32)g->vni[0] << 16) | ((__u32)g->vni[1] << 8) | g->vni[2];
    return 0;
}

/* Stage 4, the environment's IPv4 packet and its ports: 0 or the drop reason. */
static __always_inline __u32 parse_inner_ip(struct cursor *c, struct iphdr **iip, struct l4 *l4)
{
    int rc = parse_ipv4(c, iip);
    if (rc != PARSE_OK)
        return rc == PARSE_TRUNCATED ? STAT_drop_inner_truncated : STAT_drop_inner_bad_ip;
    struct iphdr *ip = *iip;
    if (ip->frag_off & bpf_htons(IP_OFFMASK_))
        return STAT_fwd_fragment; /* a later fragment, no ports: xdp_fabric_frag's */
    if (ip->ttl <= 1)
        return STAT_drop_ttl_expired; /* xdp_fabric_reply answers it */
    __u8 *l4h = c->pos;
    rc = parse_l4(c, ip->protocol, ICMP_ECHO, l4);
    int first_frag = (ip->frag_off & bpf_htons(IP_MF_)) != 0;
    if (rc == PARSE_TRUNCATED && first_frag)
        return STAT_drop_frag_tiny;
    if (rc != PARSE_OK || !l4->sport)
        return l4_reason(rc, STAT_drop_inner_truncated);
    if (first_frag && frag_tiny(ip, l4h, c->end))
        return STAT_drop_frag_tiny;
    return 0;
}

/* Stage 5, where the flow sits along its port probe (see the walk's comment below). */
struct probe {
    struct flow *f;     /* the flow's entry, NULL when it has none yet */
    __u64 seen;         /* f's last_seen_ns, read before its owner was */
    __be16 free_port;   /* the first empty slot along the probe; ports in range are never 0 */
    __u32 free_depth;
    int probed;         /* the flow sits past its probe's first port */
};

/* The flow's entry is keyed by what the VPC will see: the ENI's VPC and address, the
 * destination, and the SNAT port, found by walking the ENI's range from where the flow's
 * probe starts. The first slot holds the flow unless another flow to the same destination
 * had it first; walking stops at an empty slot unless flow_guard says holes may exist. */
static __always_inline void flow_walk(struct flow_key *fk, struct flow_guard *g, __u32 lo,
                                      __u32 range, __u32 start, ipv4_t worker, __u32 vni,
                                      ipv4_t env, __be16 env_port, struct probe *pr)
{
    __u32 tries = range < PORT_TRIES ? range : PORT_TRIES;
    /* The verifier walks the rest of the program once for each iteration this loop can leave
     * from, so it is one loop with little state, and PORT_TRIES (16) keeps xdp_fabric well
     * inside the 1M instructions the verifier will walk; 32 did not fit. Looking for expired
     * entries here too multiplied the states past the limit: that is a walk of its own
     * (stale_walk), which only a new flow that finds no usable empty slot takes. */
    pr->f = NULL;
    pr->seen = 0;
    pr->free_port = 0;
    pr->free_depth = 0;
    pr->probed = 0;
    for (__u32 i = 0; i < PORT_TRIES; i++) {
        /* Hide i from clang: folded into `tries`, the loop would lose the bound that the
         * verifier proves termination by. */
        asm volatile("" : "+r"(i));
        if (i >= tries)
            break;
        __be16 p = probe_port(lo, range, start, i);
        fk->eni_port = p;
        struct flow *f = flows.lookup(fk);
        if (f) {
            __u64 seen = flow_seen(&f); /* before the owner: see above */
            if (flow_owned_by(f, worker, vni, env, env_port)) {
                pr->f = f;
                pr->seen = seen;
                pr->probed = i != 0;
                break;
            }
        } else {
            if (!pr->free_port) {
                pr->free_port = p;
                pr->free_depth = i;
            }
            /* The guard's line is written by every CPU that opens a flow: it is read only
             * when a walk meets an empty port, never by an established packet found at its
             * first port. */
            if (g && (!g->holes || !(g->depths >> i >> 1))) /* no flow sits further along */
                break;
        }
    }
}

/* The first entry along the probe, before position `below`, that another tuple may take over
 * (flow_claimable), for a new flow that has no empty slot it may use: none along the probe, or
 * its ENI at its limit. Never past the first empty slot: the flow's own walk stops there, so
 * an entry beyond it would be one the flow could not find again. Returns its port (0: none)
 * and its position. Only such new flows pay for this walk. */
static __always_inline __be16 stale_walk(struct flow_key *fk, struct node_cfg *cfg, __u64 now,
                                         __u32 lo, __u32 range, __u32 start, __u32 below,
                                         __u32 *depth)
{
    __u32 tries = range < PORT_TRIES ? range : PORT_TRIES;
    __be16 found = 0;
    for (__u32 i = 0; i < PORT_TRIES; i++) {
        asm volatile("" : "+r"(i)); /* as in flow_walk */
        if (i >= tries || i >= below)
            break;
        __be16 p = probe_port(lo, range, start, i);
        fk->eni_port = p;
        struct flow *f = flows.lookup(fk);
        if (f && flow_claimable_hot(cfg, fk, f, f->state, f->last_seen_ns, now)) {
            found = p;
            *depth = i;
            break;
        }
    }
    return found;
}

/* A tunnel packet as stages 1-4 left it, for the stages after them. */
struct fabric_pkt {
    struct tunnel_pkt t;
    void *inner;          /* the inner frame: what is left once the outer headers go */
    struct ethhdr *ieth;
    struct iphdr *iip;
    struct l4 l4;
    __u64 bytes;          /* the inner frame's length */
};

/* Stages 1-4: 0 with `p` filled for an environment's IPv4 packet, else the reason (and the
 * action) for everything else. `first` is xdp_fabric's pass: it admits the worker and answers
 * ARP; xdp_fabric_open parses again a packet that xdp_fabric already admitted. */
static __always_inline __u32 fabric_front(struct xdp_md *ctx, struct stats *st,
                                          struct node_cfg *cfg, struct fabric_pkt *p, int first,
                                          int *action)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct cursor c = {.pos = data, .end = data_end};

    /* 1. Outer headers: until we know this is tunnel traffic for us, the kernel gets it. */
    __u32 reason = parse_outer(&c, cfg, &p->t);
    if (reason)
        return reason;
    /* Tunnel traffic for this node: from here on every failure is a named drop. */
    *action = XDP_DROP;

    /* 2. The sender: a registered worker, speaking from the MAC it is known by. Every packet is
     * checked (a direct-mapped slot, no hashing): replies go to that MAC, so a host that claims a
     * worker's address gets nothing in and cannot draw the worker's replies to itself. */
    ipv4_t worker = p->t.oip->saddr;
    if (first) {
        reason = worker_admit(st, worker, p->t.oeth, p->t.tags, p->t.depth, data_end);
        if (reason)
            return reason;
    }

    /* 3. Tunnel header: the VNI names the ENI. */
    reason = parse_tunnel(&c, &p->t);
    if (reason)
        return reason;
    __u32 vni = p->t.vni;

    /* 4. Inner frame: ARP is answered as the gateway, IPv4 is translated. */
    p->inner = c.pos;
    p->bytes = data_end - c.pos;
    struct ethhdr *ieth = CURSOR_TAKE(&c, struct ethhdr);
    if (!ieth)
        return STAT_drop_inner_truncated;
    p->ieth = ieth;
    if (ieth->h_proto == bpf_htons(ETH_P_ARPH) && first) {
        if (!enis.lookup(&vni))
            return STAT_drop_unknown_vni;
        if (!worker_placed(worker, vni))
            return STAT_drop_worker_not_placed;
        return tunnel_arp(&c, cfg, p->t.oeth, p->t.oip, p->t.oudp, ieth, action);
    }
    if (ieth->h_proto != bpf_htons(ETH_P_IPV4))
        return STAT_drop_inner_not_ipv4;
    return parse_inner_ip(&c, &p->iip, &p->l4);
}

/* Where xdp_fabric's parse found the headers, for the program it tail-calls next. */
static __always_inline void scratch_offsets(struct open_scratch *os, void *data,
                                            struct fabric_pkt *p)
{
    os->oip_off = (void *)p->t.oip - data;
    os->oudp_off = (void *)p->t.oudp - data;
    os->inner_off = p->inner - data;
    os->l4_off = (void *)p->iip - data + p->iip->ihl * 4;
}

/* Hand the packet to fabric_calls[slot] with where its headers are, and for xdp_fabric_reply
 * the ICMP error to answer with. Returns only when the tail call failed. */
static __always_inline __u32 fabric_call(struct xdp_md *ctx, struct fabric_pkt *p, __u32 slot,
                                         __u8 type, __u8 code, __u16 mtu)
{
    __u32 k0 = 0;
    struct open_scratch *os = open_scratch.lookup(&k0);
    if (!os)
        return STAT_drop_tail_call;
    scratch_offsets(os, (void *)(long)ctx->data, p);
    os->icmp_type = type;
    os->icmp_code = code;
    os->icmp_mtu = mtu;
    os->now = coarse_now();
    fabric_calls.call(ctx, slot);
    return STAT_drop_tail_call;
}

/* The ENI's VPC, if a packet can go into it: 0, or the reason it cannot. */
static __always_inline __u32 vpc_ready(__u32 vpc_idx, struct vpc **out)
{
    struct vpc *vpc = vpcs.lookup(&vpc_idx);
    if (!vpc || !(vpc->flags & VPC_F_ACTIVE))
        return STAT_drop_no_vpc;
    if (!(vpc->flags & VPC_F_GW_MAC))
        return STAT_drop_no_gateway_mac;
    *out = vpc;
    return 0;
}

/* Stage 7 for a translated packet: the VPC's MACs, the ENI's counters, the outer headers
 * stripped, redirected into the VPC. Returns `reason` when all went well. */
static __always_inline __u32 vpc_emit(struct xdp_md *ctx, struct fabric_pkt *p, struct vpc *vpc,
                                      __u32 eni_idx, __u32 reason, int *action)
{
    mac_copy(p->ieth->h_dest, vpc->gateway_mac);
    mac_copy(p->ieth->h_source, vpc->if_mac);
    struct eni_stats *es = eni_stats_of(eni_idx);
    if (es) {
        es->tx_packets++;
        es->tx_bytes += p->bytes;
    }
    __u32 egress = vpc->tx_slot;
    void *data = (void *)(long)ctx->data;
    if (bpf_xdp_adjust_head(ctx, (int)(p->inner - data)))
        return STAT_drop_adjust_failed;
    *action = tx_ports.redirect_map(egress, XDP_DROP);
    return *action == XDP_REDIRECT ? reason : STAT_drop_no_tx_port;
}

/* The largest TCP segment that fits both the VPC's link and the tunnel (the fabric's MTU less
 * the outer IPv4, UDP, tunnel and inner Ethernet headers), less 40 bytes of IPv4 and TCP
 * headers: what a SYN or SYN/ACK may announce (MSS clamping). */
static __always_inline __u16 mss_of(struct node_cfg *cfg, struct vpc *vpc)
{
    __u32 mtu = cfg->fabric_mtu > ENCAP_LEN + 40 ? cfg->fabric_mtu - ENCAP_LEN : 1500;
    if (vpc->mtu && vpc->mtu < mtu)
        mtu = vpc->mtu;
    return mtu > 40 + 536 ? mtu - 40 : 536; /* never below the IPv4 default (RFC 9293) */
}

/* Stages 6-7 for a packet whose flow and port are settled: SNAT onto the ENI (source address
 * and port, checksums, TTL, a SYN's MSS), then into the VPC. Returns the reason, `reason` when
 * all went well. */
static __always_inline __u32 snat_emit(struct xdp_md *ctx, struct node_cfg *cfg,
                                       struct fabric_pkt *p, __u32 vpc_idx, __u32 eni_idx,
                                       ipv4_t eni_addr, __be16 nat_port, __u32 reason,
                                       int *action)
{
    *action = XDP_DROP;
    struct vpc *vpc = NULL;
    __u32 bad = vpc_ready(vpc_idx, &vpc);
    if (bad || !vpc)
        return bad ?: STAT_drop_no_vpc;
    struct iphdr *iip = p->iip;
    __u32 tot = bpf_ntohs(iip->tot_len);
    if (vpc->mtu && tot > vpc->mtu) { /* the VPC link would drop it: say so, when due */
        if (iip->frag_off & bpf_htons(IP_DF_))
            return fabric_call(ctx, p, FABRIC_CALL_REPLY, ICMP_DEST_UNREACH_, ICMP_FRAG_NEEDED_,
                               vpc->mtu);
        return STAT_drop_vpc_mtu;
    }
    /* every SYN, a retransmitted one too */
    if ((p->l4.tcp_flags & TH_SYN) && !(cfg->flags & NODE_F_NO_MSS_CLAMP))
        tcp_clamp_mss((struct tcphdr *)p->l4.sport, (void *)(long)ctx->data_end,
                      tot - iip->ihl * 4, mss_of(cfg, vpc));
    if (iip->frag_off & bpf_htons(IP_MF_)) { /* a first fragment: the later ones follow it */
        struct frag_key k = {.worker = p->t.oip->saddr, .scope = p->t.vni, .src = iip->saddr,
                             .dst = iip->daddr, .id = iip->id, .proto = iip->protocol};
        struct flow_key fk = {.vpc_idx = vpc_idx, .proto = iip->protocol, .eni_addr = eni_addr,
                              .remote = iip->daddr, .eni_port = nat_port,
                              .remote_port = p->l4.dport ? *p->l4.dport : 0};
        frag_note(&k, &fk, iip);
    }

    __be16 *sport = p->l4.sport;
    ipv4_t old_src = iip->saddr;
    __u16 old_port = *sport;
    iip->saddr = eni_addr;
    iip->check = csum_replace4(iip->check, old_src, eni_addr);
    ipv4_dec_ttl(iip);
    l4_csum_fix(iip->protocol, p->l4.check, old_src, eni_addr, old_port, nat_port);
    *sport = nat_port;
    return vpc_emit(ctx, p, vpc, eni_idx, reason, action);
}

/* The ENI behind a VNI, and the start of its flows' key. */
static __always_inline struct eni *flow_key_of(struct node_cfg *cfg, struct fabric_pkt *p,
                                               struct flow_key *fk)
{
    struct eni *eni = eni_of(cfg, p->t.vni);
    __builtin_memset(fk, 0, sizeof(*fk));
    if (eni) {
        fk->vpc_idx = eni->vpc_idx;
        fk->proto = p->iip->protocol;
        fk->eni_addr = eni->addr;
        fk->remote = p->iip->daddr;
        fk->remote_port = p->l4.dport ? *p->l4.dport : 0;
    }
    return eni;
}

/* Where a flow's probe starts in its ENI's range (Lemire's multiply-shift maps the hash onto
 * the range without a division). */
static __always_inline __u32 probe_start_of(struct node_cfg *cfg, struct fabric_pkt *p,
                                            ipv4_t env, __be16 env_port, struct flow_key *fk,
                                            __u32 range)
{
    return ((__u64)port_hash(cfg->port_secret, p->t.oip->saddr, p->t.vni, env, env_port,
                             fk->remote, fk->remote_port, fk->proto) *
            range) >> 32;
}

/* The same for the environment's packet itself (its source address and port). */
static __always_inline __u32 probe_start(struct node_cfg *cfg, struct fabric_pkt *p,
                                         struct flow_key *fk, __u32 range)
{
    return probe_start_of(cfg, p, p->iip->saddr, *p->l4.sport, fk, range);
}

static __always_inline __u32 port_range(struct eni *eni)
{
    __u32 lo = eni->port_lo, hi = eni->port_hi;
    return (lo && hi >= lo) ? hi - lo + 1 : 0;
}

/* An environment's ICMP packet that is not an echo request: an error (RFC 792) goes on to
 * xdp_fabric_icmp; anything else is unsupported. */
static __always_inline __u32 icmp_error_call(struct xdp_md *ctx, struct fabric_pkt *p)
{
    void *data_end = (void *)(long)ctx->data_end;
    __u8 *l4 = (void *)p->iip + p->iip->ihl * 4;
    if ((void *)(l4 + 1) > data_end || !icmp_is_error(l4[0]))
        return STAT_drop_icmp_unsupported;
    return fabric_call(ctx, p, FABRIC_CALL_ICMP, 0, 0, 0);
}

/* xdp_fabric: the established path whole, and the stages before it. Anything else that an
 * environment sends (a new flow, an expired one, a TCP segment with no live flow) goes on to
 * xdp_fabric_open by a tail call: the verifier then walks each program on its own, where one
 * program had to be walked once for every way the flow walk could end. */
int xdp_fabric(struct xdp_md *ctx)
{
    __u32 reason = STAT_pass_not_tunnel;
    int action = XDP_PASS;
    __u32 k0 = 0;

    struct stats *st = stats.lookup(&k0);
    count(st, STAT_rx_fabric);
    struct node_cfg *cfg = config.lookup(&k0);
    if (!cfg || !cfg->fabric_ip)
        goto out;
    struct fabric_pkt p;
    reason = fabric_front(ctx, st, cfg, &p, 1, &action);
    if (reason == STAT_drop_icmp_unsupported) {
        reason = icmp_error_call(ctx, &p); /* an environment's ICMP error: xdp_fabric_icmp */
        goto out;
    }
    if (reason == STAT_drop_ttl_expired) { /* answered with time exceeded, when due */
        reason = fabric_call(ctx, &p, FABRIC_CALL_REPLY, ICMP_TIME_EXCEEDED_, 0, 0);
        goto out;
    }
    if (reason == STAT_fwd_fragment) { /* a later fragment: its first one's flow */
        reason = fabric_call(ctx, &p, FABRIC_CALL_FRAG, 0, 0, 0);
        goto out;
    }
    if (reason)
        goto out;

    /* Where the headers are, for xdp_fabric_open: taken now, as plain numbers, so that the
     * outer headers' pointers are not needed after the walk (the verifier then treats paths
     * that differ only in where the outer headers were as one). */
    struct open_scratch *os = open_scratch.lookup(&k0);
    if (!os) {
        reason = STAT_drop_tail_call;
        goto out;
    }
    scratch_offsets(os, (void *)(long)ctx->data, &p);

    /* 5. Flow lookup along the probe of the ENI's port range. */
    struct flow_key fk;
    struct eni *eni = flow_key_of(cfg, &p, &fk);
    if (!eni) {
        reason = STAT_drop_unknown_vni;
        goto out;
    }
    __u32 lo = eni->port_lo;
    __u32 range = port_range(eni);
    __u32 start = probe_start(cfg, &p, &fk, range);
    __u32 vpc_idx = eni->vpc_idx;
    __u32 eni_idx = eni->eni_idx;
    ipv4_t eni_addr = eni->addr;
    __u64 now = coarse_now();
    __u8 tcp_flags = p.l4.tcp_flags;
    __u8 l4proto = fk.proto;
    __u32 secret = cfg->port_secret;
    __u32 gen = hot_gen_now();

    /* 5a. The short way: the flow's slot in flow_hot, at the probe's first port (where all but
     * a few flows sit). Only packets that change nothing but the time and the counters take
     * it: a TCP flag that could change the state, or an environment MAC that moved, goes the
     * long way, which keeps the flows entry true for them. */
    int hot_on = !(cfg->flags & NODE_F_NO_HOT);
    if (range && !(tcp_flags & TH_SYN) && hot_on) { /* a SYN goes the long way: no need to look */
        fk.eni_port = probe_port(lo, range, start, 0);
        struct flow_hot *h = hot_find(&fk, secret);
        if (h) {
            __u64 hseen = hot_time(&h);
            __u8 hstate = h->state;
            if (hot_usable(cfg, h, l4proto, gen, hseen, now) &&
                hot_owner_is(h, p.t.oip->saddr, p.t.vni, p.iip->saddr, *p.l4.sport) &&
                !(tcp_flags & (TH_SYN | TH_FIN | TH_RST)) &&
                !(state_bits_out(tcp_flags, hstate) & ~hstate) &&
                mac_equal(h->env_mac, p.ieth->h_source)) {
                if (now != hseen)
                    h->last_seen_ns = now;
                h->tx_packets++;
                h->tx_bytes += p.bytes;
                reason = snat_emit(ctx, cfg, &p, vpc_idx, eni_idx, eni_addr, fk.eni_port,
                                   STAT_fwd_established, &action);
                goto out;
            }
        }
    }

    /* 5b, 5c. The long way, in a program of its own (xdp_fabric_long). */
    os->now = now;
    fabric_long.call(ctx, 0);
    reason = STAT_drop_tail_call; /* only reached when the tail call failed */
out:
    return record(ctx, st, reason, action, EVENT_DIR_FABRIC);
}

/* The headers xdp_fabric parsed, found again at the offsets it left in open_scratch. Bounds
 * are checked again (the verifier asks for it; the frame has not changed). */
static __always_inline __u32 fabric_again_ip(struct xdp_md *ctx, struct open_scratch *os,
                                             struct fabric_pkt *p)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    p->t.oeth = data;
    p->t.tags = NULL;
    p->t.depth = 0;
    p->t.oip = data + (os->oip_off & 0x3F);
    p->t.oudp = data + (os->oudp_off & 0x7F);
    p->inner = data + (os->inner_off & 0x1FF);
    p->ieth = p->inner;
    p->iip = p->inner + sizeof(struct ethhdr);
    if ((void *)(p->t.oeth + 1) > data_end || (void *)(p->t.oip + 1) > data_end ||
        (void *)(p->t.oudp + 1) > data_end || (void *)(p->iip + 1) > data_end)
        return STAT_drop_tail_call;
    __u8 *th = (__u8 *)(p->t.oudp + 1); /* VXLAN and GENEVE both carry the VNI in bytes 4-6 */
    if ((void *)(th + 8) > data_end)
        return STAT_drop_tail_call;
    p->t.tunnel = p->t.oudp->dest == bpf_htons(GENEVE_PORT) ? TUNNEL_GENEVE : TUNNEL_VXLAN;
    p->t.vni = ((__u32)th[4] << 16) | ((__u32)th[5] << 8) | th[6];
    p->bytes = data_end - p->inner;
    return 0;
}

/* The same, with the transport header: for the programs that translate ports. */
static __always_inline __u32 fabric_again(struct xdp_md *ctx, struct open_scratch *os,
                                          struct fabric_pkt *p)
{
    __u32 bad = fabric_again_ip(ctx, os, p);
    if (bad)
        return bad;
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    __u8 *l4 = data + (os->l4_off & 0x3FF);
    if ((void *)(l4 + 8) > data_end)
        return STAT_drop_tail_call;
    p->l4.tcp_flags = 0;
    p->l4.dport = NULL;
    __u8 proto = p->iip->protocol;
    if (proto == IPPROTO_TCP) {
        if ((void *)(l4 + sizeof(struct tcphdr)) > data_end)
            return STAT_drop_tail_call;
        p->l4.sport = (__be16 *)l4;
        p->l4.dport = (__be16 *)(l4 + 2);
        p->l4.check = (__u16 *)(l4 + 16);
        p->l4.tcp_flags = l4[13];
    } else if (proto == IPPROTO_UDP) {
        p->l4.sport = (__be16 *)l4;
        p->l4.dport = (__be16 *)(l4 + 2);
        p->l4.check = (__u16 *)(l4 + 6);
    } else {
        p->l4.sport = (__be16 *)(l4 + 4); /* the echo request's identifier */
        p->l4.check = (__u16 *)(l4 + 2);
    }
    return 0;
}

/* What a program that xdp_fabric tail-calls starts from: the node's configuration, what
 * xdp_fabric left in open_scratch, and the headers found again (the transport header too when
 * `l4`). 0, or the reason. */
static __always_inline __u32 tail_enter(struct xdp_md *ctx, struct node_cfg **cfg,
                                        struct open_scratch **os, struct fabric_pkt *p, int l4)
{
    __u32 k0 = 0;
    *cfg = config.lookup(&k0);
    *os = open_scratch.lookup(&k0);
    if (!*cfg || !*os)
        return STAT_drop_tail_call;
    return l4 ? fabric_again(ctx, *os, p) : fabric_again_ip(ctx, *os, p);
}

/* tail_enter for the programs that work on the packet's flow: its key and its ENI too. */
static __always_inline __u32 tail_enter_flow(struct xdp_md *ctx, struct node_cfg **cfg,
                                             struct open_scratch **os, struct fabric_pkt *p,
                                             struct flow_key *fk, struct eni **eni)
{
    __u32 bad = tail_enter(ctx, cfg, os, p, 1);
    if (bad)
        return bad;
    *eni = flow_key_of(*cfg, p, fk);
    return *eni ? 0 : STAT_drop_unknown_vni;
}

/* xdp_fabric_long (entered only by xdp_fabric's tail call, never attached): an environment's
 * packet that the short way did not serve. It walks the probe for the flow's entry: a live one
 * takes the established long way (5b), the rest go on to xdp_fabric_open (5c). A program of its
 * own because the verifier walks everything after the probe once for each place the walk can
 * stop: inside xdp_fabric that cost 660,000 of the million instructions it will walk, and left
 * the short way none to grow by. */
int xdp_fabric_long(struct xdp_md *ctx)
{
    int action = XDP_DROP;
    __u32 k0 = 0;
    struct stats *st = stats.lookup(&k0);
    struct node_cfg *cfg;
    struct open_scratch *os;
    struct fabric_pkt p;
    struct flow_key fk;
    struct eni *eni;
    __u32 reason = tail_enter_flow(ctx, &cfg, &os, &p, &fk, &eni);
    if (reason)
        goto out;
    __u32 lo = eni->port_lo;
    __u32 range = port_range(eni);
    __u32 start = probe_start(cfg, &p, &fk, range);
    __u32 vpc_idx = eni->vpc_idx;
    __u32 eni_idx = eni->eni_idx;
    ipv4_t eni_addr = eni->addr;
    __u64 now = os->now;
    __u8 tcp_flags = p.l4.tcp_flags;
    __u8 l4proto = fk.proto;
    __u32 secret = cfg->port_secret;
    __u32 gen = hot_gen_now();
    int hot_on = !(cfg->flags & NODE_F_NO_HOT);

    struct flow_guard *g = flow_guard.lookup(&k0);
    struct probe pr;
    flow_walk(&fk, g, lo, range, start, p.t.oip->saddr, p.t.vni, p.iip->saddr, *p.l4.sport, &pr);
    struct flow *f = pr.f;
    if (f) {
        __u8 state = f->state;
        /* A live flow, unless it is a closed TCP connection that a SYN opens again. */
        int reopens = l4proto == IPPROTO_TCP && tcp_opens(tcp_flags) &&
                      (state & (FLOW_S_FIN_OUT | FLOW_S_FIN_IN)) == (FLOW_S_FIN_OUT | FLOW_S_FIN_IN);
        if (flow_live_hot(cfg, &fk, f, state, pr.seen, now) && !reopens) {
            /* 5b. Established, the long way. Revoking a placement flushes the pair's flows
             * (datapath.py), so an entry found here was opened by a worker that is still
             * placed. */
            if (pr.probed)
                count(st, STAT_flow_probed);
            /* Plain adds: a flow's packets arrive on one CPU (RSS hashes the outer flow),
             * and these counters serve expiry and inspection, where a rare lost increment
             * does no harm. */
            if (now != pr.seen) /* store only what changed: fewer dirty lines to write */
                f->last_seen_ns = now;
            f->tx_packets++;
            f->tx_bytes += p.bytes;
            if (tcp_flags) { /* TCP only (0 for the rest) */
                __u8 add = state_bits_out(tcp_flags, state);
                if (add & ~state)
                    f->state = state | add;
            }
            if (!mac_equal(f->env_mac, p.ieth->h_source)) /* replies follow the environment */
                mac_copy(f->env_mac, p.ieth->h_source);
            /* Its slot, from the entry as it is now. A flow further along its probe has one
             * too when the return path gave it one: the short way forward looks only at the
             * probe's first port, but the return's must not keep a state or MAC that changed.
             * With the slots off, none is touched (turning them on stops them all). */
            if (hot_on)
                hot_install(&fk, f, secret, gen, now, 0, 1, 1);
            reason = snat_emit(ctx, cfg, &p, vpc_idx, eni_idx, eni_addr, fk.eni_port,
                               STAT_fwd_established, &action);
            goto out;
        }
    }
    /* 5c. No live flow: xdp_fabric_open decides, with what the walk found (os->now is
     * xdp_fabric's already). */
    os->seen = pr.seen;
    os->own_port = f ? fk.eni_port : 0;
    os->free_port = pr.free_port;
    os->free_depth = pr.free_depth;
    fabric_calls.call(ctx, FABRIC_CALL_OPEN);
    reason = STAT_drop_tail_call; /* only reached when the tail call failed */
out:
    return record(ctx, st, reason, action, EVENT_DIR_FABRIC);
}

/* xdp_fabric_open (entered only by xdp_fabric's tail call, never attached): a packet of an
 * environment's tuple that has no live flow. It opens one (a new entry, the tuple's own entry
 * again, or another tuple's expired entry taken over), or answers a TCP segment that does not
 * open a connection with a RST, or drops with the reason. */
int xdp_fabric_open(struct xdp_md *ctx)
{
    int action = XDP_DROP;
    __u32 k0 = 0;
    struct stats *st = stats.lookup(&k0);
    struct node_cfg *cfg;
    struct open_scratch *os;
    struct fabric_pkt p;
    struct flow_key fk;
    struct eni *eni;
    __u32 reason = tail_enter_flow(ctx, &cfg, &os, &p, &fk, &eni);
    if (reason)
        goto out;
    ipv4_t worker = p.t.oip->saddr;
    __u32 vni = p.t.vni;
    ipv4_t env = p.iip->saddr;
    __be16 env_port = *p.l4.sport;
    __u8 l4proto = fk.proto;
    __u8 tcp_flags = p.l4.tcp_flags;
    __u32 eni_idx = eni->eni_idx;
    __u64 now = os->now;
    __u64 seen = os->seen;

    if (!worker_placed(worker, vni)) {
        reason = STAT_drop_worker_not_placed;
        goto out;
    }
    /* A SYN without ACK (or RST) opens a TCP connection; any other segment needs a live
     * flow, and a RST never gets one in answer. */
    if (l4proto == IPPROTO_TCP && !tcp_opens(tcp_flags)) {
        if (tcp_flags & TH_RST) {
            reason = STAT_drop_tcp_no_flow;
            goto out;
        }
        reason = tcp_rst_answer(ctx, cfg, &p.t, p.ieth, p.iip, (struct tcphdr *)p.l4.sport,
                                &action);
        goto out;
    }
    struct eni_stats *nes = eni_stats_of(eni_idx);
    if (!sg_allows(vni, l4proto, fk.remote, bpf_ntohs(fk.remote_port))) {
        if (nes)
            nes->sg_denied++;
        sg_denial_note(worker, vni, env, env_port, &fk, p.bytes, now);
        reason = STAT_drop_sg_denied;
        goto out;
    }
    struct flow nf;
    __builtin_memset(&nf, 0, sizeof(nf));
    nf.last_seen_ns = now;
    nf.tx_packets = 1;
    nf.tx_bytes = p.bytes;
    nf.worker = worker;
    nf.vni = vni;
    nf.env_addr = env;
    nf.env_port = env_port;
    nf.eni_idx = eni_idx;
    mac_copy(nf.env_mac, p.ieth->h_source);
    nf.tunnel = p.t.tunnel;
    nf.state = state_bits_out(tcp_flags, 0);
    reason = STAT_fwd_new_flow;

    if (os->own_port) {
        /* The tuple's own entry, expired, reset or closed: opened again in place, if it is
         * still as the walk saw it. */
        fk.eni_port = os->own_port;
        struct flow *f = flows.lookup(&fk);
        if (!f || !flow_owned_by(f, worker, vni, env, env_port) || !flow_claim(f, seen)) {
            reason = STAT_drop_port_race;
            goto out;
        }
        flow_publish(f, &nf);
        count(st, STAT_flow_reopened);
        if (nes)
            nes->flows_created++;
        goto emit;
    }
    __u32 lo = eni->port_lo;
    __u32 range = port_range(eni);
    __u32 limit = eni->max_flows ?: cfg->flows_per_eni;
    __be16 free_port = os->free_port;
    int over = free_port && eni_full(eni_idx, limit);
    if (free_port && !over) {
        /* Claim the free slot with a BPF_NOEXIST insert. Losing it to another CPU that
         * opened this very flow means following that entry; losing it to another flow drops
         * this one packet (the next one walks again): rare, and it keeps the walk a single
         * loop, which is what keeps the program verifiable. */
        struct flow_guard *g = flow_guard.lookup(&k0);
        fk.eni_port = free_port;
        guard_before_insert(g);
        long err = flows.insert(&fk, &nf);
        if (err == 0) {
            guard_count(g, os->free_depth);
            eni_flows_add(eni_idx, 1);
            if (nes)
                nes->flows_created++;
        } else {
            struct flow *w = flows.lookup(&fk);
            if (!w || !flow_owned_by(w, worker, vni, env, env_port)) {
                reason = err == -E_EXIST ? STAT_drop_port_race : STAT_drop_flow_insert;
                goto out;
            }
            count(st, STAT_flow_insert_race);
            __sync_fetch_and_add(&w->tx_packets, 1);
            __sync_fetch_and_add(&w->tx_bytes, p.bytes);
        }
        goto emit;
    }
    /* No empty slot it may use: an expired entry of another tuple along the probe, before
     * the first empty slot, taken over as it is now or not at all (another CPU took it). */
    __u32 stale_depth = 0;
    __be16 stale = stale_walk(&fk, cfg, now, lo, range, probe_start(cfg, &p, &fk, range),
                              free_port ? os->free_depth : PORT_TRIES, &stale_depth);
    if (stale) {
        fk.eni_port = stale;
        struct flow *sf = flows.lookup(&fk);
        if (!sf) {
            reason = STAT_drop_port_race;
            goto out;
        }
        __u64 sseen = flow_seen(&sf);
        __u32 old_idx = sf->eni_idx;
        takeover_race_point(sf, now);
        if (!flow_claimable_hot(cfg, &fk, sf, sf->state, sseen, now) ||
            !flow_claim(sf, sseen)) {
            reason = STAT_drop_port_race;
            goto out;
        }
        flow_publish(sf, &nf);
        guard_depth(flow_guard.lookup(&k0), stale_depth); /* where it sits on its own probe */
        if (old_idx != eni_idx) { /* an address that changed ENIs: the entry changes too */
            eni_flows_add(eni_idx, 1);
            eni_flows_add(old_idx, -1);
        }
        count(st, STAT_flow_takeover);
        if (nes)
            nes->flows_created++;
        goto emit;
    }
    if (over) {
        if (nes)
            nes->flows_limited++;
        reason = STAT_drop_flow_limit;
        goto out;
    }
    if (nes)
        nes->port_alloc_failed++;
    reason = STAT_drop_port_exhausted;
    goto out;

emit:
    /* Its slot, if its set has room: a slot that held this key held a flow that is gone. */
    hot_install(&fk, &nf, cfg->port_secret, hot_gen_now(), now, 1, 0,
                !(cfg->flags & NODE_F_NO_HOT));
    reason = snat_emit(ctx, cfg, &p, eni->vpc_idx, eni_idx, eni->addr, fk.eni_port, reason,
                       &action);
out:
    return record(ctx, st, reason, action, EVENT_DIR_FABRIC);
}

/* xdp_fabric_reply (entered only by tail calls, never attached): the node's own ICMP answer to
 * an environment's packet, sent back through the tunnel it came in. Time exceeded for a packet
 * whose TTL would reach 0 (so traceroute from a function shows the node), fragmentation needed
 * with the VPC link's MTU for one too big for it with DF set (RFC 1191), as open_scratch says.
 * The answer leaves from the tunnel gateway's address (node_cfg.tunnel_gateway) and quotes the
 * packet as the environment sent it; packets that may not be answered (icmp_may_answer), or
 * answers over the rate, are dropped and counted. */
int xdp_fabric_reply(struct xdp_md *ctx)
{
    int action = XDP_DROP;
    __u32 k0 = 0;
    struct stats *st = stats.lookup(&k0);
    struct node_cfg *cfg;
    struct open_scratch *os;
    struct fabric_pkt p;
    __u32 reason = tail_enter(ctx, &cfg, &os, &p, 0);
    if (reason)
        goto out;
    __u8 type = os->icmp_type, code = os->icmp_code;
    __u16 mtu = os->icmp_mtu;
    __u32 vni = p.t.vni;
    ipv4_t worker = p.t.oip->saddr;
    if (!eni_of(cfg, vni)) {
        reason = STAT_drop_unknown_vni;
        goto out;
    }
    if (!worker_placed(worker, vni)) {
        reason = STAT_drop_worker_not_placed;
        goto out;
    }
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct iphdr *iip = p.iip;
    reason = type == ICMP_TIME_EXCEEDED_ ? STAT_drop_ttl_expired : STAT_drop_vpc_mtu;
    if (!icmp_may_answer(iip, p.ieth->h_dest, data_end) || !cfg->tunnel_gateway)
        goto out;
    if (!icmp_allowed(cfg)) {
        reason = STAT_drop_icmp_ratelimit;
        goto out;
    }
    /* What the answer keeps of the frame: the worker's MAC and tags, the tunnel, the
     * environment; the quote stays where it is and the headers are written anew before it. */
    __u32 qlen = icmp_quote_len(iip);
    __u16 oip_off = os->oip_off; /* after the Ethernet header and its tags */
    __u32 depth = oip_off == sizeof(struct ethhdr) + 2 * VLAN_TAG_LEN ? 2
                  : oip_off == sizeof(struct ethhdr) + VLAN_TAG_LEN ? 1 : 0;
    struct vlan_tag tags[MAX_VLAN_DEPTH] = {};
    struct vlan_hdr_ *v = data + sizeof(struct ethhdr);
    if (depth >= 1 && (void *)(v + 1) <= data_end) {
        tags[0].tpid = p.t.oeth->h_proto;
        tags[0].tci = v->tci;
        struct vlan_hdr_ *v2 = v + 1;
        if (depth >= 2 && (void *)(v2 + 1) <= data_end) {
            tags[1].tpid = v->proto;
            tags[1].tci = v2->tci;
        }
    }
    __u8 wmac[6], emac[6];
    mac_copy(wmac, p.t.oeth->h_source);
    mac_copy(emac, p.ieth->h_source);
    ipv4_t env = iip->saddr;
    __be16 usport = p.t.oudp->source;
    __u8 tunnel = p.t.tunnel;
    __u32 l3_off = sizeof(struct ethhdr) + depth * VLAN_TAG_LEN;
    /* outer IPv4, UDP, tunnel, inner Ethernet, then the answer's IPv4 and ICMP headers */
    __u32 hdrs = l3_off + 20 + 8 + 8 + sizeof(struct ethhdr) + ICMP_ERR_HDRS;
    if (bpf_xdp_adjust_head(ctx, (int)((void *)iip - data) - (int)hdrs)) {
        reason = STAT_drop_adjust_failed;
        goto out;
    }
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    reason = STAT_drop_adjust_failed;
    __u32 len = hdrs + qlen;
    struct ethhdr *ieth = encap_write(data, data_end, cfg, wmac, tags, depth, worker,
                                      len - l3_off, usport, tunnel, vni);
    if (!ieth)
        goto out;
    struct iphdr *nip = (void *)(ieth + 1);
    if ((void *)(nip + 1) > data_end)
        goto out;
    mac_copy(ieth->h_dest, emac);
    mac_copy(ieth->h_source, cfg->gateway_mac);
    ieth->h_proto = bpf_htons(ETH_P_IPV4);
    if (icmp_err_fill(nip, data_end, cfg->tunnel_gateway, env, type, code, mtu, qlen))
        goto out;
    int delta = (int)len - (int)(data_end - data);
    if (delta && bpf_xdp_adjust_tail(ctx, delta))
        goto out;
    action = XDP_TX;
    reason = type == ICMP_TIME_EXCEEDED_ ? STAT_tx_icmp_time_exceeded : STAT_tx_icmp_frag_needed;
out:
    return record(ctx, st, reason, action, EVENT_DIR_FABRIC);
}

/* xdp_fabric_frag (entered only by xdp_fabric's tail call, never attached): a later fragment
 * from an environment. It carries no ports: it follows the flow its datagram's first fragment
 * opened or found (frags), and only its source address is translated. */
int xdp_fabric_frag(struct xdp_md *ctx)
{
    int action = XDP_DROP;
    __u32 k0 = 0;
    struct stats *st = stats.lookup(&k0);
    struct node_cfg *cfg;
    struct open_scratch *os;
    struct fabric_pkt p;
    __u32 reason = tail_enter(ctx, &cfg, &os, &p, 0);
    if (reason)
        goto out;
    struct iphdr *iip = p.iip;
    if (iip->ttl <= 1) { /* no answer to a later fragment (RFC 1812 4.3.2.7) */
        reason = STAT_drop_ttl_expired;
        goto out;
    }
    ipv4_t worker = p.t.oip->saddr;
    __u32 vni = p.t.vni;
    ipv4_t env = iip->saddr;
    struct frag_key k = {.worker = worker, .scope = vni};
    struct flow_key fk;
    __u64 now = os->now;
    reason = frag_find(&k, iip, now, &fk);
    if (reason)
        goto out;
    reason = STAT_drop_frag_no_first; /* unless the datagram's flow is still there, and live */
    struct flow *f = flows.lookup(&fk);
    if (!f)
        goto out;
    __u64 seen = flow_seen(&f);
    if (f->worker != worker || f->vni != vni || f->env_addr != env ||
        !flow_live_hot(cfg, &fk, f, f->state, seen, now))
        goto out;
    struct vpc *vpc = NULL;
    reason = vpc_ready(fk.vpc_idx, &vpc);
    if (reason || !vpc) {
        reason = reason ?: STAT_drop_no_vpc;
        goto out;
    }
    if (vpc->mtu && bpf_ntohs(iip->tot_len) > vpc->mtu) { /* a fragment has no DF to heed */
        reason = STAT_drop_vpc_mtu;
        goto out;
    }
    f->tx_packets++;
    f->tx_bytes += p.bytes;
    iip->saddr = fk.eni_addr;
    iip->check = csum_replace4(iip->check, env, fk.eni_addr);
    ipv4_dec_ttl(iip);
    reason = vpc_emit(ctx, &p, vpc, f->eni_idx, STAT_fwd_fragment, &action);
out:
    return record(ctx, st, reason, action, EVENT_DIR_FABRIC);
}

/* ARP on a VPC-side interface: answer requests for ENI addresses, leave the rest to the kernel.
 * The gateway's MAC, the next hop of every forward packet into the VPC, is learned from the first
 * ARP that gives it (or set by the operator) and then kept: any host in the VPC can claim the
 * gateway's address, and one that did would become the next hop of the whole VPC. A different MAC
 * is counted (gw_mac_conflict) and adopted only after `vpc relearn`. */
static __always_inline __u32 vpc_arp(struct cursor *c, struct stats *st, struct vpc *vpc,
                                     __u32 vpc_idx, struct ethhdr *eth, int *action)
{
    struct arp_eth_ipv4 *arp = CURSOR_TAKE(c, struct arp_eth_ipv4);
    *action = XDP_PASS;
    if (!arp || arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IPV4) ||
        arp->hlen != 6 || arp->plen != 4)
        return STAT_pass_vpc_arp;
    if (arp->spa == vpc->gateway_ip && arp->spa != 0) {
        __u32 flags = vpc->flags;
        if (!(flags & VPC_F_GW_MAC) || (flags & VPC_F_GW_RELEARN)) {
            mac_copy(vpc->gateway_mac, arp->sha);
            vpc->flags = (flags | VPC_F_GW_MAC) & ~(VPC_F_GW_RELEARN | VPC_F_GW_STATIC);
            count(st, STAT_gw_mac_learned);
        } else if (!mac_equal(vpc->gateway_mac, arp->sha)) {
            count(st, STAT_gw_mac_conflict);
        }
    }
    if (arp->op != bpf_htons(1))
        return STAT_pass_vpc_arp;
    struct eni_addr_key ak = {.vpc_idx = vpc_idx, .addr = arp->tpa};
    if (!eni_addrs.lookup(&ak))
        return STAT_pass_vpc_arp;

    ipv4_t target = arp->tpa;
    mac_copy(arp->tha, arp->sha);
    arp->tpa = arp->spa;
    mac_copy(arp->sha, vpc->if_mac);
    arp->spa = target;
    arp->op = bpf_htons(2);
    mac_copy(eth->h_dest, eth->h_source);
    mac_copy(eth->h_source, vpc->if_mac);
    *action = XDP_TX;
    return STAT_tx_arp_vpc;
}

/* ICMP errors (RFC 792: destination unreachable, time exceeded, parameter problem) quote the
 * head of the packet they are about. For a packet an ENI sent, that is a flow's forward packet
 * after SNAT: its source is the ENI's address and the flow's port, so the quote names the flow
 * the way a reply does, with the roles swapped. */
struct icmp_err {
    struct icmphdr *ih;
    struct iphdr *eip;  /* the quoted IPv4 header */
    __u8 *el4;          /* the quoted transport header's first 8 bytes */
    __be16 nat_port;    /* the quoted source port, or echo identifier */
    __be16 remote_port;
    __u8 proto;
};

/* The quoted packet of an ICMP error sent to `ip->daddr`: 0 with `ie` filled, or the reason. */
static __always_inline __u32 icmp_error_parse(struct cursor *c, struct iphdr *ip,
                                              struct icmp_err *ie)
{
    struct icmphdr *ih = CURSOR_TAKE(c, struct icmphdr);
    if (!ih)
        return STAT_drop_icmp_error_malformed;
    ie->ih = ih;
    struct iphdr *eip = c->pos;
    if ((void *)(eip + 1) > c->end || eip->version != 4 || eip->ihl < 5)
        return STAT_drop_icmp_error_malformed;
    __u8 *el4 = (void *)eip + eip->ihl * 4;
    /* RFC 792: the header and 64 bits of data at least, within the IPv4 packet (what follows
     * it in the frame is Ethernet padding, not quote) */
    if ((void *)(el4 + 8) > c->end ||
        (long)((void *)(el4 + 8) - (void *)ip) > (long)bpf_ntohs(ip->tot_len))
        return STAT_drop_icmp_error_malformed;
    ie->eip = eip;
    ie->el4 = el4;
    ie->proto = eip->protocol;
    /* Only a packet the ENI sent, and one that carried its ports (not a later fragment). */
    if (eip->saddr != ip->daddr || (eip->frag_off & bpf_htons(0x1FFF)))
        return STAT_drop_icmp_error_no_flow;
    if (ie->proto == IPPROTO_TCP || ie->proto == IPPROTO_UDP) {
        ie->nat_port = *(__be16 *)el4;
        ie->remote_port = *(__be16 *)(el4 + 2);
    } else if (ie->proto == IPPROTO_ICMP && el4[0] == ICMP_ECHO && el4[1] == 0) {
        ie->nat_port = *(__be16 *)(el4 + 4);
        ie->remote_port = 0;
    } else {
        return STAT_drop_icmp_error_no_flow;
    }
    return 0;
}

/* RFC 5508 REQ-3/4, either way: one address becomes `to` in the outer header (*oaddr) and
 * in the quote (*qaddr, the same address there), and the quoted port (*qport) becomes
 * `to_port`, as if the receiver's own packet had caused the error. The outer IPv4 checksum and
 * TTL, the quoted IPv4 header's checksum, the quoted transport checksum (when the quote, within
 * the error's IPv4 length, carries it) and the ICMP checksum over the whole message follow
 * every change. */
static __always_inline void icmp_error_rewrite(struct iphdr *ip, ipv4_t *oaddr,
                                               struct icmphdr *ih, struct iphdr *eip,
                                               ipv4_t *qaddr, __u8 *el4, __u8 proto,
                                               __be16 *qport, ipv4_t to, __be16 to_port,
                                               void *data_end)
{
    ipv4_t from = *oaddr;
    *oaddr = to;
    ip->check = csum_replace4(ip->check, from, to);
    ipv4_dec_ttl(ip);

    __u16 ic = ih->checksum;
    __u16 old_ech = eip->check;
    *qaddr = to;
    eip->check = csum_replace4(old_ech, from, to);
    ic = csum_replace4(ic, from, to);
    ic = csum_replace2(ic, old_ech, eip->check);

    __be16 from_port = *qport;
    *qport = to_port;
    ic = csum_replace2(ic, from_port, to_port);

    __u16 *check = NULL;
    if (proto == IPPROTO_UDP)
        check = (__u16 *)(el4 + 6);
    else if (proto == IPPROTO_ICMP)
        check = (__u16 *)(el4 + 2);
    else if ((void *)(el4 + 18) <= data_end && /* TCP's checksum, if the error quotes it */
             (long)((void *)(el4 + 18) - (void *)ip) <= (long)bpf_ntohs(ip->tot_len))
        check = (__u16 *)(el4 + 16);
    if (check && (void *)(check + 1) <= data_end) {
        __u16 old = *check;
        l4_csum_fix(proto, check, from, to, from_port, to_port);
        ic = csum_replace2(ic, old, *check);
    }
    ih->checksum = ic;
}

/* An error from the VPC about a flow, for its environment: the ENI's address (the outer
 * destination, the quoted source) and the flow's port become the environment's. */
static __always_inline void icmp_error_translate(struct iphdr *ip, struct icmp_err *ie,
                                                 ipv4_t env, __be16 env_port, void *data_end)
{
    __u8 *el4 = ie->el4;
    __be16 *port = (__be16 *)(ie->proto == IPPROTO_ICMP ? el4 + 4 : el4);
    icmp_error_rewrite(ip, &ip->daddr, ie->ih, ie->eip, &ie->eip->saddr, el4, ie->proto, port,
                       env, env_port, data_end);
}

/* xdp_fabric_icmp (entered only by xdp_fabric's tail call, never attached): an ICMP error
 * that an environment sends about a packet it received from the VPC, say port unreachable for
 * a UDP reply. The quote is that reply as the environment saw it (remote -> environment); the
 * flow is the one the environment's own packets to that remote use, found by the same probe
 * walk. RFC 5508 REQ-3/4 the other way: the error leaves from the ENI address, quoting the
 * packet as the VPC sent it (to the ENI address and the flow's port), every checksum right. */
int xdp_fabric_icmp(struct xdp_md *ctx)
{
    int action = XDP_DROP;
    __u32 k0 = 0;
    struct stats *st = stats.lookup(&k0);
    struct node_cfg *cfg;
    struct open_scratch *os;
    struct fabric_pkt p;
    __u32 reason = tail_enter(ctx, &cfg, &os, &p, 1);
    if (reason)
        goto out;
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct icmphdr *ih = data + (os->l4_off & 0x3FF);
    struct iphdr *eip = (void *)(ih + 1);
    if ((void *)(eip + 1) > data_end || eip->version != 4 || eip->ihl < 5) {
        reason = STAT_drop_icmp_error_malformed;
        goto out;
    }
    __u8 *el4 = (void *)eip + eip->ihl * 4;
    struct iphdr *iip = p.iip;
    long quoted = (long)bpf_ntohs(iip->tot_len); /* beyond it: Ethernet padding, not quote */
    if ((void *)(el4 + 8) > data_end || (long)((void *)(el4 + 8) - (void *)iip) > quoted) {
        reason = STAT_drop_icmp_error_malformed;
        goto out;
    }
    if (iip->frag_off & bpf_htons(IP_MF_)) { /* the quote is all there is: never in parts */
        reason = STAT_drop_icmp_error_malformed;
        goto out;
    }
    ipv4_t env = iip->saddr;
    __u8 proto = eip->protocol;
    /* A packet the environment received, with its ports (TCP or UDP, not a later fragment). */
    if (eip->daddr != env || (eip->frag_off & bpf_htons(0x1FFF)) ||
        (proto != IPPROTO_TCP && proto != IPPROTO_UDP)) {
        reason = STAT_drop_icmp_error_no_flow;
        goto out;
    }
    struct eni *eni = eni_of(cfg, p.t.vni);
    if (!eni) {
        reason = STAT_drop_unknown_vni;
        goto out;
    }
    __be16 env_port = *(__be16 *)(el4 + 2);
    struct flow_key fk;
    __builtin_memset(&fk, 0, sizeof(fk));
    fk.vpc_idx = eni->vpc_idx;
    fk.proto = proto;
    fk.eni_addr = eni->addr;
    fk.remote = eip->saddr;
    fk.remote_port = *(__be16 *)el4;
    __u32 lo = eni->port_lo;
    __u32 range = port_range(eni);
    __u32 start = probe_start_of(cfg, &p, env, env_port, &fk, range);
    struct probe pr;
    flow_walk(&fk, flow_guard.lookup(&k0), lo, range, start, p.t.oip->saddr, p.t.vni, env,
              env_port, &pr);
    if (!pr.f || !flow_live_hot(cfg, &fk, pr.f, pr.f->state, pr.seen, os->now)) {
        reason = STAT_drop_icmp_error_no_flow;
        goto out;
    }
    struct vpc *vpc = NULL;
    reason = vpc_ready(eni->vpc_idx, &vpc);
    if (reason || !vpc) {
        reason = reason ?: STAT_drop_no_vpc;
        goto out;
    }
    if (vpc->mtu && quoted > vpc->mtu) { /* too big for the VPC link; an error gets no answer */
        reason = STAT_drop_vpc_mtu;
        goto out;
    }

    /* the environment's address (outer source, quoted destination) and port become the
     * ENI's address and the flow's port */
    icmp_error_rewrite(iip, &iip->saddr, ih, eip, &eip->daddr, el4, proto, (__be16 *)(el4 + 2),
                       eni->addr, fk.eni_port, data_end);
    pr.f->tx_packets++; /* counted with the flow, which it does not keep alive */
    pr.f->tx_bytes += p.bytes;
    reason = vpc_emit(ctx, &p, vpc, eni->eni_idx, STAT_fwd_icmp_error, &action);
out:
    return record(ctx, st, reason, action, EVENT_DIR_FABRIC);
}

int xdp_vpc(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct cursor c = {.pos = data, .end = data_end};
    __u32 reason = STAT_pass_vpc_not_eni;
    int action = XDP_PASS;
    __u32 k0 = 0;

    struct stats *st = stats.lookup(&k0);
    count(st, STAT_rx_vpc);
    __u32 ifindex = ctx->ingress_ifindex;
    __u32 *vpc_idx_p = vpc_of_if(ifindex);
    if (!vpc_idx_p) {
        reason = STAT_pass_vpc_unknown_if;
        goto out;
    }
    __u32 vpc_idx = *vpc_idx_p;
    struct vpc *vpc = vpcs.lookup(&vpc_idx);
    if (!vpc || !(vpc->flags & VPC_F_ACTIVE)) {
        reason = STAT_pass_vpc_unknown_if;
        goto out;
    }
    struct node_cfg *cfg = config.lookup(&k0);
    if (!cfg)
        goto out;
    struct ethhdr *eth = CURSOR_TAKE(&c, struct ethhdr);
    if (!eth)
        goto out;
    if (eth->h_proto == bpf_htons(ETH_P_ARPH)) {
        reason = vpc_arp(&c, st, vpc, vpc_idx, eth, &action);
        goto out;
    }
    if (eth->h_proto != bpf_htons(ETH_P_IPV4))
        goto out;
    struct iphdr *ip = c.pos;
    if ((void *)(ip + 1) > data_end)
        goto out;
    /* Whether the destination is an ENI address (ours: deliver or drop with a reason) or not
     * (the kernel's) is asked only when no flow answers: a flow exists only for an ENI
     * address, so an established reply needs no ENI lookup. */
    struct eni_addr_key ak = {.vpc_idx = vpc_idx, .addr = ip->daddr};
    struct icmp_err ie;
    int is_err = 0, later = 0;
    __u32 bad = 0;
    __u8 l4proto = 0, tcp_flags = 0;
    __be16 *dport_p = NULL, sport = 0;
    struct l4 l4;
    struct flow_key fk;
    __builtin_memset(&fk, 0, sizeof(fk));
    int rc = parse_ipv4(&c, &ip);
    if (rc != PARSE_OK) {
        bad = STAT_drop_vpc_malformed;
    } else if (ip->frag_off & bpf_htons(IP_OFFMASK_)) {
        /* a later fragment, no ports: the flow its first fragment found */
        later = 1;
        struct frag_key k = {.scope = vpc_idx | FRAG_K_RETURN};
        bad = frag_find(&k, ip, coarse_now(), &fk);
    } else {
        l4proto = ip->protocol;
        struct icmphdr *ih = c.pos;
        __u8 *l4h = c.pos;
        if (l4proto == IPPROTO_ICMP && (void *)(ih + 1) <= data_end && icmp_is_error(ih->type)) {
            is_err = 1;
            bad = icmp_error_parse(&c, ip, &ie);
            if (!bad && (ip->frag_off & bpf_htons(IP_MF_))) /* the quote is all there is */
                bad = STAT_drop_icmp_error_malformed;
        } else {
            rc = parse_l4(&c, l4proto, ICMP_ECHOREPLY, &l4);
            int first_frag = (ip->frag_off & bpf_htons(IP_MF_)) != 0;
            if (rc == PARSE_TRUNCATED && first_frag)
                bad = STAT_drop_frag_tiny;
            else if (rc != PARSE_OK || !l4.dport)
                bad = l4_reason(rc, STAT_drop_vpc_malformed);
            else if (first_frag && frag_tiny(ip, l4h, data_end))
                bad = STAT_drop_frag_tiny;
        }
    }
    if (bad) {
        if (eni_addrs.lookup(&ak)) {
            action = XDP_DROP;
            reason = bad;
        }
        goto out;
    }

    if (later) {
        /* fk is the datagram's flow, as its first fragment left it */
    } else if (is_err) { /* the quoted packet, the flow's own way round */
        fk.vpc_idx = vpc_idx;
        fk.eni_addr = ip->daddr;
        fk.proto = ie.proto;
        fk.remote = ie.eip->daddr;
        fk.eni_port = ie.nat_port;
        fk.remote_port = ie.remote_port;
    } else {
        fk.vpc_idx = vpc_idx;
        fk.eni_addr = ip->daddr;
        dport_p = l4.dport;
        sport = l4.sport ? *l4.sport : 0;
        tcp_flags = l4.tcp_flags;
        fk.proto = l4proto;
        fk.remote = ip->saddr;
        fk.eni_port = *dport_p;
        fk.remote_port = sport;
    }
    /* The short way (types.h: flow_hot): a reply whose slot is usable and which changes
     * nothing but the time and the counters takes its owner from the slot. */
    __u32 secret = cfg->port_secret;
    __u32 gen = hot_gen_now();
    __u64 now = coarse_now();
    struct flow_hot *h = NULL;
    __u64 hseen = 0;
    int hot_on = !(cfg->flags & NODE_F_NO_HOT);
    if (!later && !is_err && hot_on) {
        h = hot_find(&fk, secret);
        if (h) {
            hseen = hot_time(&h);
            __u8 hstate = h->state;
            if (!hot_usable(cfg, h, fk.proto, gen, hseen, now) ||
                (state_bits_in(tcp_flags) & ~hstate))
                h = NULL;
        }
    }
    struct flow_owner o;
    struct flow *f = NULL;
    __u64 seen = hseen;
    if (h) {
        __builtin_memcpy(&o, &h->worker, sizeof(o));
        /* The key again, after the owner: the scan matched it before the time was read, so a
         * slot that changed hands in between (another flow published whole, time last: an
         * idle slot taken, a flow moved out, hot_movable) would pass the time's checks and
         * hand this reply the new flow's owner. Stores are published key first, owner, time
         * last, and the owner is loaded before the key again (order.h), so an owner that is
         * the new flow's comes with its key. */
        order_fence();
        if (hot_key_is(h, &fk))
            goto live;
        h = NULL;
    }
    f = flows.lookup(&fk);
    if (!f) {
        if (later) { /* the first fragment's flow is gone */
            action = XDP_DROP;
            reason = STAT_drop_frag_no_first;
        } else if (eni_addrs.lookup(&ak)) {
            action = XDP_DROP;
            /* unsolicited: environments accept no inbound */
            reason = is_err ? STAT_drop_icmp_error_no_flow : STAT_drop_no_flow;
        }
        goto out;
    }
    /* Addressed to an ENI, with a flow: ours to deliver or to drop with a reason. */
    action = XDP_DROP;
    seen = flow_seen(&f); /* before the owner (flow lifecycle) */
    __builtin_memcpy(&o, &f->worker, sizeof(o));
    if (flow_vanished(&fk, f)) {
        reason = is_err ? STAT_drop_icmp_error_no_flow
                        : later ? STAT_drop_frag_no_first : STAT_drop_no_flow;
        goto out;
    }
    if (!flow_live_hot(cfg, &fk, f, o.state, seen, now)) {
        /* its owner may be gone, its port another's soon */
        reason = is_err ? STAT_drop_icmp_error_no_flow
                        : later ? STAT_drop_frag_no_first : STAT_drop_flow_expired;
        goto out;
    }
live:
    action = XDP_DROP;
    /* The node is the hop between the VPC and the environment: a TTL that would reach 0 is
     * answered (time exceeded, from the ENI address), unless no answer is due. */
    if (ip->ttl <= 1) {
        reason = STAT_drop_ttl_expired;
        if (!is_err)
            reason = vpc_icmp_answer(ctx, cfg, vpc, ICMP_TIME_EXCEEDED_, 0, 0,
                                     STAT_drop_ttl_expired, &action);
        goto out;
    }
    struct worker *w = worker_of(o.worker);
    if (!w) {
        reason = STAT_drop_unknown_worker;
        goto out;
    }
    __u8 wmac[6];
    mac_copy(wmac, w->mac);
    __u32 depth = w->vlan_depth;
    struct vlan_tag tags[MAX_VLAN_DEPTH];
    __builtin_memcpy(tags, w->vlans, sizeof(tags));
    if (depth > MAX_VLAN_DEPTH)
        depth = MAX_VLAN_DEPTH;
    __u32 frame_len = data_end - data;
    if (cfg->fabric_mtu && frame_len + ENCAP_LEN - 14 > cfg->fabric_mtu) {
        /* too big for the tunnel: with DF, the sender learns what fits inside it (RFC 1191) */
        reason = STAT_drop_fabric_mtu;
        if (!is_err && (ip->frag_off & bpf_htons(IP_DF_)) && cfg->fabric_mtu > ENCAP_LEN)
            reason = vpc_icmp_answer(ctx, cfg, vpc, ICMP_DEST_UNREACH_, ICMP_FRAG_NEEDED_,
                                     cfg->fabric_mtu - ENCAP_LEN, STAT_drop_fabric_mtu, &action);
        goto out;
    }

    if (later) {
        /* no ports: only the address, as the first fragment's was */
        ipv4_t old_dst = ip->daddr;
        ip->daddr = o.env_addr;
        ip->check = csum_replace4(ip->check, old_dst, o.env_addr);
        ipv4_dec_ttl(ip);
        reason = STAT_rev_fragment;
    } else if (is_err) {
        /* An error about the flow: translated, delivered, and no sign of the flow's life. */
        icmp_error_translate(ip, &ie, o.env_addr, o.env_port, data_end);
        reason = STAT_rev_icmp_error;
    } else {
        /* Reverse translation: destination back to the environment's address and port. */
        ipv4_t old_dst = ip->daddr;
        __u16 old_port = *dport_p;
        if (ip->frag_off & bpf_htons(IP_MF_)) { /* a first fragment: the later ones follow it */
            struct frag_key k = {.scope = vpc_idx | FRAG_K_RETURN, .src = ip->saddr,
                                 .dst = old_dst, .id = ip->id, .proto = l4proto};
            frag_note(&k, &fk, ip);
        }
        ip->daddr = o.env_addr;
        ip->check = csum_replace4(ip->check, old_dst, o.env_addr);
        ipv4_dec_ttl(ip);
        l4_csum_fix(l4proto, l4.check, old_dst, o.env_addr, old_port, o.env_port);
        *dport_p = o.env_port;
        /* the SYN/ACK: what the environment may send fits the path */
        if ((tcp_flags & TH_SYN) && !(cfg->flags & NODE_F_NO_MSS_CLAMP))
            tcp_clamp_mss((struct tcphdr *)l4.sport, data_end,
                          bpf_ntohs(ip->tot_len) - ip->ihl * 4, mss_of(cfg, vpc));
        reason = STAT_rev_established;
    }
    mac_copy(eth->h_dest, o.env_mac);
    mac_copy(eth->h_source, cfg->gateway_mac);
    /* stores only where something changed, as forward; plain adds, as forward */
    if (h) {
        if (now != seen)
            h->last_seen_ns = now;
        h->rx_packets++;
        h->rx_bytes += frame_len;
    } else if (f) {
        if (!later && !is_err) {
            if (now != seen)
                f->last_seen_ns = now;
            __u8 add = state_bits_in(tcp_flags); /* TCP only (0 for the rest) */
            if (add & ~o.state)
                f->state = o.state | add;
        }
        f->rx_packets++;
        f->rx_bytes += frame_len;
        if (!later && !is_err && hot_on)
            hot_install(&fk, f, secret, gen, now, 0, 1, 1);
    }
    __u32 vni = o.vni;
    struct eni_stats *es = eni_stats_of(o.eni_idx);
    if (es) {
        es->rx_packets++;
        es->rx_bytes += frame_len;
    }

    __u8 tunnel = o.tunnel;
    ipv4_t worker = o.worker;
    __u16 usport = TUNNEL_SPORT_BASE + (tunnel_hash(&fk) & 0x3FFF);
    /* The outer headers, with the VLAN tags the worker's own frames carry (learned with its
     * MAC), so that the reply travels the fabric the way the worker's traffic came. */
    if (bpf_xdp_adjust_head(ctx, -(int)(ENCAP_LEN + depth * VLAN_TAG_LEN))) {
        reason = STAT_drop_adjust_failed;
        goto out;
    }
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    if (!encap_write(data, data_end, cfg, wmac, tags, depth, worker,
                     frame_len + ENCAP_LEN - sizeof(struct ethhdr), bpf_htons(usport), tunnel,
                     vni)) {
        reason = STAT_drop_adjust_failed;
        goto out;
    }
    action = tx_ports.redirect_map(TX_SLOT_FABRIC, XDP_DROP);
    if (action != XDP_REDIRECT)
        reason = STAT_drop_no_tx_port;
out:
    return record(ctx, st, reason, action, EVENT_DIR_VPC);
}

/* ---- redirect failures: the kernel's redirect failures, which no XDP program can see: a frame redirected
 * into a devmap that the kernel then could not deliver (a veth whose peer has no XDP program, a
 * frame bigger than the egress allows, an interface that went away) is counted as xdp_redirect
 * and lost. Two raw tracepoint programs count them, per egress ifindex (redirect_failures) and
 * in stats' redirect_failed: xdp_redirect_err (the redirect itself failed) and xdp_devmap_xmit
 * (the devmap's bulk transmit dropped frames).
 * Contract: the tracepoints fire for every XDP program of the machine; only frames that arrived
 * on the node's own interfaces (node_cfg.fabric_ifindex or vpc_ifs, in node_cfg.netns_ino's
 * namespace) count. Kernel structs are read at the offsets the loader found in the kernel's BTF
 * (NETDEV_IFINDEX_OFF, NETDEV_NET_OFF, NET_NS_INUM_OFF); without them there are no such programs.
 */
#ifdef NETDEV_IFINDEX_OFF
#define BPF_MAP_TYPE_DEVMAP_ 14
#define BPF_MAP_TYPE_DEVMAP_HASH_ 25

static __always_inline __u32 netdev_ifindex(const void *dev)
{
    __u32 ifindex = 0;
    if (dev)
        bpf_probe_read_kernel(&ifindex, sizeof(ifindex), (const char *)dev + NETDEV_IFINDEX_OFF);
    return ifindex;
}

/* Did the frame arrive on one of this node's interfaces? */
static __always_inline int netdev_ours(struct node_cfg *cfg, const void *dev)
{
    const void *net = 0;
    __u32 ino = 0;
    if (!dev)
        return 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)dev + NETDEV_NET_OFF);
    if (!net)
        return 0;
    bpf_probe_read_kernel(&ino, sizeof(ino), (const char *)net + NET_NS_INUM_OFF);
    if (ino != cfg->netns_ino)
        return 0;
    __u32 ifindex = netdev_ifindex(dev);
    return ifindex == cfg->fabric_ifindex || vpc_ifs.lookup(&ifindex);
}

static __always_inline void redirect_failed(__u32 to_ifindex, __u64 frames)
{
    __u32 k0 = 0;
    struct stats *st = stats.lookup(&k0);
    if (st)
        __sync_fetch_and_add(&st->redirect_failed, frames);
    __u64 *n = redirect_failures.lookup(&to_ifindex);
    if (!n) {
        if (!redirect_failures.insert(&to_ifindex, &frames))
            return;
        n = redirect_failures.lookup(&to_ifindex);
        if (!n)
            return;
    }
    __sync_fetch_and_add(n, frames);
}

/* xdp_redirect_err(dev, xdp, tgt, err, map_type, map_id, index): the redirect failed at once
 * (for a devmap: the egress too small for the frame, or down). A devmap's target starts with
 * its net_device (struct bpf_dtab_netdev). */
int redirect_err(struct bpf_raw_tracepoint_args *ctx)
{
    __u32 k0 = 0;
    struct node_cfg *cfg = config.lookup(&k0);
    if (!cfg || !netdev_ours(cfg, (const void *)ctx->args[0]))
        return 0;
    const void *tgt = (const void *)ctx->args[2];
    __u32 map_type = ctx->args[4];
    __u32 to = 0;
    if (tgt && (map_type == BPF_MAP_TYPE_DEVMAP_ || map_type == BPF_MAP_TYPE_DEVMAP_HASH_)) {
        const void *dev = 0;
        bpf_probe_read_kernel(&dev, sizeof(dev), tgt);
        to = netdev_ifindex(dev);
    }
    redirect_failed(to, 1);
    return 0;
}

/* xdp_devmap_xmit(from_dev, to_dev, sent, drops, err): a devmap's bulk transmit, after the
 * program returned; `drops` of its frames were not taken (a veth without XDP on its peer). */
int devmap_xmit(struct bpf_raw_tracepoint_args *ctx)
{
    int drops = (int)ctx->args[3];
    if (drops <= 0)
        return 0;
    __u32 k0 = 0;
    struct node_cfg *cfg = config.lookup(&k0);
    if (!cfg || !netdev_ours(cfg, (const void *)ctx->args[0]))
        return 0;
    redirect_failed(netdev_ifindex((const void *)ctx->args[1]), drops);
    return 0;
}
#endif

/* ---- the reaper: user space's sweep and flush remove `flows` entries here, never by deleting
 * them from user space. xdp_flow_reap is never attached: Datapath._reap runs it with
 * BPF_PROG_TEST_RUN on a dummy frame, over the batch it wrote into reap_batch (types.h).
 * Contract: an entry goes only after this program claimed it with the compare-and-swap of
 * last_seen_ns that takeovers and reopens use (flow_claim), from the very time user space read:
 * so a reap and a takeover never both win, an entry that any packet moved on since the read is
 * kept, and nothing is ever deleted and put back (a packet of a taken-over flow would find no
 * entry in between, and a non-SYN segment without a flow is answered with a RST). A sweep keeps
 * an entry that is live again by its own time or its flow_hot slot's (flow_live_hot); a flush
 * removes live ones too. The entry is copied out after the claim, as it went, then deleted. */
static __always_inline void reap_one(struct node_cfg *cfg, struct reap_item *it, __u32 mode,
                                     __u64 now, struct reap_stats *rs)
{
    struct flow_key fk = it->key;
    struct flow *f = flows.lookup(&fk);
    if (!f) {
        it->result = REAP_GONE;
        rs->gone++;
        return;
    }
    __u64 seen = flow_seen(&f); /* before anything else of the entry (the flow lifecycle) */
    if (!seen || seen != it->seen) {
        it->result = REAP_CHANGED;
        rs->kept_changed++;
        return;
    }
    if (mode != REAP_MODE_FLUSH && flow_live_hot(cfg, &fk, f, f->state, seen, now)) {
        it->result = REAP_LIVE;
        rs->kept_live++;
        return;
    }
    if (!flow_claim(f, seen)) {
        it->result = REAP_CHANGED;
        rs->kept_changed++;
        return;
    }
    /* Claimed: 0 reads as "not live" to every packet, and no takeover or reopen can claim it
     * any more. Copied as it is now, then deleted by its key, unless the key now names another
     * element: only the LRU removes a claimed entry, and a new flow may have been inserted
     * under the key since (a delete by key would take that one). */
    __builtin_memcpy(&it->value, f, sizeof(struct flow));
    it->value.last_seen_ns = seen;
    if (flows.lookup(&fk) != f) {
        it->result = REAP_GONE;
        rs->gone++;
        return;
    }
    flows.delete(&fk);
    it->result = REAP_REMOVED;
    if (mode == REAP_MODE_FLUSH)
        rs->removed_flush++;
    else
        rs->removed_sweep++;
}

int xdp_flow_reap(struct xdp_md *ctx)
{
    __u32 k0 = 0;
    struct reap_batch *b = reap_batch.lookup(&k0);
    struct node_cfg *cfg = config.lookup(&k0);
    struct reap_stats *rs = reap_stats.lookup(&k0);
    if (!b || !cfg || !rs)
        return XDP_ABORTED;
    __u32 mode = b->mode;
    if (mode != REAP_MODE_SWEEP && mode != REAP_MODE_FLUSH)
        return XDP_ABORTED;
    __u64 now = coarse_now();
    for (__u32 i = 0; i < REAP_BATCH; i++) {
        if (i >= b->n)
            break;
        reap_one(cfg, &b->items[i], mode, now, rs);
    }
    return XDP_DROP;
}
