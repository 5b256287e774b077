"""The desired-state model: validation, address allocation and ENI sharing."""

from __future__ import annotations

import pytest

from eniplane.errors import AlreadyExists, InvalidInput, NotFound
from eniplane.model import State, parse_ports


@pytest.fixture
def st() -> State:
    s = State()
    s.add_vpc("vpc-a", "10.0.0.0/16", "vpca", "10.0.0.1")
    s.add_subnet("sub-1", "vpc-a", "10.0.1.0/28")
    s.add_subnet("sub-2", "vpc-a", "10.0.2.0/24")
    for g in ("sg-1", "sg-2"):
        s.add_sg(g, "vpc-a")
    s.add_rule("sg-1", s.make_rule("egress", "tcp", "80", "10.0.0.0/16"))
    return s


def test_functions_with_the_same_subnet_and_groups_share_one_eni(st):
    (e1,) = st.attach_function("f1", ["sub-1"], ["sg-1", "sg-2"])
    (e2,) = st.attach_function("f2", ["sub-1"], ["sg-2", "sg-1"])  # order does not matter
    (e3,) = st.attach_function("f3", ["sub-1"], ["sg-1"])
    assert e1.id == e2.id != e3.id
    assert e1.id.startswith("eni-") and len(e1.id) == 21
    assert st.eni_functions(e1.id) == ["f1", "f2"]
    assert e1.vni != e3.vni


def test_aws_reserves_first_four_and_last_address():
    st2 = State()
    st2.add_vpc("v", "10.0.0.0/16", "i", "10.0.0.1")
    st2.add_subnet("s", "v", "10.0.1.0/28")
    got = []
    for i in range(5):
        st2.add_sg(f"g{i}", "v")
    combos = [[f"g{i}"] for i in range(5)] + [["g0", f"g{i}"] for i in range(1, 5)] + \
        [["g1", "g2"], ["g1", "g3"]]
    for i, c in enumerate(combos):
        (e,) = st2.attach_function(f"f{i}", ["s"], c)
        got.append(e.address)
    assert got == [f"10.0.1.{n}" for n in range(4, 15)]
    st2.add_sg("g9", "v")
    with pytest.raises(InvalidInput, match="no free address"):
        st2.attach_function("one-too-many", ["s"], ["g9"])
    assert "one-too-many" not in st2.functions  # nothing changed


def test_changing_groups_moves_the_function_and_drops_the_unused_eni(st):
    (old,) = st.attach_function("f1", ["sub-2"], ["sg-1"])
    (new,) = st.attach_function("f1", ["sub-2"], ["sg-2"])
    assert old.id != new.id and old.id not in st.enis
    st.detach_function("f1")
    assert st.enis == {}


def test_multiple_subnets_get_one_eni_each(st):
    enis = st.attach_function("f1", ["sub-1", "sub-2"], ["sg-1"])
    assert [e.subnet for e in enis] == ["sub-1", "sub-2"]


@pytest.mark.parametrize("call,err,msg", [
    (lambda s: s.add_vpc("vpc-a", "10.1.0.0/16", "x", "10.1.0.1"), AlreadyExists, "already exists"),
    (lambda s: s.add_vpc("vpc-b", "10.1.0.0/33", "x", "10.1.0.1"), InvalidInput, "invalid CIDR"),
    (lambda s: s.add_vpc("vpc-b", "10.1.0.0/16", "vpca", "10.1.0.1"), InvalidInput, "already leads"),
    (lambda s: s.add_vpc("vpc-b", "10.1.0.0/16", "x", "10.2.0.1"), InvalidInput, "outside"),
    (lambda s: s.add_vpc("vpc-b", "10.1.0.0/16", "x", "10.1.0.300"), InvalidInput, "invalid IPv4"),
    (lambda s: s.add_subnet("s", "vpc-a", "10.9.0.0/24"), InvalidInput, "outside VPC"),
    (lambda s: s.add_subnet("s", "vpc-a", "10.0.1.0/24"), InvalidInput, "overlaps subnet sub-1"),
    (lambda s: s.add_subnet("s", "vpc-z", "10.0.9.0/24"), NotFound, "VPC vpc-z"),
    (lambda s: s.add_subnet("s", "vpc-a", "10.0.9.1/24"), InvalidInput, "host bits"),
    (lambda s: s.del_vpc("vpc-a"), InvalidInput, "still in use"),
    (lambda s: s.attach_function("f", ["sub-1"], [f"sg-{i}" for i in range(6)]), InvalidInput,
     "at most 5"),
    (lambda s: s.attach_function("f", ["nope"], ["sg-1"]), NotFound, "subnet nope"),
    (lambda s: s.attach_function("f", ["sub-1"], ["nope"]), NotFound, "security group nope"),
    (lambda s: s.add_worker("1.2.3"), InvalidInput, "invalid IPv4"),
    (lambda s: s.detach_function("ghost"), NotFound, "ghost"),
    (lambda s: s.add_sg("bad id!", "vpc-a"), InvalidInput, "invalid security group id"),
])
def test_bad_input_names_what_is_wrong_and_changes_nothing(st, call, err, msg):
    before = st.copy()
    with pytest.raises(err, match=msg):
        call(st)
    assert st == before


def test_group_in_use_cannot_be_deleted(st):
    st.attach_function("f", ["sub-1"], ["sg-1"])
    with pytest.raises(InvalidInput, match="still used by function f"):
        st.del_sg("sg-1")
    with pytest.raises(InvalidInput, match="still used by function f"):
        st.del_subnet("sub-1")


def test_sixty_rules_per_direction(st):
    for p in range(59):
        st.add_rule("sg-1", st.make_rule("egress", "tcp", str(1000 + p), "10.0.0.0/16"))
    with pytest.raises(InvalidInput, match="60 egress rules"):
        st.add_rule("sg-1", st.make_rule("egress", "tcp", "2000", "10.0.0.0/16"))
    st.add_rule("sg-1", st.make_rule("ingress", "tcp", "2000", "10.0.0.0/16"))  # other direction


@pytest.mark.parametrize("ports,proto,expect", [
    ("80", "tcp", (80, 80)), ("1000-2000", "udp", (1000, 2000)), (None, "tcp", (0, 65535)),
])
def test_ports(ports, proto, expect):
    assert parse_ports(ports, proto) == expect


@pytest.mark.parametrize("ports,proto,msg", [
    ("90-80", "tcp", "inverted"), ("", "tcp", "empty port range"), (" ", "udp", "empty"),
    ("x", "tcp", "invalid port range"),
    ("70000", "tcp", "outside"), ("80", "icmp", "does not apply"),
])
def test_bad_ports(ports, proto, msg):
    with pytest.raises(InvalidInput, match=msg):
        parse_ports(ports, proto)


def test_batch_attach_is_all_or_nothing(st):
    st.add_subnet("tiny", "vpc-a", "10.0.3.0/28")  # 11 usable addresses
    st.attach_many([("f1", ["tiny"], ["sg-1"]), ("f2", ["tiny"], ["sg-2"]),
                    ("f3", ["tiny"], ["sg-1", "sg-2"]), ("f4", ["tiny"], ["sg-2", "sg-1"])])
    assert len(st.enis) == 3  # f3 and f4 share
    groups = [f"g{i}" for i in range(12)]
    for g in groups:
        st.add_sg(g, "vpc-a")
    snapshot = st.copy()
    with pytest.raises(InvalidInput, match="no free address"):
        st.attach_many([(f"x{i}", ["tiny"], [g]) for i, g in enumerate(groups)])
    assert st == snapshot  # nothing of the failed batch stayed


def test_ten_thousand_enis_get_distinct_addresses_vnis_and_handles():
    from eniplane.config import build_state

    doc = {"vpcs": [{"id": "v", "cidr": "10.0.0.0/8", "iface": "i", "gateway": "10.0.0.1"}],
           "subnets": [{"id": f"s{i}", "vpc": "v", "cidr": f"10.1.{i}.0/24"} for i in range(40)],
           "security_groups": [{"id": f"g{j}", "vpc": "v", "egress": [], "ingress": []}
                               for j in range(250)],
           "functions": [{"name": f"f{k}", "subnets": [f"s{k // 250}"],
                          "security_groups": [f"g{k % 250}"]} for k in range(10_000)]}
    st = build_state(doc, State())
    assert len(st.enis) == 10_000
    assert len({e.vni for e in st.enis.values()}) == 10_000
    assert len({(e.subnet, e.address) for e in st.enis.values()}) == 10_000
    assert sorted(e.idx for e in st.enis.values()) == list(range(1, 10_001))
