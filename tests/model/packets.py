"""Fast packet builders and a seeded generator of packet sequences for the differential tests.

Contract: frames are built with struct (scapy is far too slow for millions of packets), with
correct checksums unless a mutation breaks them on purpose. `Generator(rng, model)` produces a mix
of valid, slightly wrong and random frames in both directions, using the model's flows so that
replies, repeats and collisions actually happen, and steps of the clock: ("time", spec, 0) with
spec {"advance_ns": n}, {"flow": key, "idle_ns": n} or {"frag": key, "age_ns": n}, drawn just
before a flow's expiry, between its expiry and the end of its takeover grace, or after both, so
that the RST answer, reopen, takeover and the drops of expired flows are all drawn. TCP flows open with a SYN (anything else
without a flow is answered with a RST); the flags that follow depend on the flow's state. ICMP
errors from the VPC (RFC 792 types 3, 11 and 12) quote what an ENI sent: a flow's forward packet
(whole or cut to the IPv4 header and 8 bytes), a packet of no flow, one another host sent, a later
fragment, an echo request, another error, or a quote cut short; environments send errors about
what they received through a flow, or about what no flow brought them. TCP segments carry
drawn options (`tcp_options`): SYNs and SYN/ACKs mostly, with an MSS for the clamp to lower or
leave, other segments sometimes.

For the node as a router (issue 14): TTLs of 0, 1 and 2 both ways (ICMP errors and echoes
too), packets around each link's MTU (the VPC link's 1,400 forward, the fabric's less the tunnel
back) and far past it, with and without DF; datagrams in fragments both ways (`dgrams`): first
fragments of live and dead flows, tiny ones (RFC 1858, the rest of the header sometimes in the
frame's padding), later ones in order, overlapping the first, after a gap, before their first
(out of order) or without one, and steps of the clock around a first fragment's record's end;
sources and destinations of no single host (RFC 1812 4.3.2.7), ICMP types that may not be
answered, and now and then a link-layer broadcast or multicast destination.
"""

from __future__ import annotations

import random
import struct

from reference import (ETH_ARP, ETH_IPV4, F_ACK, F_FIN, F_PSH, F_RST, F_SYN, FRAG_TIMEOUT_NS,
                       ICMP, NS, S_FIN_IN, S_FIN_OUT, S_RST, S_SYN, S_SYNACK, TAKEOVER_GRACE_NS,
                       TCP, TUNNEL_OVERHEAD, UDP, Model, checksum, ip2b, mac2b, ones_sum,
                       timeout_s)

FABRIC_IP, FABRIC_MAC = "100.64.0.1", "02:00:00:00:00:01"
WORKERS = ["100.64.0.11", "100.64.0.12"]
STRANGER = "100.64.0.13"
ROGUE_MAC = "02:66:00:00:00:66"  # a host that claims a worker's or the gateway's address
WORKER_MACS = {"100.64.0.11": "02:00:00:00:00:11", "100.64.0.12": "02:00:00:00:00:12",
               "100.64.0.13": "02:00:00:00:00:13"}
ENV_IPS = ["172.16.0.2", "172.16.0.3"]
ENV_MACS = ["02:ee:00:00:00:02", "02:ee:00:00:00:03"]
REMOTES = ["10.0.0.10", "10.0.0.20", "10.0.5.5", "192.168.1.1"]
# Addresses that name no single host (RFC 1812 4.3.2.7, 5.3.7): the node never answers a packet
# from one, nor one to a multicast or broadcast address. VNI 200's groups allow them all.
UNANSWERABLE = ["0.1.2.3", "127.0.0.1", "224.0.0.9", "239.1.2.3", "240.0.0.1", "255.255.255.255"]
VPC_MTU_SMALL = 1400  # harness.VPC_MTUS[1]: the link that VNIs 100 and 300 reach
VNIS = [100, 200, 300, 999]
DPORTS = [80, 85, 53, 22, 443, 7]
GATEWAY_IP = "10.0.0.1"


def eth(dst: str, src: str, et: int) -> bytes:
    return mac2b(dst) + mac2b(src) + struct.pack("!H", et)


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64, frag: int = 0,
         options: bytes = b"", ident: int = 1) -> bytes:
    ihl = 5 + len(options) // 4
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), ident,
                              frag, ttl, proto, 0, ip2b(src), ip2b(dst)) + options)
    struct.pack_into("!H", h, 10, checksum(bytes(h)))
    return bytes(h) + payload


def l4(proto: int, src: str, dst: str, sport: int, dport: int, data: bytes = b"x",
       icmp_type: int = 8, udp_csum: bool = True, flags: int = F_SYN, seq: int = 1,
       ack: int = 0, options: bytes = b"", doff: int | None = None) -> bytes:
    """A transport header and `data`, checksummed. TCP's `options` (a multiple of 4 bytes) sit
    before the data; `doff` overrides the data offset they imply (cutting them, or reading data
    as options)."""
    if proto == ICMP:
        h = bytearray(struct.pack("!BBHHH", icmp_type, 0, 0, sport, 1) + data)
        struct.pack_into("!H", h, 2, checksum(bytes(h)))
        return bytes(h)
    if proto == TCP:
        off = 5 + len(options) // 4 if doff is None else doff
        h = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, 512, 0,
                                  0) + options + data)
    elif proto == UDP:
        h = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)
    else:
        return data
    pseudo = ip2b(src) + ip2b(dst) + struct.pack("!BBH", 0, proto, len(h))
    c = ~ones_sum(pseudo + bytes(h)) & 0xFFFF
    if proto == UDP and not udp_csum:
        c = 0
    elif proto == UDP and c == 0:
        c = 0xFFFF
    struct.pack_into("!H", h, 16 if proto == TCP else 6, c)
    return bytes(h)


def tunnel(worker: str, vni: int, inner: bytes, kind: str = "vxlan", vlans: int = 0,
           geneve_opts: bytes = b"", vxlan_flags: int = 0x08, geneve_first: int | None = None,
           geneve_flags: int = 0, geneve_proto: int = 0x6558, smac: str | None = None) -> bytes:
    if kind == "vxlan":
        th = bytes([vxlan_flags, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0"
        port = 4789
    else:
        first = geneve_first if geneve_first is not None else len(geneve_opts) // 4
        th = bytes([first, geneve_flags]) + struct.pack("!H", geneve_proto) + \
            vni.to_bytes(3, "big") + b"\0" + geneve_opts
        port = 6081
    udp = struct.pack("!HHHH", 50000, port, 8 + len(th) + len(inner), 0) + th + inner
    e = mac2b(FABRIC_MAC) + mac2b(smac or WORKER_MACS[worker])
    for i in range(vlans):
        e += struct.pack("!HH", 0x8100, 10 + i)
    return e + struct.pack("!H", ETH_IPV4) + ipv4(worker, FABRIC_IP, UDP, udp)


def arp(op: int, sha: str, spa: str, tha: str, tpa: str, dst: str = "ff:ff:ff:ff:ff:ff") -> bytes:
    return eth(dst, sha, ETH_ARP) + struct.pack("!HHBBH", 1, ETH_IPV4, 6, 4, op) + \
        mac2b(sha) + ip2b(spa) + mac2b(tha) + ip2b(tpa)


class Generator:
    def __init__(self, rng: random.Random, model: Model, vpc_ifs: dict[int, dict]):
        self.r = rng
        self.m = model
        self.vpc_ifs = vpc_ifs  # vpc_idx -> {"ifindex", "mac", "gw_mac"}
        # datagrams sent in fragments, both ways: {"fwd", "tuple", "id", "end" (what the first
        # fragment carried, or will), "first" (whether it was sent)}
        self.dgrams: list[dict] = []

    def tcp_flags(self, state: int | None, forward: bool) -> int:
        """Flags for a segment of a flow in `state` (None: no entry): mostly what a TCP stack
        would send next, sometimes anything."""
        r = self.r
        if r.random() < 0.08:
            return r.randrange(256)
        if forward:
            if state is None or state & S_RST or (state & S_FIN_OUT and state & S_FIN_IN):
                opts = [(F_SYN, 6), (F_ACK, 1), (F_PSH | F_ACK, 1), (F_RST, 0.5),
                        (F_FIN | F_ACK, 0.5), (F_RST | F_ACK, 0.3)]
            elif not state & S_SYNACK:
                opts = [(F_SYN, 2), (F_ACK, 2), (F_PSH | F_ACK, 1), (F_FIN | F_ACK, 0.5),
                        (F_RST, 0.3)]
            else:
                opts = [(F_ACK, 4), (F_PSH | F_ACK, 3), (F_FIN | F_ACK, 1.5), (F_SYN, 0.5),
                        (F_RST | F_ACK, 0.3), (F_RST, 0.2)]
        elif state is not None and state & S_SYN and not state & S_SYNACK:
            opts = [(F_SYN | F_ACK, 6), (F_RST | F_ACK, 0.5), (F_ACK, 1)]
        else:
            opts = [(F_ACK, 4), (F_PSH | F_ACK, 3), (F_FIN | F_ACK, 1.5), (F_SYN | F_ACK, 0.5),
                    (F_RST, 0.3), (F_RST | F_ACK, 0.2)]
        return r.choices([f for f, _ in opts], [w for _, w in opts])[0]

    # MSS values around each clamp (1360 through the 1,400-byte VPC link, the fabric's MTU less
    # 90 through the other) and far from them
    MSS_VALUES = [65535, 9000, 8960, 1460, 1411, 1410, 1409, 1361, 1360, 1359, 1200, 536, 535, 1, 0]

    def tcp_options(self, syn: bool) -> tuple[bytes, int | None]:
        """TCP options and, sometimes, a data offset that disagrees with them: a SYN's as stacks
        send them (MSS first, or after NOPs at odd offsets, or none), and what a clamp must walk
        past or stop at (lengths below 2, End of Option List, more than 8 options, an MSS of the
        wrong length, one cut by the data offset or in its last 3 bytes). Other segments
        mostly carry none, sometimes timestamps or an MSS that must not be touched."""
        r = self.r
        if r.random() < (0.2 if syn else 0.85):
            return b"", None
        mss = struct.pack("!BBH", 2, 4, r.choice(self.MSS_VALUES + [r.randrange(65536)]))
        k = r.random()
        if k < 0.3:  # Linux: MSS, SACK permitted, timestamps, NOP, window scale
            o = mss + bytes([4, 2, 8, 10]) + r.randbytes(8) + bytes([1, 3, 3, 7])
        elif k < 0.5:  # MSS after NOPs and other options, at odd or even offsets
            pre = r.choice([b"\x01", b"\x01\x01\x01", bytes([4, 2, 1]), bytes([3, 3, 7]),
                            bytes([8, 10]) + r.randbytes(8) + b"\x01", b"\x01" * 7,
                            b"\x01" * 8, b"\x01" * 6 + bytes([4, 2])])
            o = pre + mss + (b"\x01" + bytes([3, 3, 9]) if r.random() < 0.5 else b"")
        elif k < 0.6:  # no MSS at all
            o = r.choice([bytes([1, 3, 3, 7]), bytes([4, 2]), bytes([8, 10]) + r.randbytes(8)])
        elif k < 0.8:  # malformed: before the MSS, or the MSS itself
            bad = r.choice([bytes([2, 3, 0x23]), bytes([2, 5, 0x23, 0x28, 0]), bytes([2, 0]),
                            bytes([2, 1]), bytes([9, 0]), bytes([9, 1]), bytes([0]),
                            bytes([30, 2]), bytes([30, 40])])
            o = r.choice([bad + mss, mss + bad, b"\x01" + bad + mss])
        elif k < 0.9:  # two MSS options: only the first counts
            o = mss + struct.pack("!BBH", 2, 4, r.choice(self.MSS_VALUES))
        else:
            o = r.randbytes(r.randrange(1, 41))
        o = o[:40]
        o += r.choice([b"\0", b"\x01"]) * (-len(o) % 4)
        doff = None
        if r.random() < 0.15:  # the header says less (or more) than the options take
            doff = r.choice([5, 5 + len(o) // 4 - 1, 6, 7, 15, r.randrange(0, 16)])
        return o, doff

    def time(self) -> dict:
        """A step of the clock: to just before, between or after a flow's edges (its expiry
        and the end of its takeover grace), or a plain step, short or past every timeout."""
        r = self.r
        flows = list(self.m.fwd.values())
        if self.m.frags and r.random() < 0.05:  # just before or after a record's end
            key = r.choice(list(self.m.frags))
            return {"frag": list(key),
                    "age_ns": FRAG_TIMEOUT_NS + r.choice([-1, 1]) * r.randrange(NS // 20, NS // 2)}
        k = r.random()
        if flows and k < 0.75:
            f = r.choice(flows)
            t = timeout_s(self.m.cfg, f.proto, f.state) * NS
            edge = r.random()
            if edge < 0.35:
                idle = t - r.randrange(NS // 20, NS)  # still live
            elif edge < 0.7:
                idle = t + TAKEOVER_GRACE_NS // 2 + r.randrange(-NS // 100, NS // 100)
            else:
                idle = t + TAKEOVER_GRACE_NS + r.randrange(NS // 20, 2 * NS)
            return {"flow": list(f.key), "idle_ns": idle}
        if k < 0.9:
            return {"advance_ns": r.randrange(0, NS)}
        return {"advance_ns": (max(self.m.cfg.timeouts.values()) + 1) * NS}

    def _fwd_tuple(self) -> tuple:
        """(worker, vni, src, dst, sport, dport, proto, env index): a flow the table holds
        (live or not), or a tuple drawn afresh."""
        r = self.r
        flows = list(self.m.fwd)
        if flows and r.random() < 0.4:  # a flow the table holds, live or not
            worker, vni, src, dst, sport, dport, proto = r.choice(flows)
            i = ENV_IPS.index(src) if src in ENV_IPS else 0  # a mutated frame's flow
            return worker, vni, src, dst, sport, dport, proto, i
        proto = r.choices([TCP, UDP, ICMP, 47], [5, 4, 2, 0.3])[0]
        i = r.randrange(len(ENV_IPS))
        src, dst = ENV_IPS[i], r.choice(REMOTES)
        sport = r.choice([1000, 1001, 2000, 3000])
        dport = r.choice(DPORTS)
        worker = r.choice(WORKERS + [STRANGER] * (r.random() < 0.1))
        vni = r.choice(VNIS) if r.random() < 0.2 else r.choice(VNIS[:3])
        if vni == 300 and r.random() < 0.6:
            # many tuples, one destination, three ports: exhaustion and takeovers
            dst, dport = REMOTES[0], 80
        if r.random() < 0.04:  # to no single host: opened (VNI 200), never answered
            dst, vni = r.choice(UNANSWERABLE), r.choice([200, 200, 100])
        if vni != 300 and r.random() < 0.02:  # from no single host (not where ports run out)
            src = r.choice(UNANSWERABLE[:3] + ["224.0.0.9", "0.0.0.0"])
        return worker, vni, src, dst, sport, dport, proto, i

    def _ttl(self) -> int:
        """Mostly a TTL that crosses the node; sometimes one it cannot (0, 1) or just can (2)."""
        return self.r.choice([0, 1, 1, 2]) if self.r.random() < 0.06 else 64

    def _sized(self, build, target: int) -> bytes:
        """The transport segment `build(data)` makes, with data enough for an IPv4 datagram
        (without options) of about `target` bytes."""
        return build(b"d" * max(0, target - 20 - len(build(b""))))

    def _first_cut(self, seg: bytes, proto: int) -> tuple[int, bytes]:
        """How much of the transport segment `seg` a first fragment carries (RFC 791: a multiple
        of 8, mostly, and its transport header whole), and the frame's padding after it: a tiny
        first fragment (RFC 1858) carries less than its header, the rest of which may lie in the
        padding, where a parser that reads the frame would find it."""
        r = self.r
        hdr = (seg[12] >> 4) * 4 if proto == TCP and len(seg) >= 13 else 8
        if r.random() < 0.2:  # tiny
            cut = r.choice([c for c in range(0, max(hdr, 1), 8)] + [max(0, hdr - 1)])
            pad = seg[cut:max(hdr, 20 if proto == TCP else 8)] if r.random() < 0.8 else b""
            return cut, pad
        cut = (max(hdr, 8) + 7) // 8 * 8 + 8 * r.randrange(0, 3)
        if r.random() < 0.1:
            cut += r.randrange(1, 8)  # not a multiple of 8: the next fragment overlaps it
        return min(cut, len(seg)), b""

    def _link_dst(self, mac: str) -> str:
        """Mostly `mac`; sometimes a link-layer broadcast or multicast (RFC 1812 4.3.2.7)."""
        r = self.r
        return mac if r.random() < 0.98 else r.choice(["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:09"])

    def _remember(self, d: dict) -> None:
        self.dgrams.append(d)
        del self.dgrams[:-12]

    def forward(self) -> bytes:
        r = self.r
        pending = [d for d in self.dgrams if d["fwd"] and not d["first"]]
        first = r.random() < 0.07
        if first and pending and r.random() < 0.5:  # the first fragment, after later ones
            d = r.choice(pending)
            worker, vni, src, dst, sport, dport, proto, i = d["tuple"]
        else:
            d = None
            worker, vni, src, dst, sport, dport, proto, i = self._fwd_tuple()
            if first and self.m.fwd and r.random() < 0.5:  # of a flow the table holds
                worker, vni, src, dst, sport, dport, proto = r.choice(list(self.m.fwd))
                i = ENV_IPS.index(src) if src in ENV_IPS else 0
        icmp_type = 8 if r.random() < 0.9 else r.choice([0, 3, 13, 0, 4, 5, 9, 11, 12, 17, 19])
        tcp = {}
        if proto == TCP:
            f = self.m.fwd.get((worker, vni, src, dst, sport, dport, proto))
            tcp = {"flags": self.tcp_flags(f.state if f else None, True),
                   "seq": r.getrandbits(32), "ack": r.getrandbits(32)}
            tcp["options"], tcp["doff"] = self.tcp_options(bool(tcp["flags"] & F_SYN))
        udp_csum = r.random() < 0.8

        def build(data: bytes) -> bytes:
            return l4(proto, src, dst, sport, dport, data, icmp_type, udp_csum=udp_csum, **tcp)

        big = r.random() < 0.05  # around the VPC link's MTU, or far past it
        if big:
            payload = self._sized(build, r.choice([r.randrange(VPC_MTU_SMALL - 10,
                                                               VPC_MTU_SMALL + 11),
                                                   r.randrange(1000, 2200)]))
        else:
            payload = build(b"d" * r.randrange(0, 40))
        opts = b"\x01\x01\x01\x00" if r.random() < 0.05 else b""
        ttl = self._ttl()
        k = r.random()
        frag = 0x4000 if k < 0.35 else 0x2000 if k < 0.37 else 0  # DF, or MF with no record
        ident, pad = r.randrange(65536) if r.random() < 0.3 else 1, b""
        if first or d is not None:
            cut, pad = self._first_cut(payload, proto)
            payload = payload[:cut]
            frag = 0x2000 | (0x4000 if r.random() < 0.05 else 0)
            if d is None:
                ident = r.randrange(65536)
                d = {"fwd": True, "tuple": (worker, vni, src, dst, sport, dport, proto, i)}
                self._remember(d)
            else:
                ident = d["id"]
            d.update(id=ident, end=cut, first=True)
        inner = eth(self._link_dst("02:e1:1a:00:00:01"), ENV_MACS[i], ETH_IPV4) + \
            ipv4(src, dst, proto, payload, ttl, frag, opts, ident) + pad
        kind = "geneve" if r.random() < 0.3 else "vxlan"
        g_opts = bytes(r.randrange(256) for _ in range(4 * r.randrange(0, 3))) if kind == "geneve" else b""
        smac = ROGUE_MAC if r.random() < 0.03 else None
        return tunnel(worker, vni, inner, kind, vlans=r.choice([0, 0, 0, 1, 2]), geneve_opts=g_opts,
                      smac=smac)

    def _later(self, fwd: bool) -> tuple[dict, int, int, bytes]:
        """A later fragment's datagram, offset, flags and data: of a datagram whose first
        fragment passed (in order, or overlapping it, or after a gap), or of one whose first
        has not come yet (out of order) or never will."""
        r = self.r
        known = [d for d in self.dgrams if d["fwd"] == fwd]
        # the datagrams whose first fragment the node noted (the model's records)
        noted = [(k, fr) for k, fr in self.m.frags.items() if (k[0] != 0) == fwd]
        k = r.random()
        if noted and k < 0.5:
            key, fr = r.choice(noted)
            d = self._noted(key, fr, fwd)
        elif known and k < 0.85:
            d = r.choice(known)
        else:
            d = {"fwd": fwd, "tuple": self._fwd_tuple() if fwd else self._rev_tuple(),
                 "id": r.randrange(65536), "end": r.choice([8, 16, 24, 32, 40]), "first": False}
            self._remember(d)
        nxt = (d["end"] + 7) // 8
        k = r.random()
        if k < 0.7:
            off = nxt
        elif k < 0.85:
            off = r.randrange(1, max(2, nxt))  # inside what the first carried (or just past)
        else:
            off = nxt + r.randrange(1, 200)  # a middle one, after a gap
        mf = r.random() < 0.4
        frag = off | (0x2000 if mf else 0) | (0x4000 if r.random() < 0.05 else 0)
        if r.random() < 0.05:
            size = r.choice([VPC_MTU_SMALL - 20 + r.randrange(-5, 6),
                             self.m.cfg.fabric_mtu - 70 + r.randrange(-5, 6)])
        else:
            size = r.randrange(1, 64)
        return d, frag, self._ttl(), b"f" * size

    def _noted(self, key: tuple, fr, fwd: bool) -> dict:
        """A datagram as the model's record of its first fragment (Model.frags) names it."""
        a, scope, src, dst, ident, proto = key
        if fwd:
            f = self.m.rev.get(fr.rkey)
            sport, dport = (f.key[4], f.key[5]) if f else (0, 0)
            i = ENV_IPS.index(src) if src in ENV_IPS else 0
            tup = (a, scope, src, dst, sport, dport, proto, i)
        else:
            tup = (scope & 0xFFFF, dst, src, fr.rkey[3], fr.rkey[4], proto)
        return {"fwd": fwd, "tuple": tup, "id": ident, "end": fr.first_end, "first": True}

    def forward_later(self) -> bytes:
        """A later fragment from an environment (RFC 791): no ports, only its datagram's id."""
        r = self.r
        d, frag, ttl, data = self._later(True)
        worker, vni, src, dst, _, _, proto, i = d["tuple"]
        if r.random() < 0.05:
            worker = r.choice(WORKERS)  # not the first's sender
        ident = d["id"] if r.random() < 0.95 else r.randrange(65536)
        inner = eth("02:e1:1a:00:00:01", ENV_MACS[i], ETH_IPV4) + \
            ipv4(src, dst, proto, data, ttl, frag, ident=ident)
        return tunnel(worker, vni, inner, "geneve" if r.random() < 0.3 else "vxlan",
                      vlans=r.choice([0, 0, 0, 1, 2]))

    def tunnel_arp(self) -> bytes:
        r = self.r
        i = r.randrange(len(ENV_IPS))
        op = 1 if r.random() < 0.8 else 2
        tpa = ENV_IPS[i] if r.random() < 0.1 else r.choice(REMOTES)
        inner = arp(op, ENV_MACS[i], ENV_IPS[i], "00:00:00:00:00:00", tpa)
        return tunnel(r.choice(WORKERS), r.choice(VNIS[:3]), inner,
                      smac=ROGUE_MAC if r.random() < 0.05 else None)

    def _rev_tuple(self, exact: bool = False) -> tuple:
        """(vpc index, ENI address, remote, ENI port, remote port, proto) of a reply: a flow's
        (mostly through its own VPC; `exact`: as the table holds it), or one drawn afresh."""
        r = self.r
        flows = list(self.m.rev)
        if exact and flows:
            return r.choice(flows)
        vpc_idx = r.choice(list(self.vpc_ifs))
        if flows and r.random() < 0.85:
            rkey = r.choice(flows)
            if r.random() < 0.85:
                vpc_idx = rkey[0]
            _, eni_addr, remote, eport, rport, proto = rkey
        else:
            proto = r.choice([TCP, UDP, ICMP])
            eni_addr, remote = r.choice(["10.0.1.4", "10.0.1.5", "10.0.9.9"]), r.choice(REMOTES)
            eport, rport = r.randrange(1024, 65536), r.choice(DPORTS)
        if r.random() < 0.1:
            eport = r.randrange(1024, 65536)
        return vpc_idx, eni_addr, remote, eport, rport, proto

    def reply(self) -> tuple[bytes, int]:
        r = self.r
        pending = [d for d in self.dgrams if not d["fwd"] and not d["first"]]
        first = r.random() < 0.1
        big = r.random() < 0.05  # around what fits the tunnel, or far past it
        if first and pending and r.random() < 0.5:  # the first fragment, after later ones
            d = r.choice(pending)
        else:
            d = {"fwd": False, "tuple": self._rev_tuple(r.random() < 0.7)} if first else None
        vpc_idx, eni_addr, remote, eport, rport, proto = \
            d["tuple"] if d else self._rev_tuple(big and r.random() < 0.7)
        vi = self.vpc_ifs[vpc_idx]
        icmp_type = 0 if r.random() < 0.9 else r.choice([8, 13, 14, 4, 5, 9, 17, 19])
        tcp = {}
        if proto == TCP:
            f = self.m.rev.get((vpc_idx, eni_addr, remote, eport, rport, proto))
            tcp = {"flags": self.tcp_flags(f.state if f else None, False),
                   "seq": r.getrandbits(32), "ack": r.getrandbits(32)}
            tcp["options"], tcp["doff"] = self.tcp_options(bool(tcp["flags"] & F_SYN))

        def build(data: bytes) -> bytes:
            return l4(proto, remote, eni_addr, rport, eport, data, icmp_type, **tcp)

        if big:
            mtu = self.m.cfg.fabric_mtu - TUNNEL_OVERHEAD
            pl = self._sized(build, r.choice([r.randrange(mtu - 10, mtu + 11),
                                              r.randrange(mtu - 600, mtu + 400)]))
        else:
            pl = build(b"r" * r.randrange(0, 40))
        ttl = self._ttl()
        frag = 0x4000 if r.random() < 0.4 else 0
        ident, pad = r.randrange(65536) if r.random() < 0.3 else 1, b""
        if d is not None:
            cut, pad = self._first_cut(pl, proto)
            pl = pl[:cut]
            frag = 0x2000 | (0x4000 if r.random() < 0.05 else 0)
            if "id" not in d:
                d["id"] = r.randrange(65536)
                self._remember(d)
            ident = d["id"]
            d.update(end=cut, first=True)
        frame = eth(self._link_dst(vi["mac"]), vi["gw_mac"], ETH_IPV4) + \
            ipv4(remote, eni_addr, proto, pl, ttl, frag, ident=ident) + pad
        if r.random() < 0.03:
            frame += bytes(r.randrange(1, 12))  # Ethernet padding after the datagram
        return frame, vi["ifindex"]

    def reply_later(self) -> tuple[bytes, int]:
        """A later fragment from the VPC (RFC 791): no ports, only its datagram's id."""
        r = self.r
        d, frag, ttl, data = self._later(False)
        vpc_idx, eni_addr, remote, _, _, proto = d["tuple"]
        ident = d["id"] if r.random() < 0.95 else r.randrange(65536)
        vi = self.vpc_ifs[vpc_idx]
        frame = eth(vi["mac"], vi["gw_mac"], ETH_IPV4) + \
            ipv4(remote, eni_addr, proto, data, ttl, frag, ident=ident)
        return frame, vi["ifindex"]

    # RFC 792 / RFC 1191: what routers report about a datagram (type, code)
    ERRORS = [(3, c) for c in range(6)] + [(11, 0), (11, 1), (12, 0)]

    def _error_msg(self, quoted: bytearray, hl: int) -> bytes:
        """An ICMP error message (RFC 792, RFC 1191's next-hop MTU) quoting `quoted` (IPv4
        header of `hl` bytes), whole, cut to the header and 8 bytes, or cut short."""
        r = self.r
        if r.random() < 0.03:  # not an IPv4 header as RFC 791 has it
            quoted[0] = r.choice([0x65, 0x44, 0x40, 0x05])
        k = r.random()
        if k < 0.4:
            cut = len(quoted)  # whole (RFC 1812 4.3.2.3: as much as fits in 576 bytes)
        elif k < 0.8:
            cut = hl + 8  # RFC 792: the header and 64 bits of data
        elif k < 0.9:
            cut = hl + r.randrange(8, max(9, len(quoted) - hl + 1))
        else:
            cut = r.randrange(0, hl + 8)  # cut short
        typ, code = r.choice(self.ERRORS)
        if (typ, code) == (3, 4):
            rest = struct.pack("!HH", 0, r.choice([1400, 1280, 576, 1500]))  # next-hop MTU
        elif typ == 12:
            rest = bytes([r.randrange(20)]) + bytes(3)  # pointer
        else:
            rest = bytes(4) if r.random() < 0.9 else bytes(r.randrange(256) for _ in range(4))
        msg = bytearray(bytes([typ, code, 0, 0]) + rest + bytes(quoted[:cut]))
        struct.pack_into("!H", msg, 2, checksum(bytes(msg)))
        return bytes(msg)

    def _quoted_frag(self) -> int:
        """The quoted datagram's flags and offset: DF, a first fragment, or a later one."""
        r = self.r
        k = r.random()
        if k < 0.4:
            return 0x4000
        if k < 0.45:
            return 0x2000
        if k < 0.5:
            return r.randrange(1, 0x2000) | r.choice([0, 0x2000])
        return 0

    def env_error(self) -> bytes:
        """An ICMP error from an environment about a datagram it (mostly) received from the VPC
        through a flow, as its stack would send it: port unreachable and the rest."""
        r = self.r
        flows = list(self.m.fwd)
        if flows and r.random() < 0.8:
            worker, vni, env, remote, env_port, rport, proto = r.choice(flows)
            if r.random() < 0.05:
                worker = r.choice(WORKERS)
            if r.random() < 0.05:
                vni = r.choice(VNIS)
            if r.random() < 0.08:
                env_port = r.choice([1000, 1001, 2000, 3000, r.randrange(1, 65536)])
        else:
            proto = r.choice([TCP, UDP, ICMP])
            env, remote = r.choice(ENV_IPS), r.choice(REMOTES)
            env_port, rport = r.choice([1000, 1001, 2000, 3000]), r.choice(DPORTS)
            worker, vni = r.choice(WORKERS), r.choice(VNIS)
        i = ENV_IPS.index(env) if env in ENV_IPS else 0
        qdst = env if r.random() < 0.93 else r.choice(ENV_IPS + ["172.16.9.9"])
        qproto = proto if r.random() < 0.95 else r.choice([47, TCP, UDP, ICMP])
        tcp = {"flags": r.choice([F_SYN | F_ACK, F_ACK, F_PSH | F_ACK, F_FIN | F_ACK]),
               "seq": r.getrandbits(32), "ack": r.getrandbits(32)} if qproto == TCP else {}
        # sometimes a quote long enough that the error is larger than the VPC link's MTU
        data = b"a" * (r.randrange(VPC_MTU_SMALL - 80, VPC_MTU_SMALL) if r.random() < 0.02 else
                       r.randrange(0, 40))
        ql4 = l4(qproto, remote, qdst, rport, env_port, data, 0, udp_csum=r.random() < 0.85,
                 **tcp)
        qopts = b"\x01\x01\x01\x00" if r.random() < 0.05 else b""
        quoted = bytearray(ipv4(remote, qdst, qproto, ql4, r.choice([63, 1]), self._quoted_frag(),
                                qopts))
        msg = self._error_msg(quoted, 20 + len(qopts))
        ttl = self._ttl()
        frag = 0x2000 if r.random() < 0.02 else 0
        opts = b"\x01\x01\x01\x00" if r.random() < 0.03 else b""
        inner = eth("02:e1:1a:00:00:01", ENV_MACS[i], ETH_IPV4) + \
            ipv4(env, remote, ICMP, msg, ttl, frag, opts)
        if r.random() < 0.03:
            inner += bytes(r.randrange(1, 12))  # padding after the datagram
        kind = "geneve" if r.random() < 0.3 else "vxlan"
        return tunnel(worker, vni, inner, kind, vlans=r.choice([0, 0, 0, 1, 2]))

    def icmp_error(self) -> tuple[bytes, int]:
        """An ICMP error from the VPC to an ENI address about a datagram the ENI (mostly) sent."""
        r = self.r
        flows = list(self.m.rev.items())
        vpc_idx = r.choice(list(self.vpc_ifs))
        if flows and r.random() < 0.8:  # about a flow the table holds, live or expired
            rkey, flow = r.choice(flows)
            if r.random() < 0.9:
                vpc_idx = rkey[0]
            _, eni_addr, remote, nat, rport, proto = rkey
            if r.random() < 0.08:
                nat = r.randrange(1024, 65536)  # a port no flow holds, mostly
        else:
            proto = r.choice([TCP, UDP, ICMP])
            eni_addr, remote = r.choice(["10.0.1.4", "10.0.1.5", "10.0.9.9"]), r.choice(REMOTES)
            nat, rport = r.randrange(1024, 65536), r.choice(DPORTS) if proto != ICMP else 0
        vi = self.vpc_ifs[vpc_idx]
        # the quoted datagram, as the ENI's packet left the node (or not quite)
        qsrc = eni_addr if r.random() < 0.93 else r.choice(["10.0.1.99", "10.0.1.4", "10.0.1.5",
                                                             ENV_IPS[0]])
        qproto = proto if r.random() < 0.97 else r.choice([47, TCP, UDP, ICMP])
        big = r.random() < 0.02  # whole, it no longer fits the tunnel
        mtu = self.m.cfg.fabric_mtu
        data = b"q" * (r.randrange(mtu - 80, mtu) if big else r.randrange(0, 40))
        echo = 8 if r.random() < 0.85 else r.choice([0, 3, 11, 13])  # a quoted ICMP: mostly echo
        tcp = {"flags": r.choice([F_SYN, F_ACK, F_PSH | F_ACK, F_FIN | F_ACK]),
               "seq": r.getrandbits(32), "ack": r.getrandbits(32)} if qproto == TCP else {}
        ql4 = l4(qproto, qsrc, remote, nat, rport, data, echo, udp_csum=r.random() < 0.85, **tcp)
        qopts = b"\x01\x01\x01\x00" if r.random() < 0.05 else b""
        quoted = bytearray(ipv4(qsrc, remote, qproto, ql4, r.choice([63, 1]), self._quoted_frag(),
                                qopts))
        msg = self._error_msg(quoted, 20 + len(qopts))
        router = r.choice([GATEWAY_IP, remote, "10.0.0.254"])
        ttl = self._ttl()
        frag = 0x2000 if r.random() < 0.02 else 0
        opts = b"\x01\x01\x01\x00" if r.random() < 0.03 else b""
        frame = eth(vi["mac"], vi["gw_mac"], ETH_IPV4) + \
            ipv4(router, eni_addr, ICMP, msg, ttl, frag, opts)
        if r.random() < 0.03:
            frame += bytes(r.randrange(1, 12))  # Ethernet padding after the datagram
        return frame, vi["ifindex"]

    def vpc_arp(self) -> tuple[bytes, int]:
        r = self.r
        vpc_idx = r.choice(list(self.vpc_ifs))
        vi = self.vpc_ifs[vpc_idx]
        spa = GATEWAY_IP if r.random() < 0.7 else "10.0.0.10"
        tpa = r.choice(["10.0.1.4", "10.0.1.5", "10.0.0.99"])
        op = 1 if r.random() < 0.8 else 2
        sha = ROGUE_MAC if r.random() < 0.1 else vi["gw_mac"]
        return arp(op, sha, spa, "00:00:00:00:00:00", tpa), vi["ifindex"]

    def mutate(self, frame: bytes) -> bytes:
        r = self.r
        b = bytearray(frame)
        for _ in range(r.randrange(1, 3)):
            b[r.randrange(len(b))] = r.randrange(256)
        return bytes(b)

    def packet(self) -> tuple[str, bytes | dict, int]:
        """('fabric'|'vpc', frame, ingress ifindex for the VPC side) or ('time', spec, 0)."""
        r = self.r
        if r.random() < 0.05:
            return "time", self.time(), 0
        k = r.random()
        if k < 0.41:
            d, f, i = "fabric", self.forward(), 0
        elif k < 0.45:
            d, f, i = "fabric", self.forward_later(), 0
        elif k < 0.5:
            d, f, i = "fabric", self.env_error(), 0
        elif k < 0.54:
            d, f, i = "fabric", self.tunnel_arp(), 0
        elif k < 0.69:
            f, i = self.reply()
            d = "vpc"
        elif k < 0.73:
            f, i = self.reply_later()
            d = "vpc"
        elif k < 0.83:
            f, i = self.icmp_error()
            d = "vpc"
        else:
            f, i = self.vpc_arp()
            d = "vpc"
        k = r.random()
        if k < 0.08:
            f = self.mutate(f)
        elif k < 0.14:
            f = f[:r.randrange(14, len(f) + 1)]
        elif k < 0.17:
            f = bytes(r.randrange(256) for _ in range(r.randrange(14, 120)))
        return d, f, i
