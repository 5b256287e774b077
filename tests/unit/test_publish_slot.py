"""datapath.publish_slot: direct-mapped slots (worker_slots, vpc_if_slots) that the datapath
takes whole when their owner field names what it looks for. A map update copies the value in
place, so a packet may read one half written; no write may change the owner and the rest at
once, and the owner may name the new owner only with the rest whole."""

from __future__ import annotations

import pytest

from eniplane.datapath import publish_slot

NONE = {"addr": "0.0.0.0", "ifindex": 0}


class Slots:
    """One slot of a map: lookup and update as Datapath's maps do, every state kept."""

    def __init__(self, value: dict) -> None:
        self.states = [dict(value)]

    def lookup(self, _slot: int) -> dict:
        return dict(self.states[-1])

    def update(self, _slot: int, value: dict | bytes) -> None:
        if value == b"":  # an array map's empty value: every field zero
            value = {k: (NONE.get(k, 0) if not isinstance(v, dict) else
                         {f: 0 for f in v}) for k, v in self.states[-1].items()}
        self.states.append(dict(value))


def _rest(state: dict, owner: str) -> dict:
    return {k: v for k, v in state.items() if k != owner}


W_OLD = {"mac": "02:00:00:00:00:11", "flags": 3}
W_NEW = {"mac": "02:00:00:00:00:99", "flags": 3}

CASES = [  # (owner field, the slot before, what to write)
    ("addr", {"addr": "0.0.0.0", "w": {"mac": "00:00:00:00:00:00", "flags": 0}},
     {"addr": "100.64.0.11", "w": W_OLD}),                       # a free slot taken
    ("addr", {"addr": "100.64.0.11", "w": W_OLD}, {"addr": "100.64.0.11", "w": W_NEW}),  # new MAC
    ("addr", {"addr": "100.64.0.11", "w": W_OLD}, {"addr": "100.64.1.11", "w": W_NEW}),  # new owner
    ("addr", {"addr": "100.64.0.11", "w": W_OLD}, None),         # emptied
    ("ifindex", {"ifindex": 7, "vpc_idx": 1}, {"ifindex": 7, "vpc_idx": 2}),  # moved to another VPC
    ("ifindex", {"ifindex": 7, "vpc_idx": 1}, {"ifindex": 9, "vpc_idx": 2}),
]


@pytest.mark.parametrize("owner,before,value", CASES)
def test_no_write_changes_the_owner_and_the_rest_at_once(owner, before, value):
    m = Slots(before)
    publish_slot(m, 3, owner, value)
    s = m.states
    assert s[-1] == (value if value is not None else s[-1]) and s[-1][owner] == (
        value[owner] if value else NONE[owner])
    for a, b in zip(s, s[1:]):
        assert a[owner] == b[owner] or _rest(a, owner) == _rest(b, owner), (a, b)
    # whatever a torn read mixes, the new owner comes only with the final rest
    if value is not None:
        for st in s[:-1]:
            if st[owner] == value[owner]:
                assert _rest(st, owner) == _rest(before, owner) and st is s[0]
