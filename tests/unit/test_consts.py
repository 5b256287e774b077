"""Facts user space needs from bpf/ that no map's BTF carries: held equal here, by parsing the C.

Each test compares whole sets where the C may grow (flags, maps, programs, protocols), so a
#define, a pinned map or an entry point added on one side only fails here."""

from __future__ import annotations

import ast
import re
import socket
import sys

import pytest

from eniplane import datapath, loader, model, probe, sgcompile


def c_text() -> str:
    """Every header of bpf/ and the program."""
    d = loader.bpf_dir()
    return "\n".join(p.read_text() for p in sorted(d.glob("*.h")) + [d / "eniplane.c"])


def c_source() -> str:
    """c_text with comments removed (a name in a comment is no declaration), and without what
    only test builds compile (#ifdef ENIPLANE_TEST_HOOKS ... #else): no node has it."""
    text = re.sub(r"/\*.*?\*/|//[^\n]*", " ", c_text(), flags=re.S)
    return re.sub(r"#ifdef ENIPLANE_TEST_HOOKS\n.*?#(else|endif)", " ", text, flags=re.S)


def c_int(expr: str) -> int:
    """A #define's value: an integer expression of literals, shifts, ors and parentheses."""
    expr = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b", r"\1", expr.strip())
    tree = ast.parse(expr, mode="eval")
    ok = (ast.Expression, ast.BinOp, ast.Constant, ast.LShift, ast.BitOr, ast.Add, ast.Sub)
    assert all(isinstance(n, ok) for n in ast.walk(tree)), f"not a constant: {expr}"
    return eval(compile(tree, "<define>", "eval"))


def defines(pattern: str = r"\w+") -> dict[str, int]:
    """#defines whose name matches `pattern` and whose value is an integer expression."""
    out = {}
    for name, value in re.findall(rf"^\s*#\s*define\s+({pattern})[ \t]+([^\n]+)$", c_source(),
                                  re.M):
        try:
            out[name] = c_int(value)
        except (AssertionError, SyntaxError):
            continue
    return out


def define(name: str) -> int:
    got = defines(re.escape(name))
    assert name in got, f"{name} is not #defined in bpf/"
    return got[name]


def test_the_parser_reads_what_it_must():
    assert c_int("(1 << 3)") == 8 and c_int("0x10u") == 16 and c_int("2") == 2
    assert define("VXLAN_PORT") == 4789
    assert "MAX_FLOWS" in defines()


def test_port_tries_is_the_datapaths():
    assert probe.PORT_TRIES == define("PORT_TRIES")


def test_hot_ways_is_the_datapaths():
    assert probe.HOT_WAYS == define("HOT_WAYS")


def test_the_busy_slot_mark_is_the_datapaths():
    assert datapath.HOT_GEN_BUSY == define("HOT_GEN_BUSY")


def test_default_max_flows_is_the_datapaths():
    assert loader.DEFAULT_MAX_FLOWS == define("MAX_FLOWS")


def test_flow_safe_entries_is_the_datapaths():
    text = (loader.bpf_dir() / "consts.h").read_text()
    assert ("((__s64)MAX_FLOWS - 2 * LRU_LOCAL_FREE_TARGET * (__s64)NR_POSSIBLE_CPUS - "
            "LRU_LOCAL_FREE_TARGET)") in text
    assert define("LRU_LOCAL_FREE_TARGET") == probe.LRU_LOCAL_FREE_TARGET
    assert probe.flow_safe_entries(262144, 2) == 262144 - 512 - 128
    # the bound holds at every size: a small table is below zero, which means holes at once
    assert probe.flow_safe_entries(4096, 2) == 3456
    assert probe.flow_safe_entries(512, 4) < 0


def test_flag_bits_are_the_datapaths():
    """Every *_F_* flag of the C, and only those, with the same value in datapath.py."""
    c = defines(r"[A-Z][A-Z0-9]*_F_[A-Z0-9_]+")
    py = {k: v for k, v in vars(datapath).items()
          if re.fullmatch(r"[A-Z][A-Z0-9]*_F_[A-Z0-9_]+", k)}
    assert "VPC_F_GW_MAC" in c and "VPC_F_ACTIVE" in c
    assert py == c


def test_tx_slot_of_the_fabric_is_the_datapaths():
    assert datapath.TX_SLOT_FABRIC == define("TX_SLOT_FABRIC")


def test_security_group_limits_are_the_datapaths():
    assert model.MAX_SG_PER_ENI == define("MAX_SG_PER_ENI")
    assert model.MAX_RULES_PER_DIRECTION == define("MAX_RULES_PER_SG")


def test_map_names_are_the_pinned_maps():
    """Every map the C pins under PIN_DIR (BPF_TABLE_PINNED and the hand-declared tx_ports and
    events)."""
    pins = re.findall(r'PIN_DIR\s*"/(\w+)"', c_source())
    assert len(pins) == len(set(pins)), "a pin name is used twice"
    tables = re.findall(r"BPF_TABLE_PINNED\s*\(", c_source())
    assert len(pins) == len(tables) + 2  # + tx_ports, events: each pinned table names its pin
    assert sorted(datapath.MAP_NAMES) == sorted(pins)


def test_event_settings_are_the_datapaths():
    from eniplane import events
    assert events.DEFAULT_EVENT_RATE == define("DEFAULT_EVENT_RATE") == events.DEFAULTS["rate"]


def test_redirect_watch_programs_are_the_entry_points():
    """The raw tracepoint programs of eniplane.c, attached by the loader."""
    entries = re.findall(r"^int\s+(\w+)\s*\(\s*struct\s+bpf_raw_tracepoint_args\s*\*",
                         c_source(), re.M)
    assert sorted(loader.REDIRECT_WATCH) == sorted(entries)


def test_program_names_are_the_entry_points():
    """The XDP entry points of eniplane.c: non-static functions taking the xdp_md context."""
    src = c_source()
    entries = re.findall(r"^[ \t]*int\s+(\w+)\s*\(\s*struct\s+xdp_md\s*\*", src, re.M)
    assert sorted(loader.PROGRAMS) == sorted(entries)
    assert (loader.PROG_FABRIC, loader.PROG_VPC) == loader.ATTACHABLE
    tail = [n for slots in loader.TAIL_CALLS.values() for n in slots.values()]
    assert loader.PROGRAMS == loader.ATTACHABLE + tuple(tail) + loader.RUN_BY_USER
    assert loader.RUN_BY_USER == (datapath.REAPER,) == (loader.PROG_FLOW_REAP,)
    # never called: no program array holds it
    assert not re.search(r"\.call\(ctx,[^;]*REAP", c_source())
    assert loader.TAIL_CALLS["fabric_calls"] == loader.FABRIC_CALLS
    # fabric_long's one slot is called, as `fabric_long` is declared in maps.h with one entry
    assert re.search(r"fabric_long\.call\(ctx, 0\)", c_source())
    assert re.search(r'BPF_TABLE_PINNED\("prog", __u32, __u32, fabric_long, 1,', c_source())
    for slot, name in loader.FABRIC_CALLS.items():
        macro = "FABRIC_CALL_" + name.removeprefix("xdp_fabric_").upper()
        assert define(macro) == slot
        # every slot is called: through fabric_call() or fabric_calls.call() directly
        assert re.search(rf"fabric_calls?\(ctx, [^;]*\b{macro}\b|fabric_calls\.call\(ctx, "
                         rf"{macro}\)", c_source())


def test_flow_lifecycle_is_the_datapaths():
    """FLOW_S_* bits, the default timeouts and the takeover grace, as lifecycle.py has them."""
    from eniplane import lifecycle

    c = defines(r"FLOW_S_[A-Z_]+")
    py = {k: v for k, v in vars(lifecycle).items() if re.fullmatch(r"FLOW_S_[A-Z_]+", k)}
    assert py == c and len(c) == 6
    assert {name: define(f"DEFAULT_TIMEOUT_{name.upper()}")
            for name in lifecycle.TIMEOUT_NAMES} == lifecycle.DEFAULT_TIMEOUTS
    assert define("TAKEOVER_GRACE_NS") == lifecycle.TAKEOVER_GRACE_NS
    assert define("NSEC_PER_SEC") == lifecycle.NSEC_PER_SEC


def test_icmp_rate_limit_is_the_datapaths():
    """The default ICMP rate (what `ipv4 show` says a fresh node sends) and the bucket's burst."""
    from eniplane import ipv4

    assert ipv4.DEFAULT_ICMP_RATE == define("DEFAULT_ICMP_RATE") == ipv4.DEFAULTS["icmp_rate"]
    assert ipv4.ICMP_BURST == define("ICMP_BURST")


def test_protocols_are_the_datapaths():
    """The datapath's protocols (the IPPROTO_* it names) are sgcompile's, with IANA numbers."""
    c = set(re.findall(r"\bIPPROTO_(\w+)", c_source()))
    assert {sgcompile.PROTO_NAMES[p].upper() for p in sgcompile.DATAPATH_PROTOS} == c
    for name, number in sgcompile.PROTO_NUMBERS.items():
        assert number == (0 if name == "all" else getattr(socket, f"IPPROTO_{name.upper()}"))
    assert sgcompile.PROTO_NAMES == {v: k for k, v in sgcompile.PROTO_NUMBERS.items()}


@pytest.mark.parametrize("line, name, value", [
    ("#define VPC_F_NEW 4", "VPC_F_NEW", 4),
    ("#define PEER_F_PINNED (1 << 0) /* pinned */", "PEER_F_PINNED", 1),
])
def test_a_flag_added_to_the_c_only_is_caught(monkeypatch, line, name, value):
    """The drift these tests exist for: the C grows a flag, Python does not."""
    flags = r"[A-Z][A-Z0-9]*_F_[A-Z0-9_]+"
    before = defines(flags)
    base = c_text()
    monkeypatch.setattr(sys.modules[__name__], "c_text", lambda: base + "\n" + line + "\n")
    assert defines(flags) == {**before, name: value}
    with pytest.raises(AssertionError):
        test_flag_bits_are_the_datapaths()


def test_the_reapers_modes_and_results_are_the_datapaths():
    """types.h's REAP_MODE_* and REAP_* results, which Datapath._reap writes and reads."""
    got = defines(r"REAP_(?:MODE_)?[A-Z]+")
    assert {k: v for k, v in got.items() if k != "REAP_BATCH"} == {
        "REAP_MODE_SWEEP": datapath.REAP_MODE_SWEEP, "REAP_MODE_FLUSH": datapath.REAP_MODE_FLUSH,
        "REAP_REMOVED": datapath.REAP_REMOVED, "REAP_CHANGED": datapath.REAP_CHANGED,
        "REAP_LIVE": datapath.REAP_LIVE, "REAP_GONE": datapath.REAP_GONE}
