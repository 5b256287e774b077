"""Unit tier: the CLI run in-process (Typer's CliRunner) against a store of its own."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from eniplane.cli import app


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run `eniplane ARGS --node unit` with the state under tmp_path; asserts the exit code."""
    monkeypatch.setenv("ENIPLANE_STATE_DIR", str(tmp_path / "state"))
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        r = runner.invoke(app, [*args, "--node", "unit"])
        assert r.exit_code == code, r.output
        return r

    return run
