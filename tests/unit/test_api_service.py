"""The systemd unit: `make install-unit` puts it under DESTDIR, it is Type=notify (the agent
sends READY=1) and runs the launcher's `eniplane agent`; systemd-analyze accepts it where
systemd is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "eniplane-agent.service"


def test_make_install_unit_copies_the_unit(tmp_path):
    p = subprocess.run(["make", "-s", "-C", str(ROOT), "install-unit", f"DESTDIR={tmp_path}"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    installed = tmp_path / "etc/systemd/system/eniplane-agent.service"
    assert installed.read_text() == UNIT.read_text()
    assert installed.stat().st_mode & 0o777 == 0o644


def test_the_unit_waits_for_readiness_and_stops_with_sigterm():
    lines = {ln.split("=", 1)[0]: ln.split("=", 1)[1] for ln in UNIT.read_text().splitlines()
             if "=" in ln and not ln.startswith("#")}
    assert lines["Type"] == "notify" and lines["KillSignal"] == "SIGTERM"
    assert lines["ExecStart"].split()[:2] == ["/usr/local/bin/eniplane", "agent"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze here")
def test_systemd_analyze_accepts_the_unit():
    p = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
