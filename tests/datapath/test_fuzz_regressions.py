"""Every disagreement that `make fuzz` ever found, replayed: kernel and model must now agree."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

CASES = sorted((Path(__file__).parent / "fuzz_regressions").glob("case-*.json"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))


@pytest.mark.skipif(not CASES, reason="make fuzz has found no disagreement to keep")
@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_regression(harness, case):
    doc = json.loads(case.read_text())
    if doc.get("secret"):
        harness.set_secret(doc["secret"])  # the probe layout the case was found with
    harness.set_mss_clamp(doc.get("mss_clamp", True))  # cases before the switch: on
    harness.reset()
    for row in doc["packets"]:
        if row["direction"] == "time":
            harness.step("time", row["time"])
            continue
        ifindex = harness.vpc_ifs[row["vpc"]]["ifindex"] if row["vpc"] else 0
        harness.step(row["direction"], bytes.fromhex(row["frame"]), ifindex)
    harness.check_invariants()
