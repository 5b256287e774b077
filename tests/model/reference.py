"""A reference model of the eniplane datapath, in pure Python, written from the specification:
RFC 7348 (VXLAN), RFC 8926 (GENEVE), RFC 791/793/768/792 (IPv4, TCP, UDP, ICMP), RFC 1624
(incremental checksum update), RFC 5508 (NAT behaviour for ICMP), AWS security-group semantics
and the datapath issues' text.

Contract: given the configuration, the flows so far and the time, `fabric(frame, now)` and
`vpc(frame, ifindex, now, udp_sport)` say what must happen to one packet: the verdict, the output
frame, the counters that move and the flow-table change. The flow lifecycle (TCP state, idle
timeouts, the RST answer, reopen, takeover of a claimable entry, per-ENI limits) follows issue 13
and RFC 793 / RFC 5382. ICMP errors about a live flow's packet (issue 14) cross the node both
ways translated as RFC 5508 REQ-3/4 asks. SYNs both ways announce no more MSS than the path
carries (issue 14's clamp, RFC 9293 3.7.1 and RFC 879), unless the node is told not to. The node
is a router to both sides (RFC 1812): a packet whose TTL would reach 0 is answered with time
exceeded, one too big for the next link with DF set with fragmentation needed (RFC 1191), each
quoting the packet as received (RFC 792, RFC 1812 4.3.2.3) and never about what 4.3.2.7 forbids.
Fragments (RFC 791) follow their datagram's first fragment, which carries the ports: later ones
are translated by address alone; those without a first, overlapping it, or tiny first
fragments (RFC 1858) are dropped. The SNAT port is predicted: the caller
gives the order of a flow's port probe (`probe`, RFC 6056 algorithm 3 with the node's secret)
and the model walks it. Where the kernel may choose freely (the tunnel's UDP source port), the
caller passes the choice in and the model checks it against the rule. The model keeps its own
flow tables; it never reads the kernel's.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterable

VXLAN_PORT, GENEVE_PORT = 4789, 6081
TCP, UDP, ICMP = 6, 17, 1
# RFC 792: the ICMP messages that report a problem with a datagram and quote its head
ICMP_UNREACH, ICMP_TIME_EXCEEDED, ICMP_PARAMPROB, ICMP_ECHO = 3, 11, 12, 8
ICMP_ERRORS = (ICMP_UNREACH, ICMP_TIME_EXCEEDED, ICMP_PARAMPROB)
ICMP_FRAG_NEEDED = 4  # code of destination unreachable (RFC 792, RFC 1191's next-hop MTU)
# The query (informational) messages, which a router may answer with an error: echo and its
# reply (RFC 792), router advertisement and solicitation (RFC 1256), timestamp and information
# (RFC 792), address mask (RFC 950). Everything else is an error (RFC 1122 3.2.2: destination
# unreachable, source quench, redirect, time exceeded, parameter problem) or a type the node
# does not know, and RFC 1812 4.3.2.7 forbids an error about an error.
ICMP_QUERY_TYPES = frozenset({0, 8, 9, 10, 13, 14, 15, 16, 17, 18})
IP_DF, IP_MF, IP_OFFMASK = 0x4000, 0x2000, 0x1FFF
# What the node puts in the ICMP errors it makes: RFC 1812 4.3.2.5's precedence 6 (internetwork
# control) with the default TOS, a fresh TTL, and RFC 792's quote of the header and 64 bits.
ICMP_ERR_TOS, ICMP_ERR_TTL, ICMP_QUOTE_DATA = 0xC0, 64, 8
FRAG_TIMEOUT_NS = 2 * 1_000_000_000  # how long a first fragment's record lives (issue 14)
FRAG_K_RETURN = 0x80000000  # the return direction's fragment records: VPC index | this
ETH_IPV4, ETH_ARP, ETH_VLAN, ETH_QINQ, ETH_TEB = 0x0800, 0x0806, 0x8100, 0x88A8, 0x6558
PASS, DROP, TX, REDIRECT = "PASS", "DROP", "TX", "REDIRECT"
# TCP header flags (RFC 793) and the flow states of issue 13 (bits of the flow's `state`)
F_FIN, F_SYN, F_RST, F_PSH, F_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
S_SYN, S_SYNACK, S_EST, S_FIN_OUT, S_FIN_IN, S_RST = 1, 2, 4, 8, 16, 32
NS = 1_000_000_000
TAKEOVER_GRACE_NS = NS // 10  # an expired entry is left to late packets this long before reuse
DEFAULT_TIMEOUTS = {"tcp_established": 350, "tcp_transitory": 240, "udp": 350, "icmp": 60}


def ip2b(a: str) -> bytes:
    return ipaddress.IPv4Address(a).packed


def mac2b(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


# ---- checksums (RFC 1071, RFC 1624) -------------------------------------------------------------
def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data: bytes) -> int:
    return ~ones_sum(data) & 0xFFFF


def adjusted(check: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3 with m and m' the sums of the whole region the checksum covers, before and
    after every change (the checksum's own field zeroed in both): a wrong checksum stays exactly
    as wrong, as the RFC asks of a translator, and no single field needs naming."""
    s = (~check & 0xFFFF) + (~ones_sum(old) & 0xFFFF) + ones_sum(new)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def zeroed(data: bytes | bytearray, at: int) -> bytes:
    """`data` with the 16-bit field at `at` set to 0 (a checksum left out of its own sum)."""
    return bytes(data[:at]) + b"\0\0" + bytes(data[at + 2:])


def incremental(check: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), over 16-bit words."""
    s = ~check & 0xFFFF
    for i in range(0, len(old), 2):
        s += ~struct.unpack("!H", old[i:i + 2])[0] & 0xFFFF
        s += struct.unpack("!H", new[i:i + 2])[0]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def icmp_error(src: str, dst: str, typ: int, code: int, mtu: int, quote: bytes) -> bytes:
    """An ICMP error the node sends (RFC 792, RFC 1812 4.3.2): IPv4 header (no options, TOS
    0xC0, identification 0 with DF set, so an atomic datagram whose ID need not be unique (RFC
    6864 4.2), TTL 64), then type, code, checksum over the ICMP
    message, 16 unused bits, RFC 1191's next-hop MTU (0 unless fragmentation needed) and the
    quote."""
    msg = bytearray(struct.pack("!BBHHH", typ, code, 0, 0, mtu) + quote)
    struct.pack_into("!H", msg, 2, checksum(bytes(msg)))
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, ICMP_ERR_TOS, 20 + len(msg), 0, IP_DF,
                               ICMP_ERR_TTL, ICMP, 0, ip2b(src), ip2b(dst)))
    struct.pack_into("!H", ip, 10, checksum(bytes(ip)))
    return bytes(ip) + bytes(msg)


def quote_of(p: bytes, ip: dict) -> bytes:
    """What an error about the datagram `ip` (parsed from `p`) quotes: its IPv4 header and the
    first 64 bits of its data (RFC 792), or the whole datagram when it is shorter; as received."""
    return bytes(p[ip["off"]:ip["off"] + min(ip["total"], ip["ihl"] + ICMP_QUOTE_DATA)])


def may_answer(p: bytes, ip: dict, link_dst: bytes) -> bool:
    """RFC 1812 4.3.2.7: no ICMP error about an ICMP error (nor a type the node does not know:
    only the query types are answered), a datagram sent to an IP multicast or broadcast address
    or as a link-layer broadcast or multicast, one whose source is on network 0 or not a valid
    source (5.3.7: 127/8, class D and E, the limited broadcast), or a fragment other than the
    first. An ICMP datagram too short to show its type is not answered either (it could be an
    error)."""
    if ip["offset"]:
        return False
    s0, d0 = ip2b(ip["src"])[0], ip2b(ip["dst"])[0]
    if s0 in (0, 127) or s0 >= 224 or d0 >= 224:
        return False
    if ip["proto"] == ICMP:
        t = ip["off"] + ip["ihl"]
        end = ip["off"] + ip["total"]
        if min(len(p), end) < t + 1 or p[t] not in ICMP_QUERY_TYPES:
            return False
    if link_dst[0] & 1:
        return False
    return True


# ---- MSS clamping (issue 14; RFC 9293 3.7.1, RFC 879) --------------------------------------------
TUNNEL_OVERHEAD = 50  # outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14
MSS_FLOOR = 536       # RFC 9293's default send MSS: never announce less
MSS_MAX_OPTIONS = 8   # SYNs carry MSS first or second; the datapath looks no further than 8


def mss_clamp(fabric_mtu: int, vpc_mtu: int) -> int:
    """The largest segment that crosses both the VPC's link and the tunnel, less the 40 bytes
    of option-less IPv4 and TCP headers. An unknown (0) VPC MTU does not bound it; a fabric MTU
    too small to hold the tunnel's headers is taken as Ethernet's 1500 before the overhead."""
    path = fabric_mtu - TUNNEL_OVERHEAD if fabric_mtu > TUNNEL_OVERHEAD + 40 else 1500
    if vpc_mtu:
        path = min(path, vpc_mtu)
    return max(MSS_FLOOR, path - 40)


def mss_option_at(seg: bytes) -> int | None:
    """Where the MSS option's value sits in `seg` (a TCP segment: its header onward, as far as
    the IPv4 datagram goes; Ethernet padding after it is no part of it), or None. The options are read as RFC 9293 3.1 lays them out: a kind byte, then a
    length byte counting both (except End of Option List, which ends them, and No-Operation, one
    byte); the list ends at the data offset or the segment, whichever is first. A reader trusts no
    length below 2 (it could not advance) and needs 4 bytes for anything it acts on, and reads
    only the first 8 options."""
    if len(seg) < 20:
        return None
    end = min((seg[12] >> 4) * 4, len(seg))
    at = 20
    for _ in range(MSS_MAX_OPTIONS):
        if end - at < 4:
            return None
        kind, length = seg[at], seg[at + 1]
        if kind == 0:
            return None
        if kind == 1:
            at += 1
        elif kind == 2 and length == 4:
            return at + 2
        elif length < 2:
            return None
        else:
            at += length
    return None


def clamp_mss(q: bytearray, tcp_off: int, seg_end: int, mss: int) -> bool:
    """A SYN's MSS option in frame `q` (TCP header at `tcp_off`, the IPv4 datagram ending at
    `seg_end`) lowered to `mss` if larger; TCP's checksum follows by RFC 1624 over the header's
    sum before and after (the pseudo header does not change), so that a wrong checksum stays as
    wrong. True if it lowered it."""
    at = mss_option_at(bytes(q[tcp_off:seg_end]))
    if at is None or struct.unpack_from("!H", q, tcp_off + at)[0] <= mss:
        return False
    ck_at = tcp_off + 16
    old = zeroed(q[tcp_off:], 16)
    struct.pack_into("!H", q, tcp_off + at, mss)
    struct.pack_into("!H", q, ck_at, adjusted(struct.unpack_from("!H", q, ck_at)[0], old,
                                              zeroed(q[tcp_off:], 16)))
    return True


# ---- configuration ------------------------------------------------------------------------------
@dataclass
class Eni:
    vni: int
    addr: str
    vpc_idx: int
    eni_idx: int
    port_lo: int = 1024
    port_hi: int = 65535
    rules: list = field(default_factory=list)  # [(proto or 0, cidr, lo, hi)]
    max_flows: int = 0  # 0: the node's flows_per_eni


@dataclass
class Vpc:
    idx: int
    ifindex: int
    gateway_ip: str
    gateway_mac: str | None
    if_mac: str
    mtu: int = 0  # the interface's; 0: unknown (then only the tunnel bounds the MSS)


@dataclass
class Config:
    fabric_ip: str
    fabric_mac: str
    gateway_mac: str
    fabric_mtu: int
    workers: set[str]
    enis: dict[int, Eni]
    vpcs: dict[int, Vpc]
    placements: set[tuple[str, int]] = field(default_factory=set)  # (worker, VNI) allowed
    timeouts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))  # seconds
    flows_per_eni: int = 0  # 0: no limit
    mss_clamping: bool = True  # SYNs' MSS lowered to what the path carries (issue 14)
    tunnel_gateway: str | None = "169.254.0.1"  # the source of ICMP the node sends into the tunnel
    # ICMP the node may generate: 0 never (every answer is over the rate); any other rate is
    # taken as never reached (the token bucket is not modelled: tests set the largest rate)
    icmp_rate: int = 0xFFFFFFFF

    def flow_limit(self, eni: Eni) -> int:
        return eni.max_flows or self.flows_per_eni

    def vpc_by_ifindex(self, ifindex: int) -> Vpc | None:
        return next((v for v in self.vpcs.values() if v.ifindex == ifindex), None)

    def eni_at(self, vpc_idx: int, addr: str) -> Eni | None:
        return next((e for e in self.enis.values() if e.vpc_idx == vpc_idx and e.addr == addr),
                    None)


def sg_allows(eni: Eni, proto: int, dst: str, port: int) -> bool:
    """AWS: allowed if any rule of any group allows it; ports only for TCP and UDP rules."""
    a = ipaddress.IPv4Address(dst)
    for rp, cidr, lo, hi in eni.rules:
        if rp not in (0, proto) or a not in ipaddress.IPv4Network(cidr):
            continue
        if rp in (TCP, UDP) and not lo <= port <= hi:
            continue
        return True
    return False


@dataclass
class Result:
    verdict: str
    reason: str
    out: bytes | None = None
    extra: dict[str, int] = field(default_factory=dict)  # informational counters
    flow: tuple | None = None          # the forward key the packet belongs to
    new_flow: bool = False
    refreshed: bool = True             # the packet set its flow's last-seen time


@dataclass
class Frag:
    """What a datagram's first fragment left for its later fragments."""
    first_ns: int
    rkey: tuple      # the flow's entry (Flow.rkey)
    first_end: int   # bytes of the datagram's payload the first fragment carried


@dataclass
class Tunnel:
    """Where a tunnel packet came from, for an answer sent back through it."""
    worker: str
    vni: int
    tport: int
    udp_off: int
    inner: int


@dataclass
class Flow:
    """One entry of the flow table: the owner (`key`) and where it sits (`rkey`)."""
    key: tuple      # (worker, vni, src, dst, sport, dport, proto)
    rkey: tuple     # (vpc_idx, eni_addr, remote, eni_port, remote_port, proto)
    tunnel: str
    env_mac: bytes
    eni: Eni
    last_seen: int = 0   # ns on the datapath's clock
    state: int = 0       # S_* bits; UDP and ICMP stay 0
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0

    @property
    def proto(self) -> int:
        return self.key[6]


def timeout_s(cfg: Config, proto: int, state: int) -> int:
    """The idle timeout that applies to a flow in this state (issue 13; AWS NAT gateway)."""
    if proto == TCP:
        if state & S_EST and not state & (S_FIN_OUT | S_FIN_IN | S_RST):
            return cfg.timeouts["tcp_established"]
        return cfg.timeouts["tcp_transitory"]
    return cfg.timeouts["udp" if proto == UDP else "icmp"]


def expired(cfg: Config, f: Flow, now: int) -> bool:
    return now - f.last_seen > timeout_s(cfg, f.proto, f.state) * NS


def live(cfg: Config, f: Flow, now: int) -> bool:
    return f.last_seen != 0 and not expired(cfg, f, now) and not (f.proto == TCP and
                                                                  f.state & S_RST)


def claimable(cfg: Config, f: Flow, now: int) -> bool:
    """Another tuple may take the entry over: idle past its timeout and the grace after it, so
    that late packets of the old connection never reach the new one (RFC 5382 REQ-5)."""
    return f.last_seen != 0 and now - f.last_seen > timeout_s(cfg, f.proto, f.state) * NS + \
        TAKEOVER_GRACE_NS


def fwd_state(flags: int, state: int) -> int:
    """The state bits an environment's TCP segment adds."""
    b = 0
    if flags & F_SYN and not flags & F_ACK:
        b |= S_SYN
    if flags & F_ACK and state & S_SYNACK:
        b |= S_EST
    if flags & F_FIN:
        b |= S_FIN_OUT
    if flags & F_RST:
        b |= S_RST
    return b


def rev_state(flags: int) -> int:
    """The state bits a TCP segment from the VPC adds."""
    b = 0
    if flags & F_SYN and flags & F_ACK:
        b |= S_SYNACK
    if flags & F_FIN:
        b |= S_FIN_IN
    if flags & F_RST:
        b |= S_RST
    return b


def state_name(proto: int, state: int) -> str:
    if proto != TCP:
        return "active"
    if state & S_RST:
        return "reset"
    if state & S_FIN_OUT and state & S_FIN_IN:
        return "closed"
    if state & (S_FIN_OUT | S_FIN_IN):
        return "fin_wait"
    if state & S_EST:
        return "established"
    return "syn_received" if state & S_SYNACK else "syn_sent"


class Model:
    def __init__(self, cfg: Config, probe: Callable[[Eni, tuple], Iterable[int]]):
        self.cfg = cfg
        self.probe = probe  # the ports a flow's probe visits, in order
        # Issue 13's rule: an entry is taken over only where the walk would find it again,
        # before the first empty slot along the new owner's probe. True mirrors a datapath
        # that looks along the whole probe (to look past that one disagreement).
        self.fwd: dict[tuple, Flow] = {}
        self.rev: dict[tuple, Flow] = {}
        self.worker_mac: dict[str, bytes] = {}
        self.worker_tags: dict[str, bytes] = {}  # the outer VLAN tags (TPID, TCI) as they came
        self.mss_clamped = 0  # SYNs whose MSS the model lowered (to show the fuzz drew them)
        # frags[(worker or 0, VNI or VPC index | FRAG_K_RETURN, src, dst, IP id, proto)]
        self.frags: dict[tuple, Frag] = {}
        self._tun: Tunnel | None = None  # the tunnel packet being judged (forward)
        self.now = 0  # the time the packet being judged is judged at

    # ---- parsing helpers -------------------------------------------------------------------
    @staticmethod
    def _eth(p: bytes, off: int, vlans: int) -> tuple[int, int] | None:
        """(ethertype, offset after the Ethernet header and up to `vlans` tags) or None."""
        if len(p) < off + 14:
            return None
        et = struct.unpack_from("!H", p, off + 12)[0]
        off += 14
        for _ in range(vlans):
            if et not in (ETH_VLAN, ETH_QINQ):
                break
            if len(p) < off + 4:
                return None
            et = struct.unpack_from("!H", p, off + 2)[0]
            off += 4
        return et, off

    @staticmethod
    def _ipv4(p: bytes, off: int) -> tuple[str, int] | tuple[dict, int]:
        """('truncated'|'invalid', _) or (header fields, offset after the header)."""
        if len(p) < off + 20:
            return "truncated", 0
        vihl = p[off]
        ihl = (vihl & 0xF) * 4
        total = struct.unpack_from("!H", p, off + 2)[0]
        # RFC 1812 5.2.2: a total length below the header's or beyond the frame is a header error
        if vihl >> 4 != 4 or ihl < 20 or total < ihl or total > len(p) - off:
            return "invalid", 0
        if len(p) < off + ihl:
            return "truncated", 0
        frag = struct.unpack_from("!H", p, off + 6)[0]
        return {"off": off, "ihl": ihl, "total": total, "ttl": p[off + 8], "proto": p[off + 9],
                "frag": bool(frag & 0x3FFF), "df": bool(frag & IP_DF), "mf": bool(frag & IP_MF),
                "offset": frag & IP_OFFMASK, "id": struct.unpack_from("!H", p, off + 4)[0],
                "src": str(ipaddress.IPv4Address(p[off + 12:off + 16])),
                "dst": str(ipaddress.IPv4Address(p[off + 16:off + 20]))}, off + ihl

    @staticmethod
    def _l4(p: bytes, off: int, proto: int, echo_type: int):
        """('truncated'|'icmp'|'proto', None) or ('ok', dict of port offsets and values)."""
        need = {TCP: 20, UDP: 8, ICMP: 8}.get(proto)
        if need is None:
            return "proto", None
        if len(p) < off + need:
            return "truncated", None
        if proto == ICMP:
            if p[off] != echo_type or p[off + 1] != 0:
                return "icmp", None
            ident = struct.unpack_from("!H", p, off + 4)[0]
            return "ok", {"csum_off": off + 2, "id_off": off + 4, "id": ident, "flags": 0}
        sport, dport = struct.unpack_from("!HH", p, off)
        return "ok", {"csum_off": off + (16 if proto == TCP else 6), "sport_off": off,
                      "dport_off": off + 2, "sport": sport, "dport": dport,
                      "flags": p[off + 13] if proto == TCP else 0}

    @staticmethod
    def _tiny(p: bytes, ip: dict, off: int) -> bool:
        """RFC 1858's tiny fragment: a first fragment whose payload cannot hold its transport
        header whole (TCP's as long as its data offset says, 8 bytes for UDP and ICMP), so that a
        later fragment could supply the ports or flags that no check here saw."""
        need = (p[off + 12] >> 4) * 4 if ip["proto"] == TCP else 8
        return ip["total"] - ip["ihl"] < need

    def _frag_of(self, key: tuple, ip: dict, now: int) -> Frag | str:
        """The record a later fragment follows, or the reason it has none to follow: none was
        left, or it is older than its lifetime, or the fragment starts inside what the first one
        carried (RFC 1858's overlap)."""
        fr = self.frags.get(key)
        if fr is None or now - fr.first_ns > FRAG_TIMEOUT_NS:
            return "drop_frag_no_first"
        if ip["offset"] * 8 < fr.first_end:
            return "drop_frag_overlap"
        return fr

    def _l4_of(self, p: bytes, ip: dict, off: int, echo_type: int, names: dict[str, str]):
        """The transport header's checks: (ip, l4) or (Result, None)."""
        st, l4 = self._l4(p, off, ip["proto"], echo_type)
        if st == "truncated" and ip["mf"]:  # a first fragment without its header: RFC 1858
            return Result(DROP, "drop_frag_tiny"), None
        if st != "ok":
            return Result(DROP, {"truncated": names["truncated"], "icmp": "drop_icmp_unsupported",
                                 "proto": "drop_proto_unsupported"}[st]), None
        return ip, l4

    # ---- worker -> VPC ---------------------------------------------------------------------
    def fabric(self, p: bytes, now: int) -> Result:
        cfg = self.cfg
        self.now = now
        e = self._eth(p, 0, 2)
        if e is None:
            return Result(PASS, "pass_malformed_outer")
        et, off = e
        if et != ETH_IPV4:
            return Result(PASS, "pass_not_tunnel")
        oip, off = self._ipv4(p, off)
        if isinstance(oip, str):
            return Result(PASS, "pass_malformed_outer")
        if oip["dst"] != cfg.fabric_ip or oip["proto"] != UDP:
            return Result(PASS, "pass_not_tunnel")
        if oip["frag"]:
            return Result(PASS, "pass_outer_fragment")
        if len(p) < off + 8:
            return Result(PASS, "pass_malformed_outer")
        udp_off = off
        tport = struct.unpack_from("!H", p, off + 2)[0]
        off += 8
        if tport not in (VXLAN_PORT, GENEVE_PORT):
            return Result(PASS, "pass_not_tunnel")
        worker = oip["src"]
        outer_smac = p[6:12]
        # The sender must be a registered worker speaking from the MAC it is known by: learned
        # from its first frame and kept (a different MAC is a conflict, never adopted here);
        # its outer VLAN tags are learned with it and again whenever their number changes.
        if worker not in cfg.workers:
            return Result(DROP, "drop_unknown_worker")
        tags = self._outer_tags(p)
        known = self.worker_mac.get(worker)
        learned: dict[str, int] = {}
        if known is None:
            self.worker_mac[worker] = outer_smac
            self.worker_tags[worker] = tags
            learned["worker_mac_learned"] = 1
        elif known != outer_smac:
            return Result(DROP, "worker_mac_conflict")
        elif len(self.worker_tags.get(worker, b"")) != len(tags):
            self.worker_tags[worker] = tags
        res = self._fabric_tunnel(p, off, udp_off, tport, worker, now)
        for k, v in learned.items():
            res.extra[k] = res.extra.get(k, 0) + v
        return res

    @staticmethod
    def _outer_tags(p: bytes) -> bytes:
        """The outer VLAN tags (TPID and TCI of each, up to two) as they appear in the frame."""
        tags, off = b"", 12
        for _ in range(2):
            if struct.unpack_from("!H", p, off)[0] not in (ETH_VLAN, ETH_QINQ):
                break
            tags += p[off:off + 4]
            off += 4
        return tags

    def _fabric_tunnel(self, p: bytes, off: int, udp_off: int, tport: int, worker: str,
                       now: int) -> Result:
        """From the tunnel header on, once the sender is admitted."""
        cfg = self.cfg
        if tport == VXLAN_PORT:
            if len(p) < off + 8:
                return Result(DROP, "drop_tunnel_truncated")
            if not p[off] & 0x08:
                return Result(DROP, "drop_vxlan_no_i_flag")
            vni = int.from_bytes(p[off + 4:off + 7], "big")
            off += 8
            tunnel = "vxlan"
        else:
            if len(p) < off + 8:
                return Result(DROP, "drop_tunnel_truncated")
            optlen = (p[off] & 0x3F) * 4
            if len(p) < off + 8 + optlen:
                return Result(DROP, "drop_tunnel_truncated")
            if p[off] >> 6:
                return Result(DROP, "drop_geneve_version")
            if p[off + 1] & 0x80:
                return Result(DROP, "drop_geneve_control")
            if p[off + 1] & 0x40:
                return Result(DROP, "drop_geneve_critical")
            if struct.unpack_from("!H", p, off + 2)[0] != ETH_TEB:
                return Result(DROP, "drop_geneve_not_ether")
            vni = int.from_bytes(p[off + 4:off + 7], "big")
            off += 8 + optlen
            tunnel = "geneve"
        inner = off
        if len(p) < off + 14:
            return Result(DROP, "drop_inner_truncated")
        iet = struct.unpack_from("!H", p, off + 12)[0]
        env_mac = p[off + 6:off + 12]
        off += 14
        if iet == ETH_ARP:
            if vni not in cfg.enis:
                return Result(DROP, "drop_unknown_vni")
            if (worker, vni) not in cfg.placements:
                return Result(DROP, "drop_worker_not_placed")
            return self._tunnel_arp(p, inner, off, udp_off)
        if iet != ETH_IPV4:
            return Result(DROP, "drop_inner_not_ipv4")
        names = {"truncated": "drop_inner_truncated", "invalid": "drop_inner_bad_ip"}
        iip, off = self._ipv4(p, off)
        if isinstance(iip, str):
            return Result(DROP, names[iip])
        self._tun = Tunnel(worker, vni, tport, udp_off, inner)
        if iip["offset"]:  # a later fragment: no ports, its first fragment's flow
            return self._fabric_frag(p, iip, now)
        if iip["ttl"] <= 1:  # it cannot be forwarded (RFC 1812 5.3.1)
            return self._fabric_reply(p, iip, ICMP_TIME_EXCEEDED, 0, 0, "drop_ttl_expired")
        # an ICMP header cut short is the inner packet's truncation here (issue 14's commit)
        if iip["proto"] == ICMP and len(p) >= off + 8 and p[off] in ICMP_ERRORS:
            return self._fabric_icmp_error(p, inner, iip, off, worker, vni, now)
        iip, l4 = self._l4_of(p, iip, off, 8, names)
        if isinstance(iip, Result):
            return iip
        if iip["mf"] and self._tiny(p, iip, off):
            return Result(DROP, "drop_frag_tiny")
        proto = iip["proto"]
        sport = l4["id"] if proto == ICMP else l4["sport"]
        dport = 0 if proto == ICMP else l4["dport"]
        key = (worker, vni, iip["src"], iip["dst"], sport, dport, proto)
        eni = cfg.enis.get(vni)
        if eni is None:
            return Result(DROP, "drop_unknown_vni")
        flags = l4["flags"]
        syn_only = proto == TCP and flags & (F_SYN | F_ACK | F_RST) == F_SYN
        base = (eni.vpc_idx, eni.addr, iip["dst"], None, dport, proto)
        # The walk along the flow's probe: its own entry ends it, the first empty slot ends it,
        # and the first entry of another tuple that may be taken over is remembered on the way.
        own = cand = free = None
        probed = False
        ports = list(self.probe(eni, key))
        for i, port in enumerate(ports):
            e = self.rev.get(base[:3] + (port,) + base[4:])
            if e is None:
                free = port
                break
            if e.key == key:
                own, probed = e, i != 0
                break
            if cand is None and claimable(cfg, e, now):
                cand = port
        extra: dict[str, int] = {}
        if own is not None:
            closed = own.state & S_FIN_OUT and own.state & S_FIN_IN
            is_live = live(cfg, own, now)
            if proto == TCP and syn_only and (not is_live or closed) or \
                    proto != TCP and not is_live:
                res = self._admit(worker, eni, proto, iip["dst"], dport, extra)
                if res is not None:
                    return res
                self._claim(own, key, own.rkey, tunnel, env_mac, eni, flags, now, len(p) - inner)
                extra.update({"flow_reopened": 1, "eni:flows_created": 1})
                return self._forward(p, inner, iip, l4, own, "fwd_new_flow", extra, True)
            if is_live:
                own.last_seen = now
                own.state |= fwd_state(flags, own.state) if proto == TCP else 0
                own.env_mac = env_mac  # replies go to the MAC of the latest forward packet
                own.tx_packets += 1
                own.tx_bytes += len(p) - inner
                if probed:
                    extra["flow_probed"] = 1
                return self._forward(p, inner, iip, l4, own, "fwd_established", extra, False)
            if flags & F_RST:
                return Result(DROP, "drop_tcp_no_flow", extra=extra)
            return self._rst(p, inner, udp_off, iip, l4, extra)
        if (worker, vni) not in cfg.placements:
            return Result(DROP, "drop_worker_not_placed")
        # A SYN without ACK or RST opens a connection; any other segment needs a live flow: a
        # RST is dropped, the rest answered by a RST.
        if proto == TCP and not syn_only:
            if flags & F_RST:
                return Result(DROP, "drop_tcp_no_flow")
            return self._rst(p, inner, udp_off, iip, l4, extra)
        if not sg_allows(eni, proto, iip["dst"], dport):
            return Result(DROP, "drop_sg_denied", extra={"eni:sg_denied": 1})
        # An empty slot (under the ENI's limit) first; else an entry another tuple may take
        # over; else the limit (when it was what kept the empty slot out of reach) or
        # exhaustion.
        limit = cfg.flow_limit(eni)
        over = free is not None and bool(limit) and self.entries(eni) >= limit
        if free is not None and not over:
            rkey = base[:3] + (free,) + base[4:]
            flow = Flow(key, rkey, tunnel, env_mac, eni)
            self._claim(flow, key, rkey, tunnel, env_mac, eni, flags, now, len(p) - inner)
            self.rev[rkey] = flow
            extra["eni:flows_created"] = 1
            return self._forward(p, inner, iip, l4, flow, "fwd_new_flow", extra, True)
        if cand is not None:
            old = self.rev[base[:3] + (cand,) + base[4:]]
            del self.fwd[old.key]
            self._claim(old, key, old.rkey, tunnel, env_mac, eni, flags, now, len(p) - inner)
            extra.update({"flow_takeover": 1, "eni:flows_created": 1})
            return self._forward(p, inner, iip, l4, old, "fwd_new_flow", extra, True)
        if over:
            return Result(DROP, "drop_flow_limit", extra={"eni:flows_limited": 1})
        return Result(DROP, "drop_port_exhausted", extra={"eni:port_alloc_failed": 1})

    def entries(self, eni: Eni) -> int:
        """The entries an ENI holds, live or not (what its limit counts)."""
        return sum(1 for f in self.rev.values() if f.eni is eni)

    def _admit(self, worker: str, eni: Eni, proto: int, dst: str, dport: int,
               extra: dict[str, int]) -> Result | None:
        """What a new flow must pass again when it reopens its tuple: placement, security groups."""
        if (worker, eni.vni) not in self.cfg.placements:
            return Result(DROP, "drop_worker_not_placed", extra=extra)
        if not sg_allows(eni, proto, dst, dport):
            return Result(DROP, "drop_sg_denied", extra={**extra, "eni:sg_denied": 1})
        return None

    def _claim(self, f: Flow, key: tuple, rkey: tuple, tunnel: str, env_mac: bytes, eni: Eni,
               flags: int, now: int, nbytes: int) -> None:
        """The entry (new, reopened or taken over) now holds this packet's flow and nothing of
        what it held before."""
        f.key, f.rkey, f.tunnel, f.env_mac, f.eni = key, rkey, tunnel, env_mac, eni
        f.state = fwd_state(flags, 0) if key[6] == TCP else 0
        f.tx_packets, f.tx_bytes, f.rx_packets, f.rx_bytes = 1, nbytes, 0, 0
        f.last_seen = now
        self.fwd[key] = f

    def _forward(self, p: bytes, inner: int, iip: dict, l4: dict, flow: Flow, reason: str,
                 extra: dict[str, int], new: bool) -> Result:
        """The packet of a flow the table now holds: into the VPC, source-NATed."""
        cfg = self.cfg
        eni = flow.eni
        key = flow.key
        proto = key[6]
        vpc = cfg.vpcs.get(eni.vpc_idx)
        if vpc is None:
            return Result(DROP, "drop_no_vpc", extra=extra, flow=key, new_flow=new)
        if vpc.gateway_mac is None:
            return Result(DROP, "drop_no_gateway_mac", extra=extra, flow=key, new_flow=new)
        if vpc.mtu and iip["total"] > vpc.mtu:
            # the VPC's link would drop it: RFC 1191 with DF (the flow was opened or kept alive
            # all the same: the sender will send again, smaller), else dropped and counted
            res = Result(DROP, "drop_vpc_mtu")
            if iip["df"]:
                res = self._fabric_reply(p, iip, ICMP_UNREACH, ICMP_FRAG_NEEDED, vpc.mtu,
                                         "drop_vpc_mtu")
            return Result(res.verdict, res.reason, res.out, extra, key, new)
        if iip["mf"]:  # a first fragment: the later ones will follow its flow
            t = self._tun
            self.frags[(t.worker, t.vni, iip["src"], iip["dst"], iip["id"], proto)] = \
                Frag(self.now, flow.rkey, iip["total"] - iip["ihl"])
        # SNAT: source address and port, RFC 1624 updates, TTL, MACs; outer headers removed
        q = bytearray(p[inner:])
        io = iip["off"] - inner
        eni_b = ip2b(eni.addr)
        old_src = bytes(q[io + 12:io + 16])
        ck = struct.unpack_from("!H", q, io + 10)[0]
        ck = incremental(ck, old_src, eni_b)
        q[io + 12:io + 16] = eni_b
        old_word = bytes(q[io + 8:io + 10])
        q[io + 8] -= 1
        ck = incremental(ck, old_word, bytes(q[io + 8:io + 10]))
        struct.pack_into("!H", q, io + 10, ck)
        nat = flow.rkey[3]
        self._l4_rewrite(q, l4, inner, proto, old_src, eni_b, "sport" if proto != ICMP else "id",
                         nat)
        if proto == TCP and l4["flags"] & F_SYN and cfg.mss_clamping:  # every SYN, again too
            self.mss_clamped += clamp_mss(q, l4["sport_off"] - inner,
                                          iip["off"] - inner + iip["total"],
                                          mss_clamp(cfg.fabric_mtu, vpc.mtu))
        q[0:6] = mac2b(vpc.gateway_mac)
        q[6:12] = mac2b(vpc.if_mac)
        extra.update({"eni:tx_packets": 1, "eni:tx_bytes": len(p) - inner})
        return Result(REDIRECT, reason, bytes(q), extra, key, new)

    def _fabric_reply(self, p: bytes, iip: dict, typ: int, code: int, mtu: int,
                      none: str) -> Result:
        """The node's ICMP error about an environment's packet (time exceeded, fragmentation
        needed), back through the tunnel it came by as the gateway the environment routes
        through: from the tunnel gateway's address to the packet's source, inside the tunnel's
        headers as a reply's (the worker's MAC and VLAN tags as its frame came, the frame's UDP
        source port, the VNI, no GENEVE options), to the environment's MAC from the gateway's.
        `none`: the reason when no answer is due (RFC 1812 4.3.2.7)."""
        cfg, t = self.cfg, self._tun
        if t.vni not in cfg.enis:
            return Result(DROP, "drop_unknown_vni")
        if (t.worker, t.vni) not in cfg.placements:
            return Result(DROP, "drop_worker_not_placed")
        link_dst = p[t.inner:t.inner + 6]  # the environment's frame's
        if not cfg.tunnel_gateway or not may_answer(p, iip, link_dst):
            return Result(DROP, none)
        if not cfg.icmp_rate:
            return Result(DROP, "drop_icmp_ratelimit")
        err = icmp_error(cfg.tunnel_gateway, iip["src"], typ, code, mtu, quote_of(p, iip))
        inner = p[t.inner + 6:t.inner + 12] + mac2b(cfg.gateway_mac) + \
            struct.pack("!H", ETH_IPV4) + err
        if t.tport == GENEVE_PORT:
            th = bytes([0, 0]) + struct.pack("!H", ETH_TEB)
        else:
            th = bytes([0x08, 0, 0, 0])
        th += t.vni.to_bytes(3, "big") + b"\0"
        total = 20 + 8 + len(th) + len(inner)
        oip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, UDP, 0,
                                    ip2b(cfg.fabric_ip), ip2b(t.worker)))
        struct.pack_into("!H", oip, 10, checksum(bytes(oip)))
        udp = p[t.udp_off:t.udp_off + 2] + struct.pack("!HHH", t.tport, total - 20, 0)
        out = p[6:12] + mac2b(cfg.fabric_mac) + self._outer_tags(p) + \
            struct.pack("!H", ETH_IPV4) + bytes(oip) + udp + th + inner
        return Result(TX, "tx_icmp_time_exceeded" if typ == ICMP_TIME_EXCEEDED else
                      "tx_icmp_frag_needed", out)

    def _fabric_frag(self, p: bytes, iip: dict, now: int) -> Result:
        """A later fragment from an environment: it carries no ports, so it follows the flow its
        datagram's first fragment went by, if that flow is still live and still the same
        environment's, and only its source address is translated. It is counted with the flow
        but keeps it no more alive than any fragment proves (no last-seen, no state)."""
        cfg, t = self.cfg, self._tun
        if iip["ttl"] <= 1:  # no answer about a later fragment (RFC 1812 4.3.2.7)
            return Result(DROP, "drop_ttl_expired")
        fr = self._frag_of((t.worker, t.vni, iip["src"], iip["dst"], iip["id"], iip["proto"]),
                           iip, now)
        if isinstance(fr, str):
            return Result(DROP, fr)
        flow = self.rev.get(fr.rkey)
        if flow is None or flow.key[:3] != (t.worker, t.vni, iip["src"]) or \
                not live(cfg, flow, now):
            return Result(DROP, "drop_frag_no_first")
        vpc = cfg.vpcs.get(fr.rkey[0])
        if vpc is None:
            return Result(DROP, "drop_no_vpc")
        if vpc.gateway_mac is None:
            return Result(DROP, "drop_no_gateway_mac")
        if vpc.mtu and iip["total"] > vpc.mtu:  # a later fragment has no DF to heed
            return Result(DROP, "drop_vpc_mtu")
        inner = t.inner
        flow.tx_packets += 1
        flow.tx_bytes += len(p) - inner
        q = bytearray(p[inner:])
        io = iip["off"] - inner
        eni_b = ip2b(fr.rkey[1])
        ck = incremental(struct.unpack_from("!H", q, io + 10)[0], bytes(q[io + 12:io + 16]), eni_b)
        q[io + 12:io + 16] = eni_b
        old_word = bytes(q[io + 8:io + 10])
        q[io + 8] -= 1
        struct.pack_into("!H", q, io + 10, incremental(ck, old_word, bytes(q[io + 8:io + 10])))
        q[0:6] = mac2b(vpc.gateway_mac)
        q[6:12] = mac2b(vpc.if_mac)
        extra = {"eni:tx_packets": 1, "eni:tx_bytes": len(p) - inner}
        return Result(REDIRECT, "fwd_fragment", bytes(q), extra, flow.key, refreshed=False)

    def _rst(self, p: bytes, inner: int, udp_off: int, iip: dict, l4: dict,
             extra: dict[str, int]) -> Result:
        """RFC 793 (reset generation) for a segment that belongs to no live connection, sent back
        through the tunnel it came by: what AWS does after its idle timeout, so that the client
        learns at once instead of retransmitting into a black hole."""
        o = self._eth(p, 0, 2)[1]
        io, to = iip["off"], l4["sport_off"]
        seq, ack = struct.unpack_from("!II", p, to + 4)
        flags = l4["flags"]
        if flags & F_ACK:
            rseq, rack, rflags = ack, 0, F_RST
        else:
            total = struct.unpack_from("!H", p, io + 2)[0]
            plen = max(0, total - iip["ihl"] - (p[to + 12] >> 4) * 4)
            rseq = 0
            rack = (seq + plen + bool(flags & F_SYN) + bool(flags & F_FIN)) & 0xFFFFFFFF
            rflags = F_RST | F_ACK
        src, dst = ip2b(iip["dst"]), ip2b(iip["src"])
        tcp = bytearray(struct.pack("!HHIIBBHHH", l4["dport"], l4["sport"], rseq, rack, 0x50,
                                    rflags, 0, 0, 0))
        pseudo = src + dst + struct.pack("!BBH", 0, TCP, 20)
        struct.pack_into("!H", tcp, 16, checksum(pseudo + bytes(tcp)))
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, TCP, 0, src, dst))
        struct.pack_into("!H", ip, 10, checksum(bytes(ip)))
        ieth = p[inner + 6:inner + 12] + mac2b(self.cfg.gateway_mac) + struct.pack("!H", ETH_IPV4)
        q = bytearray(p[:inner]) + ieth + ip + tcp
        q[0:6], q[6:12] = p[6:12], p[0:6]
        # outer IPv4: addresses swapped (the checksum does not see a swap), length and TTL
        # updated (RFC 1624); outer UDP: ports as received, length, no checksum
        q[o + 12:o + 16], q[o + 16:o + 20] = p[o + 16:o + 20], p[o + 12:o + 16]
        old = bytes(q[o + 2:o + 4]) + bytes(q[o + 8:o + 10])
        struct.pack_into("!H", q, o + 2, len(q) - o)
        q[o + 8] = 64
        new = bytes(q[o + 2:o + 4]) + bytes(q[o + 8:o + 10])
        struct.pack_into("!H", q, o + 10, incremental(struct.unpack_from("!H", q, o + 10)[0],
                                                       old, new))
        struct.pack_into("!HH", q, udp_off + 4, len(q) - udp_off, 0)
        return Result(TX, "tx_tcp_rst", bytes(q), extra)

    @staticmethod
    def _l4_rewrite(q: bytearray, l4: dict, base: int, proto: int, old_addr: bytes,
                    new_addr: bytes, field_: str, new_port: int) -> None:
        off = (l4["id_off"] if field_ == "id" else l4[f"{field_}_off"]) - base
        c_off = l4["csum_off"] - base
        ck = struct.unpack_from("!H", q, c_off)[0]
        old_port = bytes(q[off:off + 2])
        new_port_b = struct.pack("!H", new_port)
        if not (proto == UDP and ck == 0):
            if proto != ICMP:
                ck = incremental(ck, old_addr, new_addr)
            ck = incremental(ck, old_port, new_port_b)
            if proto == UDP and ck == 0:
                ck = 0xFFFF
            struct.pack_into("!H", q, c_off, ck)
        q[off:off + 2] = new_port_b

    def _tunnel_arp(self, p: bytes, inner: int, off: int, udp_off: int) -> Result:
        if len(p) < off + 28:
            return Result(DROP, "drop_inner_truncated")
        htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", p, off)
        spa, tpa = p[off + 14:off + 18], p[off + 24:off + 28]
        if (htype, ptype, hlen, plen, op) != (1, ETH_IPV4, 6, 4, 1) or spa == bytes(4) or spa == tpa:
            return Result(DROP, "drop_arp_ignored")
        q = bytearray(p)
        gw = mac2b(self.cfg.gateway_mac)
        sha = bytes(q[off + 8:off + 14])
        q[off + 18:off + 24] = sha
        q[off + 24:off + 28] = spa
        q[off + 8:off + 14] = gw
        q[off + 14:off + 18] = tpa
        struct.pack_into("!H", q, off + 6, 2)
        q[inner:inner + 6] = q[inner + 6:inner + 12]
        q[inner + 6:inner + 12] = gw
        q[0:6], q[6:12] = p[6:12], p[0:6]
        # outer IPv4: swap addresses (checksum unchanged by a swap); outer UDP checksum zeroed
        o = self._eth(p, 0, 2)[1]
        q[o + 12:o + 16], q[o + 16:o + 20] = p[o + 16:o + 20], p[o + 12:o + 16]
        struct.pack_into("!H", q, udp_off + 6, 0)
        return Result(TX, "tx_arp_tunnel", bytes(q))

    # ---- VPC -> worker ---------------------------------------------------------------------
    def vpc(self, p: bytes, ifindex: int, now: int, udp_sport: Callable[[Flow], int]) -> Result:
        cfg = self.cfg
        self.now = now
        vpc = cfg.vpc_by_ifindex(ifindex)
        if vpc is None:
            return Result(PASS, "pass_vpc_unknown_if")
        if len(p) < 14:
            return Result(PASS, "pass_vpc_not_eni")
        et = struct.unpack_from("!H", p, 12)[0]
        extra: dict[str, int] = {}
        if et == ETH_ARP:
            return self._vpc_arp(p, vpc)
        if et != ETH_IPV4 or len(p) < 34:
            return Result(PASS, "pass_vpc_not_eni")
        dst = str(ipaddress.IPv4Address(p[30:34]))
        eni = cfg.eni_at(vpc.idx, dst)
        if eni is None:
            return Result(PASS, "pass_vpc_not_eni")
        names = {"truncated": "drop_vpc_malformed", "invalid": "drop_vpc_malformed"}
        ip, off = self._ipv4(p, 14)
        if isinstance(ip, str):
            return Result(DROP, names[ip])
        if ip["offset"]:  # a later fragment: no ports, its first fragment's flow
            return self._vpc_frag(p, vpc, ip, now, udp_sport)
        # an ICMP header cut short is this side's truncation, as for any transport header
        if ip["proto"] == ICMP and len(p) >= off + 8 and p[off] in ICMP_ERRORS:
            return self._icmp_error(p, vpc, ip, off, now, udp_sport)
        ip, l4 = self._l4_of(p, ip, off, 0, names)
        if isinstance(ip, Result):
            return ip
        if ip["mf"] and self._tiny(p, ip, off):
            return Result(DROP, "drop_frag_tiny")
        proto = ip["proto"]
        eport = l4["id"] if proto == ICMP else l4["dport"]
        rport = 0 if proto == ICMP else l4["sport"]
        rkey = (vpc.idx, dst, ip["src"], eport, rport, proto)
        flow = self.rev.get(rkey)
        if flow is None:
            return Result(DROP, "drop_no_flow")
        if not live(self.cfg, flow, now):
            # RFC 4787 REQ-5 / AWS: an expired mapping lets nothing in, and is not refreshed
            return Result(DROP, "drop_flow_expired")
        # The node is the hop between the VPC and the environment: it answers for the ENI
        if ip["ttl"] <= 1:
            return self._vpc_answer(p, vpc, ip, ICMP_TIME_EXCEEDED, 0, 0, "drop_ttl_expired")
        worker = flow.key[0]
        if worker not in cfg.workers:
            return Result(DROP, "drop_unknown_worker")
        if cfg.fabric_mtu and len(p) + 36 > cfg.fabric_mtu:
            # too big for the tunnel: with DF the sender learns what fits inside it (RFC 1191)
            if ip["df"] and cfg.fabric_mtu > TUNNEL_OVERHEAD:
                return self._vpc_answer(p, vpc, ip, ICMP_UNREACH, ICMP_FRAG_NEEDED,
                                        cfg.fabric_mtu - TUNNEL_OVERHEAD, "drop_fabric_mtu")
            return Result(DROP, "drop_fabric_mtu")
        if ip["mf"]:  # a first fragment: the later ones will follow its flow
            self.frags[(0, vpc.idx | FRAG_K_RETURN, ip["src"], dst, ip["id"], proto)] = \
                Frag(now, rkey, ip["total"] - ip["ihl"])
        flow.last_seen = now
        if proto == TCP:
            flow.state |= rev_state(l4["flags"])
        flow.rx_packets += 1
        flow.rx_bytes += len(p)
        q = bytearray(p)
        env_b = ip2b(flow.key[2])
        old_dst = bytes(q[30:34])
        ck = incremental(struct.unpack_from("!H", q, 24)[0], old_dst, env_b)
        q[30:34] = env_b
        old_word = bytes(q[22:24])
        q[22] -= 1
        ck = incremental(ck, old_word, bytes(q[22:24]))
        struct.pack_into("!H", q, 24, ck)
        self._l4_rewrite(q, l4, 0, proto, old_dst, env_b, "dport" if proto != ICMP else "id",
                         flow.key[4])
        if proto == TCP and l4["flags"] & F_SYN and cfg.mss_clamping:
            # the SYN/ACK: what the environment may send
            self.mss_clamped += clamp_mss(q, l4["sport_off"], ip["off"] + ip["total"],
                                          mss_clamp(cfg.fabric_mtu, vpc.mtu))
        extra.update({"eni:rx_packets": 1, "eni:rx_bytes": len(p)})
        return Result(REDIRECT, "rev_established", self._encap(flow, q, udp_sport), extra,
                      flow.key)

    def _vpc_answer(self, p: bytes, vpc: Vpc, ip: dict, typ: int, code: int, mtu: int,
                    none: str) -> Result:
        """The node's ICMP error about a packet from the VPC (time exceeded, fragmentation
        needed), out of the interface it came in by: from the ENI address it was sent to (the
        node speaks for the environment behind it) to its sender, to the MAC it came from.
        `none`: the reason when no answer is due (RFC 1812 4.3.2.7)."""
        cfg = self.cfg
        if not may_answer(p, ip, p[0:6]):
            return Result(DROP, none)
        if not cfg.icmp_rate:
            return Result(DROP, "drop_icmp_ratelimit")
        out = p[6:12] + mac2b(vpc.if_mac) + struct.pack("!H", ETH_IPV4) + \
            icmp_error(ip["dst"], ip["src"], typ, code, mtu, quote_of(p, ip))
        return Result(TX, "tx_icmp_time_exceeded" if typ == ICMP_TIME_EXCEEDED else
                      "tx_icmp_frag_needed", out)

    def _vpc_frag(self, p: bytes, vpc: Vpc, ip: dict, now: int,
                  udp_sport: Callable[[Flow], int]) -> Result:
        """A later fragment from the VPC to an ENI address: the flow its first fragment went
        by, if still live; only the destination address is translated; counted with the flow,
        which it does not keep alive."""
        cfg = self.cfg
        fr = self._frag_of((0, vpc.idx | FRAG_K_RETURN, ip["src"], ip["dst"], ip["id"],
                            ip["proto"]), ip, now)
        if isinstance(fr, str):
            return Result(DROP, fr)
        flow = self.rev.get(fr.rkey)
        if flow is None or not live(cfg, flow, now):
            return Result(DROP, "drop_frag_no_first")
        if ip["ttl"] <= 1:  # never answered: a later fragment (RFC 1812 4.3.2.7)
            return self._vpc_answer(p, vpc, ip, ICMP_TIME_EXCEEDED, 0, 0, "drop_ttl_expired")
        if flow.key[0] not in cfg.workers:
            return Result(DROP, "drop_unknown_worker")
        if cfg.fabric_mtu and len(p) + 36 > cfg.fabric_mtu:
            return Result(DROP, "drop_fabric_mtu")  # nor this one
        q = bytearray(p)
        env_b = ip2b(flow.key[2])
        ck = incremental(struct.unpack_from("!H", q, 24)[0], bytes(q[30:34]), env_b)
        q[30:34] = env_b
        old_word = bytes(q[22:24])
        q[22] -= 1
        struct.pack_into("!H", q, 24, incremental(ck, old_word, bytes(q[22:24])))
        flow.rx_packets += 1
        flow.rx_bytes += len(p)
        extra = {"eni:rx_packets": 1, "eni:rx_bytes": len(p)}
        return Result(REDIRECT, "rev_fragment", self._encap(flow, q, udp_sport), extra, flow.key,
                      refreshed=False)

    def _encap(self, flow: Flow, q: bytearray, udp_sport: Callable[[Flow], int]) -> bytes:
        """The translated frame `q` towards the flow's environment: inner MACs, then the tunnel
        the flow came by, to its worker, with the flow's VNI."""
        cfg = self.cfg
        worker = flow.key[0]
        q[0:6] = flow.env_mac
        q[6:12] = mac2b(cfg.gateway_mac)
        sp = udp_sport(flow)
        assert 49152 <= sp <= 65535, f"tunnel source port {sp} outside 49152-65535"
        total = 20 + 8 + 8 + len(q)
        outer_ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, UDP, 0,
                                         ip2b(cfg.fabric_ip), ip2b(worker)))
        struct.pack_into("!H", outer_ip, 10, checksum(bytes(outer_ip)))
        if flow.tunnel == "geneve":
            th = bytes([0, 0]) + struct.pack("!H", ETH_TEB) + flow.key[1].to_bytes(3, "big") + b"\0"
            dport = GENEVE_PORT
        else:
            th = bytes([0x08, 0, 0, 0]) + flow.key[1].to_bytes(3, "big") + b"\0"
            dport = VXLAN_PORT
        # replies carry the outer VLAN tags the worker's own frames came with
        outer = (self.worker_mac.get(worker, bytes(6)) + mac2b(cfg.fabric_mac) +
                 self.worker_tags.get(worker, b"") + struct.pack("!H", ETH_IPV4) + bytes(outer_ip) +
                 struct.pack("!HHHH", sp, dport, total - 20, 0) + th)
        return outer + bytes(q)

    @staticmethod
    def _quote(p: bytes, off: int, end: int) -> dict | str:
        """The datagram an ICMP error (RFC 792: destination unreachable, time exceeded,
        parameter problem) quotes, `off` at its ICMP header, `end` where the error's IPv4
        datagram ends (its total length: what follows in the frame is Ethernet padding, not
        quote): 'malformed' unless an IPv4 header and 64 bits of its data follow the 8-byte ICMP
        header within it, else its fields."""
        q = off + 8
        if len(p) < q + 20 or p[q] >> 4 != 4 or p[q] & 0xF < 5:
            return "malformed"
        ql4 = q + (p[q] & 0xF) * 4
        if min(len(p), end) < ql4 + 8:
            return "malformed"
        return {"icmp": off, "q": q, "l4": ql4, "end": end, "proto": p[q + 9],
                "src": p[q + 12:q + 16],
                "dst": p[q + 16:q + 20], "later": bool(struct.unpack_from("!H", p, q + 6)[0] &
                                                       0x1FFF),
                "sport": struct.unpack_from("!H", p, ql4)[0],
                "dport": struct.unpack_from("!H", p, ql4 + 2)[0]}

    @staticmethod
    def _rewrite_error(p: bytes, io: int, qt: dict, outer_at: int, quote_at: int, port_at: int,
                       addr: bytes, port: int) -> bytearray:
        """RFC 5508 REQ-3/4: the error as if about the receiver's own datagram. The outer
        address at `io + outer_at` and the quoted one at `quote_at` (within the quoted header)
        become `addr`, the quoted port at `port_at` becomes `port`, the outer TTL drops by one,
        and every checksum involved follows: outer IPv4, quoted IPv4, the quoted transport
        checksum when the quote carries it (TCP's and UDP's over the RFC 793/768 pseudo header,
        an echo's over the message only; UDP's 0 means none), and ICMP's over the whole message."""
        q, ql4, proto, icmp = qt["q"], qt["l4"], qt["proto"], qt["icmp"]
        new = bytearray(p)
        new[io + outer_at:io + outer_at + 4] = addr
        new[io + 8] -= 1
        new[q + quote_at:q + quote_at + 4] = addr
        struct.pack_into("!H", new, port_at, port)
        for start, end, at in ((io, icmp, io + 10), (q, ql4, q + 10)):
            struct.pack_into("!H", new, at, adjusted(struct.unpack_from("!H", p, at)[0],
                                                     zeroed(p[start:end], at - start),
                                                     zeroed(new[start:end], at - start)))
        check_at = ql4 + {TCP: 16, UDP: 6, ICMP: 2}[proto]
        check = struct.unpack_from("!H", p, check_at)[0] \
            if min(len(p), qt["end"]) >= check_at + 2 else None  # TCP's: if quoted
        if check is not None and not (proto == UDP and check == 0):
            def pseudo(b):
                return bytes(b[q + 12:q + 20]) + bytes([0, proto]) if proto != ICMP else b""
            c = adjusted(check, pseudo(p) + zeroed(p[ql4:], check_at - ql4),
                         pseudo(new) + zeroed(new[ql4:], check_at - ql4))
            struct.pack_into("!H", new, check_at, 0xFFFF if proto == UDP and c == 0 else c)
        struct.pack_into("!H", new, icmp + 2, adjusted(struct.unpack_from("!H", p, icmp + 2)[0],
                                                       zeroed(p[icmp:], 2),
                                                       zeroed(new[icmp:], 2)))
        return new

    def _icmp_error(self, p: bytes, vpc: Vpc, ip: dict, off: int, now: int,
                    udp_sport: Callable[[Flow], int]) -> Result:
        """An ICMP error from the VPC to an ENI address. For a datagram the ENI sent, the quote
        is a flow's forward packet after SNAT (source: the ENI and the flow's port), so it names
        the flow as a reply would, roles swapped; the error then reaches the environment as if
        about its own packet."""
        cfg = self.cfg
        eni_addr = ip["dst"]
        qt = self._quote(p, off, ip["off"] + ip["total"])
        if qt == "malformed":
            return Result(DROP, "drop_icmp_error_malformed")
        no_flow = Result(DROP, "drop_icmp_error_no_flow")
        # only the ENI's own datagram, and only the piece of it that carried the ports
        if qt["src"] != ip2b(eni_addr) or qt["later"]:
            return no_flow
        qproto, ql4 = qt["proto"], qt["l4"]
        if qproto in (TCP, UDP):
            port_at, nat, rport = ql4, qt["sport"], qt["dport"]
        elif qproto == ICMP and p[ql4] == ICMP_ECHO and p[ql4 + 1] == 0:
            # an echo request's identifier is its flow's port (RFC 5508 3.1), no remote port;
            # errors are never about errors (RFC 1122 3.2.2), nor about replies
            port_at, nat, rport = ql4 + 4, struct.unpack_from("!H", p, ql4 + 4)[0], 0
        else:
            return no_flow
        if ip["mf"]:  # an error in fragments: the rest of its quote is in none of them
            return Result(DROP, "drop_icmp_error_malformed")
        qdst = str(ipaddress.IPv4Address(qt["dst"]))
        flow = self.rev.get((vpc.idx, eni_addr, qdst, nat, rport, qproto))
        if flow is None or not live(cfg, flow, now):
            return no_flow
        if ip["ttl"] <= 1:  # never an error about an error (RFC 1812 4.3.2.7)
            return Result(DROP, "drop_ttl_expired")
        if flow.key[0] not in cfg.workers:
            return Result(DROP, "drop_unknown_worker")
        if cfg.fabric_mtu and len(p) + 36 > cfg.fabric_mtu:
            return Result(DROP, "drop_fabric_mtu")
        new = self._rewrite_error(p, 14, qt, 16, 12, port_at, ip2b(flow.key[2]), flow.key[4])
        # reported to the flow's counters, but it is not the flow's traffic: no sign of life
        flow.rx_packets += 1
        flow.rx_bytes += len(p)
        extra = {"eni:rx_packets": 1, "eni:rx_bytes": len(p)}
        return Result(REDIRECT, "rev_icmp_error", self._encap(flow, new, udp_sport), extra,
                      flow.key, refreshed=False)

    def _fabric_icmp_error(self, p: bytes, inner: int, iip: dict, off: int, worker: str,
                           vni: int, now: int) -> Result:
        """An ICMP error an environment sends about a datagram it received from the VPC (say
        port unreachable for a UDP reply), `off` at its ICMP header. The quote is that reply as
        the environment got it (remote -> environment), so it names the flow the environment's
        own packets to that remote use, found where they find it; the error goes into the VPC
        from the ENI address, quoting the datagram as the VPC sent it (RFC 5508 REQ-3/4)."""
        cfg = self.cfg
        qt = self._quote(p, off, iip["off"] + iip["total"])
        if qt == "malformed" or iip["mf"]:  # in fragments, the rest of its quote is in none
            return Result(DROP, "drop_icmp_error_malformed")
        env = iip["src"]
        if qt["dst"] != ip2b(env) or qt["later"] or qt["proto"] not in (TCP, UDP):
            return Result(DROP, "drop_icmp_error_no_flow")
        eni = cfg.enis.get(vni)
        if eni is None:
            return Result(DROP, "drop_unknown_vni")
        proto, remote = qt["proto"], str(ipaddress.IPv4Address(qt["src"]))
        key = (worker, vni, env, remote, qt["dport"], qt["sport"], proto)
        flow = None
        for port in self.probe(eni, key):
            e = self.rev.get((eni.vpc_idx, eni.addr, remote, port, qt["sport"], proto))
            if e is None or e.key == key:
                flow = e
                break
        if flow is None or not live(cfg, flow, now):
            return Result(DROP, "drop_icmp_error_no_flow")
        vpc = cfg.vpcs.get(eni.vpc_idx)
        if vpc is None:
            return Result(DROP, "drop_no_vpc")
        if vpc.gateway_mac is None:
            return Result(DROP, "drop_no_gateway_mac")
        if vpc.mtu and iip["total"] > vpc.mtu:
            # the VPC's link would drop it; no error about an error (RFC 1812 4.3.2.7)
            return Result(DROP, "drop_vpc_mtu")
        new = self._rewrite_error(p, iip["off"], qt, 12, 16, qt["l4"] + 2, ip2b(eni.addr),
                                  flow.rkey[3])
        new[inner:inner + 6] = mac2b(vpc.gateway_mac)
        new[inner + 6:inner + 12] = mac2b(vpc.if_mac)
        flow.tx_packets += 1  # counted with the flow, which it does not keep alive
        flow.tx_bytes += len(p) - inner
        extra = {"eni:tx_packets": 1, "eni:tx_bytes": len(p) - inner}
        return Result(REDIRECT, "fwd_icmp_error", bytes(new[inner:]), extra, flow.key,
                      refreshed=False)

    def _vpc_arp(self, p: bytes, vpc: Vpc) -> Result:
        if len(p) < 14 + 28:
            return Result(PASS, "pass_vpc_arp")
        htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", p, 14)
        if (htype, ptype, hlen, plen) != (1, ETH_IPV4, 6, 4):
            return Result(PASS, "pass_vpc_arp")
        sha, spa, tpa = p[22:28], p[28:32], p[38:42]
        extra = {}
        # the gateway's MAC is learned once (or set) and kept: another MAC is only counted
        if spa == ip2b(vpc.gateway_ip) and spa != bytes(4):
            if vpc.gateway_mac is None:
                vpc.gateway_mac = ":".join(f"{b:02x}" for b in sha)
                extra["gw_mac_learned"] = 1
            elif mac2b(vpc.gateway_mac) != sha:
                extra["gw_mac_conflict"] = 1
        if op != 1:
            return Result(PASS, "pass_vpc_arp", extra=extra)
        target = str(ipaddress.IPv4Address(tpa))
        if self.cfg.eni_at(vpc.idx, target) is None:
            return Result(PASS, "pass_vpc_arp", extra=extra)
        q = bytearray(p)
        me = mac2b(vpc.if_mac)
        q[32:38] = sha
        q[38:42] = spa
        q[22:28] = me
        q[28:32] = tpa
        struct.pack_into("!H", q, 20, 2)
        q[0:6] = p[6:12]
        q[6:12] = me
        return Result(TX, "tx_arp_vpc", bytes(q), extra)
