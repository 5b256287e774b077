"""Flow log records and their aggregation (flowlogs.py), without a datapath: the AWS fields and
views, counter deltas between windows, flow ends, REJECT aggregation, NODATA/SKIPDATA, files."""

from __future__ import annotations

import io
import json

import pytest

from eniplane.flowlogs import (CUSTOM_FIELDS, DEFAULT_FIELDS, EniInfo, FlowLogWriter, FlowTracker,
                               header, reject_records, status_records)

ENI = EniInfo("eni-0123456789abcdef0", "10.0.1.4", "vpc-a", "sub-a")
ENIS = {4096: ENI}
S = 1_000_000_000


def wall(ns: int) -> int:
    return 1_700_000_000 + ns // S


def flow(tx=(3, 300), rx=(2, 500), live=True, proto=6, last=50, env_port=40000, **kw):
    f = {"worker": "100.64.0.11", "vni": 4096, "env_addr": "172.16.0.2", "env_port": env_port,
         "remote": "10.0.0.10", "remote_port": 80, "proto": proto, "vpc_idx": 1,
         "eni_addr": "10.0.1.4", "nat_port": 31000, "tx_packets": tx[0], "tx_bytes": tx[1],
         "rx_packets": rx[0], "rx_bytes": rx[1], "last_seen_ns": last * S, "live": live}
    f.update(kw)
    return f


def fields(rec, fmt="default"):
    names = CUSTOM_FIELDS if fmt == "custom" else DEFAULT_FIELDS
    return dict(zip(names, rec.line(fmt).split(" ")))


def test_a_new_flow_is_one_record_per_direction_in_the_enis_view():
    t = FlowTracker(account="123456789012")
    recs, lost = t.window([flow()], ENIS, start=wall(0), wall=wall)
    assert not lost
    out, back = (fields(r) for r in recs)
    assert out == {"version": "2", "account-id": "123456789012",
                   "interface-id": "eni-0123456789abcdef0", "srcaddr": "10.0.1.4",
                   "dstaddr": "10.0.0.10", "srcport": "31000", "dstport": "80", "protocol": "6",
                   "packets": "3", "bytes": "300", "start": str(wall(0)),
                   "end": str(wall(50 * S)), "action": "ACCEPT", "log-status": "OK"}
    assert (back["srcaddr"], back["srcport"], back["dstaddr"], back["dstport"],
            back["packets"], back["bytes"]) == ("10.0.0.10", "80", "10.0.1.4", "31000", "2", "500")


def test_the_custom_view_names_the_environments_address_and_is_version_5():
    recs, _ = FlowTracker().window([flow()], ENIS, start=wall(0), wall=wall)
    out, back = (fields(r, "custom") for r in recs)
    assert out["version"] == "5"
    assert (out["pkt-srcaddr"], out["pkt-dstaddr"], out["flow-direction"]) == \
        ("172.16.0.2", "10.0.0.10", "egress")
    assert (back["pkt-srcaddr"], back["pkt-dstaddr"], back["flow-direction"]) == \
        ("10.0.0.10", "172.16.0.2", "ingress")
    assert (out["vpc-id"], out["subnet-id"]) == ("vpc-a", "sub-a")
    assert header("custom").split() == list(CUSTOM_FIELDS)


def test_later_windows_log_deltas_and_nothing_for_an_idle_flow():
    t = FlowTracker()
    t.window([flow()], ENIS, wall(0), wall)
    recs, _ = t.window([flow(tx=(10, 1000), rx=(2, 500), last=70)], ENIS, wall(60 * S), wall)
    assert [(r.flow_direction, r.packets, r.bytes) for r in recs] == [("egress", 7, 700)]
    assert recs[0].start == wall(60 * S) and recs[0].end == wall(70 * S)
    recs, _ = t.window([flow(tx=(10, 1000), rx=(2, 500), last=70)], ENIS, wall(120 * S), wall)
    assert recs == []


def test_the_records_of_a_flow_add_up_to_its_counters():
    t = FlowTracker()
    total = {"egress": [0, 0], "ingress": [0, 0]}
    for i, (tx, rx) in enumerate([((1, 60), (0, 0)), ((4, 300), (3, 4000)), ((9, 700), (8, 9000))]):
        recs, _ = t.window([flow(tx=tx, rx=rx)], ENIS, wall(i * 60 * S), wall)
        for r in recs:
            total[r.flow_direction][0] += r.packets
            total[r.flow_direction][1] += r.bytes
    recs = t.ended([flow(tx=(10, 800), rx=(8, 9000), live=False)], ENIS, wall(200 * S), wall)
    for r in recs:
        total[r.flow_direction][0] += r.packets
        total[r.flow_direction][1] += r.bytes
    assert total == {"egress": [10, 800], "ingress": [8, 9000]}
    assert [r.event for r in recs] == ["end"]


def test_a_baseline_keeps_earlier_traffic_out_of_the_first_window():
    t = FlowTracker()
    t.baseline([flow(tx=(5, 500), rx=(5, 500))])
    recs, _ = t.window([flow(tx=(6, 600), rx=(5, 500))], ENIS, wall(0), wall)
    assert [(r.packets, r.bytes) for r in recs] == [(1, 100)]


def test_an_expired_flow_gets_one_end_record_even_with_nothing_new():
    t = FlowTracker()
    t.window([flow()], ENIS, wall(0), wall)
    recs, _ = t.window([flow(live=False)], ENIS, wall(60 * S), wall)
    assert [(r.event, r.flow_direction, r.packets) for r in recs] == [("end", "egress", 0)]
    assert t.window([flow(live=False)], ENIS, wall(120 * S), wall)[0] == []
    # swept afterwards: it ended already, nothing more
    assert t.ended([flow(live=False)], ENIS, wall(130 * S), wall) == []


def test_a_reopened_flow_counts_from_zero_again():
    t = FlowTracker()
    t.window([flow(tx=(9, 900), rx=(9, 900))], ENIS, wall(0), wall)
    t.window([flow(tx=(9, 900), rx=(9, 900), live=False)], ENIS, wall(60 * S), wall)
    recs, _ = t.window([flow(tx=(1, 60), rx=(0, 0))], ENIS, wall(120 * S), wall)
    assert [(r.event, r.packets, r.bytes) for r in recs] == [("window", 1, 60)]


def test_a_flow_that_vanished_unreported_marks_its_eni_skipdata():
    t = FlowTracker()
    t.window([flow(), flow(env_port=40001, nat_port=31001)], ENIS, wall(0), wall)
    recs, lost = t.window([flow()], ENIS, wall(60 * S), wall)
    assert recs == [] and lost == {4096}
    st = status_records(ENIS, set(), lost, 10, 20, "-")
    assert [fields(r)["log-status"] for r in st] == ["SKIPDATA"]


def test_an_eni_with_no_traffic_has_a_nodata_record():
    other = EniInfo("eni-other", "10.0.2.4")
    recs = status_records({4096: ENI, 4097: other}, {4096}, set(), 100, 160, "-")
    assert [r.line("default") for r in recs] == [
        "2 - eni-other - - - - - - - 100 160 - NODATA"]


def test_icmp_records_have_ports_zero():
    recs, _ = FlowTracker().window([flow(proto=1, remote_port=7, nat_port=1234)], ENIS,
                                   wall(0), wall)
    assert {(fields(r)["srcport"], fields(r)["dstport"], fields(r)["protocol"]) for r in recs} \
        == {("0", "0", "1")}


def test_denials_are_aggregated_per_five_tuple_as_rejects():
    base = {"vni": 4096, "env_addr": "172.16.0.2", "env_port": 5555, "remote": "10.0.0.10",
            "remote_port": 22, "proto": 6}
    denials = [{**base, "worker": "100.64.0.11", "packets": 3, "bytes": 180, "first_ns": 5 * S,
                "last_ns": 9 * S},
               {**base, "worker": "100.64.0.12", "packets": 1, "bytes": 60, "first_ns": 2 * S,
                "last_ns": 3 * S},
               {**base, "worker": "100.64.0.11", "remote_port": 23, "packets": 1, "bytes": 60,
                "first_ns": 4 * S, "last_ns": 4 * S}]
    recs = reject_records(denials, ENIS, wall, "-")
    by_port = {r.dstport: r for r in recs}
    assert set(by_port) == {22, 23}
    r = by_port[22]
    assert fields(r) == {"version": "2", "account-id": "-", "interface-id": ENI.id,
                         "srcaddr": "10.0.1.4", "dstaddr": "10.0.0.10", "srcport": "5555",
                         "dstport": "22", "protocol": "6", "packets": "4", "bytes": "240",
                         "start": str(wall(2 * S)), "end": str(wall(9 * S)),
                         "action": "REJECT", "log-status": "OK"}
    assert fields(r, "custom")["pkt-srcaddr"] == "172.16.0.2"
    assert r.as_json()["workers"] == ["100.64.0.11", "100.64.0.12"]


def test_json_records_carry_every_field_and_the_environment_side():
    recs, _ = FlowTracker().window([flow()], ENIS, wall(0), wall)
    doc = json.loads(json.dumps(recs[0].as_json()))
    assert {k for k in CUSTOM_FIELDS} <= set(doc)
    assert (doc["env_port"], doc["nat_port"], doc["worker"], doc["event"]) == \
        (40000, 31000, "100.64.0.11", "window")


def test_stdout_gets_a_header_then_records():
    buf = io.StringIO()
    w = FlowLogWriter(None, "default", stream=buf)
    recs, _ = FlowTracker().window([flow()], ENIS, wall(0), wall)
    assert w.write(recs) == 2
    lines = buf.getvalue().splitlines()
    assert lines[0] == " ".join(DEFAULT_FIELDS) and len(lines) == 3


def test_files_rotate_by_size_each_with_a_header_and_old_ones_go(tmp_path):
    w = FlowLogWriter(tmp_path, "default", max_bytes=300, keep=3)
    recs, _ = FlowTracker().window([flow()], ENIS, wall(0), wall)
    for _ in range(10):
        w.write(recs)
    w.close()
    files = sorted(tmp_path.glob("flows-*.log"))
    assert len(files) == 3
    for p in files:
        lines = p.read_text().splitlines()
        assert lines[0] == header("default") and len(lines) >= 2


def test_files_rotate_by_age(tmp_path, monkeypatch):
    import eniplane.flowlogs as fl

    now = [1_700_000_000.0]
    monkeypatch.setattr(fl.time, "time", lambda: now[0])
    w = FlowLogWriter(tmp_path, "json", max_age=60)
    recs, _ = FlowTracker().window([flow()], ENIS, wall(0), wall)
    w.write(recs)
    first = w.path
    now[0] += 61
    w.write(recs)
    assert w.path != first and len(list(tmp_path.glob("flows-*.jsonl"))) == 2
    assert json.loads(first.read_text().splitlines()[0])["interface-id"] == ENI.id


def test_an_unknown_format_is_refused():
    from eniplane.errors import InvalidInput

    with pytest.raises(InvalidInput):
        FlowLogWriter(None, "ipfix")
