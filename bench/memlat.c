/* memlat.c - what one dependent load into a BPF map costs, by how much of the map the loads
 * cover: the curve behind "what a larger table costs per packet" (docs/operations.md).
 *
 * `chase` is an array of 64-byte lines, page-aligned (BPF_F_MMAPABLE), whose first word names the
 * next line to read; user space links the first N lines into one cycle in a random order, so
 * every load depends on the one before it and the hardware prefetchers cannot guess the next
 * address, as with a flow table's lookups. Each run of chase_xdp follows STEPS links from where
 * the previous run stopped (cursor); BPF_PROG_TEST_RUN's mean duration over many runs divided by
 * STEPS is the cost of one load.
 */
#include <uapi/linux/bpf.h>

#if !defined(LINES) || !defined(STEPS)
#error "LINES (the most lines a chase may cover) and STEPS (links per run): memlat.py gives both"
#endif

struct line {
    __u32 next;
    __u32 pad[15];
};

BPF_F_TABLE("array", __u32, struct line, chase, LINES, BPF_F_MMAPABLE);
BPF_ARRAY(cursor, __u32, 1);

int chase_xdp(struct xdp_md *ctx)
{
    __u32 k = 0;
    __u32 *cur = cursor.lookup(&k);
    if (!cur)
        return XDP_ABORTED;
    __u32 i = *cur;
    for (int s = 0; s < STEPS; s++) {
        struct line *l = chase.lookup(&i);
        if (!l)
            return XDP_ABORTED;
        i = l->next;
    }
    *cur = i;
    return XDP_DROP;
}
