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
    mac_t fabric_mac;
    mac_t gateway_mac; /* the MAC the environments see as their gateway inside the tunnel */
    __u16 fabric_mtu;
    __u16 pad;
    __u32 port_secret; /* keys port_hash: chosen once per node, kept across reloads */
    __u32 eni_gen;     /* bumped by the control plane on every change to `enis` (eni_cache) */
    /* Idle timeouts in whole seconds, >= 1: user space writes them with the rest (the
     * DEFAULT_TIMEOUT_* of consts.h unless the operator set others). Judged on every packet,
     * so a change applies at once to the flows that exist. */
    __u32 timeout_tcp_established;
    __u32 timeout_tcp_transitory;
    __u32 timeout_udp;
    __u32 timeout_icmp;
    __u32 flows_per_eni; /* the node's default per-ENI flow limit (0: none); eni.max_flows overrides */
    __u32 flags;         /* NODE_F_* */
    /* The source of the ICMP the node sends inside the tunnel (time exceeded, fragmentation
     * needed): the environments' gateway. They route on-link, so no address is theirs to
     * know; traceroute shows this one as the node's hop. User space always writes it. */
    ipv4_t tunnel_gateway;
    __u32 icmp_rate;     /* ICMP messages the node may generate per second per CPU; 0: none */
    __u32 event_rate;    /* events (events.h) the node may emit per second per CPU */
    /* Who the redirect-failure tracepoints (redirect.h) count for: frames that arrived on the
     * fabric interface or a VPC-side one (vpc_ifs) in the node's network namespace. */
    __u32 fabric_ifindex;
    __u32 netns_ino;     /* the namespace's inode number (ns.inum), as stat() shows it */
};
#define NODE_F_NO_MSS_CLAMP 1 /* leave the MSS of SYNs and SYN/ACKs as they are */
#define NODE_F_EVENT_DROPS 2  /* drops go into `events`, sampled (event_rate) */
#define NODE_F_EVENT_FLOWS 4  /* so do new flows */
#define NODE_F_NO_HOT 8       /* established packets go the long way, touching no slot (A/B) */

/* The outer VLAN tags a worker's frames arrive with, replayed on the frames sent back to it. */
struct vlan_tag {
    __be16 tpid; /* 0x8100 or 0x88a8, network order */
    __be16 tci;
};

/* workers[outer source address]: hosts allowed to send tunnel traffic. A worker's MAC is the
 * outer destination of its replies, so it is not taken from whoever claims the worker's address:
 * it is learned from the first frame (or set by the operator) and then kept. A frame from another
 * MAC is dropped and counted (worker_mac_conflict) unless the operator asked to relearn. */
struct worker {
    mac_t mac;
    __u8 flags;      /* WORKER_F_* */
    __u8 vlan_depth; /* how many of `vlans` the worker's frames carry (0..MAX_VLAN_DEPTH) */
    struct vlan_tag vlans[MAX_VLAN_DEPTH];
};
#define WORKER_F_MAC 1     /* mac is known: learned once, or set by the operator */
#define WORKER_F_RELEARN 2 /* the operator asked to adopt the next MAC seen (`worker relearn`) */
#define WORKER_F_STATIC 4  /* the operator set the MAC (`worker add --mac`) */

/* worker_slots[host-order address % WORKER_SLOTS]: a copy of one worker's entry, so that every
 * tunnel packet and every reply finds the worker without hashing. The control plane gives a slot
 * to the first worker that maps to it (the others are found in `workers`); the datapath keeps the
 * copy equal to the entry when it learns. */
struct worker_slot {
    ipv4_t addr;
    struct worker w;
};

/* placements[(worker, VNI)]: the worker may send on the ENI of that VNI, because a function that
 * uses the ENI is placed on it. A new flow or a tunnel ARP from any other pair is dropped
 * (drop_worker_not_placed); removing a placement flushes that pair's flows, so their next packet
 * is a new flow, and dropped. The value counts the functions behind the pair (for inspection). */
struct placement_key {
    ipv4_t worker;
    __u32 vni;
};

/* enis[VNI]: one shared ENI. Every function with the same (subnet, group set) uses it. */
struct eni {
    __u32 eni_idx;     /* control-plane handle below MAX_ENIS: indexes eni_stats */
    __u32 vpc_idx;
    ipv4_t addr;
    __u16 port_lo;     /* SNAT port range, host order, inclusive */
    __u16 port_hi;
    __u32 max_flows;   /* this ENI's flow limit; 0: the node's flows_per_eni */
};

/* eni_cache[VNI % ENI_CACHE_SLOTS], per CPU: the ENIs this CPU used last, so that an
 * established packet costs no hash lookup of its ENI. A slot counts only while its generation is
 * the control plane's current one (node_cfg.eni_gen), so a change to `enis` is seen at once. */
struct eni_cache_slot {
    __u32 vni;
    __u32 gen;
    struct eni eni;
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
    mac_t gateway_mac; /* learned once by ARP, or set; valid when VPC_F_GW_MAC is set */
    mac_t if_mac;      /* the node's own MAC on that interface */
    __u32 flags;
    __u32 tx_slot;     /* this interface's slot in tx_ports */
    __u16 mtu;         /* the interface's MTU (IPv4 packet size), read at attach; 0: unknown */
    __u16 pad;
};
#define VPC_F_GW_MAC 1     /* gateway_mac is known; it is then kept (see vpc_arp) */
#define VPC_F_ACTIVE 2     /* the slot is configured (array slots always exist) */
#define VPC_F_GW_RELEARN 4 /* the operator asked to adopt the next MAC the gateway shows */
#define VPC_F_GW_STATIC 8  /* the operator set the gateway's MAC (`vpc add --gateway-mac`) */

/* vpc_if_slots[ifindex % VPC_IF_SLOTS]: vpc_ifs for the return path without hashing. A slot
 * names the one interface that owns it; an interface whose slot another one owns is found in
 * vpc_ifs, which always holds every interface. */
struct vpc_if_slot {
    __u32 ifindex;
    __u32 vpc_idx;
};

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

/* flows: one entry per flow, keyed by the VPC's view of it (after SNAT), so that a reply finds
 * it with one lookup. The forward direction finds the same entry by computing where its port
 * probe starts (port_hash in eniplane.c, RFC 6056 algorithm 3) and walking the ENI's port range
 * from there; the value names the environment that owns the port. One element per flow keeps
 * both directions of a flow in 16 + 64 bytes plus the kernel's 48-byte element header, and lets
 * the LRU evict a flow only as a whole. */
struct flow_key {
    __u16 vpc_idx;
    __u8 proto;
    __u8 pad;
    ipv4_t eni_addr;
    ipv4_t remote;
    __be16 eni_port; /* the SNAT port */
    __be16 remote_port;
};

struct flow {
    __u64 last_seen_ns;
    __u64 tx_packets; /* towards the VPC */
    __u64 tx_bytes;
    __u64 rx_packets; /* back towards the worker */
    __u64 rx_bytes;
    ipv4_t worker;    /* the worker, VNI, address and port that own the flow */
    __u32 vni;
    ipv4_t env_addr;
    __be16 env_port;
    __u16 eni_idx;    /* the ENI's per-ENI counters, so a reply needs no ENI lookup */
    mac_t env_mac;    /* where replies go inside the tunnel; follows the environment's frames */
    __u8 tunnel;      /* enum tunnel_type the flow arrived with */
    __u8 state;       /* FLOW_S_*: what TCP has shown each way; 0 for UDP and ICMP */
};
/* A flow's TCP state is the set of events seen, not one of RFC 793's states: each bit is set
 * once and never cleared until the entry serves a new flow, so two CPUs that add bits at once
 * lose nothing that matters. The timeout follows from the bits: established (EST without
 * FIN/RST) or transitory (everything else). */
#define FLOW_S_SYN 1     /* SYN from the environment */
#define FLOW_S_SYNACK 2  /* SYN+ACK from the VPC */
#define FLOW_S_EST 4     /* the environment's ACK after the SYN+ACK */
#define FLOW_S_FIN_OUT 8 /* FIN from the environment */
#define FLOW_S_FIN_IN 16 /* FIN from the VPC */
#define FLOW_S_RST 32    /* RST either way: the flow is dead at once, its port waits out the
                          * transitory timeout */

/* eni_flows_added[eni_idx] counts the entries the datapath created for an ENI (atomic adds),
 * eni_flows_removed[eni_idx] those user space deleted (the sweeper, flushes): two maps, one
 * writer each, since user space cannot add atomically to a value the datapath also writes.
 * Their difference is what the ENI's flow limit is judged against. Taking over an expired
 * entry moves no count: the key names the ENI's address, so the entry stays the ENI's. */

/* clock[0], per CPU: the coarse monotonic time (what a flow's last_seen_ns holds) as of the jiffy
 * it was read in. bpf_ktime_get_coarse_ns() costs about 15 ns a call in a VM, bpf_jiffies64()
 * nothing (the verifier inlines it), and the coarse clock only moves at a tick, with jiffies: so
 * each CPU reads the clock once per jiffy and keeps it here. */
struct clock_cache {
    __u64 jiffies;
    __u64 ns;
};

/* flow_hot: the per-packet state of the flows that are sending, one cache line each, in front
 * of `flows`. The established paths read and write only this line: `flows` is
 * a kernel hash (a bucket and a 128-byte element, over ~36 MiB at the default capacity) that
 * only new flows, expiry, listings and the rare events (a TCP flag that changes the state, a new
 * environment MAC) need. An entry copies its flow's key and owner whole: it matches a packet
 * only on equal key and owner, so no collision can skip a security-group check or deliver to
 * another environment. It holds the flow's last_seen_ns and, as deltas not yet added to the
 * entry in `flows`, its counters, which the long way adds to the entry ("folds") whenever it
 * meets the slot: when they near their width, when the state or MAC changes, when another flow
 * takes the slot. A hit needs the current hot_gen: user space bumps it when it flushes flows;
 * the datapath bumps it when the LRU may start to evict (flow_guard.holes) and fills no slot
 * while it may. So a flow the LRU evicted is never served from a slot, and the LRU judges
 * recency from the long way's lookups only when it matters, when it may evict. Readers of
 * `flows` add what a slot holding the same key and owner has (Datapath in user space;
 * flow_live_hot and flow_claimable_hot here).
 * HOT_WAYS (consts.h) neighbouring slots form a set; a flow key has two sets (hot_sets) and sits
 * in any slot of either, in its first set while that has room. */
struct flow_hot {
    struct flow_key key; /* all zero: an empty slot */
    ipv4_t worker;       /* the owner, as in struct flow (the same order: copied in one go) */
    __u32 vni;
    ipv4_t env_addr;
    __be16 env_port;
    __u16 eni_idx;
    mac_t env_mac;
    __u8 tunnel;
    __u8 state;          /* never ahead of the entry's: packets that change it go the long way */
    __u64 last_seen_ns;
    __u32 gen;           /* hot_gen when the slot was written */
    __u32 tx_bytes;      /* counters not yet folded into the flows entry */
    __u32 rx_bytes;
    __u16 tx_packets;
    __u16 rx_packets;
};
/* The gen of a slot that a CPU is writing (hot_claim): never a generation of hot_gen (user
 * space skips it), so no packet uses the slot and no other CPU writes it meanwhile. */
#define HOT_GEN_BUSY 0xFFFFFFFFu
/* A flow's owner as flows and flow_hot both hold it (the same 24 bytes in the same order): the
 * return path copies it from whichever it found the flow in. In no map. */
struct flow_owner {
    ipv4_t worker;
    __u32 vni;
    ipv4_t env_addr;
    __be16 env_port;
    __u16 eni_idx;
    mac_t env_mac;
    __u8 tunnel;
    __u8 state;
};
/* A slot whose flow sent nothing for this long may go to another flow of its set. */
#define HOT_IDLE_NS 1000000000ull
/* A slot's counters are folded before they could wrap: one more packet could add 64 KiB. */
#define HOT_BYTES_MAX (0xFFFFFFFFu - 0x10000u)
#define HOT_PACKETS_MAX 0xFFFFu

/* flow_guard[0]: may a walk along a port probe stop at the first empty slot? Only while no entry
 * that a later flow probed past can have gone. Entries go in two ways: user space deletes them
 * (it recounts and checks every remaining flow's probe, see Datapath.flush_flows), or the LRU
 * evicts one, which it can only do when the table is nearly full: each CPU parks at most
 * LOCAL_FREE_TARGET (128) free nodes, and the kernel evicts only when fewer than that remain
 * free globally. `count` (inserts minus deletes) below FLOW_SAFE_ENTRIES rules that out; an
 * insert that could reach it sets `holes`. With holes, a walk goes on past empty slots, but
 * never deeper than any flow sits: bit i of `depths` is set once a flow takes the i-th port of
 * its probe, so walks stay one or two slots long however full the table is. */
struct flow_guard {
    __u64 count;
    __u64 depths; /* 64 bits: the atomic OR that sets a bit exists only in that width */
    __u32 holes;
    __u32 pad;
    __u64 evicted; /* LRU evictions found by user space's recounts so far (count - entries) */
    __u64 swept;   /* expired entries the sweeper removed so far (user space) */
};

/* open_scratch[0], per CPU: what xdp_fabric's flow walk found, for xdp_fabric_open. */
struct open_scratch {
    __u64 seen;       /* the tuple's own entry's last_seen_ns as the walk read it */
    __u64 now;
    __be16 own_port;  /* where the tuple's own entry sits (not live), 0 when it has none */
    __be16 free_port; /* the first empty slot along the probe, 0 when none */
    __u32 free_depth;
    /* Where xdp_fabric's parse found the headers (offsets from the frame's start): the open
     * path takes them as they are instead of parsing again, so the verifier walks it once per
     * protocol rather than once per way the parse could go. */
    __u16 oip_off;
    __u16 oudp_off;
    __u16 inner_off;
    __u16 l4_off;
    /* What xdp_fabric_reply answers with (ICMP type, code, next-hop MTU) */
    __u8 icmp_type;
    __u8 icmp_code;
    __u16 icmp_mtu;
    __u32 pad;
};

/* icmp_bucket[0], per CPU: the token bucket that limits the ICMP the node generates (consts.h:
 * ICMP_BURST, node_cfg.icmp_rate). */
struct icmp_bucket {
    __u64 last_ns; /* when tokens were last added */
    __u32 tokens;
    __u32 pad;
};

/* frags[datagram]: what a datagram's first fragment found, for its later fragments, which carry
 * no ports. Forward, the key is the environment's view (its worker and VNI scope its address,
 * since environments' addresses overlap); back, the VPC's (VPC index with FRAG_K_RETURN). */
struct frag_key {
    ipv4_t worker; /* forward: the worker; back: 0 */
    __u32 scope;   /* forward: the VNI; back: the VPC index | FRAG_K_RETURN */
    ipv4_t src;
    ipv4_t dst;
    __be16 id;
    __u8 proto;
    __u8 pad;
};
#define FRAG_K_RETURN 0x80000000u

struct frag {
    __u64 first_ns;     /* when the first fragment passed; the entry lives FRAG_TIMEOUT_NS */
    struct flow_key fk; /* the datagram's flow */
    __u16 first_end;    /* bytes of the datagram's payload the first fragment carried: a later
                         * fragment that starts inside them overlaps it (RFC 1858) */
    __u16 pad[3];
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
    __u64 flows_limited; /* new flows dropped by the ENI's flow limit */
};

/* events: what a program's one exit reports (events.h), sampled by a per-CPU token bucket.
 * The packet's first bytes as they were when the program ended, and its whole length: user
 * space decodes worker, VNI and addresses from them (events.py). */
struct event {
    __u64 ts_ns;      /* the coarse monotonic clock (what flows' last_seen_ns hold) */
    __u32 ifindex;    /* the interface the frame arrived on */
    __u32 len;        /* the frame's length when the program ended */
    __u16 reason;     /* enum stat_id: the drop's reason, or fwd_new_flow */
    __u8 kind;        /* EVENT_K_* */
    __u8 direction;   /* EVENT_DIR_*: which program */
    __u16 cpu;
    __u16 cap_len;    /* how many of `data` hold the frame's first bytes */
    __u8 data[EVENT_SNAP_LEN];
};
#define EVENT_K_DROP 1
#define EVENT_K_FLOW_START 2
#define EVENT_DIR_FABRIC 0
#define EVENT_DIR_VPC 1

/* event_cpu[0], per CPU: the events' token bucket (as icmp_bucket) and where an event is put
 * together before it is copied into the ring buffer. Its BTF is how user space knows struct
 * event: a ring buffer's records carry none. */
struct event_cpu {
    __u64 last_ns;
    __u32 tokens;
    __u32 pad;
    struct event ev;
};

/* sg_denials[the denied flow as the environment sent it]: every security-group denial, exact
 * (not sampled), for flow logs' REJECT records. User space reads and deletes entries. */
struct sg_denial_key {
    ipv4_t worker;
    __u32 vni;
    ipv4_t env_addr;
    ipv4_t remote;
    __be16 env_port;
    __be16 remote_port;
    __u8 proto;
    __u8 pad[3];
};

struct sg_denial {
    __u64 packets;
    __u64 bytes;
    __u64 first_ns;
    __u64 last_ns;
};

/* The layouts hold no implicit padding (keys hash the same bytes always) and user space reads
 * them from BTF: a size that changes here is a change of the maps' format, on purpose or not. */
_Static_assert(sizeof(struct node_cfg) == 72, "node_cfg layout");
_Static_assert(sizeof(struct worker) == 16, "worker layout");
_Static_assert(sizeof(struct worker_slot) == 20, "worker_slot layout");
_Static_assert(sizeof(struct placement_key) == 8, "placement_key layout");
_Static_assert(sizeof(struct eni) == 20, "eni layout");
_Static_assert(sizeof(struct eni_cache_slot) == 28, "eni_cache_slot layout");
_Static_assert(sizeof(struct vpc) == 32, "vpc layout");
_Static_assert(sizeof(struct sg_key) == 16, "sg_key layout");
_Static_assert(sizeof(struct flow_key) == 16, "flow_key layout");
_Static_assert(sizeof(struct flow) == 64, "flow layout");
_Static_assert(sizeof(struct flow_hot) == 64, "flow_hot layout");
_Static_assert(HOT_SLOTS % HOT_WAYS == 0 && (HOT_WAYS & (HOT_WAYS - 1)) == 0, "flow_hot sets");
_Static_assert(sizeof(struct flow_owner) == 24, "flow_owner layout");
_Static_assert(__builtin_offsetof(struct flow_hot, worker) == 16 &&
                   __builtin_offsetof(struct flow, worker) == 40,
               "flow_hot and flow keep the owner in the same order");
_Static_assert(sizeof(struct flow_guard) == 40, "flow_guard layout");
_Static_assert(sizeof(struct open_scratch) == 40, "open_scratch layout");
_Static_assert(sizeof(struct icmp_bucket) == 16, "icmp_bucket layout");
_Static_assert(sizeof(struct frag_key) == 20, "frag_key layout");
_Static_assert(sizeof(struct frag) == 32, "frag layout");
_Static_assert(sizeof(struct event) == 24 + EVENT_SNAP_LEN, "event layout");
_Static_assert(sizeof(struct event_cpu) == 16 + sizeof(struct event), "event_cpu layout");
_Static_assert(sizeof(struct sg_denial_key) == 24, "sg_denial_key layout");
_Static_assert(sizeof(struct sg_denial) == 32, "sg_denial layout");

/* ---- the reaper (xdp_flow_reap, eniplane.c): user space's sweep and flush remove `flows`
 * entries through it, a batch per BPF_PROG_TEST_RUN. User space writes the batch into
 * reap_batch[0]: the mode and, per item, the entry's key and the last_seen_ns it read from the
 * entry itself (not its flow_hot slot's); the program writes each item's result and, for an entry
 * it removed, the entry as it was when it went. */
#ifndef REAP_BATCH
#define REAP_BATCH 64
#endif
#define REAP_MODE_SWEEP 1 /* remove only what is still not live, by the entry's and its slot's time */
#define REAP_MODE_FLUSH 2 /* remove live entries too (no expiry check; still claimed by the CAS) */
#define REAP_REMOVED 1    /* claimed and deleted: `value` is the entry as it went */
#define REAP_CHANGED 2    /* kept: its time is not the one read (a packet, a takeover under way or
                           * done), or another claim won the compare-and-swap */
#define REAP_LIVE 3       /* kept (sweep): live again by its flow_hot slot's time */
#define REAP_GONE 4       /* no such entry any more (another sweeper, the LRU) */
struct reap_item {
    struct flow_key key;
    __u64 seen;         /* in: the entry's own last_seen_ns as user space read it (never 0) */
    __u32 result;       /* out: REAP_* (0: not reached) */
    __u32 pad;
    struct flow value;  /* out, REAP_REMOVED: the entry as it went (last_seen_ns: `seen`) */
};
struct reap_batch {
    __u32 mode;         /* REAP_MODE_* */
    __u32 n;            /* items used, from the first */
    struct reap_item items[REAP_BATCH];
};
/* reap_stats[0], per CPU: what the reaper did with each item, since the maps were made. */
struct reap_stats {
    __u64 removed_sweep; /* removed by a sweep (expired, nothing moved it on) */
    __u64 removed_flush; /* removed by a flush */
    __u64 kept_changed; /* chosen, then kept: its time moved on (a packet, a takeover) between
                         * user space's read and the reap, or a takeover's claim won */
    __u64 kept_live;    /* chosen by a sweep, then kept: live by its flow_hot slot */
    __u64 gone;         /* chosen, then found gone (another sweeper took it, or the LRU) */
};
_Static_assert(sizeof(struct reap_item) == 96, "reap_item layout");
_Static_assert(sizeof(struct reap_stats) == 40, "reap_stats layout");

#endif
