"""Pure parts of the feed follower: reply parsing and gap detection, with literal replies."""

from __future__ import annotations

import pytest

from cache import Op
from cache.follower import (
    GAP_RESET,
    GAP_TRIMMED,
    StreamInfo,
    gap_reason,
    parse_id,
    parse_xinfo,
    parse_xread,
)

XINFO_RESP2 = [
    b"length", 2, b"radix-tree-keys", 1, b"radix-tree-nodes", 2, b"last-generated-id", b"1700000000005-0",
    b"max-deleted-entry-id", b"0-0", b"entries-added", 5, b"recorded-first-entry-id", b"1700000000004-0",
    b"groups", 0, b"first-entry", [b"1700000000004-0", [b"op", b"invalidate_all"]],
    b"last-entry", [b"1700000000005-0", [b"op", b"invalidate_all"]],
]


def info(length: int, last: str, added: int | None, first: str | None = None,
         max_deleted: str | None = "0-0") -> StreamInfo:
    return StreamInfo(length, last, first, max_deleted if added is not None else None, added)


def test_parse_xinfo_resp2_and_resp3() -> None:
    want = StreamInfo(2, "1700000000005-0", "1700000000004-0", "0-0", 5)
    assert parse_xinfo(XINFO_RESP2) == want
    as_map = {XINFO_RESP2[i]: XINFO_RESP2[i + 1] for i in range(0, len(XINFO_RESP2), 2)}
    assert parse_xinfo(as_map) == want
    redis6 = [b"length", 0, b"last-generated-id", b"5-0", b"first-entry", None, b"last-entry", None]
    assert parse_xinfo(redis6) == StreamInfo(0, "5-0", None, None, None)


def test_parse_xread_resp2_resp3_and_timeout() -> None:
    entries = [[b"7-0", [b"op", b"delete", b"key", b"t#a#/p#K#e", b"tenant_id", b"t", b"app_id", b"a",
                         b"applied_at", b"7", b"removed", b"1"]],
               [b"8-1", [b"op", b"routes_refresh", b"coalesced", b"3"]]]
    for reply in ([[b"p:feed", entries]], {b"p:feed": entries}):
        got = parse_xread(reply)
        assert [e.id for e in got] == ["7-0", "8-1"]
        assert got[0].op is Op.DELETE and got[0].key == "t#a#/p#K#e" and got[0].removed == 1
        assert got[1].op is Op.ROUTES_REFRESH and got[1].extra == {"coalesced": "3"}
    assert parse_xread(None) == []


def test_an_entry_not_understood_is_treated_as_invalidate_all() -> None:
    entries = [[b"9-0", [b"op", b"purge_region", b"region", b"eu"]], [b"9-1", [b"x", b"1"]]]
    got = parse_xread([[b"p:feed", entries]])
    assert [(e.id, e.op) for e in got] == [("9-0", Op.INVALIDATE_ALL), ("9-1", Op.INVALIDATE_ALL)]


def test_parse_id_orders_numerically() -> None:
    assert parse_id("10-0") > parse_id("9-99")
    assert parse_id("5") == (5, 0)


@pytest.mark.parametrize(
    ("stream", "last_id", "read_any", "read", "kind"),
    [
        # caught up or behind, nothing removed
        (info(2, "5-0", 5, "4-0"), "5-0", True, 5, None),
        (info(5, "5-0", 5, "1-0"), "2-0", True, 2, None),
        # entries we never read were trimmed (XTRIM does not move max-deleted-entry-id)
        (info(2, "5-0", 5, "4-0"), "2-0", True, 2, GAP_TRIMMED),
        (info(0, "5-0", 5), "5-0", True, 5, None),
        (info(0, "6-0", 6), "5-0", True, 5, GAP_TRIMMED),
        # XDEL of an entry after ours
        (info(4, "5-0", 5, "1-0", max_deleted="4-0"), "3-0", True, 3, GAP_TRIMMED),
        (info(4, "5-0", 5, "1-0", max_deleted="2-0"), "3-0", True, 3, None),
        # the stream vanished or was recreated with lower ids
        (None, "5-0", True, 5, GAP_RESET),
        (None, "0-0", False, 0, None),
        (info(1, "3-0", 1, "3-0"), "5-0", True, 5, GAP_RESET),
        # Redis 6 (no entries-added): conservative first-entry test, only once an entry was read
        (info(2, "9-0", None, "8-0"), "5-0", True, 0, GAP_TRIMMED),
        (info(2, "9-0", None, "8-0"), "5-0", False, 0, None),
        (info(0, "9-0", None), "5-0", False, 0, GAP_TRIMMED),
        (info(3, "9-0", None, "5-0"), "5-0", True, 0, None),
    ],
)
def test_gap_reason(
    stream: StreamInfo | None, last_id: str, read_any: bool, read: int, kind: str | None
) -> None:
    got = gap_reason(stream, last_id, read_any=read_any, read=read)
    assert (got[0] if got else None) == kind
    if got:
        assert last_id in got[1] or "vanished" in got[1]
