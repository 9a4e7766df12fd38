"""SQS FIFO's deduplication interval as the twin emulates it (moto only compares with messages still queued)."""

from __future__ import annotations

from ehrbridge.local.emulator import DEDUP_WINDOW_S, DedupWindow


def test_an_id_is_a_duplicate_for_five_minutes_after_its_first_send() -> None:
    window = DedupWindow()
    assert DEDUP_WINDOW_S == 300
    assert window.admit("m1", 1000.0)
    assert not window.admit("m1", 1000.0 + 299.9)
    assert window.admit("m2", 1000.0 + 10)
    # Duplicates do not extend the interval: it ends 300 s after the FIRST send.
    assert window.admit("m1", 1000.0 + 300.0)
    assert not window.admit("m1", 1000.0 + 599.0)


def test_expired_ids_are_forgotten() -> None:
    window = DedupWindow(window_s=10)
    for i in range(100):
        assert window.admit(f"m{i}", float(i))
    assert len(window) <= 11  # only the last 10 s are kept
    assert not window.admit("m99", 100.0)
    assert window.admit("m0", 100.0)


def test_keys_are_opaque_so_a_message_group_scope_keys_by_group_and_id() -> None:
    window = DedupWindow()
    assert window.admit(("group-a", "m1"), 0.0)
    assert window.admit(("group-b", "m1"), 0.0)
    assert not window.admit(("group-a", "m1"), 1.0)
