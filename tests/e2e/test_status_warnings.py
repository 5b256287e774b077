"""`eniplane status` explains what would drop packets silently (issue 15 part 5): a healthy node
has no warnings; a VPC-side veth whose peer lost its XDP program, a VPC whose gateway never
answers ARP, a fabric MTU too small for the VPC's, generic (skb) mode, and an interface deleted
behind the node's back each show up with a fix, in JSON and in the table. The module has a lab
and a node of its own (it breaks both on purpose)."""

from __future__ import annotations

import json

import pytest

from clitools import configured_node
from eniplane import bpfsys, netlink
from eniplane.lab import VPC_CIDR, VPC_GATEWAY, VPC_MTU, WORKER_IPS, Lab


def configuration(gateway_b: str = "10.0.0.99") -> dict:
    """VPC a as the lab has it; VPC b with a gateway address nobody holds: it never answers."""
    return {
        "vpcs": [{"id": "vpc-a", "cidr": VPC_CIDR, "iface": "vpca", "gateway": VPC_GATEWAY},
                 {"id": "vpc-b", "cidr": VPC_CIDR, "iface": "vpcb", "gateway": gateway_b}],
        "subnets": [{"id": "sub-a", "vpc": "vpc-a", "cidr": "10.0.1.0/24"}],
        "security_groups": [{"id": "sg-a", "vpc": "vpc-a", "ingress": [],
                             "egress": [{"proto": "tcp", "ports": "80", "cidr": VPC_CIDR}]}],
        "workers": [WORKER_IPS["w1"]],
        "functions": [{"name": "fn-a", "subnets": ["sub-a"], "security_groups": ["sg-a"],
                       "workers": [WORKER_IPS["w1"]]}],
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warn")
    with Lab.create() as lab:
        node = f"{lab.prefix}-warn"
        with configured_node(lab, node, configuration(), tmp) as cli:
            yield {"lab": lab, "node": node, "cli": cli}


def status(world) -> dict:
    return json.loads(world["cli"]("status", "-o", "json").stdout)


def kinds(st: dict) -> dict[tuple[str, str], dict]:
    return {(w["kind"], w["subject"]): w for w in st["warnings"]}


def test_a_gateway_that_never_answers_is_explained(world):
    got = kinds(status(world))
    w = got[("gateway_unknown", "VPC vpc-b")]
    assert "10.0.0.99" in w["problem"] and "vpcb" in w["problem"]
    assert "--gateway-mac" in w["fix"]
    # VPC a's gateway answered: nothing else is wrong with this node yet
    assert set(got) == {("gateway_unknown", "VPC vpc-b")}


def test_a_veth_peer_without_xdp_is_explained(world):
    lab = world["lab"]
    ns = lab.vpc_ns("a")
    assert netlink.xdp_detach(ns, "eth0")
    try:
        w = kinds(status(world))[("veth_peer_without_xdp", "vpca")]
        assert "eth0" in w["problem"] and ns in w["problem"]
        assert "XDP program to eth0" in w["fix"]
        table = world["cli"]("status").stdout
        assert "veth" in table and "warnings" in table
    finally:
        fd = bpfsys.load_xdp_pass()
        try:
            netlink.xdp_attach(ns, "eth0", fd, "native")
        finally:
            import os
            os.close(fd)
    assert ("veth_peer_without_xdp", "vpca") not in kinds(status(world))


def test_a_fabric_mtu_too_small_for_the_vpc_is_explained(world):
    lab, cli = world["lab"], world["cli"]
    fab = netlink.link_get(lab.node_ns, lab.fabric_if)["mtu"]
    lab.exec(lab.node_ns, ["ip", "link", "set", "dev", lab.fabric_if, "mtu", "1500"])
    try:
        got = kinds(status(world))
        w = got[("fabric_mtu", "vpca")]
        assert "1500" in w["problem"] and str(VPC_MTU + 50) in w["fix"]
    finally:
        lab.exec(lab.node_ns, ["ip", "link", "set", "dev", lab.fabric_if, "mtu", str(fab)])
    assert ("fabric_mtu", "vpca") not in kinds(status(world))


def test_an_interface_deleted_behind_the_nodes_back_is_explained(world):
    lab = world["lab"]
    lab.exec(lab.node_ns, ["ip", "link", "del", "vpcb"])  # its peer in vpcb's namespace goes too
    got = kinds(status(world))
    w = got[("interface_missing", "vpcb")]
    assert "went away" in w["problem"] and "--keep-maps" in w["fix"]


def test_generic_mode_is_explained(tmp_path):
    """A node of its own whose fabric interface runs generic XDP."""
    with Lab.create(servers=False) as lab:
        node = f"{lab.prefix}-gen"
        doc = {"vpcs": [], "subnets": [], "security_groups": [], "workers": [], "functions": []}
        with configured_node(lab, node, doc, tmp_path, up_args=("--mode", "generic")) as cli:
            st = json.loads(cli("status", "-o", "json").stdout)
            w = kinds(st)[("generic_mode", lab.fabric_if)]
            assert "generic (skb)" in w["problem"] and "--mode native" in w["fix"]
