"""The CLI's contract that needs no kernel: help, usage errors, fast start."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from eniplane.cli import app

runner = CliRunner()


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("up", "down", "status", "stats", "lab", "maps"):
        assert cmd in r.output


def test_unknown_command_is_a_usage_error():
    assert runner.invoke(app, ["frobnicate"]).exit_code == 2


def test_bad_mode_is_a_usage_error():
    r = runner.invoke(app, ["up", "--fabric-if", "x", "--fabric-ip", "1.2.3.4", "--mode", "fast"])
    assert r.exit_code == 2


def test_invalid_node_name_is_a_usage_error():
    r = runner.invoke(app, ["stats", "--node", "../etc"])
    assert r.exit_code == 2
    assert "invalid node name" in r.output


def test_help_and_stats_do_not_import_bcc_or_pyroute2():
    """What makes `--help` and `stats` start fast is what they do not import (bcc compiles, and
    pyroute2 costs ~100 ms): checked by name rather than by a wall-clock bound that a loaded
    machine would break and a fast one would never test."""
    code = ("import sys; from eniplane import cli; "
            "sys.argv=sys.argv[1:];\n"
            "try:\n cli.main()\nexcept SystemExit: pass\n"
            "print('bcc' in sys.modules, 'pyroute2' in sys.modules)")
    for argv in (["eniplane", "--help"], ["eniplane", "stats", "-n", "nosuchnode-xyz"]):
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                             env=dict(os.environ, ENIPLANE_STATE_DIR="/tmp/eniplane-unit"))
        assert out.stdout.strip().splitlines()[-1] == "False False", (argv, out.stdout)
    assert "nosuchnode-xyz" in out.stderr
