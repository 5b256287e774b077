/* eniplane.c - the node's two XDP programs.
 *
 * xdp_fabric (on the fabric interface): tunnel packets from registered workers are decapsulated,
 *   checked against the ENI's security groups when they open a flow, source-NATed onto the ENI's
 *   address and a port of the flow's own, and redirected to the VPC-side interface. ARP inside the
 *   tunnel is answered as the environments' gateway. Anything that is not tunnel traffic for this
 *   node goes to the kernel untouched.
 * xdp_vpc (on each VPC-side interface): replies to an ENI address are translated back with the
 *   reverse flow entry, encapsulated in the tunnel type and VNI the flow came with, and redirected
 *   to the worker that opened the flow. ARP for ENI addresses is answered. Unsolicited packets to an
 *   ENI are dropped; packets for other addresses go to the kernel.
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

static __always_inline struct eni_stats *eni_stats_of(__u32 eni_idx)
{
    return eni_stats.lookup(&eni_idx);
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
    return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) |
            (a[5] ^ b[5])) == 0;
}

/* rev_guard (types.h): raise `danger` before a claim that could let the LRU evict. */
static __always_inline void guard_before_claim(struct rev_guard *g)
{
    if (g && !g->danger && (__s64)g->rev_count + PORT_TRIES >= REV_SAFE_ENTRIES) {
        g->danger = 1;
        __sync_fetch_and_add(&g->epoch, 1);
    }
}

static __always_inline void guard_count(struct rev_guard *g, __s64 delta)
{
    if (g)
        __sync_fetch_and_add(&g->rev_count, delta);
}

/* The reverse half of a flow as the forward packet describes it. */
static __always_inline void rev_init(struct flow_rev *rv, struct flow_key *key, __u8 tunnel,
                                     const __u8 *env_mac, __u64 now, __u16 eni_idx)
{
    __builtin_memset(rv, 0, sizeof(*rv));
    rv->eni_idx = eni_idx;
    rv->last_seen_ns = now;
    rv->worker = key->worker;
    rv->vni = key->vni;
    rv->env_addr = key->src;
    rv->env_port = key->sport;
    rv->tunnel = tunnel;
    mac_copy(rv->env_mac, env_mac);
}

/* Is the outer source a registered worker? Learns its MAC, the outer destination of replies. */
static __always_inline int worker_known(ipv4_t addr, const __u8 *src_mac)
{
    struct worker *w = workers.lookup(&addr);
    if (!w)
        return 0;
    if (!mac_equal(w->mac, src_mac))
        mac_copy(w->mac, src_mac);
    return 1;
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
#pragma unroll
    for (int i = 0; i < SG_SEARCH_STEPS; i++) {
        if (hi - lo > 1) {
            __u32 mid = (lo + hi) / 2;
            /* Keep the mask: clang drops it as redundant, the verifier needs it. */
            asm volatile("" : "+r"(mid));
            mid &= SG_MAX_RANGES - 1;
            if (sp->ranges[mid].lo <= port)
                lo = mid;
            else
                hi = mid;
        }
    }
    asm volatile("" : "+r"(lo));
    struct port_range *r = &sp->ranges[lo & (SG_MAX_RANGES - 1)];
    return r->lo <= port && port <= r->hi;
}

/* Claim a SNAT port: each try inserts the reverse entry with BPF_NOEXIST, so two CPUs racing for
 * the same (ENI address, port, remote, remote port, protocol) can never both win. */
static __always_inline int alloc_port(struct eni *eni, struct rev_key *rk, struct flow_rev *rv)
{
    __u32 lo = eni->port_lo, hi = eni->port_hi;
    if (hi < lo || lo == 0)
        return -1;
    __u32 range = hi - lo + 1;
    for (int i = 0; i < PORT_TRIES; i++) {
        __u32 p = lo + bpf_get_prandom_u32() % range;
        rk->eni_port = bpf_htons((__u16)p);
        if (flows_rev.insert(rk, rv) == 0)
            return 0;
    }
    return -1;
}

static __always_inline __u32 flow_hash(struct rev_key *rk)
{
    __u32 h = rk->remote * 0x9E3779B1u;
    h ^= ((__u32)rk->eni_port << 16 | rk->remote_port) * 0x85EBCA6Bu;
    h ^= rk->eni_addr ^ rk->proto;
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

int xdp_fabric(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct cursor c = {.pos = data, .end = data_end};
    __u32 reason = STAT_pass_not_tunnel;
    int action = XDP_PASS;
    __u32 k0 = 0;
    __be16 proto;

    struct stats *st = stats.lookup(&k0);
    count(st, STAT_rx_fabric);
    struct node_cfg *cfg = config.lookup(&k0);
    if (!cfg || !cfg->fabric_ip)
        goto out;

    /* Outer headers: until we know this is tunnel traffic for us, the kernel gets it. */
    struct ethhdr *oeth = parse_eth(&c, &proto);
    if (!oeth) {
        reason = STAT_pass_malformed_outer;
        goto out;
    }
    if (proto != bpf_htons(ETH_P_IPV4))
        goto out;
    struct iphdr *oip;
    if (parse_ipv4(&c, &oip) != PARSE_OK) {
        reason = STAT_pass_malformed_outer;
        goto out;
    }
    if (oip->daddr != cfg->fabric_ip || oip->protocol != IPPROTO_UDP)
        goto out;
    if (ipv4_is_fragment(oip)) {
        reason = STAT_pass_outer_fragment;
        goto out;
    }
    struct udphdr *oudp = CURSOR_TAKE(&c, struct udphdr);
    if (!oudp) {
        reason = STAT_pass_malformed_outer;
        goto out;
    }
    __u16 tport = bpf_ntohs(oudp->dest);
    if (tport != VXLAN_PORT && tport != GENEVE_PORT)
        goto out;

    /* Tunnel traffic for this node: from here on every failure is a named drop. The worker is
     * checked (and its MAC learned) when it opens a flow or asks ARP; an established flow's key
     * already carries the worker it was opened by, and removing a worker flushes its flows. */
    action = XDP_DROP;

    __u32 vni;
    __u8 tunnel;
    if (tport == VXLAN_PORT) {
        struct vxlan_hdr_ *vx = CURSOR_TAKE(&c, struct vxlan_hdr_);
        if (!vx) {
            reason = STAT_drop_tunnel_truncated;
            goto out;
        }
        if (!(vx->flags & 0x08)) {
            reason = STAT_drop_vxlan_no_i_flag;
            goto out;
        }
        vni = bpf_ntohl(vx->vni_rsvd) >> 8;
        tunnel = TUNNEL_VXLAN;
    } else {
        struct geneve_hdr_ *g = parse_geneve(&c);
        if (!g) {
            reason = STAT_drop_tunnel_truncated;
            goto out;
        }
        if (g->ver_optlen >> 6) {
            reason = STAT_drop_geneve_version;
            goto out;
        }
        if (g->flags & 0x80) {
            reason = STAT_drop_geneve_control;
            goto out;
        }
        if (g->flags & 0x40) {
            reason = STAT_drop_geneve_critical;
            goto out;
        }
        if (g->proto != bpf_htons(ETH_P_TEB)) {
            reason = STAT_drop_geneve_not_ether;
            goto out;
        }
        vni = ((__u32)g->vni[0] << 16) | ((__u32)g->vni[1] << 8) | g->vni[2];
        tunnel = TUNNEL_GENEVE;
    }

    /* Inner frame. */
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
        if (!worker_known(oip->saddr, oeth->h_source)) {
            reason = STAT_drop_unknown_worker;
            goto out;
        }
        reason = tunnel_arp(&c, cfg, oeth, oip, oudp, ieth, &action);
        goto out;
    }
    if (ieth->h_proto != bpf_htons(ETH_P_IPV4)) {
        reason = STAT_drop_inner_not_ipv4;
        goto out;
    }
    struct iphdr *iip;
    int rc = parse_ipv4(&c, &iip);
    if (rc != PARSE_OK) {
        reason = rc == PARSE_TRUNCATED ? STAT_drop_inner_truncated : STAT_drop_inner_bad_ip;
        goto out;
    }
    if (ipv4_is_fragment(iip)) {
        reason = STAT_drop_inner_fragment;
        goto out;
    }
    if (iip->ttl <= 1) {
        reason = STAT_drop_ttl_expired;
        goto out;
    }
    __u8 l4proto = iip->protocol;
    struct l4 l4;
    rc = parse_l4(&c, l4proto, ICMP_ECHO, &l4);
    if (rc != PARSE_OK || !l4.sport) {
        reason = l4_reason(rc, STAT_drop_inner_truncated);
        goto out;
    }
    __be16 *sport = l4.sport;
    __be16 dport = l4.dport ? *l4.dport : 0;
    __u8 tcp_flags = l4.tcp_flags;

    struct flow_key key;
    __builtin_memset(&key, 0, sizeof(key));
    key.worker = oip->saddr;
    key.vni = vni;
    key.src = iip->saddr;
    key.dst = iip->daddr;
    key.sport = *sport;
    key.dport = dport;
    key.proto = l4proto;

    struct rev_key rk;
    __builtin_memset(&rk, 0, sizeof(rk));
    rk.remote = iip->daddr;
    rk.remote_port = dport;
    rk.proto = l4proto;

    struct flow_rev rv; /* filled only when a reverse entry is written (new flow, repair) */
    __u64 now = bpf_ktime_get_coarse_ns();
    __u64 bytes = data_end - inner;
    ipv4_t eni_addr;
    __u32 vpc_idx, eni_idx;
    __be16 nat_port;
    struct rev_guard *g = rev_guard.lookup(&k0);
    struct flow_fwd *fwd = flows_fwd.lookup(&key);
    if (fwd && (!g || g->danger || fwd->verified_epoch != g->epoch ||
                !mac_equal(fwd->env_mac, ieth->h_source))) {
        /* The reverse entry decides delivery; use this forward entry only if it still points
         * back at this flow. Skipped while rev_guard proves no reverse entry can have gone and
         * the environment's MAC (which replies are addressed to) has not changed. */
        count(st, STAT_flow_rev_checked);
        rk.vpc_idx = fwd->vpc_idx;
        rk.eni_addr = fwd->eni_addr;
        rk.eni_port = fwd->nat_port;
        struct flow_rev *rev = flows_rev.lookup(&rk);
        if (!rev) {
            rev_init(&rv, &key, tunnel, ieth->h_source, now, fwd->eni_idx);
            guard_before_claim(g);
            if (flows_rev.insert(&rk, &rv) == 0) {
                guard_count(g, 1);
                count(st, STAT_flow_repaired);
            } else {
                flows_fwd.delete(&key);
                fwd = NULL;
                count(st, STAT_flow_stale);
            }
        } else if (rev->worker != key.worker || rev->vni != vni || rev->env_addr != key.src ||
                   rev->env_port != key.sport) {
            flows_fwd.delete(&key);
            fwd = NULL;
            count(st, STAT_flow_stale);
        } else if (!mac_equal(rev->env_mac, ieth->h_source)) {
            mac_copy(rev->env_mac, ieth->h_source);
        }
        if (fwd) {
            mac_copy(fwd->env_mac, ieth->h_source);
            if (g && !g->danger)
                fwd->verified_epoch = g->epoch;
        }
    }
    if (fwd) {
        eni_addr = fwd->eni_addr;
        vpc_idx = fwd->vpc_idx;
        eni_idx = fwd->eni_idx;
        nat_port = fwd->nat_port;
        /* Plain adds: a flow's packets arrive on one CPU (RSS hashes the outer flow), and these
         * counters serve expiry and inspection, where a rare lost increment does no harm. */
        if (now != fwd->last_seen_ns) /* store only what changed: fewer dirty lines to write */
            fwd->last_seen_ns = now;
        fwd->packets++;
        fwd->bytes += bytes;
        if (tcp_flags & ~fwd->tcp_flags)
            fwd->tcp_flags |= tcp_flags;
        reason = STAT_fwd_established;
    } else {
        struct eni *eni = enis.lookup(&vni);
        if (!eni) {
            reason = STAT_drop_unknown_vni;
            goto out;
        }
        if (!worker_known(oip->saddr, oeth->h_source)) {
            reason = STAT_drop_unknown_worker;
            goto out;
        }
        struct eni_stats *nes = eni_stats_of(eni->eni_idx);
        if (!sg_allows(vni, l4proto, key.dst, bpf_ntohs(dport))) {
            if (nes)
                nes->sg_denied++;
            reason = STAT_drop_sg_denied;
            goto out;
        }
        eni_addr = eni->addr;
        vpc_idx = eni->vpc_idx;
        eni_idx = eni->eni_idx;
        rk.vpc_idx = vpc_idx;
        rk.eni_addr = eni_addr;
        rev_init(&rv, &key, tunnel, ieth->h_source, now, eni_idx);
        guard_before_claim(g);
        if (alloc_port(eni, &rk, &rv) < 0) {
            if (nes)
                nes->port_alloc_failed++;
            reason = STAT_drop_port_exhausted;
            goto out;
        }
        struct flow_fwd fv;
        __builtin_memset(&fv, 0, sizeof(fv));
        fv.last_seen_ns = now;
        fv.packets = 1;
        fv.bytes = bytes;
        fv.eni_addr = eni_addr;
        fv.eni_idx = eni_idx;
        fv.vpc_idx = vpc_idx;
        fv.nat_port = rk.eni_port;
        fv.tunnel = tunnel;
        fv.tcp_flags = tcp_flags;
        fv.verified_epoch = g ? g->epoch : 0;
        mac_copy(fv.env_mac, ieth->h_source);
        nat_port = fv.nat_port;
        guard_count(g, 1);
        if (flows_fwd.insert(&key, &fv) != 0) {
            /* Another CPU created this flow first (or the table refused): give our port back
             * and follow the winner, so both CPUs translate the flow the same way. */
            flows_rev.delete(&rk);
            guard_count(g, -1);
            fwd = flows_fwd.lookup(&key);
            if (!fwd) {
                reason = STAT_drop_flow_insert;
                goto out;
            }
            count(st, STAT_flow_insert_race);
            nat_port = fwd->nat_port;
            __sync_fetch_and_add(&fwd->packets, 1);
            __sync_fetch_and_add(&fwd->bytes, bytes);
        } else if (nes) {
            nes->flows_created++;
        }
        reason = STAT_fwd_new_flow;
    }

    struct vpc *vpc = vpcs.lookup(&vpc_idx);
    if (!vpc || !(vpc->flags & VPC_F_ACTIVE)) {
        reason = STAT_drop_no_vpc;
        goto out;
    }
    if (!(vpc->flags & VPC_F_GW_MAC)) {
        reason = STAT_drop_no_gateway_mac;
        goto out;
    }

    /* SNAT onto the ENI: inner source address and port, checksums, TTL, MACs. */
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

/* ARP on a VPC-side interface: learn the gateway's MAC from anything it says, answer requests for
 * ENI addresses, leave the rest to the kernel. */
static __always_inline __u32 vpc_arp(struct cursor *c, struct stats *st, struct vpc *vpc,
                                     __u32 vpc_idx, struct ethhdr *eth, int *action)
{
    struct arp_eth_ipv4 *arp = CURSOR_TAKE(c, struct arp_eth_ipv4);
    *action = XDP_PASS;
    if (!arp || arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IPV4) ||
        arp->hlen != 6 || arp->plen != 4)
        return STAT_pass_vpc_arp;
    if (arp->spa == vpc->gateway_ip && arp->spa != 0 &&
        (!(vpc->flags & VPC_F_GW_MAC) || !mac_equal(vpc->gateway_mac, arp->sha))) {
        mac_copy(vpc->gateway_mac, arp->sha);
        vpc->flags |= VPC_F_GW_MAC;
        count(st, STAT_gw_mac_learned);
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
    __u32 *vpc_idx_p = vpc_ifs.lookup(&ifindex);
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
     * (the kernel's) is asked only when no flow answers: a reverse entry exists only for an
     * ENI address, so an established reply needs no ENI lookup. */
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

    struct rev_key rk;
    __builtin_memset(&rk, 0, sizeof(rk));
    rk.vpc_idx = vpc_idx;
    rk.eni_addr = ip->daddr;
    rk.remote = ip->saddr;
    rk.eni_port = *dport_p;
    rk.remote_port = sport;
    rk.proto = l4proto;
    struct flow_rev *rev = flows_rev.lookup(&rk);
    if (!rev) {
        if (eni_addrs.lookup(&ak)) {
            action = XDP_DROP;
            reason = STAT_drop_no_flow; /* unsolicited: environments accept no inbound */
        }
        goto out;
    }
    /* Addressed to an ENI, with a flow: ours to deliver or to drop with a reason. */
    action = XDP_DROP;
    struct worker *w = workers.lookup(&rev->worker);
    if (!w) {
        reason = STAT_drop_unknown_worker;
        goto out;
    }
    __u32 frame_len = data_end - data;
    if (cfg->fabric_mtu && frame_len + ENCAP_LEN - 14 > cfg->fabric_mtu) {
        reason = STAT_drop_fabric_mtu;
        goto out;
    }

    /* Reverse translation: destination back to the environment's address and port. */
    ipv4_t old_dst = ip->daddr;
    __u16 old_port = *dport_p;
    ip->daddr = rev->env_addr;
    ip->check = csum_replace4(ip->check, old_dst, rev->env_addr);
    ipv4_dec_ttl(ip);
    l4_csum_fix(l4proto, l4.check, old_dst, rev->env_addr, old_port, rev->env_port);
    *dport_p = rev->env_port;
    mac_copy(eth->h_dest, rev->env_mac);
    mac_copy(eth->h_source, cfg->gateway_mac);

    __u64 now = bpf_ktime_get_coarse_ns();
    if (now != rev->last_seen_ns) /* stores only where something changed, as forward */
        rev->last_seen_ns = now;
    rev->packets++; /* plain adds, as on the forward path */
    rev->bytes += frame_len;
    if (tcp_flags & ~rev->tcp_flags)
        rev->tcp_flags |= tcp_flags;
    __u32 vni = rev->vni;
    struct eni_stats *es = eni_stats_of(rev->eni_idx);
    if (es) {
        es->rx_packets++;
        es->rx_bytes += frame_len;
    }

    __u8 tunnel = rev->tunnel;
    ipv4_t worker = rev->worker;
    __u16 usport = TUNNEL_SPORT_BASE + (flow_hash(&rk) & 0x3FFF);
    if (bpf_xdp_adjust_head(ctx, -ENCAP_LEN)) {
        reason = STAT_drop_adjust_failed;
        goto out;
    }
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    struct ethhdr *oeth = data;
    struct iphdr *oip = data + 14;
    struct udphdr *oudp = data + 14 + 20;
    __u8 *th = data + 14 + 20 + 8;
    if ((void *)(th + 8) > data_end) {
        reason = STAT_drop_adjust_failed;
        goto out;
    }
    mac_copy(oeth->h_dest, w->mac);
    mac_copy(oeth->h_source, cfg->fabric_mac);
    oeth->h_proto = bpf_htons(ETH_P_IPV4);

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
