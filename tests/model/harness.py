"""Runs the same packets through the real programs (BPF_PROG_TEST_RUN) and the reference model
and reports the first disagreement: verdict, output bytes, counters, or a broken invariant.

Contract: `Harness(lab, node)` configures a loaded node and an equally configured model;
`reset()` empties flows and learned state on both sides; `step()` runs one packet and raises
Disagreement with a description and the frame (hex) that caused it; `check_invariants()` reads the
kernel's flow tables and checks them against each other and against the model's.
"""

from __future__ import annotations

import os

from eniplane import bpfsys, netlink, paths
from eniplane.datapath import Datapath
from eniplane.maps import sum_percpu
from eniplane.probe import probe_ports
from eniplane.sgcompile import PROTO_NUMBERS, Rule

import packets as P
from reference import Config, Eni, Model, Vpc

XDP = {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}
GATEWAY_MAC = "02:e1:1a:00:00:01"
GW_MACS = {1: "02:0a:00:00:00:01", 2: "02:0b:00:00:00:01"}


class Disagreement(AssertionError):
    pass


ENIS = [  # vni, vpc, address, eni_idx, ports, rules (proto, cidr, lo, hi)
    (100, 1, "10.0.1.4", 1, (1024, 65535), [("tcp", "10.0.0.0/16", 80, 90),
                                             ("udp", "10.0.0.0/24", 53, 53),
                                             ("icmp", "10.0.0.0/16", 0, 65535)]),
    (200, 2, "10.0.1.4", 2, (1024, 65535), [("all", "0.0.0.0/0", 0, 65535)]),
    (300, 1, "10.0.1.5", 3, (2000, 2002), [("all", "10.0.0.0/16", 0, 65535)]),
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
        for vni, vpc, addr, idx, (lo, hi), rules in ENIS:
            self.dp.set_eni(vni, idx, vpc, addr, lo, hi)
            self.dp.set_sg_rules(vni, [Rule.of(p, c, (a, b)) for p, c, a, b in rules])
        self.fds = {p: bpfsys.obj_get(str(paths.progs_dir(node) / p))
                    for p in ("xdp_fabric", "xdp_vpc")}
        self.packets = 0
        self.reset()

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.dp.close()

    def reset(self) -> None:
        self.dp.del_workers(P.WORKERS)  # forget learned MACs (and the workers' flows)
        for w in P.WORKERS:
            self.dp.add_worker(w)
        self.dp.sync_placements({pair: 1 for pair in PLACEMENTS})
        self.dp.flush_flows()
        for idx, v in self.vpc_ifs.items():
            self.dp.set_vpc(v["ifindex"], idx, P.GATEWAY_IP, v["mac"], v["slot"],
                            gateway_mac=v["gw_mac"])
        cfg = Config(
            fabric_ip=P.FABRIC_IP, fabric_mac=P.FABRIC_MAC, gateway_mac=GATEWAY_MAC,
            fabric_mtu=self.fabric_mtu, workers=set(P.WORKERS), placements=set(PLACEMENTS),
            enis={vni: Eni(vni, addr, vpc, idx, lo, hi,
                           [(PROTO_NUMBERS[p], c, a, b) for p, c, a, b in rules])
                  for vni, vpc, addr, idx, (lo, hi), rules in ENIS},
            vpcs={idx: Vpc(idx, v["ifindex"], P.GATEWAY_IP, v["gw_mac"], v["mac"])
                  for idx, v in self.vpc_ifs.items()})
        self.model = Model(cfg)
        self.sports: dict[tuple, int] = {}

    def _counters(self) -> dict:
        c = self.dp.stats()
        es = self.dp.map("eni_stats")
        for vni, _, _, idx, _, _ in ENIS:
            for k, v in sum_percpu(es.lookup(idx)).items():
                c[f"eni{vni}:{k}"] = v
        return c

    def step(self, direction: str, frame: bytes, ifindex: int = 0) -> str:
        self.packets += 1
        before = self._counters()
        prog = "xdp_fabric" if direction == "fabric" else "xdp_vpc"
        with netlink.in_netns(self.lab.node_ns):
            rv, out, _ = bpfsys.prog_test_run(self.fds[prog], frame, out_size=len(frame) + 256,
                                              ingress_ifindex=ifindex)
        after = self._counters()
        delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        verdict = XDP.get(rv, str(rv))

        def kernel_port(eni, key, base):
            """The kernel's port, which must be the first one free for this destination along
            the probe that port_hash starts (the datapath's rule, computed here in Python)."""
            w, vni, src, dst, sport, dport, proto = key
            f = self.dp.find_flow(w, vni, src, sport, dst, dport, proto)
            if f is None:
                raise Disagreement(f"model opened flow {key}; the kernel has no such flow")
            used = {k[3] for k in self.model.rev if k[:3] == base[:3] and k[4:] == base[4:]}
            want = next(p for p in self._probe(eni, key) if p not in used)
            if f["nat_port"] != want:
                raise Disagreement(f"flow {key} got port {f['nat_port']}, its probe says {want}")
            return f["nat_port"]

        def kernel_sport(flow):
            at = 34 + len(self.model._outer_tags(out)) if len(out) >= 22 else len(out)
            sp = int.from_bytes(out[at:at + 2], "big") if len(out) >= at + 2 else -1
            if self.sports.setdefault(flow.key, sp) != sp:
                raise Disagreement(f"tunnel source port of {flow.key} changed: "
                                   f"{self.sports[flow.key]} -> {sp}")
            return sp

        try:
            if direction == "fabric":
                res = self.model.fabric(frame, kernel_port)
            else:
                res = self.model.vpc(frame, ifindex, kernel_sport)
        except AssertionError as e:
            raise Disagreement(f"{e}\n  frame {frame.hex()}") from None
        rx = "rx_fabric" if direction == "fabric" else "rx_vpc"
        want = {rx: 1, res.reason: 1, f"xdp_{res.verdict.lower()}": 1}
        eni_vni = None
        if res.flow is not None:
            eni_vni = res.flow[1]
        elif direction == "fabric" and res.extra:
            eni_vni = self._vni_of(frame)
        if direction == "fabric" and res.flow is not None and not res.new_flow:
            # an established flow that sits past its probe's first port
            flow = self.model.fwd[res.flow]
            if flow.rkey[3] != next(self._probe(flow.eni, flow.key)):
                want["flow_probed"] = 1
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
        if problems:
            raise Disagreement(f"{direction} packet #{self.packets}: " + "; ".join(problems) +
                               f"\n  frame {frame.hex()}")
        return res.reason

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
        kernel_flows = {}
        for f in self.dp.flows():
            owner = (f["worker"], f["vni"], f["env_addr"], f["remote"], f["env_port"],
                     f["remote_port"], f["proto"])
            if owner in kernel_flows:
                raise Disagreement(f"flow {owner} has two entries")
            kernel_flows[owner] = (f["vpc_idx"], f["eni_addr"], f["remote"], f["nat_port"],
                                   f["remote_port"], f["proto"])
        model_flows = {k: f.rkey for k, f in self.model.fwd.items()}
        if model_flows != kernel_flows:
            raise Disagreement(f"flow tables differ: kernel {kernel_flows}, model {model_flows}")
