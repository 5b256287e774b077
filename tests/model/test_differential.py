"""Differential tests: sequences of packets through the kernel and the reference model must agree
on every verdict, output byte and counter; the flow tables must hold their invariants after
every sequence. Hypothesis draws the sequences (a seed and a length, shrunk on failure)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import packets as P

# Hypothesis (6.1xx) reads the source of every module it deems the project's own to collect
# constants, and in a venv made with --system-site-packages that includes Debian's
# /usr/lib/python3/dist-packages. Line 749 of bcc/__init__.py is b'^.*\.cold(\.\d+)?$' without
# the r prefix, so its ast.parse warns "<unknown>:749: invalid escape sequence '\.'" (until
# .hypothesis/constants caches the result). bcc's file, not ours: silence that warning only.
pytestmark = pytest.mark.filterwarnings(r"ignore:invalid escape sequence '\\\.':DeprecationWarning")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 40))
def test_kernel_and_model_agree(harness, seed, length):
    harness.reset()
    gen = P.Generator(random.Random(seed), harness.model, harness.vpc_ifs)
    for _ in range(length):
        d, frame, ifindex = gen.packet()
        harness.step(d, frame, ifindex)
    harness.check_invariants()


def test_long_flowing_sequence_covers_every_path(harness):
    """One long sequence: the model must have seen new flows, established flows, replies,
    denials, exhaustion, ARP both ways and malformed frames, so agreement means something."""
    harness.reset()
    gen = P.Generator(random.Random(7), harness.model, harness.vpc_ifs)
    seen = set()
    for _ in range(3000):
        d, frame, ifindex = gen.packet()
        seen.add(harness.step(d, frame, ifindex))
    harness.check_invariants()
    assert {"fwd_new_flow", "fwd_established", "rev_established", "drop_sg_denied",
            "drop_port_exhausted", "drop_no_flow", "tx_arp_tunnel", "tx_arp_vpc",
            "drop_unknown_vni", "pass_vpc_not_eni"} <= seen, sorted(seen)
