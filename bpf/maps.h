/* maps.h - every map of the datapath, pinned under PIN_DIR (/sys/fs/bpf/eniplane/<node>/maps).
 * Contract: loading again finds the pins and reuses them, so their contents survive a reload.
 * Writers: the control plane writes config, workers, worker_slots (owners), placements, enis,
 * eni_addrs, vpcs, vpc_ifs, vpc_if_slots, sg_rules, tx_ports, fabric_calls, hot_gen and
 * eni_flows_removed; the datapath writes the flow tables (flows, flow_hot), frags, icmp_bucket,
 * eni_flows_added, open_scratch, the counters, the clock cache, worker MACs and learned gateway
 * MACs (and bumps hot_gen, see types.h).
 */
#ifndef ENIPLANE_MAPS_H
#define ENIPLANE_MAPS_H

#include "types.h"
#include "stats.h"

#ifndef PIN_DIR
#error "PIN_DIR must name the node's pinned map directory"
#endif

BPF_TABLE_PINNED("array", __u32, struct node_cfg, config, 1, PIN_DIR "/config");
BPF_TABLE_PINNED("hash", ipv4_t, struct worker, workers, MAX_WORKERS, PIN_DIR "/workers");
BPF_TABLE_PINNED("array", __u32, struct worker_slot, worker_slots, WORKER_SLOTS,
                 PIN_DIR "/worker_slots");
BPF_TABLE_PINNED("hash", struct placement_key, __u32, placements, MAX_PLACEMENTS,
                 PIN_DIR "/placements");
BPF_TABLE_PINNED("hash", __u32, struct eni, enis, MAX_ENIS, PIN_DIR "/enis");
BPF_TABLE_PINNED("hash", struct eni_addr_key, struct eni_ref, eni_addrs, MAX_ENIS,
                 PIN_DIR "/eni_addrs");
BPF_TABLE_PINNED("percpu_array", __u32, struct eni_cache_slot, eni_cache, ENI_CACHE_SLOTS,
                 PIN_DIR "/eni_cache");
BPF_TABLE_PINNED("array", __u32, struct vpc, vpcs, MAX_VPCS, PIN_DIR "/vpcs");
BPF_TABLE_PINNED("hash", __u32, __u32, vpc_ifs, MAX_VPCS, PIN_DIR "/vpc_ifs");
BPF_TABLE_PINNED("array", __u32, struct vpc_if_slot, vpc_if_slots, VPC_IF_SLOTS,
                 PIN_DIR "/vpc_if_slots");
BPF_TABLE_PINNED("lpm_trie", struct sg_key, struct sg_ports, sg_rules, MAX_SG_PREFIXES,
                 PIN_DIR "/sg_rules", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct flow_key, struct flow, flows, MAX_FLOWS, PIN_DIR "/flows");
BPF_TABLE_PINNED("array", __u32, struct flow_guard, flow_guard, 1, PIN_DIR "/flow_guard");
BPF_TABLE_PINNED("array", __u32, struct flow_hot, flow_hot, HOT_SLOTS, PIN_DIR "/flow_hot");
/* hot_gen[0]: the generation flow_hot's slots must carry to be used (types.h); user space bumps
 * it after it flushes flows, which stops their slots at once. Read by every established packet,
 * written only by user space: a line of its own that stays in every CPU's cache. */
BPF_TABLE_PINNED("array", __u32, __u32, hot_gen, 1, PIN_DIR "/hot_gen");
BPF_TABLE_PINNED("array", __u32, __u64, eni_flows_added, MAX_ENIS, PIN_DIR "/eni_flows_added");
BPF_TABLE_PINNED("array", __u32, __u64, eni_flows_removed, MAX_ENIS, PIN_DIR "/eni_flows_removed");
/* What xdp_fabric's walk found, handed to xdp_fabric_open: per CPU, since a tail call runs on
 * the CPU that made it before anything else can. */
BPF_TABLE_PINNED("percpu_array", __u32, struct open_scratch, open_scratch, 1,
                 PIN_DIR "/open_scratch");
/* fabric_calls[FABRIC_CALL_OPEN] = xdp_fabric_open, [FABRIC_CALL_ICMP] = xdp_fabric_icmp,
 * [FABRIC_CALL_REPLY] = xdp_fabric_reply, [FABRIC_CALL_FRAG] = xdp_fabric_frag, filled by the
 * loader. */
#define FABRIC_CALL_OPEN 0
#define FABRIC_CALL_ICMP 1
#define FABRIC_CALL_REPLY 2
#define FABRIC_CALL_FRAG 3
#define FABRIC_CALLS 4
BPF_TABLE_PINNED("prog", __u32, __u32, fabric_calls, FABRIC_CALLS, PIN_DIR "/fabric_calls");
/* fabric_long[0] = xdp_fabric_long, filled by the loader with fabric_calls: an array of its own
 * rather than a fifth slot there, so that a node pinned by an earlier build upgrades in place
 * (`upgrade` adds maps, and refuses a pinned map whose size changed). */
BPF_TABLE_PINNED("prog", __u32, __u32, fabric_long, 1, PIN_DIR "/fabric_long");
BPF_TABLE_PINNED("percpu_array", __u32, struct icmp_bucket, icmp_bucket, 1,
                 PIN_DIR "/icmp_bucket");
BPF_TABLE_PINNED("lru_hash", struct frag_key, struct frag, frags, MAX_FRAGS, PIN_DIR "/frags");
BPF_TABLE_PINNED("percpu_array", __u32, struct stats, stats, 1, PIN_DIR "/stats");
BPF_TABLE_PINNED("percpu_array", __u32, struct clock_cache, clock, 1, PIN_DIR "/clock");
BPF_TABLE_PINNED("percpu_array", __u32, struct eni_stats, eni_stats, MAX_ENIS,
                 PIN_DIR "/eni_stats");
BPF_TABLE_PINNED("percpu_array", __u32, struct event_cpu, event_cpu, 1, PIN_DIR "/event_cpu");
BPF_TABLE_PINNED("lru_hash", struct sg_denial_key, struct sg_denial, sg_denials, MAX_SG_DENIALS,
                 PIN_DIR "/sg_denials");
/* redirect_failures[egress ifindex]: frames the kernel could not deliver (redirect.h). */
BPF_TABLE_PINNED("hash", __u32, __u64, redirect_failures, MAX_REDIRECT_IFS,
                 PIN_DIR "/redirect_failures");
/* events: the ring buffer that `eniplane monitor` reads (struct event records). Declared by
 * hand as tx_ports below: bcc's BPF_RINGBUF_OUTPUT has no pinned variant. */
struct events_table_t {
    int key;
    __u32 leaf;
    int (*ringbuf_output)(void *, __u64, __u64);
    void *(*ringbuf_reserve)(__u64);
    void (*ringbuf_discard)(void *, __u64);
    void (*ringbuf_submit)(void *, __u64);
    __u32 max_entries;
};
__attribute__((section("maps/ringbuf:" PIN_DIR "/events")))
struct events_table_t events = {.max_entries = EVENT_RING_BYTES};

/* Egress interfaces: slot 0 is the fabric interface, each VPC-side interface has the slot its
 * vpcs entry names. Declared by hand because bcc's BPF_DEVMAP has no pinned variant; the section
 * name is the same "maps/<type>:<pin>" form that BPF_TABLE_PINNED produces. */
#define TX_SLOT_FABRIC 0
struct tx_ports_table_t {
    __u32 key;
    int leaf;
    __u64 (*redirect_map)(int, int);
    __u32 max_entries;
};
__attribute__((section("maps/devmap:" PIN_DIR "/tx_ports")))
struct tx_ports_table_t tx_ports = {.max_entries = MAX_VPCS + 1};

/* The reaper's (xdp_flow_reap, types.h): reap_batch[0] is the batch user space hands it, written
 * and read back by one sweep or flush at a time (Datapath._remove_flows holds the node's reap
 * lock throughout); reap_stats[0] counts its outcomes, per CPU. Maps of their own,
 * so that `upgrade` adds them to a node pinned by a build without them. */
BPF_TABLE_PINNED("array", __u32, struct reap_batch, reap_batch, 1, PIN_DIR "/reap_batch");
BPF_TABLE_PINNED("percpu_array", __u32, struct reap_stats, reap_stats, 1, PIN_DIR "/reap_stats");

#endif
