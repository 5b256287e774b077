"""Numbers user space needs from bpf/consts.h that no map's BTF carries: held equal here."""

from __future__ import annotations

import re

from eniplane import datapath, loader


def define(name: str) -> int:
    text = (loader.bpf_dir() / "consts.h").read_text()
    m = re.search(rf"^#define {name} (\d+)", text, re.M)
    assert m, f"{name} is not defined in consts.h"
    return int(m.group(1))


def test_port_tries_is_the_datapaths():
    assert datapath.PORT_TRIES == define("PORT_TRIES")


def test_default_max_flows_is_the_datapaths():
    assert loader.DEFAULT_MAX_FLOWS == define("MAX_FLOWS")


def test_flow_safe_entries_is_the_datapaths():
    text = (loader.bpf_dir() / "consts.h").read_text()
    assert ("((__s64)MAX_FLOWS - 2 * LRU_LOCAL_FREE_TARGET * (__s64)NR_POSSIBLE_CPUS - "
            "LRU_LOCAL_FREE_TARGET)") in text
    assert define("LRU_LOCAL_FREE_TARGET") == datapath.LRU_LOCAL_FREE_TARGET
    assert datapath.flow_safe_entries(262144, 2) == 262144 - 512 - 128
    # the bound holds at every size: a small table is below zero, which means holes at once
    assert datapath.flow_safe_entries(4096, 2) == 3456
    assert datapath.flow_safe_entries(512, 4) < 0
