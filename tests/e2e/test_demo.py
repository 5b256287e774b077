"""`make demo` must keep working: run it and check what it shows, and that it cleans up."""

from __future__ import annotations

import subprocess
import sys

from eniplane import netlink


def test_demo_runs_end_to_end_and_cleans_up():
    before = set(_namespaces())
    p = subprocess.run([sys.executable, "-m", "eniplane.demo"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr + p.stdout[-2000:]
    out = p.stdout
    assert "2 ENIs serving 3 function attachments" in out
    assert out.count("saw 10.0.1.4:") >= 4  # three HTTP GETs and the UDP echo
    assert "acme-api       -> vpc-a saw" in out and "globex-report  -> vpc-b saw" in out
    assert "drop_sg_denied" in out
    assert "summary:" in out
    assert set(_namespaces()) == before


def _namespaces():
    import os
    return os.listdir(netlink.NETNS_RUN_DIR) if os.path.isdir(netlink.NETNS_RUN_DIR) else []
