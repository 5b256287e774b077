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


def test_command_lists_show_each_first_paragraph_as_one_line():
    """A group's list of commands would keep the docstring's line breaks (cut at the source's
    margin, mid-sentence); each command gives it its first paragraph joined instead."""
    import typer.main

    def walk(cmd):
        for sub in getattr(cmd, "commands", {}).values():
            yield sub
            yield from walk(sub)

    cmds = list(walk(typer.main.get_command(app)))
    up = next(c for c in cmds if c.name == "up")
    assert up.short_help.startswith("Compile and load the datapath, pin it and attach it to the "
                                    "fabric interface; the store keeps these parameters")
    wrapped = [c.name for c in cmds if c.help and "\n" in c.help.partition("\n\n")[0].strip()]
    assert len(wrapped) >= 5  # docstrings do wrap at the margin
    assert all(c.short_help and "\n" not in c.short_help for c in cmds if c.help)


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
