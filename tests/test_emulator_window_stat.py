"""The emulator's `max_requests_per_minute`: the most API requests in any rolling 60 s of its clock.

The store is driven directly on a fake clock: nothing sleeps.
"""

from __future__ import annotations

from batch_ingest.emulator import EmulatorConfig, create_app
from batch_ingest.emulator.store import Store

from .helpers import FakeClock


def test_requests_answered_429_count_too():
    clock = FakeClock()
    store = Store(EmulatorConfig(rate_limit=3), clock=clock)
    assert store.stats()["max_requests_per_minute"] == 0
    answers = [store.admit() for _ in range(5)]
    assert answers[:3] == [None] * 3 and all(wait is not None for wait in answers[3:])
    assert store.stats()["max_requests_per_minute"] == 5  # 3 admitted, 2 refused: the load was 5


def test_the_window_rolls_and_the_most_it_held_stays():
    clock = FakeClock()
    store = Store(EmulatorConfig(rate_limit=0), clock=clock)  # no limit: every request still counts
    for t in (0.0, 10.0, 30.0, 59.9):
        clock.now = 1_800_000_000.0 + t
        store.admit()
    assert store.stats()["max_requests_per_minute"] == 4
    # At t = 60 the request of t = 0 is out of (now - 60, now], as it is out of the limit's window.
    clock.now = 1_800_000_060.0
    store.admit()
    assert store.stats()["max_requests_per_minute"] == 4
    clock.now = 1_800_000_069.9  # (9.9, 69.9]: 10, 30, 59.9, 60 and this one
    store.admit()
    assert store.stats()["max_requests_per_minute"] == 5
    clock.now = 1_800_001_000.0  # long after: one request in its minute, the maximum stays
    store.admit()
    assert store.stats()["max_requests_per_minute"] == 5
    assert len(store._last_minute) == 1  # only the last minute is kept


def test_the_minute_is_the_emulators_own_under_time_scale():
    clock = FakeClock()
    app = create_app(EmulatorConfig(rate_limit=0, time_scale=10.0), clock=clock)
    store: Store = app.state.store
    # 12 requests, one every real second: 10 emulator seconds apart, so 6 in any emulator minute.
    for _ in range(12):
        store.admit()
        clock.now += 1.0
    assert store.stats()["max_requests_per_minute"] == 6
