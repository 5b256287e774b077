/* gen.c - benchmark helpers: the XDP live-frames packet generator, a counting sink and the
 * "ceiling" redirect program.
 *
 * gen_xdp runs under BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: every frame it returns
 * XDP_TX for leaves through the interface the run is bound to. Live frames recycle their pages
 * without resetting them, so the program writes the whole template into every frame and then the
 * per-flow fields (ports from a pseudorandom table, RFC 4814), never trusting what it finds.
 * sink_xdp counts what arrives and drops it. ceil_xdp is the floor of forwarding cost: rewrite the
 * MACs and redirect through a DEVMAP, nothing else. state_xdp (built with STATE_SLOTS) is that
 * floor for any design that keeps state per flow: ceil_xdp plus one read-modify-write of a
 * 16-byte flow entry per packet, found without a walk. The generator can also write a per-flow
 * outer UDP source port (outer_off), as a VXLAN sender does.
 */
#include <uapi/linux/bpf.h>

#ifndef FRAME_LEN
#error "FRAME_LEN: the generated frame's length, fixed per compile"
#endif

struct template {
    __u32 nflows;
    __u32 sport_off; /* where the varying ports are written in the frame */
    __u32 dport_off;
    __u32 outer_off; /* where the outer UDP source port goes, 0: the template's, for every flow */
    __u8 data[FRAME_LEN];
};

struct ports {
    __be16 sport;
    __be16 dport;
    __be16 outer; /* the outer UDP source port of the flow's frames (RFC 7348: a hash of the inner) */
    __u16 pad;
};

BPF_ARRAY(tmpl, struct template, 1);
BPF_ARRAY(flow_ports, struct ports, GEN_MAX_FLOWS);
BPF_PERCPU_ARRAY(gen_seq, __u32, 1);
BPF_PERCPU_ARRAY(sink_count, __u64, 1);
BPF_DEVMAP(ceil_tx, 4);
struct macs {
    __u8 b[12]; /* destination then source */
};
BPF_ARRAY(ceil_macs, struct macs, 1);

int gen_xdp(struct xdp_md *ctx)
{
    __u32 k = 0;
    struct template *t = tmpl.lookup(&k);
    __u32 *seq = gen_seq.lookup(&k);
    if (!t || !seq)
        return XDP_ABORTED;
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    if (data + FRAME_LEN > end)
        return XDP_ABORTED;
    __builtin_memcpy(data, t->data, FRAME_LEN);
    __u32 n = t->nflows ? t->nflows : 1;
    __u32 i = *seq;
    *seq = i + 1;
    __u32 idx = i % n;
    struct ports *p = flow_ports.lookup(&idx);
    if (!p)
        return XDP_ABORTED;
    void *ps = data + (t->sport_off & 0xFF);
    void *pd = data + (t->dport_off & 0xFF);
    if (ps + 2 > end || pd + 2 > end)
        return XDP_ABORTED;
    *(__be16 *)ps = p->sport;
    *(__be16 *)pd = p->dport;
    if (t->outer_off) {
        void *po = data + (t->outer_off & 0xFF);
        if (po + 2 > end)
            return XDP_ABORTED;
        *(__be16 *)po = p->outer;
    }
    return XDP_TX;
}

int sink_xdp(struct xdp_md *ctx)
{
    __u32 k = 0;
    __u64 *c = sink_count.lookup(&k);
    if (c)
        (*c)++;
    return XDP_DROP;
}

int ceil_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u32 k = 0;
    struct macs *m = ceil_macs.lookup(&k);
    if (!m || data + 12 > end)
        return XDP_DROP;
    __builtin_memcpy(data, m->b, 12);
    return ceil_tx.redirect_map(0, 0);
}

int empty_xdp(struct xdp_md *ctx)
{
    return XDP_PASS;
}

#ifdef STATE_SLOTS
/* The least a stateful translator keeps per flow and touches on every packet: an owner tag wide
 * enough that a collision cannot hand one flow another's translation (64 bits), a last-seen time
 * for expiry (in jiffies, the one clock that costs nothing to read) and a packet count, 16 bytes.
 * The entry sits at the slot its flow's hash names (direct-mapped): a packet reads and writes one
 * entry and walks nothing, which no table that finds flows can undercut; a flow whose slot another
 * took takes it back (counted as made), where a real table would probe or evict. The table has as
 * many entries as eniplane's flow table: the flows of a run spread over as much memory as any
 * table of that capacity would spread them, and at tens of thousands of flows that, not the code,
 * is what a packet waits for on a VM. STATE_WAYS=4 builds the set-associative floor the bench used
 * before (a flow in any of four neighbouring entries, the stalest gives way): measured side by side
 * (bench/floor_ab.py) it paid about 20 ns more per packet at 64k flows, so it was not the floor. */
#ifndef STATE_WAYS
#define STATE_WAYS 1
#endif
struct flow_state {
    __u64 tag;
    __u32 packets;
    __u32 seen;
};
#ifndef STATE_POOL /* the pool variant keeps its flows in pool_index and pool alone */
BPF_ARRAY(state_slots, struct flow_state, STATE_SLOTS);
#endif
struct state_counts {
    __u64 found; /* packets whose flow entry was there */
    __u64 made;  /* entries written for a flow (its first packet, or after it gave way) */
};
BPF_PERCPU_ARRAY(state_counts, struct state_counts, 1);

#ifdef STATE_POOL
/* Not the floor: a design that might come within reach of it with a translator's whole entry
 * (issue 16). A set-associative index of 8-byte entries (a 32-bit tag and an entry number,
 * eight to a cache line, as many as the floor has slots) in front of a pool of 64-byte entries
 * handed out in arrival order: the flows of a run occupy the pool's first entries, however
 * large its capacity, so what a packet touches (the index's line and its entry's) is as little
 * memory as the flows need (what bounds a table on this VM is its share of the L3:
 * bench.memlat). 72 bytes per flow of capacity. The entry's 48
 * bytes past its tag stand for a flow key and owner, read with it. */
struct pool_entry {
    __u64 tag;
    __u64 key[2];
    __u64 owner[3];
    __u32 seen;
    __u32 packets;
    __u64 bytes;
};
BPF_ARRAY(pool_index, __u64, STATE_SLOTS);
BPF_ARRAY(pool, struct pool_entry, STATE_SLOTS);
BPF_ARRAY(pool_next, __u32, 1);
#endif

int state_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u32 k = 0;
    if (data + STATE_OFF + 4 > end)
        return XDP_DROP;
    /* the flow's ports, as the generator wrote them; two 16-bit loads keep any offset aligned */
    __u64 ports = ((__u64)*(__u16 *)(data + STATE_OFF) << 16) | *(__u16 *)(data + STATE_OFF + 2);
    __u64 h = (ports + 1) * 0x9E3779B97F4A7C15ull; /* splitmix64's finaliser: a full-width tag */
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    h ^= h >> 31;
#ifdef STATE_POOL
    {
        struct state_counts *n = state_counts.lookup(&k);
        if (!n)
            return XDP_DROP;
        __u32 now = bpf_jiffies64();
        __u32 set = (__u32)(((h >> 32) * (STATE_SLOTS / 8)) >> 32) * 8;
        __u32 tag = (__u32)h | 1; /* 0 marks a free index entry */
        struct pool_entry *e = NULL;
        __u32 free = 8;
#pragma unroll
        for (__u32 w = 0; w < 8; w++) {
            __u32 i = set + w;
            __u64 *v = pool_index.lookup(&i);
            if (!v)
                return XDP_DROP;
            __u64 x = *v;
            if ((__u32)(x >> 32) == tag) {
                __u32 ei = (__u32)x;
                e = pool.lookup(&ei);
                if (e && e->tag == h && e->key[0] == ports)
                    break;
                e = NULL;
            } else if (!x && free == 8) {
                free = w;
            }
        }
#ifdef STATE_WORK
        /* STATE_WORK independent adds after the entry's load: work that needs no memory, as a
         * translator's rewrite does, which fills the core's reorder window so that the next
         * packet's loads cannot start while this one's miss is outstanding */
        __u64 w0 = h, w1 = h >> 7, w2 = h >> 13, w3 = h >> 21;
#pragma unroll
        for (int i = 0; i < STATE_WORK / 8; i++) {
            w0 ^= w0 >> 3;
            w1 ^= w1 >> 5;
            w2 ^= w2 >> 7;
            w3 ^= w3 >> 11;
        }
#endif
        if (e) {
            e->packets++;
            e->bytes += end - data;
#ifdef STATE_WORK
            e->owner[0] = w0 ^ w1 ^ w2 ^ w3;
#endif
            if (e->seen != now)
                e->seen = now;
            n->found++;
        } else {
            __u32 *next = pool_next.lookup(&k);
            if (!next)
                return XDP_DROP;
            __u32 ei = *next % STATE_SLOTS; /* one CPU runs the bench: no atomic needed */
            *next = ei + 1;
            e = pool.lookup(&ei);
            __u32 i = set + (free & 7);
            __u64 *v = pool_index.lookup(&i);
            if (!e || !v)
                return XDP_DROP;
            e->tag = h;
            e->key[0] = ports;
            e->packets = 1;
            e->bytes = end - data;
            e->seen = now;
            *v = (__u64)tag << 32 | ei;
            n->made++;
        }
    }
#else
#ifndef STATE_SET_SHIFT /* floor_ab --align: moves 4-way sets by 1-3 entries, in case one */
#define STATE_SET_SHIFT 0   /* straddled two lines; none of the four placements ran faster */
#endif
    __u32 base = (__u32)(((h >> 32) * (STATE_SLOTS / STATE_WAYS - 1)) >> 32) * STATE_WAYS +
                 STATE_SET_SHIFT;
    struct state_counts *n = state_counts.lookup(&k);
    if (!n)
        return XDP_DROP;
    __u32 now = bpf_jiffies64();
    struct flow_state *hit = NULL, *stalest = NULL;
#pragma unroll
    for (__u32 w = 0; w < STATE_WAYS; w++) {
        __u32 idx = base + w;
        struct flow_state *s = state_slots.lookup(&idx);
        if (!s)
            return XDP_DROP;
        if (s->tag == h) {
            hit = s;
            break;
        }
        if (!stalest || s->seen < stalest->seen)
            stalest = s;
    }
    if (hit) {
        hit->packets++;
        if (hit->seen != now)
            hit->seen = now;
        n->found++;
    } else if (stalest) {
        stalest->tag = h;
        stalest->packets = 1;
        stalest->seen = now;
        n->made++;
    }
#endif
    struct macs *m = ceil_macs.lookup(&k);
    if (!m || data + 12 > end)
        return XDP_DROP;
    __builtin_memcpy(data, m->b, 12);
#ifdef REDIRECT_IFINDEX
    return bpf_redirect(REDIRECT_IFINDEX, 0);
#else
    return ceil_tx.redirect_map(0, 0);
#endif
}
#endif
