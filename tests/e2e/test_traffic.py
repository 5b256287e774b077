"""Real traffic: environments behind the Linux kernel's own VXLAN device reach servers in two
VPCs that both use 10.0.0.0/16, through the node, and nothing else does."""

from __future__ import annotations

import sys

import pytest

from eniplane.datapath import Datapath
from eniplane.lab import VPC_SERVER
from eniplane.reconcile import change

PY = sys.executable
ENI_A, ENI_B = "10.0.1.4", "10.0.1.4"  # the same address in both VPCs


@pytest.fixture(scope="module")
def tenants(lab, node):
    """Two tenants programmed by the control plane's own operations and reconcile."""
    def configure(st):
        for t, iface in (("a", "vpca"), ("b", "vpcb")):
            st.add_vpc(f"vpc-{t}", "10.0.0.0/16", iface, "10.0.0.1")
            st.add_subnet(f"sub-{t}", f"vpc-{t}", "10.0.1.0/24")
            st.add_sg(f"sg-{t}", f"vpc-{t}")
            for proto, ports in (("tcp", "80"), ("udp", "7"), ("icmp", None)):
                st.add_rule(f"sg-{t}", st.make_rule("egress", proto, ports, "10.0.0.0/16"))
        st.add_worker("100.64.0.11")
        st.add_worker("100.64.0.12")
        wk = {"a": "100.64.0.11", "b": "100.64.0.12"}  # where each tenant's function runs
        return {t: (st.attach_function(f"fn-{t}", [f"sub-{t}"], [f"sg-{t}"])[0].vni,
                    st.place_function(f"fn-{t}", [wk[t]]))[0]
                for t in ("a", "b")}

    vni, _ = change(node, configure)
    env_a = lab.add_env("fa", "w1", vni["a"], "172.16.0.2")
    env_b = lab.add_env("fb", "w2", vni["b"], "172.16.0.2")  # same inner address, other tenant
    return {"a": env_a, "b": env_b, "vni": vni}


def stats(node):
    with Datapath(node) as dp:
        return dp.stats()


def http(lab, ns):
    return lab.exec(ns, [PY, "-m", "eniplane.labserve", "http", VPC_SERVER, "80"])


def test_http_reaches_the_right_vpc_from_the_eni_address(lab, tenants):
    assert http(lab, tenants["a"]).startswith(f"vpc-a saw {ENI_A}:")
    assert http(lab, tenants["b"]).startswith(f"vpc-b saw {ENI_B}:")


def test_udp_round_trip(lab, tenants):
    out = lab.exec(tenants["a"], [PY, "-m", "eniplane.labserve", "udp", VPC_SERVER, "7", "hello"])
    assert out.startswith(f"vpc-a saw {ENI_A}:") and out.strip().endswith("hello")


def test_ping(lab, tenants):
    lab.exec(tenants["b"], ["ping", "-c", "2", "-i", "0.2", "-W", "1", VPC_SERVER])


def test_denied_port_fails_and_is_counted(lab, node, tenants):
    before = stats(node)["drop_sg_denied"]
    p = lab.run(tenants["a"], [PY, "-m", "eniplane.labserve", "http", VPC_SERVER, "22",
                               "--timeout", "1"])
    # dropped, not refused: a SYN that reached the server (nothing listens on 22) gets a RST
    assert p.returncode == 1 and "timed out" in p.stderr, (p.returncode, p.stderr)
    assert stats(node)["drop_sg_denied"] > before


def test_tenants_are_isolated(lab, node, tenants):
    # each VPC's server saw only its own tenant (the HTTP bodies name the VPC), and a reply
    # injected in VPC B for a port that VPC A's flow owns finds no flow there
    with Datapath(node) as dp:
        flows_a = dp.flows(vni=tenants["vni"]["a"])
        assert flows_a
        eni_stats = dp.eni_stats()
    assert all(eni_stats[v]["rx_packets"] > 0 for v in tenants["vni"].values())
    before = stats(node)["drop_no_flow"]
    port = next(f["nat_port"] for f in flows_a if f["proto"] == 17)
    lab.exec(lab.vpc_ns("b"), [PY, "-c", (
        "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(('{VPC_SERVER}', 7777)); s.sendto(b'leak', ('{ENI_B}', {port}))")])
    import time
    deadline = time.monotonic() + 3
    while stats(node)["drop_no_flow"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(node)["drop_no_flow"] > before
