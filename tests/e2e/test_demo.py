"""`make demo` must keep working: run it and check what it shows, and that it cleans up."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from eniplane import netlink, paths
from eniplane.lab import LAB_DIR


def test_demo_runs_end_to_end_and_cleans_up():
    env = {k: v for k, v in os.environ.items() if k not in ("KEEP", "ENIPLANE_STATE_DIR")}
    p = subprocess.run([sys.executable, "-m", "eniplane.demo"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 0, p.stderr + p.stdout[-2000:]
    out = p.stdout
    assert "2 ENIs serving 3 function attachments" in out
    assert out.count("saw 10.0.1.4:") >= 4  # three HTTP GETs and the UDP echo
    assert "acme-api       -> vpc-a saw" in out and "globex-report  -> vpc-b saw" in out
    assert "drop_sg_denied" in out
    assert "summary:" in out
    # only what the demo made is checked: other runs may create namespaces meanwhile
    m = re.search(r"attach it to fab0 in (\S+)-node\b", out)
    assert m, out[:2000]
    prefix = m.group(1)
    left = [n for n in os.listdir(netlink.NETNS_RUN_DIR) if n.startswith(f"{prefix}-")]
    assert left == []
    assert not (LAB_DIR / f"{prefix}.json").exists()
    assert not paths.pin_dir(f"{prefix}-demo").exists()
    assert not os.path.exists(f"/run/eniplane/demo-state/{prefix}")
