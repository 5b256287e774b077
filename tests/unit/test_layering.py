"""One concern per module: map layouts and flag bits are read in datapath.py only.

Other modules ask Datapath (worker_macs, gateway_mac, eni_counter_names, ...); the generic map
code (maps.py, btf.py) and the `maps list/dump` commands open maps by name without knowing their
fields. Checked on the source's syntax tree, so a new raw read anywhere fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import eniplane

PKG = Path(eniplane.__file__).parent
OWNER = {"datapath.py"}
GENERIC = {"maps.py", "btf.py"}
NETLINK_FLAGS = {"netlink.py"}  # rtnetlink message flags, not a map's


def offences(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "map":
            out.append(f"{where}: Datapath.map() outside datapath.py")
        if isinstance(node, ast.Attribute) and node.attr in ("value_fields", "key_fields"):
            out.append(f"{where}: a map's {node.attr} outside datapath.py")
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and node.slice.value == "flags" and path.name not in NETLINK_FLAGS:
            out.append(f"{where}: a map's flag bits outside datapath.py")
        if isinstance(node, ast.Name) and node.id.startswith("VPC_F_"):
            out.append(f"{where}: {node.id} outside datapath.py")
    return out


def test_only_datapath_reads_map_fields_and_flag_bits():
    found = [o for p in sorted(PKG.glob("*.py")) if p.name not in OWNER | GENERIC
             for o in offences(p)]
    assert found == []


def test_the_check_sees_a_raw_read():
    src = PKG / "datapath.py"
    assert any("flag bits" in o for o in offences(src))
    assert any("Datapath.map()" in o for o in offences(src))


def test_test_files_have_unique_basenames():
    """pytest imports test files by basename (no packages): two tiers with the same file name
    stop the whole run at collection."""
    from collections import Counter
    from pathlib import Path

    names = Counter(p.name for p in (Path(__file__).parents[1]).rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
