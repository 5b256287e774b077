/* gen.c - benchmark helpers: the XDP live-frames packet generator, a counting sink and the
 * "ceiling" redirect program.
 *
 * gen_xdp runs under BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: every frame it returns
 * XDP_TX for leaves through the interface the run is bound to. Live frames recycle their pages
 * without resetting them, so the program writes the whole template into every frame and then the
 * per-flow fields (ports from a pseudorandom table, RFC 4814), never trusting what it finds.
 * sink_xdp counts what arrives and drops it. ceil_xdp is the floor of forwarding cost: rewrite the
 * MACs and redirect through a DEVMAP, nothing else.
 */
#include <uapi/linux/bpf.h>

#ifndef FRAME_LEN
#error "FRAME_LEN: the generated frame's length, fixed per compile"
#endif

struct template {
    __u32 nflows;
    __u32 sport_off; /* where the varying ports are written in the frame */
    __u32 dport_off;
    __u32 pad;
    __u8 data[FRAME_LEN];
};

struct ports {
    __be16 sport;
    __be16 dport;
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
