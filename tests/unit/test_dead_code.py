"""No function, method or class of the package is left that nothing calls.

Dead code found in review (`prog_fd_by_id`, `map_fd_by_id`, `PinnedMap.clear`) went unnoticed
because nothing flagged it: every name defined in ctl/eniplane must appear again somewhere in
ctl/, bench/ or tests/. Functions registered by a decorator (the CLI's commands) are used by it.
By name only: a method named like a common one (`clear`) passes if anything of that name is used."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import eniplane

PKG = Path(eniplane.__file__).parent
ROOT = Path(__file__).resolve().parents[2]


def defined(tree: ast.Module) -> list[str]:
    out = []
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.decorator_list:
            out.append(n.name)
        if isinstance(n, ast.ClassDef):
            out += [m.name for m in n.body if isinstance(m, ast.FunctionDef)
                    and not m.name.startswith("__") and not m.decorator_list]
    return out


def unused(corpus: str) -> list[str]:
    return [f"{p.name}: {name}" for p in sorted(PKG.glob("*.py"))
            for name in defined(ast.parse(p.read_text()))
            if len(re.findall(rf"\b{re.escape(name)}\b", corpus)) < 2]


def test_every_definition_is_used():
    corpus = "\n".join(p.read_text() for d in ("ctl", "bench", "tests")
                       for p in sorted((ROOT / d).rglob("*.py"))
                       if p.resolve() != Path(__file__).resolve())  # names dead code above
    assert unused(corpus) == []


def test_the_check_sees_an_unused_function():
    assert "maps.py: sum_percpu" in unused("def sum_percpu(values): ...")
    assert "maps.py: sum_percpu" not in unused("def sum_percpu(values): ...\nsum_percpu([])")
    assert "cli.py: maps_list" not in unused("")  # registered by @maps_app.command
