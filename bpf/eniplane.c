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

static __always_inline int record(struct stats *s, __u32 reason, int action)
{
    if (s) {
        __u64 *c = (__u64 *)s;
        if (reason < STAT__MAX)
            c[reason]++;
        if ((__u32)action <= XDP_REDIRECT)
            c[action]++;
    }
    return action;
}

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

/* The coarse monotonic time, from this CPU's clock cache (types.h) while the jiffy lasts. A CPU
 * that reads it between a tick's jiffies update and its clock update keeps the previous tick's
 * time for that jiffy: last_seen_ns is exact to within two ticks, as expiry needs no more. */
static __always_inline __u64 coarse_now(void)
{
    __u32 k = 0;
    __u64 j = bpf_jiffies64();
    struct clock_cache *c = clock.lookup(&k);
    if (!c)
        return bpf_ktime_get_coarse_ns();
    if (c->jiffies != j) {
        c->jiffies = j;
        c->ns = bpf_ktime_get_coarse_ns();
    }
    return c->ns;
}

static __always_inline struct eni_stats *eni_stats_of(__u32 eni_idx)
{
    return eni_stats.lookup(&eni_idx);
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
    return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) |
            (a[5] ^ b[5])) == 0;
}

/* flow_guard (types.h): an insert that could let the LRU evict makes holes possible, until user
 * space recounts after deleting flows. */
static __always_inline void guard_before_insert(struct flow_guard *g)
{
    if (g && !g->holes && (__s64)g->count + 1 >= FLOW_SAFE_ENTRIES)
        g->holes = 1;
}

static __always_inline void guard_count(struct flow_guard *g, __u32 depth)
{
    if (g) {
        __sync_fetch_and_add(&g->count, 1);
        __u64 bit = 1ull << (depth & 31);
        if (!(g->depths & bit)) /* set once: an atomic on every insert would bounce the line */
            __sync_fetch_and_or(&g->depths, bit);
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
#else
#define eni_race_point(cfg, vni) do { } while (0)
#endif

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
    if (ipv4_is_fragment(*iip))
        return STAT_drop_inner_fragment;
    if ((*iip)->ttl <= 1)
        return STAT_drop_ttl_expired;
    rc = parse_l4(c, (*iip)->protocol, ICMP_ECHO, l4);
    if (rc != PARSE_OK || !l4->sport)
        return l4_reason(rc, STAT_drop_inner_truncated);
    return 0;
}

/* Stage 5, where the flow sits along its port probe (see the walk's comment below). */
struct probe {
    struct flow *f;     /* the flow's entry, NULL when it has none yet */
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
     * inside the 1M instructions the verifier will walk; 32 did not fit. */
    pr->f = NULL;
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
            if (flow_owned_by(f, worker, vni, env, env_port)) {
                pr->f = f;
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

int xdp_fabric(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct cursor c = {.pos = data, .end = data_end};
    __u32 reason = STAT_pass_not_tunnel;
    int action = XDP_PASS;
    __u32 k0 = 0;

    struct stats *st = stats.lookup(&k0);
    count(st, STAT_rx_fabric);
    struct node_cfg *cfg = config.lookup(&k0);
    if (!cfg || !cfg->fabric_ip)
        goto out;

    /* 1. Outer headers: until we know this is tunnel traffic for us, the kernel gets it. */
    struct tunnel_pkt t;
    reason = parse_outer(&c, cfg, &t);
    if (reason)
        goto out;
    /* Tunnel traffic for this node: from here on every failure is a named drop. */
    action = XDP_DROP;

    /* 2. The sender: a registered worker, speaking from the MAC it is known by. Every packet is
     * checked (a direct-mapped slot, no hashing): replies go to that MAC, so a host that claims a
     * worker's address gets nothing in and cannot draw the worker's replies to itself. */
    ipv4_t worker = t.oip->saddr;
    reason = worker_admit(st, worker, t.oeth, t.tags, t.depth, data_end);
    if (reason)
        goto out;

    /* 3. Tunnel header: the VNI names the ENI. */
    reason = parse_tunnel(&c, &t);
    if (reason)
        goto out;
    __u32 vni = t.vni;

    /* 4. Inner frame: ARP is answered as the gateway, IPv4 is translated. */
    void *inner = c.pos;
    struct ethhdr *ieth = CURSOR_TAKE(&c, struct ethhdr);
    if (!ieth) {
        reason = STAT_drop_inner_truncated;
        goto out;
    }
    if (ieth->h_proto == bpf_htons(ETH_P_ARPH)) {
        if (!enis.lookup(&vni)) {
            reason = STAT_drop_unknown_vni;
            goto out;
        }
        if (!worker_placed(worker, vni)) {
            reason = STAT_drop_worker_not_placed;
            goto out;
        }
        reason = tunnel_arp(&c, cfg, t.oeth, t.oip, t.oudp, ieth, &action);
        goto out;
    }
    if (ieth->h_proto != bpf_htons(ETH_P_IPV4)) {
        reason = STAT_drop_inner_not_ipv4;
        goto out;
    }
    struct iphdr *iip;
    struct l4 l4;
    reason = parse_inner_ip(&c, &iip, &l4);
    if (reason)
        goto out;
    __u8 l4proto = iip->protocol;
    __be16 *sport = l4.sport;
    __be16 dport = l4.dport ? *l4.dport : 0;
    __u8 tcp_flags = l4.tcp_flags;

    /* 5. Flow lookup along the probe of the ENI's port range. */
    struct eni *eni = eni_of(cfg, vni);
    if (!eni) {
        reason = STAT_drop_unknown_vni;
        goto out;
    }
    ipv4_t env = iip->saddr;
    __be16 env_port = *sport;
    struct flow_key fk;
    __builtin_memset(&fk, 0, sizeof(fk));
    fk.vpc_idx = eni->vpc_idx;
    fk.proto = l4proto;
    fk.eni_addr = eni->addr;
    fk.remote = iip->daddr;
    fk.remote_port = dport;

    __u32 lo = eni->port_lo, hi = eni->port_hi;
    __u32 range = (lo && hi >= lo) ? hi - lo + 1 : 0;
    /* Lemire's multiply-shift maps the hash onto the range without a division. */
    __u32 start = ((__u64)port_hash(cfg->port_secret, worker, vni, env, env_port, fk.remote,
                                    dport, l4proto) * range) >> 32;
    struct flow_guard *g = flow_guard.lookup(&k0);
    __u64 now = coarse_now();
    __u64 bytes = data_end - inner;
    __u32 eni_idx = eni->eni_idx;
    __u32 vpc_idx = eni->vpc_idx;
    ipv4_t eni_addr = eni->addr;
    struct probe pr;
    flow_walk(&fk, g, lo, range, start, worker, vni, env, env_port, &pr);
    struct flow *f = pr.f;
    if (f) {
        /* 5a. Established. Revoking a placement flushes the pair's flows (datapath.py), so an
         * entry found here was opened by a worker that is still placed. */
        if (pr.probed)
            count(st, STAT_flow_probed);
        /* Plain adds: a flow's packets arrive on one CPU (RSS hashes the outer flow), and these
         * counters serve expiry and inspection, where a rare lost increment does no harm. */
        if (now != f->last_seen_ns) /* store only what changed: fewer dirty lines to write */
            f->last_seen_ns = now;
        f->tx_packets++;
        f->tx_bytes += bytes;
        if (tcp_flags & ~f->tcp_flags)
            f->tcp_flags |= tcp_flags;
        if (!mac_equal(f->env_mac, ieth->h_source)) /* replies follow the environment's MAC */
            mac_copy(f->env_mac, ieth->h_source);
        reason = STAT_fwd_established;
    } else {
        /* 5b. New flow: placement, security groups, a free port. */
        if (!worker_placed(worker, vni)) {
            reason = STAT_drop_worker_not_placed;
            goto out;
        }
        struct eni_stats *nes = eni_stats_of(eni_idx);
        if (!sg_allows(vni, l4proto, fk.remote, bpf_ntohs(dport))) {
            if (nes)
                nes->sg_denied++;
            reason = STAT_drop_sg_denied;
            goto out;
        }
        struct flow nf;
        __builtin_memset(&nf, 0, sizeof(nf));
        nf.last_seen_ns = now;
        nf.tx_packets = 1;
        nf.tx_bytes = bytes;
        nf.worker = worker;
        nf.vni = vni;
        nf.env_addr = env;
        nf.env_port = env_port;
        nf.eni_idx = eni_idx;
        mac_copy(nf.env_mac, ieth->h_source);
        nf.tunnel = t.tunnel;
        nf.tcp_flags = tcp_flags;
        /* Claim the first free slot with a BPF_NOEXIST insert. Losing it to another CPU that
         * opened this very flow means following that entry; losing it to another flow drops
         * this one packet (the next one walks again): rare, and it keeps the walk a single
         * loop, which is what keeps the program verifiable. */
        if (!pr.free_port) {
            if (nes)
                nes->port_alloc_failed++;
            reason = STAT_drop_port_exhausted;
            goto out;
        }
        fk.eni_port = pr.free_port;
        guard_before_insert(g);
        long err = flows.insert(&fk, &nf);
        if (err == 0) {
            guard_count(g, pr.free_depth);
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
            __sync_fetch_and_add(&w->tx_bytes, bytes);
        }
        reason = STAT_fwd_new_flow;
    }
    __be16 nat_port = fk.eni_port;

    struct vpc *vpc = vpcs.lookup(&vpc_idx);
    if (!vpc || !(vpc->flags & VPC_F_ACTIVE)) {
        reason = STAT_drop_no_vpc;
        goto out;
    }
    if (!(vpc->flags & VPC_F_GW_MAC)) {
        reason = STAT_drop_no_gateway_mac;
        goto out;
    }

    /* 6. Translate: SNAT onto the ENI (source address and port, checksums, TTL, MACs). */
    ipv4_t old_src = iip->saddr;
    __u16 old_port = *sport;
    iip->saddr = eni_addr;
    iip->check = csum_replace4(iip->check, old_src, eni_addr);
    ipv4_dec_ttl(iip);
    l4_csum_fix(l4proto, l4.check, old_src, eni_addr, old_port, nat_port);
    *sport = nat_port;
    mac_copy(ieth->h_dest, vpc->gateway_mac);
    mac_copy(ieth->h_source, vpc->if_mac);

    struct eni_stats *es = eni_stats_of(eni_idx);
    if (es) {
        es->tx_packets++;
        es->tx_bytes += bytes;
    }

    /* 7. Emit: strip the outer headers, redirect into the VPC. */
    __u32 egress = vpc->tx_slot;
    if (bpf_xdp_adjust_head(ctx, (int)(inner - data))) {
        reason = STAT_drop_adjust_failed;
        goto out;
    }
    action = tx_ports.redirect_map(egress, XDP_DROP);
    if (action != XDP_REDIRECT)
        reason = STAT_drop_no_tx_port;
out:
    return record(st, reason, action);
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
    __u32 bad = 0;
    __u8 l4proto = 0, tcp_flags = 0;
    __be16 *dport_p = NULL, sport = 0;
    struct l4 l4;
    int rc = parse_ipv4(&c, &ip);
    if (rc != PARSE_OK) {
        bad = STAT_drop_vpc_malformed;
    } else if (ipv4_is_fragment(ip)) {
        bad = STAT_drop_vpc_fragment;
    } else if (ip->ttl <= 1) {
        bad = STAT_drop_ttl_expired;
    } else {
        l4proto = ip->protocol;
        rc = parse_l4(&c, l4proto, ICMP_ECHOREPLY, &l4);
        if (rc != PARSE_OK || !l4.dport)
            bad = l4_reason(rc, STAT_drop_vpc_malformed);
    }
    if (bad) {
        if (eni_addrs.lookup(&ak)) {
            action = XDP_DROP;
            reason = bad;
        }
        goto out;
    }
    dport_p = l4.dport;
    sport = l4.sport ? *l4.sport : 0;
    tcp_flags = l4.tcp_flags;

    struct flow_key fk;
    __builtin_memset(&fk, 0, sizeof(fk));
    fk.vpc_idx = vpc_idx;
    fk.proto = l4proto;
    fk.eni_addr = ip->daddr;
    fk.remote = ip->saddr;
    fk.eni_port = *dport_p;
    fk.remote_port = sport;
    struct flow *f = flows.lookup(&fk);
    if (!f) {
        if (eni_addrs.lookup(&ak)) {
            action = XDP_DROP;
            reason = STAT_drop_no_flow; /* unsolicited: environments accept no inbound */
        }
        goto out;
    }
    /* Addressed to an ENI, with a flow: ours to deliver or to drop with a reason. */
    action = XDP_DROP;
    struct worker *w = worker_of(f->worker);
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
        reason = STAT_drop_fabric_mtu;
        goto out;
    }

    /* Reverse translation: destination back to the environment's address and port. */
    ipv4_t old_dst = ip->daddr;
    __u16 old_port = *dport_p;
    ip->daddr = f->env_addr;
    ip->check = csum_replace4(ip->check, old_dst, f->env_addr);
    ipv4_dec_ttl(ip);
    l4_csum_fix(l4proto, l4.check, old_dst, f->env_addr, old_port, f->env_port);
    *dport_p = f->env_port;
    mac_copy(eth->h_dest, f->env_mac);
    mac_copy(eth->h_source, cfg->gateway_mac);

    __u64 now = coarse_now();
    if (now != f->last_seen_ns) /* stores only where something changed, as forward */
        f->last_seen_ns = now;
    f->rx_packets++; /* plain adds, as on the forward path */
    f->rx_bytes += frame_len;
    if (tcp_flags & ~f->tcp_flags)
        f->tcp_flags |= tcp_flags;
    __u32 vni = f->vni;
    struct eni_stats *es = eni_stats_of(f->eni_idx);
    if (es) {
        es->rx_packets++;
        es->rx_bytes += frame_len;
    }

    __u8 tunnel = f->tunnel;
    ipv4_t worker = f->worker;
    __u16 usport = TUNNEL_SPORT_BASE + (tunnel_hash(&fk) & 0x3FFF);
    /* The outer headers, with the VLAN tags the worker's own frames carry (learned with its
     * MAC), so that the reply travels the fabric the way the worker's traffic came. */
    if (bpf_xdp_adjust_head(ctx, -(int)(ENCAP_LEN + depth * VLAN_TAG_LEN))) {
        reason = STAT_drop_adjust_failed;
        goto out;
    }
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    if (data + ENCAP_LEN + MAX_VLAN_DEPTH * VLAN_TAG_LEN > data_end) {
        reason = STAT_drop_adjust_failed;
        goto out;
    }
    struct ethhdr *oeth = data;
    mac_copy(oeth->h_dest, wmac);
    mac_copy(oeth->h_source, cfg->fabric_mac);
    __be16 *ethertype = &oeth->h_proto;
    if (depth >= 1) {
        struct vlan_hdr_ *v = data + 14;
        *ethertype = tags[0].tpid;
        v->tci = tags[0].tci;
        ethertype = &v->proto;
        if (depth >= 2) {
            v = data + 14 + VLAN_TAG_LEN;
            *ethertype = tags[1].tpid;
            v->tci = tags[1].tci;
            ethertype = &v->proto;
        }
    }
    *ethertype = bpf_htons(ETH_P_IPV4);
    void *l3 = data + 14 + depth * VLAN_TAG_LEN;
    struct iphdr *oip = l3;
    struct udphdr *oudp = l3 + 20;
    __u8 *th = l3 + 20 + 8;
    if ((void *)(th + 8) > data_end) {
        reason = STAT_drop_adjust_failed;
        goto out;
    }

    __u16 outer_len = frame_len + ENCAP_LEN - 14;
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

    oudp->source = bpf_htons(usport);
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

    reason = STAT_rev_established;
    action = tx_ports.redirect_map(TX_SLOT_FABRIC, XDP_DROP);
    if (action != XDP_REDIRECT)
        reason = STAT_drop_no_tx_port;
out:
    return record(st, reason, action);
}
