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

/* Decrement TTL; the checksum follows the (ttl, protocol) word. The word is written whole,
 * from the value read: reading it back after a store to its TTL byte alone would wait for
 * that store to reach the cache (no store forwarding from a narrower store). */
static __always_inline void ipv4_dec_ttl(struct iphdr *ip)
{
    __u16 *word = (__u16 *)&ip->ttl;
    __u16 old = *word;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    __u16 now = (old & 0xFF00) | ((old - 1) & 0x00FF);
#else
    __u16 now = (old & 0x00FF) | ((old - 0x100) & 0xFF00);
#endif
    *word = now;
    ip->check = csum_replace2(ip->check, old, now);
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

/* TCP's MSS option (RFC 9293 3.7.1) lowered to `mss` when it is larger, the checksum following.
 * Options are walked within the header's data offset and the segment's length (`seg_len`: the
 * IPv4 total length less its header), at most 8 of them: SYNs carry MSS first
 * or second. A field at an odd offset from the header's start sits across two checksum words,
 * so its words are swapped for the update (RFC 1624 works on aligned words). */
static __always_inline void tcp_clamp_mss(struct tcphdr *th, void *data_end, __u32 seg_len,
                                          __u16 mss)
{
    __u8 *opt = (__u8 *)(th + 1);
    __u32 optlen = th->doff * 4;
    if ((void *)(th + 1) > data_end || optlen <= sizeof(*th))
        return;
    optlen -= sizeof(*th);
    __u32 off = 0;
    for (int i = 0; i < 8; i++) {
        /* within the data offset, and within the segment: what follows in the frame is
         * Ethernet padding, not options */
        if (off + 4 > optlen || sizeof(*th) + off + 4 > seg_len)
            break;
        __u8 *o = opt + (off & 63);
        if ((void *)(o + 4) > data_end)
            break;
        if (o[0] == 0) /* end of options */
            break;
        if (o[0] == 1) { /* no-operation */
            off++;
            continue;
        }
        if (o[0] == 2 && o[1] == 4) {
            __u16 cur = ((__u16)o[2] << 8) | o[3];
            if (cur > mss) {
                __u16 was = o[2] | ((__u16)o[3] << 8); /* the word as memory holds it */
                o[2] = mss >> 8;
                o[3] = mss & 0xFF;
                __u16 now = o[2] | ((__u16)o[3] << 8);
                if (off & 1) { /* the option starts at an odd offset: so does its value */
                    was = (was >> 8) | (was << 8);
                    now = (now >> 8) | (now << 8);
                }
                th->check = csum_replace2(th->check, was, now);
            }
            break;
        }
        if (o[1] < 2)
            break;
        off += o[1];
    }
}

/* `s` plus the 16-bit words of the `len` bytes at `p` (at most ICMP_QUOTE_MAX), an odd last
 * byte padded with zero (RFC 1071), unfolded. Nothing at or past data_end is read. */
static __always_inline __u32 csum_add_quote(const __u8 *p, __u32 len, void *data_end, __u32 s)
{
    for (int i = 0; i < ICMP_QUOTE_MAX / 2; i++) {
        if ((__u32)i * 2 + 2 > len)
            break;
        const __u16 *w = (const void *)(p + i * 2);
        if ((void *)(w + 1) > data_end)
            break;
        s += *w;
    }
    if (len & 1) {
        const __u8 *b = p + ((len - 1) & 0x7F);
        if ((void *)(b + 1) <= data_end)
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            s += *b; /* the word [b, 0] as memory holds it */
#else
            s += (__u32)*b << 8;
#endif
    }
    return s;
}

static __always_inline void mac_copy(void *dst, const void *src)
{
    __builtin_memcpy(dst, src, 6);
}

#endif
