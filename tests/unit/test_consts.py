"""Numbers user space needs from bpf/consts.h that no map's BTF carries: held equal here."""

from __future__ import annotations

import re

from eniplane import loader, probe


def define(name: str) -> int:
    text = (loader.bpf_dir() / "consts.h").read_text()
    m = re.search(rf"^#define {name} (\d+)", text, re.M)
    assert m, f"{name} is not defined in consts.h"
    return int(m.group(1))


def test_port_tries_is_the_datapaths():
    assert probe.PORT_TRIES == define("PORT_TRIES")


def test_default_max_flows_is_the_datapaths():
    assert loader.DEFAULT_MAX_FLOWS == define("MAX_FLOWS")


def test_flow_safe_entries_is_the_datapaths():
    text = (loader.bpf_dir() / "consts.h").read_text()
    assert "#define FLOW_SAFE_ENTRIES ((__s64)MAX_FLOWS - (__s64)MAX_FLOWS / 8 - 4096)" in text
    assert probe.flow_safe_entries(262144) == 262144 - 262144 // 8 - 4096
