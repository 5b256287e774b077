"""The build hash that tells `status` and the agent whether the running programs are the
current build: it moves with every byte, file name and -D value that changes what is compiled,
and with nothing else. And a node's record with no build, or an old one, is not up to date."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from eniplane import loader
from eniplane.cli import app
from eniplane.node import NodeRecord
from eniplane.upgrade import build_status, running_defines


@pytest.fixture
def src(tmp_path, monkeypatch):
    d = tmp_path / "bpf"
    shutil.copytree(loader.bpf_dir(), d)
    monkeypatch.setenv("ENIPLANE_BPF_DIR", str(d))
    return d


def test_the_same_sources_and_defines_give_the_same_hash(src, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(src, other)
    assert loader.build_hash({"MAX_FLOWS": 4096}) == loader.build_hash({"MAX_FLOWS": 4096},
                                                                       other)
    assert len(loader.build_hash()) == 64


def test_every_byte_and_file_name_counts(src):
    h0 = loader.build_hash()
    c = src / "eniplane.c"
    c.write_text(c.read_text() + " ")
    h1 = loader.build_hash()
    assert h1 != h0
    (src / "extra.h").write_text("")  # a new (even empty) file is another build
    h2 = loader.build_hash()
    assert h2 != h1
    (src / "extra.h").rename(src / "other.h")
    assert loader.build_hash() not in (h0, h1, h2)


def test_bytes_moved_from_one_file_to_the_next_are_another_build(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, (x, y) in ((a, ("ab", "c")), (b, ("a", "bc"))):
        d.mkdir()
        (d / "1.h").write_text(x)
        (d / "2.h").write_text(y)
    assert loader.build_hash(None, a) != loader.build_hash(None, b)


def test_defines_count_but_not_their_order_and_max_flows_has_its_default(src):
    assert loader.build_hash({"MAX_FLOWS": 4096}) != loader.build_hash({"MAX_FLOWS": 8192})
    assert loader.build_hash({"A": 1, "B": 2}) == loader.build_hash({"B": 2, "A": 1})
    # `up` names MAX_FLOWS, a test's load may leave it out: the same build either way
    assert loader.build_hash({"MAX_FLOWS": loader.DEFAULT_MAX_FLOWS}) == loader.build_hash({})
    assert loader.build_hash(None) == loader.build_hash({})


def _rec(build: dict) -> NodeRecord:
    return NodeRecord(node="unit", netns=None, fabric_if="fab0", fabric_ip="100.64.0.1",
                      build=build)


def test_build_status_compares_the_recorded_hash_with_the_sources(src):
    defines = {"MAX_FLOWS": 4096}
    rec = _rec({"hash": loader.build_hash(defines), "defines": defines})
    assert running_defines(rec) == defines
    st = build_status(rec)
    assert st["up_to_date"] and st["running"] == st["current"]
    (src / "consts.h").write_text((src / "consts.h").read_text() + "\n")
    st = build_status(rec)
    assert not st["up_to_date"] and st["current"] != st["running"]
    # recorded with other defines than the sources would now be built with: not current
    rec = _rec({"hash": loader.build_hash({"MAX_FLOWS": 8192}), "defines": defines})
    assert not build_status(rec)["up_to_date"]


def test_a_record_from_before_builds_were_recorded_is_not_up_to_date(src, monkeypatch):
    monkeypatch.setattr("eniplane.upgrade.running_defines", lambda rec: {})
    st = build_status(_rec({}))
    assert st["running"] is None and st["current"] and not st["up_to_date"]


def test_unreadable_sources_leave_the_current_build_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("ENIPLANE_BPF_DIR", str(tmp_path / "gone"))
    st = build_status(_rec({"hash": "x", "defines": {}}))
    assert st["current"] is None and not st["up_to_date"]


def test_upgrade_is_a_command_with_its_options():
    r = CliRunner().invoke(app, ["upgrade", "--help"])
    assert r.exit_code == 0
    for opt in ("--force", "--node", "--output"):
        assert opt in r.output


def test_the_attached_xdp_mode_is_read_whichever_way_pyroute2_decodes_it():
    """The upgrade swaps in the mode the program runs in; pyroute2 0.9 names it as iproute2
    does, older ones give the number: both are read."""
    from eniplane.netlink import xdp_mode_name

    assert xdp_mode_name("xdp") == xdp_mode_name(1) == "native"
    assert xdp_mode_name("xdpgeneric") == xdp_mode_name(2) == "generic"
    assert xdp_mode_name(None) is None and xdp_mode_name(0) is None
