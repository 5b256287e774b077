/* stats.h - named per-CPU counters: one for every verdict and every drop reason.
 * Contract: ENIPLANE_STATS is the only list. It generates both the enum that C indexes with and the
 * struct whose BTF gives the control plane every counter's name, so the two cannot drift. Each
 * program ends in exactly one record() call, which counts the action and the reason for it.
 * The first five entries are the XDP actions, in the kernel's order (XDP_ABORTED..XDP_REDIRECT).
 */
#ifndef ENIPLANE_STATS_H
#define ENIPLANE_STATS_H

#define ENIPLANE_STATS(X)                                                                        \
    X(xdp_aborted) X(xdp_drop) X(xdp_pass) X(xdp_tx) X(xdp_redirect)                             \
    /* from the workers (fabric side) */                                                         \
    X(rx_fabric)                                                                                 \
    X(pass_not_tunnel)       /* not tunnel traffic for this node: the kernel's business */       \
    X(pass_malformed_outer)  /* outer headers too short or invalid to tell: the kernel drops */  \
    X(pass_outer_fragment)   /* a fragmented outer packet: only the kernel can reassemble it */  \
    X(drop_unknown_worker)   /* outer source is not a registered worker host */                  \
    X(worker_mac_conflict)   /* a worker's address from a MAC other than the one it is known by */ \
    X(drop_worker_not_placed) /* no function of the VNI's ENI is placed on this worker */        \
    X(worker_mac_learned)    /* a worker's MAC learned (first frame, or after `worker relearn`) */ \
    X(drop_tunnel_truncated) /* VXLAN/GENEVE header or options run past the packet */            \
    X(drop_vxlan_no_i_flag)  /* RFC 7348: the I flag must be set for the VNI to be valid */      \
    X(drop_geneve_version)   /* RFC 8926: only version 0 is defined */                           \
    X(drop_geneve_not_ether) /* GENEVE payload other than Ethernet (0x6558) */                   \
    X(drop_geneve_control)   /* O bit: control message, never forwarded */                       \
    X(drop_geneve_critical)  /* C bit: critical options that we do not implement */              \
    X(drop_unknown_vni)      /* no ENI for this VNI */                                           \
    X(drop_inner_truncated)                                                                      \
    X(drop_inner_not_ipv4)                                                                       \
    X(drop_inner_bad_ip)     /* version, IHL or total length (vs header, frame) invalid */       \
    X(drop_proto_unsupported) /* neither TCP, UDP nor ICMP */                                    \
    X(drop_icmp_unsupported) /* ICMP other than echo request (fabric), echo reply or an error (VPC) */ \
    X(drop_ttl_expired)      /* TTL would reach 0, and no ICMP answer is due (RFC 1812 4.3.2.7) */ \
    X(drop_vpc_mtu)          /* larger than the VPC link's MTU, and no ICMP answer is due */     \
    X(drop_icmp_ratelimit)   /* an ICMP answer over the node's per-CPU rate (icmp_rate) */       \
    X(tx_icmp_time_exceeded) /* TTL would reach 0: ICMP time exceeded sent to the sender */      \
    X(tx_icmp_frag_needed)   /* too big with DF: ICMP fragmentation needed sent to the sender */ \
    X(drop_frag_no_first)    /* a later fragment whose first was not seen (or its flow is gone) */ \
    X(drop_frag_overlap)     /* a later fragment that overlaps the first one (RFC 1858) */      \
    X(drop_frag_tiny)        /* a first fragment too short for its transport header (RFC 1858) */ \
    X(fwd_fragment)          /* a later fragment of a flow's datagram, translated into the VPC */ \
    X(drop_sg_denied)        /* no rule of any of the ENI's groups allows the new flow */        \
    X(drop_port_exhausted)   /* no free SNAT port towards this destination */                    \
    X(drop_flow_insert)      /* the flow table refused the entry */                              \
    X(drop_port_race)        /* another CPU took the free port first; the next packet retries */ \
    X(drop_flow_limit)       /* the ENI holds as many flows as its limit allows */              \
    X(drop_tcp_no_flow)      /* a TCP RST with no live flow: nothing to answer (RFC 793) */     \
    X(tx_tcp_rst)            /* TCP with no live flow (expired, reset, flushed): RST sent back */ \
    X(drop_no_vpc)           /* the ENI's VPC interface is not configured */                     \
    X(drop_no_gateway_mac)   /* the VPC gateway's MAC is not learned yet */                      \
    X(drop_no_tx_port)       /* the egress interface is missing from tx_ports */                 \
    X(drop_tail_call)        /* a program missing from fabric_calls (a load went wrong) */    \
    X(drop_arp_ignored)      /* ARP in the tunnel that needs no answer (probe, gratuitous, reply) */ \
    X(tx_arp_tunnel)         /* answered an environment's ARP as its gateway */                  \
    X(fwd_new_flow)                                                                              \
    X(fwd_established)                                                                           \
    X(flow_probed)           /* established packet whose flow sits past its probe's first port */ \
    X(flow_insert_race)      /* another CPU created the same flow first: its entry is used */    \
    X(fwd_icmp_error)        /* an environment's ICMP error about a flow, translated into the VPC */ \
    X(flow_takeover)         /* a new flow took over an expired entry (its port) of another tuple */ \
    X(flow_reopened)         /* a tuple whose flow expired or closed opened it again in place */ \
    /* from the VPCs */                                                                          \
    X(rx_vpc)                                                                                    \
    X(pass_vpc_unknown_if)   /* interface not attached to a VPC */                               \
    X(pass_vpc_not_eni)      /* not addressed to an ENI */                                       \
    X(pass_vpc_arp)          /* ARP that is not a request for an ENI address */                  \
    X(tx_arp_vpc)            /* answered ARP for an ENI address */                               \
    X(gw_mac_learned)        /* the gateway's MAC learned (first ARP, or after `vpc relearn`) */ \
    X(gw_mac_conflict)       /* ARP claims the gateway's address from another MAC: not adopted */ \
    X(drop_vpc_malformed)                                                                        \
    X(drop_no_flow)          /* unsolicited: environments accept no inbound connections */       \
    X(drop_flow_expired)     /* a reply into a flow that expired or was reset */                 \
    X(drop_icmp_error_no_flow) /* an ICMP error about a packet of no live flow */                \
    X(drop_icmp_error_malformed) /* an ICMP error whose quoted packet is cut short or invalid */ \
    X(drop_fabric_mtu)       /* the encapsulated reply would exceed the fabric MTU */            \
    X(drop_adjust_failed)    /* the kernel refused to move the packet start (headroom) */        \
    X(rev_established)                                                                           \
    X(rev_icmp_error)        /* an ICMP error about a flow, translated back to its environment */ \
    X(rev_fragment)          /* a later fragment of a flow's datagram, back to its environment */ \
    /* events and the kernel's redirects (events.h, redirect.h) */                              \
    X(event_rate_limited)    /* an event over the node's per-CPU rate (event_rate): not sent */ \
    X(event_ring_full)       /* an event the ring buffer had no room for: lost */              \
    X(redirect_failed)       /* redirected, then not delivered: no XDP on a veth's peer, too big */

#define ENIPLANE_STAT_ENUM(n) STAT_##n,
enum stat_id { ENIPLANE_STATS(ENIPLANE_STAT_ENUM) STAT__MAX };

#define ENIPLANE_STAT_FIELD(n) __u64 n;
struct stats {
    ENIPLANE_STATS(ENIPLANE_STAT_FIELD)
};

#endif
