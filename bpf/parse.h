/* parse.h - cursor-based header parsing.
 * Contract: every helper checks that the whole header lies before data_end before it reads a byte,
 * advances the cursor past it and returns a pointer to it, or NULL when the packet is too short or
 * the header is invalid. Callers decide what a NULL means for them (pass or a named drop).
 */
#ifndef ENIPLANE_PARSE_H
#define ENIPLANE_PARSE_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/in.h>
#include "consts.h"

struct cursor {
    void *pos;
    void *end;
};

struct vlan_hdr_ {
    __be16 tci;
    __be16 proto;
};

struct vxlan_hdr_ {
    __u8 flags;      /* 0x08: VNI valid (I flag) */
    __u8 rsvd1[3];
    __be32 vni_rsvd; /* VNI in the top 24 bits */
};

struct geneve_hdr_ {
    __u8 ver_optlen; /* version in the top 2 bits, option length in 4-byte words below */
    __u8 flags;      /* 0x80 O (control), 0x40 C (critical options present) */
    __be16 proto;
    __u8 vni[3];
    __u8 rsvd;
};

struct arp_eth_ipv4 {
    __be16 htype;
    __be16 ptype;
    __u8 hlen;
    __u8 plen;
    __be16 op;
    mac_t sha;
    ipv4_t spa;
    mac_t tha;
    ipv4_t tpa;
} __attribute__((packed));

#define CURSOR_TAKE(c, type)                                                                     \
    ({                                                                                           \
        type *__h = (c)->pos;                                                                    \
        if ((void *)(__h + 1) > (c)->end)                                                        \
            __h = NULL;                                                                          \
        else                                                                                     \
            (c)->pos = __h + 1;                                                                  \
        __h;                                                                                     \
    })

/* Ethernet plus up to MAX_VLAN_DEPTH 802.1Q/802.1ad tags; *proto is the inner ethertype. The tags'
 * position is kept in *tags (NULL without tags) and their number in *depth, so that a reply can
 * carry the same ones. */
static __always_inline struct ethhdr *parse_eth_tags(struct cursor *c, __be16 *proto,
                                                     struct vlan_hdr_ **tags, __u32 *depth)
{
    struct ethhdr *eth = CURSOR_TAKE(c, struct ethhdr);
    if (!eth)
        return NULL;
    __be16 p = eth->h_proto;
    *tags = NULL;
    *depth = 0;
#pragma unroll
    for (int i = 0; i < MAX_VLAN_DEPTH; i++) {
        if (p != bpf_htons(ETH_P_8021Q_) && p != bpf_htons(ETH_P_8021AD_))
            break;
        struct vlan_hdr_ *v = CURSOR_TAKE(c, struct vlan_hdr_);
        if (!v)
            return NULL;
        if (i == 0)
            *tags = v;
        *depth = i + 1;
        p = v->proto;
    }
    *proto = p;
    return eth;
}

enum parse_result {
    PARSE_OK = 0,
    PARSE_TRUNCATED,  /* the header runs past the end of the packet */
    PARSE_INVALID,    /* present but impossible (IPv4 version, IHL, total length) */
    PARSE_ICMP_OTHER, /* ICMP, but not the echo message this side translates */
    PARSE_PROTO_OTHER /* neither TCP, UDP nor ICMP */
};

/* IPv4 with any valid IHL: options are skipped, never interpreted. A total length shorter than
 * the header or longer than the frame is invalid (RFC 1812 5.2.2): the receiver would drop it as a
 * header error, so forwarding it would only carry a lie further. Shorter than the frame is fine:
 * Ethernet pads small frames. */
static __always_inline int parse_ipv4(struct cursor *c, struct iphdr **out)
{
    struct iphdr *ip = c->pos;
    if ((void *)(ip + 1) > c->end)
        return PARSE_TRUNCATED;
    if (ip->version != 4 || ip->ihl < 5)
        return PARSE_INVALID;
    __u32 hlen = ip->ihl * 4;
    __u32 tot = bpf_ntohs(ip->tot_len);
    if (tot < hlen || tot > (__u32)(c->end - c->pos))
        return PARSE_INVALID;
    if (c->pos + hlen > c->end)
        return PARSE_TRUNCATED;
    c->pos += hlen;
    *out = ip;
    return PARSE_OK;
}

/* Where the ports (or the ICMP echo identifier) and the checksum of an L4 header are. The echo
 * identifier stands in for the port on the side that chose it: the source of an echo request
 * going out, the destination of an echo reply coming back; the other pointer stays NULL. */
struct l4 {
    __be16 *sport;
    __be16 *dport;
    __u16 *check;
    __u8 tcp_flags;
};

static __always_inline int parse_l4(struct cursor *c, __u8 proto, __u8 echo_type, struct l4 *l4)
{
    l4->sport = NULL;
    l4->dport = NULL;
    l4->tcp_flags = 0;
    if (proto == IPPROTO_TCP) {
        struct tcphdr *th = CURSOR_TAKE(c, struct tcphdr);
        if (!th)
            return PARSE_TRUNCATED;
        l4->sport = &th->source;
        l4->dport = &th->dest;
        l4->check = &th->check;
        l4->tcp_flags = ((__u8 *)th)[13];
    } else if (proto == IPPROTO_UDP) {
        struct udphdr *uh = CURSOR_TAKE(c, struct udphdr);
        if (!uh)
            return PARSE_TRUNCATED;
        l4->sport = &uh->source;
        l4->dport = &uh->dest;
        l4->check = &uh->check;
    } else if (proto == IPPROTO_ICMP) {
        struct icmphdr *ih = CURSOR_TAKE(c, struct icmphdr);
        if (!ih)
            return PARSE_TRUNCATED;
        if (ih->type != echo_type || ih->code != 0)
            return PARSE_ICMP_OTHER;
        if (echo_type == ICMP_ECHO)
            l4->sport = &ih->un.echo.id;
        else
            l4->dport = &ih->un.echo.id;
        l4->check = &ih->checksum;
    } else {
        return PARSE_PROTO_OTHER;
    }
    return PARSE_OK;
}

static __always_inline int ipv4_is_fragment(struct iphdr *ip)
{
    return (ip->frag_off & bpf_htons(0x3FFF)) != 0; /* MF set or a non-zero offset */
}

/* GENEVE: the fixed header, then options skipped by their advertised length. */
static __always_inline struct geneve_hdr_ *parse_geneve(struct cursor *c)
{
    struct geneve_hdr_ *g = CURSOR_TAKE(c, struct geneve_hdr_);
    if (!g)
        return NULL;
    __u32 optlen = (g->ver_optlen & 0x3F) * 4;
    if (c->pos + optlen > c->end)
        return NULL;
    c->pos += optlen;
    return g;
}

#endif
