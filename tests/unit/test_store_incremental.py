"""A store transaction writes only the rows that changed: the API's attach latency must not grow
with the number of functions a node holds, and what is read back is what a full rewrite gives."""

from __future__ import annotations

from eniplane.store import Store


def populated(path, n: int) -> None:
    with Store("n", path) as s, s.transaction() as st:
        st.add_vpc("vpc-a", "10.0.0.0/16", "vpca", "10.0.0.1")
        st.add_subnet("sub-a", "vpc-a", "10.0.1.0/24")
        st.add_sg("sg-a", "vpc-a")
        for i in range(n):
            st.add_worker(f"100.64.{i // 250}.{i % 250 + 1}")
            st.attach_function(f"fn-{i}", ["sub-a"], ["sg-a"])


def test_attaching_one_function_writes_a_row_or_two_whatever_the_store_holds(tmp_path):
    path = tmp_path / "s.db"
    populated(path, 300)
    with Store("n", path) as s:
        before = s.db.total_changes
        with s.transaction() as st:
            st.attach_function("fn-new", ["sub-a"], ["sg-a"])
        assert s.db.total_changes - before == 1  # the function's row: its ENI is reused
        before = s.db.total_changes
        with s.transaction() as st:
            st.detach_function("fn-7")
        assert s.db.total_changes - before == 1
        before = s.db.total_changes
        with s.transaction():
            pass
        assert s.db.total_changes == before  # nothing changed, nothing written


def test_what_is_read_back_is_the_state_that_was_committed(tmp_path):
    path = tmp_path / "s.db"
    populated(path, 20)
    with Store("n", path) as s:
        with s.transaction() as st:
            st.detach_function("fn-3")
            st.attach_function("fn-x", ["sub-a"], ["sg-a"])
            st.set_timeouts(udp=30)
            st.set_ipv4(icmp_rate=5)
            want = (sorted(st.functions), st.timeouts, st.ipv4, sorted(st.enis))
        got = s.load()
        assert (sorted(got.functions), got.timeouts, got.ipv4, sorted(got.enis)) == want
        rows = s.db.execute("SELECT COUNT(*) FROM functions").fetchone()[0]
        assert rows == len(want[0])  # no stale row left behind by a change
