"""bench.report's Markdown: the tables that `make bench` writes into docs/performance.md."""

from __future__ import annotations

from bench import report


def _doc() -> dict:
    res = []
    for d in ("forward", "return"):
        for s, mpps, ns in (("ceiling", 4.0, 50.0), ("state-floor", 2.5, 190.0),
                            ("eniplane", 2.0, 260.0), ("linux", 0.4, None)):
            r = {"direction": d, "scenario": s, "flows": 65536, "mpps": mpps,
                 "min": mpps, "max": mpps, "runs": [mpps]}
            if ns:
                r["program_ns"] = ns
            res.append(r)
    return {"throughput": {"results": res}}


def test_throughput_rows_carry_the_ratios():
    md = report.markdown_tables(_doc())["throughput"]
    row = next(line for line in md.splitlines() if line.startswith("| forward"))
    # ceiling, floor, eniplane, Linux, then eniplane against each of them
    assert row == "| forward (VXLAN) | 65,536 | 4.00 | 2.50 | 2.00 | 0.40 | 50% | 80% | 5.0x |"


def test_program_ns_leaves_out_the_linux_stack_and_gives_the_gap_to_the_floor():
    md = report.markdown_tables(_doc())["program_ns"]
    assert md.splitlines()[0] == \
        "| direction | flows | ceiling | state floor | eniplane | gap to the floor |"
    assert "| return | 65,536 | 50 | 190 | 260 | +70 |" in md


def test_budget_gives_the_time_per_packet_and_what_the_90_percent_goal_allows():
    md = report.markdown_tables(_doc())["budget"]
    # floor 2.5 Mpps: 400 ns a packet; eniplane 2.0 Mpps: 500 ns; 90% allows a ninth of 400
    assert "| forward | 65,536 | 400 | 500 | +100 | 44 | no |" in md
    doc = _doc()
    for r in doc["throughput"]["results"]:
        if r["scenario"] == "eniplane":
            r["mpps"] = 2.3  # 435 ns: 35 over the floor, within the 44 that 90% allows
    budget = report.markdown_tables(doc)["budget"]
    assert "| return | 65,536 | 400 | 435 | +35 | 44 | yes |" in budget


def test_update_doc_fills_empty_and_filled_blocks_alike(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("intro\n<!-- bench:program_ns -->\n<!-- /bench:program_ns -->\nmiddle\n"
                    "<!-- bench:throughput -->\nold table\nmore\n<!-- /bench:throughput -->\nend\n")
    assert sorted(report.update_doc(page, _doc())) == ["program_ns", "throughput"]
    once = page.read_text()
    assert "old table" not in once and once.startswith("intro\n") and once.endswith("end\n")
    assert "| return | 65,536 | 50 | 190 | 260 | +70 |\n<!-- /bench:program_ns -->\nmiddle" in once
    report.update_doc(page, _doc())
    assert page.read_text() == once  # a second run rewrites the blocks, nothing else
