"""Runs the same packets through the real programs (BPF_PROG_TEST_RUN) and the reference model
and reports the first disagreement: verdict, output bytes, counters, or a broken invariant.

Contract: `Harness(lab, node)` configures a node built with `DEFINES` (its clock can be moved
forward: the `clock_shift` test hook) and an equally configured model; `reset()` empties flows
and learned state on both sides; `step()` runs one packet, or moves the clock (direction "time"),
and raises Disagreement with a description and the frame (hex) that caused it, or Inconclusive
when the kernel and the model disagree on a packet during which the machine stalled long enough
to blur a timeout; `check_invariants()` reads the kernel's flow tables and checks them against
each other and against the model's.

Time: the model runs on the kernel's clock (Datapath.now_ns(), read before each packet). A flow
it touched gets the last-seen time the kernel wrote, once that is checked to lie within the
packet's run (`_witness`): only the kernel saw the instant. What remains blurred is the instant
of the next packet (a 4 ms tick, the time a packet takes), so before each packet the clock is
moved past any moment within MARGIN_NS of a flow's expiry or of the end of its takeover grace:
kernel and model then judge every flow alike.
"""

from __future__ import annotations

import os
import struct
from collections import Counter

from eniplane import bpfsys, netlink, paths
from eniplane.datapath import Datapath
from eniplane.maps import sum_percpu
from eniplane.probe import probe_ports
from eniplane.sgcompile import PROTO_NUMBERS, Rule

import packets as P
from reference import (FRAG_TIMEOUT_NS, NS, TAKEOVER_GRACE_NS, Config, Eni, Model, Vpc,
                       state_name, timeout_s)

XDP = {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}
GATEWAY_MAC = "02:e1:1a:00:00:01"
GW_MACS = {1: "02:0a:00:00:00:01", 2: "02:0b:00:00:00:01"}
# The VPC interfaces' MTUs as the datapath is told them: one link smaller than the tunnel allows,
# one unknown, so that SYNs through each are clamped to a different MSS.
VPC_MTUS = {1: 1400, 2: 0}


class Disagreement(AssertionError):
    pass


class Inconclusive(Exception):
    """Kernel and model disagreed on a packet whose run took long enough (a stalled machine)
    that the kernel's clock may have crossed a timeout the model did not: not evidence."""


DEFINES = {"ENIPLANE_TEST_HOOKS": 1}  # the clock_shift map
MARGIN_NS = 25_000_000
TICK_NS = 8_000_000  # two ticks at HZ=250: the kernel's per-CPU clock cache may lag one
# Small, distinct timeouts (seconds): which one a flow is judged by shows in what happens to it.
TIMEOUTS = {"tcp_established": 5, "tcp_transitory": 3, "udp": 4, "icmp": 2}
FLOWS_PER_ENI = 6  # the node's default limit, which VNI 100 uses
ICMP_RATE = 0xFFFFFFFF  # ICMP the node may send per second per CPU: never the limit here


ENIS = [  # vni, vpc, address, eni_idx, ports, max_flows, rules (proto, cidr, lo, hi)
    (100, 1, "10.0.1.4", 1, (1024, 65535), 0, [("tcp", "10.0.0.0/16", 80, 90),
                                                ("udp", "10.0.0.0/24", 53, 53),
                                                ("icmp", "10.0.0.0/16", 0, 65535)]),
    (200, 2, "10.0.1.4", 2, (1024, 65535), 3, [("all", "0.0.0.0/0", 0, 65535)]),
    # three ports: exhaustion, and takeovers of expired entries, are drawn often
    (300, 1, "10.0.1.5", 3, (2000, 2002), 5, [("all", "10.0.0.0/16", 0, 65535)]),
]


# The first worker may send on every ENI, the second not on VNI 200: placement is drawn too.
PLACEMENTS = [(P.WORKERS[0], 100), (P.WORKERS[0], 200), (P.WORKERS[0], 300),
              (P.WORKERS[1], 100), (P.WORKERS[1], 300)]


class Harness:
    def __init__(self, lab, node: str):
        self.lab, self.node = lab, node
        self.dp = Datapath(node, lab.node_ns)
        fab = netlink.link_get(lab.node_ns, lab.fabric_if)
        self.fabric_mtu = fab["mtu"]
        self.dp.set_config(P.FABRIC_IP, fab["ifindex"], P.FABRIC_MAC, GATEWAY_MAC, fab["mtu"])
        self.secret = self.dp.config()["port_secret"]
        self.vpc_ifs = {}
        for idx, ifname in ((1, "vpca"), (2, "vpcb")):
            info = netlink.link_get(lab.node_ns, ifname)
            self.vpc_ifs[idx] = {"ifindex": info["ifindex"], "mac": info["mac"],
                                 "gw_mac": GW_MACS[idx], "slot": idx}
        for vni, vpc, addr, idx, (lo, hi), max_flows, rules in ENIS:
            self.dp.set_eni(vni, idx, vpc, addr, lo, hi, max_flows=max_flows)
            self.dp.set_sg_rules(vni, [Rule.of(p, c, (a, b)) for p, c, a, b in rules])
        self.dp.set_timeouts(**TIMEOUTS)
        self.dp.set_flow_limit(FLOWS_PER_ENI)
        # Every answer the model predicts is sent: the rate limit is tested on its own
        # (tests/datapath), here it would only make answers depend on the clock.
        self.dp.set_ipv4(icmp_rate=ICMP_RATE, mss_clamp=True)
        # Events are not modelled: off, so that their counters (event_rate_limited,
        # event_ring_full) cannot move and the comparison, counter by counter, holds them at 0.
        self.dp.set_events(drops=False, flows=False)
        self.tunnel_gateway = self.dp.ipv4_settings()["tunnel_gateway"]
        self.mss_clamp = True
        self.frags_map = self.dp.map("frags")
        self.shift = self.dp.map("clock_shift")
        self.fds = {p: bpfsys.obj_get(str(paths.progs_dir(node) / p))
                    for p in ("xdp_fabric", "xdp_vpc")}
        self.packets = 0
        self.drawn: Counter[str] = Counter()  # the model's reasons and path counters so far
        self.reset()

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.dp.close()

    def set_secret(self, secret: int) -> None:
        """The node's port secret (where probes start): a kept case replays with the layout it
        was found with. Only between sequences: flows placed by the old secret are lost."""
        cfg = self.dp.config()
        cfg["port_secret"] = self.secret = secret
        self.dp.map("config").update(0, cfg)
        self.reset()

    def set_mss_clamp(self, on: bool) -> None:
        """MSS clamping on or off (node_cfg.flags, NODE_F_NO_MSS_CLAMP), on both sides."""
        if on != self.mss_clamp:
            self.dp.set_ipv4(mss_clamp=on)
            self.mss_clamp = on
        self.model.cfg.mss_clamping = on

    def reset(self) -> None:
        self.dp.del_workers(P.WORKERS)  # forget learned MACs (and the workers' flows)
        for w in P.WORKERS:
            self.dp.add_worker(w)
        self.dp.sync_placements({pair: 1 for pair in PLACEMENTS})
        self.dp.flush_flows()
        # first fragments' records outlive flows: another sequence's must not be followed
        for k in list(self.frags_map.keys_raw()):
            self.frags_map.delete(k)
        for idx, v in self.vpc_ifs.items():
            self.dp.set_vpc(v["ifindex"], idx, P.GATEWAY_IP, v["mac"], v["slot"],
                            gateway_mac=v["gw_mac"], mtu=VPC_MTUS[idx])
        cfg = Config(
            fabric_ip=P.FABRIC_IP, fabric_mac=P.FABRIC_MAC, gateway_mac=GATEWAY_MAC,
            fabric_mtu=self.fabric_mtu, workers=set(P.WORKERS), placements=set(PLACEMENTS),
            enis={vni: Eni(vni, addr, vpc, idx, lo, hi,
                           [(PROTO_NUMBERS[p], c, a, b) for p, c, a, b in rules], max_flows)
                  for vni, vpc, addr, idx, (lo, hi), max_flows, rules in ENIS},
            vpcs={idx: Vpc(idx, v["ifindex"], P.GATEWAY_IP, v["gw_mac"], v["mac"],
                           VPC_MTUS[idx])
                  for idx, v in self.vpc_ifs.items()},
            timeouts=dict(TIMEOUTS), flows_per_eni=FLOWS_PER_ENI,
            mss_clamping=self.mss_clamp, tunnel_gateway=self.tunnel_gateway,
            icmp_rate=ICMP_RATE)
        self.model = Model(cfg, self._probe)
        self.sports: dict[tuple, int] = {}

    # ---- the clock -------------------------------------------------------------------------
    def now(self) -> int:
        return self.dp.now_ns()

    def advance(self, ns: int) -> None:
        """Moves the datapath's clock (and so Datapath.now_ns()) forward."""
        if ns > 0:
            cur = self.shift.lookup(0)
            cur = cur if isinstance(cur, int) else struct.unpack("<Q", bytes(cur))[0]
            self.shift.update(0, cur + ns)

    def time_step(self, spec: dict) -> None:
        """A step of the clock the generator drew: a plain advance, or to where one flow has
        been idle for `idle_ns`, or one first fragment's record is `age_ns` old (nothing when
        that flow or record is gone, or already older)."""
        if "advance_ns" in spec:
            self.advance(spec["advance_ns"])
            return
        if "frag" in spec:
            fr = self.model.frags.get(tuple(spec["frag"]))
            if fr is not None:
                self.advance(spec["age_ns"] - (self.now() - fr.first_ns))
            return
        f = self.model.fwd.get(tuple(spec["flow"]))
        if f is not None:
            self.advance(spec["idle_ns"] - (self.now() - f.last_seen))

    def settle(self) -> int:
        """The clock moved past every moment within MARGIN_NS of a flow's expiry or of the end
        of its takeover grace, or of the end of a first fragment's record; returns the time the
        next packet is judged at."""
        cfg = self.model.cfg
        while True:
            now = self.now()
            step = 0
            edges = [(now - f.last_seen, t) for f in self.model.rev.values()
                     for t in (timeout_s(cfg, f.proto, f.state) * NS,
                               timeout_s(cfg, f.proto, f.state) * NS + TAKEOVER_GRACE_NS)]
            edges += [(now - fr.first_ns, FRAG_TIMEOUT_NS) for fr in self.model.frags.values()]
            for idle, edge in edges:
                if edge - MARGIN_NS <= idle <= edge + MARGIN_NS:
                    step = max(step, edge + MARGIN_NS + 1 - idle)
            if not step:
                return now
            self.advance(step)

    def _counters(self) -> dict:
        c = self.dp.stats()
        es = self.dp.map("eni_stats")
        for vni, _, _, idx, _, _, _ in ENIS:
            for k, v in sum_percpu(es.lookup(idx)).items():
                c[f"eni{vni}:{k}"] = v
        return c

    def step(self, direction: str, frame, ifindex: int = 0) -> str:
        """One packet through kernel and model (or, for direction "time", a step of the clock
        whose spec is `frame`); returns the model's reason."""
        if direction == "time":
            self.time_step(frame)
            return "time"
        self.packets += 1
        now = self.settle()
        before = self._counters()
        clamped = self.model.mss_clamped
        prog = "xdp_fabric" if direction == "fabric" else "xdp_vpc"
        with netlink.in_netns(self.lab.node_ns):
            rv, out, _ = bpfsys.prog_test_run(self.fds[prog], frame, out_size=len(frame) + 256,
                                              ingress_ifindex=ifindex)
        t1 = self.now()
        stalled = t1 - now > MARGIN_NS // 2
        after = self._counters()
        delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        verdict = XDP.get(rv, str(rv))

        def kernel_sport(flow):
            """Stable per entry: the kernel hashes the VPC's view of the flow."""
            at = 34 + len(self.model._outer_tags(out)) if len(out) >= 22 else len(out)
            sp = int.from_bytes(out[at:at + 2], "big") if len(out) >= at + 2 else -1
            if self.sports.setdefault(flow.rkey, sp) != sp:
                raise Disagreement(f"tunnel source port of {flow.rkey} changed: "
                                   f"{self.sports[flow.rkey]} -> {sp}")
            return sp

        try:
            if direction == "fabric":
                res = self.model.fabric(frame, now)
            else:
                res = self.model.vpc(frame, ifindex, now, kernel_sport)
        except AssertionError as e:
            raise Disagreement(f"{e}\n  frame {frame.hex()}") from None
        rx = "rx_fabric" if direction == "fabric" else "rx_vpc"
        want = {rx: 1, res.reason: 1, f"xdp_{res.verdict.lower()}": 1}
        eni_vni = None
        if res.flow is not None:
            eni_vni = res.flow[1]
        elif direction == "fabric" and res.extra:
            eni_vni = self._vni_of(frame)
        for k, v in res.extra.items():
            if k.startswith("eni:"):
                want[f"eni{eni_vni}:{k[4:]}"] = v
            else:
                want[k] = want.get(k, 0) + v
        problems = []
        if verdict != res.verdict:
            problems.append(f"verdict: kernel {verdict}, model {res.verdict} ({res.reason})")
        if delta != want:
            problems.append(f"counters: kernel {sorted(delta.items())}, model {sorted(want.items())}")
        if res.verdict == "PASS" and verdict == "PASS" and out != frame:
            problems.append("PASS changed the frame")
        if res.out is not None and verdict == res.verdict and out != res.out:
            problems.append(f"output:\n  kernel {out.hex()}\n  model  {res.out.hex()}")
        if not problems and res.refreshed and res.flow is not None and \
                res.flow in self.model.fwd:
            self._witness(self.model.fwd[res.flow], now, t1)
        self.drawn[res.reason] += 1
        if res.reason.startswith(("tx_icmp_", "drop_frag_", "drop_ttl")):  # which way, too
            self.drawn[f"{res.reason}:{direction}"] += 1
        if self.model.mss_clamped != clamped:
            self.drawn[f"mss_clamped_{direction}"] += 1
        self.drawn.update(k for k in res.extra if k.startswith("flow_"))
        if problems:
            msg = (f"{direction} packet #{self.packets}: " + "; ".join(problems) +
                   f"\n  frame {frame.hex()}")
            if stalled:
                raise Inconclusive(msg)
            raise Disagreement(msg)
        return res.reason

    def _witness(self, flow, t0: int, t1: int) -> None:
        """The model says a packet that touches a flow sets its last-seen time to when the
        packet ran, which only the kernel saw: between t0 and t1 (less a tick of the kernel's
        clock cache), or it is a disagreement. The model then goes on with the kernel's value,
        so that the blur of one packet never adds up over a sequence."""
        vpc_idx, eni_addr, remote, port, rport, proto = flow.rkey
        v = self.dp.flow_value({"vpc_idx": vpc_idx, "proto": proto, "eni_addr": eni_addr,
                                "remote": remote, "eni_port": port, "remote_port": rport})
        if v is None:
            return  # the invariants name it
        seen = v["last_seen_ns"]
        if not t0 - TICK_NS <= seen <= t1 + TICK_NS:
            raise Disagreement(f"flow {flow.key}: the kernel's last seen {seen} is outside the "
                               f"packet's run, {t0}-{t1}")
        flow.last_seen = seen

    def _probe(self, eni, key):
        """The ports a flow's probe visits, in order (port_hash of eniplane.c)."""
        w, vni, src, dst, sport, dport, proto = key
        return iter(probe_ports(self.secret, eni.port_lo, eni.port_hi, w, vni, src, sport, dst,
                                dport, proto))

    @staticmethod
    def _vni_of(frame: bytes) -> int | None:
        """The VNI of a tunnel frame the model counted against an ENI (SG denial, exhaustion)."""
        from reference import Model as M

        e = M._eth(frame, 0, 2)
        ip, off = M._ipv4(frame, e[1])
        return int.from_bytes(frame[off + 8 + 4: off + 8 + 7], "big")

    def check_invariants(self) -> None:
        """The kernel's table against itself and the model's: one entry per flow, each where
        its probe finds it; entries per ENI as counted and within the ENI's limit; the same
        owners, ports, states, counters and (within the clock's blur) last-seen times."""
        cfg = self.model.cfg
        kernel = {}
        for f in self.dp.flows(include_expired=True):
            owner = (f["worker"], f["vni"], f["env_addr"], f["remote"], f["env_port"],
                     f["remote_port"], f["proto"])
            if owner in kernel:
                raise Disagreement(f"flow {owner} has two entries")
            eni = cfg.enis[f["vni"]]
            probe = list(self._probe(eni, owner))
            if f["nat_port"] not in probe:
                raise Disagreement(f"flow {owner} sits on port {f['nat_port']}, off its probe")
            kernel[owner] = f
        for owner, f in kernel.items():
            # every port before the flow's own along its probe is held: a walk reaches it
            for port in self._probe(cfg.enis[owner[1]], owner):
                if port == f["nat_port"]:
                    break
                if not any(g["nat_port"] == port and g["remote"] == f["remote"] and
                           g["remote_port"] == f["remote_port"] and g["proto"] == f["proto"] and
                           g["vpc_idx"] == f["vpc_idx"] and g["eni_addr"] == f["eni_addr"]
                           for g in kernel.values()):
                    raise Disagreement(f"flow {owner} on port {f['nat_port']} lies behind the "
                                       f"empty port {port}: its walk stops before it")
        m = self.model
        for k, f in m.fwd.items():
            assert f.key == k and m.rev.get(f.rkey) is f, f"model tables disagree on {k}"
        assert len(m.fwd) == len(m.rev), "model: an entry without an owner"
        model = {k: f.rkey for k, f in m.fwd.items()}
        have = {k: (f["vpc_idx"], f["eni_addr"], f["remote"], f["nat_port"], f["remote_port"],
                    f["proto"]) for k, f in kernel.items()}
        if model != have:
            raise Disagreement(f"flow tables differ: kernel {have}, model {model}")
        for k, mf in m.fwd.items():
            f = kernel[k]
            got = (f["state_bits"], f["state"], f["tx_packets"], f["tx_bytes"], f["rx_packets"],
                   f["rx_bytes"])
            want = (mf.state, state_name(mf.proto, mf.state), mf.tx_packets, mf.tx_bytes,
                    mf.rx_packets, mf.rx_bytes)
            if got != want:
                raise Disagreement(f"flow {k}: kernel (state, name, tx, tx bytes, rx, rx bytes) "
                                   f"{got}, model {want}")
            if f["last_seen_ns"] != mf.last_seen:
                raise Disagreement(f"flow {k}: kernel last seen {f['last_seen_ns']}, model "
                                   f"{mf.last_seen}")
        entries = self.dp.eni_flow_entries()
        for vni, eni in cfg.enis.items():
            n = m.entries(eni)
            if entries.get(vni, 0) != n:
                raise Disagreement(f"ENI {vni}: the kernel counts {entries.get(vni, 0)} entries, "
                                   f"the table holds {n}")
            limit = cfg.flow_limit(eni)
            if limit and n > limit:
                raise Disagreement(f"ENI {vni} holds {n} entries, over its limit of {limit}")
