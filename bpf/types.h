/* types.h - the structs and enums shared by the datapath and the control plane.
 * Contract: this is the one definition of every map layout. Python never restates it: it reads these
 * types back from the maps' BTF. Typedef names carry meaning there: `ipv4_t` is an address in
 * network order, `mac_t` a MAC address, `__be16` a port in network order. Field order keeps every
 * struct free of implicit padding (explicit pad fields instead), so keys hash the same bytes always.
 */
#ifndef ENIPLANE_TYPES_H
#define ENIPLANE_TYPES_H

#include "consts.h"

typedef __be32 ipv4_t;
typedef __u8 mac_t[6];

enum tunnel_type {
    TUNNEL_NONE = 0,
    TUNNEL_VXLAN = 1,
    TUNNEL_GENEVE = 2,
};

/* config[0]: the node's own identity on the fabric. Written by `eniplane up`. */
struct node_cfg {
    ipv4_t fabric_ip;
    __u32 fabric_ifindex;
    mac_t fabric_mac;
    mac_t gateway_mac; /* the MAC the environments see as their gateway inside the tunnel */
    __u16 fabric_mtu;
    __u16 pad;
};

/* workers[outer source address]: hosts allowed to send tunnel traffic. The MAC is learned from
 * their frames and used as the outer destination of replies. */
struct worker {
    mac_t mac;
    __u16 pad;
};

/* enis[VNI]: one shared ENI. Every function with the same (subnet, group set) uses it. */
struct eni {
    __u32 eni_idx;     /* control-plane handle below MAX_ENIS: indexes eni_stats */
    __u32 vpc_idx;
    __u32 vpc_ifindex; /* node interface that leads into the ENI's VPC */
    ipv4_t addr;
    __u16 port_lo;     /* SNAT port range, host order, inclusive */
    __u16 port_hi;
};

/* eni_addrs[(VPC, address)] -> the ENI: VPCs overlap, so an address alone names nothing. */
struct eni_addr_key {
    __u32 vpc_idx;
    ipv4_t addr;
};

struct eni_ref {
    __u32 vni;
    __u32 eni_idx;
};

/* vpcs[vpc_idx]: an array, so the forward path finds its VPC without hashing. The return path
 * gets the index from vpc_ifs[ingress ifindex]. */
struct vpc {
    __u32 ifindex;     /* the node's interface into the VPC */
    ipv4_t gateway_ip;
    mac_t gateway_mac; /* learned by ARP on the interface; valid when VPC_F_GW_MAC is set */
    mac_t if_mac;      /* the node's own MAC on that interface */
    __u32 flags;
    __u32 tx_slot;     /* this interface's slot in tx_ports */
};
#define VPC_F_GW_MAC 1
#define VPC_F_ACTIVE 2 /* the slot is configured (array slots always exist) */

/* sg_rules: the union of the egress rules of all of an ENI's security groups, compiled by the
 * control plane so that a new flow costs one LPM lookup and a fixed binary search, never a loop
 * over rules. Key: (VNI, protocol, destination prefix); the longest matching prefix carries the
 * port ranges of every rule whose CIDR contains it, merged, sorted and disjoint. */
struct sg_key {
    __u32 prefixlen; /* 64 + CIDR length: VNI and protocol always match exactly */
    __u32 vni;
    __u8 proto;
    __u8 pad[3];
    ipv4_t addr;
};

struct port_range {
    __u16 lo; /* host order, inclusive; ICMP and "all" rules use 0-65535 */
    __u16 hi;
};

struct sg_ports {
    __u32 n;
    __u32 pad;
    struct port_range ranges[SG_MAX_RANGES];
};

/* flows_fwd: the environment's view of a flow, as it arrives from the worker. The worker and VNI are
 * part of the key because environments of different functions may use the same inner address. */
struct flow_key {
    ipv4_t worker;
    __u32 vni;
    ipv4_t src;
    ipv4_t dst;
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 pad[3];
};

struct flow_fwd {
    __u64 last_seen_ns;
    __u64 packets;
    __u64 bytes;
    /* The ENI's address, VPC and handle, copied when the flow opens so that the established path
     * needs no ENI lookup. ENIs never change address or VPC; deleting one flushes its flows. */
    ipv4_t eni_addr;
    __u16 eni_idx;
    __u16 vpc_idx;
    __be16 nat_port;
    __u8 tunnel;     /* enum tunnel_type the flow arrived with */
    __u8 tcp_flags;  /* union of flags seen, for expiry */
    __u32 verified_epoch; /* rev_guard epoch in which the reverse half was last seen owned */
    mac_t env_mac;  /* the environment's MAC as the reverse half has it: a change is copied there */
    __u16 pad;
};

/* rev_guard[0]: when may the established path trust a forward entry without reading its reverse
 * half? The LRU can only evict a reverse entry when the table is nearly full: each CPU parks at
 * most LOCAL_FREE_TARGET (128) free or pending nodes, and the kernel evicts only when fewer than
 * that remain free globally. rev_count (claims minus deletes, never below the live count) stays
 * under REV_SAFE_ENTRIES as long as no eviction is possible. At the first claim that could reach
 * it, `danger` is raised and the epoch bumped: from then on every forward entry is checked again.
 * User space, after deleting reverse entries, recounts, clears `danger` and bumps the epoch. */
struct rev_guard {
    __u64 rev_count;
    __u32 epoch;
    __u32 danger;
};

/* flows_rev: the VPC's view of the same flow, after SNAT. It is the authority for delivery: a
 * reply goes exactly where this entry says, and a forward entry is only used while its reverse
 * entry points back at it. */
struct rev_key {
    __u32 vpc_idx;
    ipv4_t eni_addr;
    ipv4_t remote;
    __be16 eni_port;
    __be16 remote_port;
    __u8 proto;
    __u8 pad[3];
};

struct flow_rev {
    __u64 last_seen_ns;
    __u64 packets;
    __u64 bytes;
    ipv4_t worker;
    __u32 vni;
    ipv4_t env_addr;
    __be16 env_port;
    __u8 tunnel;
    __u8 tcp_flags;
    mac_t env_mac;
    __u16 eni_idx; /* the ENI's per-ENI counters, so a reply needs no ENI lookup */
};

/* eni_stats[eni_idx], a per-CPU array. "tx" is towards the VPC, "rx" back towards the worker. */
struct eni_stats {
    __u64 tx_packets;
    __u64 tx_bytes;
    __u64 rx_packets;
    __u64 rx_bytes;
    __u64 flows_created;
    __u64 sg_denied;
    __u64 port_alloc_failed;
};

#endif
