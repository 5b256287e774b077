"""bpf/order.h: the memory order of the publication protocols (a flows entry or a flow_hot slot
handed to another flow: time 0, fields, time last; readers load the time first). On x86-64 the
CPU keeps that order itself and the programs carry no fence; where it does not (arm64, or any
build with ENIPLANE_WEAK_ORDER) each ordering point is an atomic fetch on the program's stack,
which every JIT makes a full fence. The flow tests that hand entries and slots from flow to flow
(test_flow_hot, test_flow_lifecycle, test_flow_reap) run against both builds (conftest.ORDERS);
this file checks that the fences are where the build says, in the code the verifier kept."""

from __future__ import annotations

import os
import platform

import pytest

from conftest import ORDERS, node_env
from eniplane import bpfsys, paths

BPF_STX_ATOMIC_DW = 0xDB
BPF_FETCH = 0x01
FP = 10  # the frame pointer: the program's own stack

# The fences a fenced build has, program by program, in the code the verifier kept: each ordering
# point of bpf/order.h that the program inlines (the short ways: the time after the matched key
# and before the fields; the long way and the open path: a slot's claim, fold and publish, the
# entries' times; xdp_vpc: the owner before the key's second look, and before the guard that says
# whether the entry could have gone; a later fragment: its flow before the second look at its
# datagram). An ordering point added or removed changes these, on purpose: a fence that goes
# missing fails here.
FENCED = {"xdp_fabric": 3, "xdp_fabric_long": 9, "xdp_fabric_open": 10, "xdp_vpc": 13,
          "xdp_fabric_frag": 2, "xdp_flow_reap": 1}


def fences(node: str) -> dict[str, int]:
    out = {}
    for prog in FENCED:
        fd = bpfsys.obj_get(str(paths.progs_dir(node) / prog))
        try:
            code = bpfsys.prog_code(fd)
        finally:
            os.close(fd)
        out[prog] = sum(1 for i in range(0, len(code), 8)
                        if code[i] == BPF_STX_ATOMIC_DW and code[i + 1] & 0x0F == FP
                        and int.from_bytes(code[i + 4:i + 8], "little") & BPF_FETCH)
    return out


@pytest.fixture(scope="module", params=list(ORDERS))
def built(lab, request):
    with node_env(lab, f"order-{request.param}", ORDERS[request.param]) as e:
        yield request.param, e.dp.node


def test_the_fences_are_where_the_build_needs_them(built):
    order, node = built
    got = fences(node)
    if order == "native" and platform.machine() == "x86_64":
        assert got == {p: 0 for p in FENCED}  # TSO: not one instruction for ordering
    else:
        assert got == FENCED
