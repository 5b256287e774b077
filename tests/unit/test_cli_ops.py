"""CLI and operations contracts that need no kernel: help text, option placement in `flows`,
`lab down` asking before removing every lab, the PATH launcher, and the netlink boundary."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from eniplane.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def _command_paths(cmd, path=()):
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _command_paths(sub, (*path, name))


@pytest.mark.parametrize("path", [" ".join(p) for p in _command_paths(typer.main.get_command(app))
                                  if p != ("bench",)])  # bench's help is the bench's own argparse
def test_help_shows_no_typer_artefacts(path):
    r = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.output and "{" not in r.output, r.output


@pytest.mark.parametrize("argv", [["flows", "--node", "nosuch-a", "flush"],
                                  ["flows", "flush", "--node", "nosuch-a"],
                                  ["flows", "--node", "nosuch-a", "flush", "--eni", "e"]])
def test_flows_flush_takes_the_node_wherever_it_is_written(argv):
    r = runner.invoke(app, argv)
    assert r.exit_code == 1
    assert r.output.strip() == "eniplane: error: node nosuch-a is not up"


def test_flows_flush_refuses_two_nodes_and_list_options():
    r = runner.invoke(app, ["flows", "-n", "a", "flush", "-n", "b"])
    assert r.exit_code == 2 and "--node given twice" in r.output
    r = runner.invoke(app, ["flows", "--limit", "5", "flush"])
    assert r.exit_code == 2 and "--limit" in r.output


@pytest.fixture
def labs(tmp_path, monkeypatch):
    """A lab directory of our own with one record (no namespaces: destroy() only unlinks it)."""
    from eniplane import lab

    monkeypatch.setattr(lab, "LAB_DIR", tmp_path)
    rec = tmp_path / "someone.json"
    rec.write_text(json.dumps({"prefix": "someone"}))
    return rec


def test_lab_down_needs_a_name_or_all(labs):
    r = runner.invoke(app, ["lab", "down"])
    assert r.exit_code == 2 and "--all" in r.output and "someone" in r.output
    assert labs.exists()
    r = runner.invoke(app, ["lab", "down", "someone", "--all"])
    assert r.exit_code == 2 and labs.exists()
    r = runner.invoke(app, ["lab", "down", "--all"])
    assert r.exit_code == 0 and "lab someone removed" in r.output
    assert not labs.exists()


def test_lab_names_cannot_escape(labs):
    r = runner.invoke(app, ["lab", "up", "--name", "../x"])
    assert r.exit_code == 2 and "invalid lab name" in r.output


def _launcher(tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts/setup.sh"), "--launcher"],
                          capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, ENIPLANE_LAUNCHER_DIR=str(tmp_path)))


def test_setup_installs_a_launcher_once_and_never_over_a_foreign_file(tmp_path):
    dest = tmp_path / "eniplane"
    p = _launcher(tmp_path)
    assert p.returncode == 0 and "installed" in p.stderr, p.stderr
    first = dest.read_text()
    assert f'exec "{ROOT}/.venv/bin/eniplane" "$@"' in first and os.access(dest, os.X_OK)
    mtime = dest.stat().st_mtime_ns
    p = _launcher(tmp_path)  # the same launcher again: nothing to do, nothing said
    assert p.returncode == 0 and p.stderr == "" and dest.stat().st_mtime_ns == mtime
    dest.write_text(first.replace(".venv", "old/.venv"))  # ours, but stale: rewritten
    assert _launcher(tmp_path).returncode == 0 and dest.read_text() == first
    if (ROOT / ".venv/bin/eniplane").exists():
        r = subprocess.run([str(dest), "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "Usage" in r.stdout
    dest.write_text("#!/bin/sh\necho someone else's\n")
    p = _launcher(tmp_path)
    assert p.returncode == 0 and "left" in p.stderr
    assert dest.read_text() == "#!/bin/sh\necho someone else's\n"


def test_only_netlink_py_talks_pyroute2():
    """netlink.py's contract: no other module talks netlink, through pyroute2 or its socket."""
    pkg = ROOT / "ctl/eniplane"
    offenders = []
    for f in sorted(pkg.glob("*.py")):
        if f.name == "netlink.py":
            continue
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in n.names] + [getattr(n, "module", None) or ""]
                if any(x.split(".")[0] == "pyroute2" for x in names):
                    offenders.append(f"{f.name}:{n.lineno} imports pyroute2")
            if isinstance(n, ast.Attribute) and n.attr in ("ipr", "link_index") \
                    and isinstance(n.value, ast.Name) and n.value.id == "netlink":
                offenders.append(f"{f.name}:{n.lineno} uses netlink.{n.attr}")
    assert offenders == []
