/* csum.h - checksum arithmetic and header rewrites.
 * Contract: incremental updates follow RFC 1624 on the raw (network order) words, so they work on
 * either byte order; a UDP checksum of 0 ("none") stays 0, and a computed 0 is sent as 0xFFFF.
 */
#ifndef ENIPLANE_CSUM_H
#define ENIPLANE_CSUM_H

static __always_inline __u16 csum_fold32(__u32 s)
{
    s = (s & 0xFFFF) + (s >> 16);
    s = (s & 0xFFFF) + (s >> 16);
    return (__u16)~s;
}

/* New checksum after a 32-bit field changed from `from` to `to`. */
static __always_inline __u16 csum_replace4(__u16 check, __u32 from, __u32 to)
{
    __u32 s = (__u16)~check;
    s += (__u16)~from;
    s += (__u16)~(from >> 16);
    s += (__u16)to;
    s += (__u16)(to >> 16);
    return csum_fold32(s);
}

static __always_inline __u16 csum_replace2(__u16 check, __u16 from, __u16 to)
{
    __u32 s = (__u16)~check;
    s += (__u16)~from;
    s += to;
    return csum_fold32(s);
}

/* `s` plus the 16-bit words of 20 bytes (an option-less IPv4 or TCP header), unfolded. */
static __always_inline __u32 csum_add20(const void *p, __u32 s)
{
    const __u16 *w = p;
#pragma unroll
    for (int i = 0; i < 10; i++)
        s += w[i];
    return s;
}

/* A fresh checksum for an option-less IPv4 header (20 bytes). */
static __always_inline __u16 ipv4_csum20(struct iphdr *ip)
{
    return csum_fold32(csum_add20(ip, 0));
}

/* Decrement TTL; the checksum follows the (ttl, protocol) word. */
static __always_inline void ipv4_dec_ttl(struct iphdr *ip)
{
    __u16 *word = (__u16 *)&ip->ttl;
    __u16 old = *word;
    ip->ttl--;
    ip->check = csum_replace2(ip->check, old, *word);
}

/* Rewrite an L4 checksum for an address change (pseudo header) plus a port change. */
static __always_inline void l4_csum_fix(__u8 proto, __u16 *check, __u32 old_addr, __u32 new_addr,
                                        __u16 old_port, __u16 new_port)
{
    if (proto == IPPROTO_UDP && *check == 0)
        return; /* UDP without a checksum stays that way */
    __u16 c = *check;
    if (proto != IPPROTO_ICMP) /* ICMP has no pseudo header */
        c = csum_replace4(c, old_addr, new_addr);
    c = csum_replace2(c, old_port, new_port);
    if (proto == IPPROTO_UDP && c == 0)
        c = 0xFFFF;
    *check = c;
}

static __always_inline void mac_copy(void *dst, const void *src)
{
    __builtin_memcpy(dst, src, 6);
}

#endif
