/* consts.h - numbers the datapath and the control plane agree on.
 * Contract: limits here size the maps and bound every loop; the control plane reads the resulting
 * map sizes back from the kernel, never from this file. Values may be overridden with -D at load.
 */
#ifndef ENIPLANE_CONSTS_H
#define ENIPLANE_CONSTS_H

#define VXLAN_PORT 4789
#define GENEVE_PORT 6081

#define ETH_P_IPV4 0x0800
#define ETH_P_ARPH 0x0806
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_TEB 0x6558 /* GENEVE's protocol type for an Ethernet payload */

#define MAX_VLAN_DEPTH 2

/* AWS limits: 5 groups per ENI, 60 rules per direction per group. */
#define MAX_SG_PER_ENI 5
#define MAX_RULES_PER_SG 60

/* Disjoint port ranges per compiled prefix: 5 groups x 60 rules merge into at most 300, and a
 * power of two lets the binary search run a fixed SG_SEARCH_STEPS halvings. */
#define SG_MAX_RANGES 512
#define SG_SEARCH_STEPS 9
#ifndef MAX_SG_PREFIXES
#define MAX_SG_PREFIXES 65536
#endif

/* How many consecutive ports, from where the flow's probe starts, a flow may sit at. A new flow
 * takes the first free one with a BPF_NOEXIST insert, so concurrent CPUs never claim the same
 * port; when all are taken towards its destination it is dropped as port exhaustion. Every
 * established packet may walk this far, and so must the verifier (see eniplane.c). */
#define PORT_TRIES 16
#define E_EXIST 17 /* EEXIST: what a BPF_NOEXIST insert of a taken key returns, negated */

/* The idle timeouts a node starts with, whole seconds (user space writes them into node_cfg;
 * lifecycle.DEFAULT_TIMEOUTS is held equal by tests/unit/test_consts.py): AWS's NAT gateway and
 * Lambda's Hyperplane ENIs keep an idle TCP connection 350 s; the transitory and UDP/ICMP values
 * follow RFC 5382 (>= 4 min before a closing connection's port is reused) and RFC 4787. */
#define DEFAULT_TIMEOUT_TCP_ESTABLISHED 350
#define DEFAULT_TIMEOUT_TCP_TRANSITORY 240
#define DEFAULT_TIMEOUT_UDP 350
#define DEFAULT_TIMEOUT_ICMP 60
#define NSEC_PER_SEC 1000000000ull
/* How much longer than its timeout an entry must have been idle before another tuple may take
 * it over. Each CPU's clock lags the true time by up to two ticks (coarse_now), so without a
 * margin an owner's CPU could still judge the flow live, and refresh it, while another CPU
 * rewrites it for a new owner. 100 ms is far beyond two ticks at any HZ. */
#define TAKEOVER_GRACE_NS 100000000ull

/* TCP header flags (byte 13), BSD names. */
#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10
#define INNER_TTL 64 /* the TTL of packets the node makes up inside the tunnel (TCP RSTs) */

/* ICMP the node generates itself (fragmentation needed, time exceeded): RFC 792's header plus
 * the offending datagram's IPv4 header and first 64 bits of data, as RFC 792 asks. The rate is a
 * per-CPU token bucket, as the kernel's icmp_msgs_per_sec and icmp_msgs_burst (1000/s, 50). */
#define ICMP_TTL 64
#define ICMP_TOS 0xC0 /* IPTOS_PREC_INTERNETCONTROL, what Linux gives the ICMP it sends */
#define ICMP_QUOTE_DATA 8
#define ICMP_QUOTE_MAX (60 + ICMP_QUOTE_DATA) /* the largest IPv4 header and 64 bits */
#define ICMP_ERR_HDRS (20 + 8) /* the IPv4 and ICMP headers in front of the quote */
#define DEFAULT_ICMP_RATE 1000
#define ICMP_BURST 50
#define ICMP_DEST_UNREACH_ 3
#define ICMP_FRAG_NEEDED_ 4
#define ICMP_TIME_EXCEEDED_ 11

/* Fragments (RFC 791): the first one carries the ports and opens or finds the flow; it leaves
 * the flow's key in `frags` for the later ones, which carry none. An entry older than this is
 * gone: fragments of one datagram leave their sender back to back, and a short life keeps an IP
 * identifier that the sender reuses from reaching an older datagram's flow. */
#define FRAG_TIMEOUT_NS 2000000000ull
#ifndef MAX_FRAGS
#define MAX_FRAGS 16384
#endif
#define IP_MF_ 0x2000
#define IP_DF_ 0x4000
#define IP_OFFMASK_ 0x1FFF

/* Events (events.h): the first bytes of a frame they carry (outer and inner headers of a
 * tunnel packet with options fit), the ring buffer's size (a power of two pages) and the
 * rate a node starts with: sampled, so that a flood of drops costs a bounded amount. */
#define EVENT_SNAP_LEN 128 /* a power of two: event_emit bounds its copy with a mask */
#define EVENT_RING_BYTES (256 * 1024)
#define DEFAULT_EVENT_RATE 100
#define EVENT_BURST 50
#ifndef MAX_SG_DENIALS
#define MAX_SG_DENIALS 16384
#endif
#define MAX_REDIRECT_IFS 1024 /* egress interfaces whose redirect failures are counted */

#ifndef MAX_FLOWS
#define MAX_FLOWS 262144
#endif
/* flow_hot's slots: a quarter of the flow table's capacity, rounded down to a power of two (the
 * slot is a mask of a hash), so that a flow costs 16 bytes there (64 bytes a slot) on top of the
 * 144 the kernel charges for its `flows` entry: 160 in all. */
#define HOT_SLOTS_MIN 64
/* The slots of one set: a flow's slot may be any of them, in either of its two sets (hot_sets).
 * Eight, since the table runs full (a quarter of the capacity) while a quarter of the capacity
 * sends: 65,000 flows in 65,536 slots find their set full for 27% of them in sets of two, 19% in
 * sets of four, 14% in sets of eight, and each of those goes the long way (three dependent
 * misses) on every packet; a second set takes that to 7.3% (9.3% of flows sit in their second
 * set and read both), and moving a flow to its other set to make room (hot_movable) to 1.6%.
 * A lookup reads the keys of a set's slots, whose addresses need nothing
 * from memory: their lines are fetched in parallel. Sixteen in one set (10% without a slot)
 * gained 10-11 ns at 64k flows but cost new flows 4% and took xdp_fabric_open, which fills slots
 * too, to 787k of the verifier's million. */
#ifndef HOT_WAYS
#define HOT_WAYS 8
#endif
#define HOT_SLOTS                                                                                  \
    (MAX_FLOWS / 4 >= HOT_SLOTS_MIN ? (1u << (31 - __builtin_clz(MAX_FLOWS / 4))) : HOT_SLOTS_MIN)
/* Below this many flows the LRU cannot have evicted one (see flow_guard in types.h). The kernel's
 * LRU evicts only when a CPU refills its local free list (LOCAL_FREE_TARGET, 128 nodes) and fewer
 * than that remain on the global free list; each possible CPU can hold up to 128 free nodes on
 * its local list and as many just allocated on its pending list. So with NR_POSSIBLE_CPUS (given
 * by the loader) no eviction is possible while count + 256 per CPU + 128 <= MAX_FLOWS. A table
 * too small for that makes holes possible from the first flow, which only lengthens walks. */
#ifndef NR_POSSIBLE_CPUS
#define NR_POSSIBLE_CPUS 256
#endif
#define LRU_LOCAL_FREE_TARGET 128
#define FLOW_SAFE_ENTRIES                                                                         \
    ((__s64)MAX_FLOWS - 2 * LRU_LOCAL_FREE_TARGET * (__s64)NR_POSSIBLE_CPUS - LRU_LOCAL_FREE_TARGET)

#ifndef MAX_ENIS
#define MAX_ENIS 16384
#endif
#define ENI_CACHE_SLOTS 256 /* per CPU, direct-mapped by VNI */
#define VPC_IF_SLOTS 1024   /* direct-mapped by ifindex */
#define WORKER_SLOTS 4096   /* direct-mapped by the worker's address */
#ifndef MAX_PLACEMENTS
#define MAX_PLACEMENTS 131072 /* (worker, VNI) pairs allowed to send */
#endif

#ifndef MAX_VPCS
#define MAX_VPCS 256
#endif
#ifndef MAX_WORKERS
#define MAX_WORKERS 4096
#endif

/* Headers that the return path pushes in front of the inner frame: outer Ethernet, IPv4, UDP and
 * an 8-byte VXLAN or option-less GENEVE header. */
#define ENCAP_LEN (14 + 20 + 8 + 8)
#define VLAN_TAG_LEN 4 /* each outer VLAN tag the worker's frames carry adds one to replies */
#define OUTER_TTL 64
#define TUNNEL_SPORT_BASE 49152 /* RFC 7348: source port from the dynamic range for entropy */

#endif
