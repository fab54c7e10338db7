"""The journal on its own: the row state machine, group commit, and what a crash between states leaves.

Every state change below is checked twice where it matters: through the journal's own reads, and
through a second SQLite connection, which sees only what is committed (what a crash would leave).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from batch_ingest.errors import UsageError
from batch_ingest.journal import DEFER_MAX, JobUpdate, Journal

from .helpers import PLAN_SCHEMA

T0 = 1_800_000_000.0
STAMP = "2027-01-15T08:00:00.000Z"


def plan(n: int, *, rejected: tuple[int, ...] = ()) -> pl.DataFrame:
    """A plan of `n` URL rows (row numbers from 1); rows in `rejected` are invalid."""
    return pl.DataFrame(
        [
            {
                "row": r,
                "key": f"ref-{r}",
                "ref_id": f"ref-{r}",
                "source": f"https://cdn.example.com/{r}.mp4",
                "source_type": "url",
                "source_path": None,
                "job_profile_id": 100,
                "name": None,
                "description": None,
                "bytes": None,
                "status": "rejected" if r in rejected else "ready",
                "error_code": "INVALID_ROW" if r in rejected else None,
                "reason": "bad source" if r in rejected else None,
            }
            for r in range(1, n + 1)
        ],
        schema=PLAN_SCHEMA,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    j = Journal.create(path, plan(4), {"run_id": "r1"})
    yield j
    try:
        j.close()
    except sqlite3.ProgrammingError:
        pass  # the test abandoned ("crashed") it already


def on_disk(path: Path, *columns: str) -> dict[int, Any]:
    """What a fresh connection (another process, or this one after a crash) sees: row -> columns."""
    conn = sqlite3.connect(path)
    try:
        cols = ", ".join(columns)
        return {
            r[0]: (r[1] if len(columns) == 1 else r[1:])
            for r in conn.execute(f"SELECT row, {cols} FROM rows ORDER BY row")
        }
    finally:
        conn.close()


def crash(journal: Journal) -> None:
    """The process dies: the connection goes away and nothing deferred in memory is ever committed."""
    journal._conn.close()


def update(row: int, status: int | None, stamp: str | None, final: Any, now: float, **kw: Any) -> JobUpdate:
    """A poll's result for one row (`final`: a state's plain string, or None while in progress)."""
    return JobUpdate(row=row, encode_status=status, updated_at=stamp, final=final, now=now, **kw)


def submit(journal: Journal, row: int, job_id: str, now: float = T0 + 1, **kw: Any) -> None:
    journal.mark_submitted(
        row,
        job_id=job_id,
        media_id=f"m-{job_id}",
        job_profile_id=100,
        encode_status=0,
        created_at=STAMP,
        updated_at=STAMP,
        now=now,
        **kw,
    )


def test_create_starts_ready_rows_pending_invalid_rejected_and_canary_outsiders_held(path):
    """Journal.create: ready rows `pending`, invalid rows `rejected` with their reason, `held` rows with theirs."""
    j = Journal.create(path, plan(4, rejected=(2,)), {"run_id": "r1"}, held=([4], "outside the canary"))
    assert j.counts() == {"pending": 2, "rejected": 1, "held": 1}
    assert on_disk(path, "state", "error_code", "error_message") == {
        1: ("pending", None, None),
        2: ("rejected", "INVALID_ROW", "bad source"),
        3: ("pending", None, None),
        4: ("held", None, "outside the canary"),
    }
    assert j.meta() == {"run_id": "r1", "schema_version": 2}
    j.close()
    with pytest.raises(UsageError, match="already exists"):
        Journal.create(path, plan(1), {})


def test_a_row_walks_pending_sending_submitted_to_each_final_state(journal, path):
    """The happy path of the state machine: each final state with its time, code and message."""
    journal.mark_sending([1, 2, 3], T0)
    for row in (1, 2, 3):
        submit(journal, row, f"job-{row}")
    assert [f.job_id for f in journal.in_flight()] == ["job-1", "job-2", "job-3"]
    journal.record_progress(
        [
            update(1, 2, "2027-01-15T08:01:00.000Z", "succeeded", T0 + 60),
            update(2, 3, None, "failed", T0 + 61, code="ENCODE_FAILED", message="status 3"),
            update(3, None, None, "timed_out", T0 + 62, code="JOB_TIMEOUT", message="too long"),
        ]
    )
    assert on_disk(
        path, "state", "encode_status", "error_code", "error_message", "attempts", "finished_at"
    ) == {
        1: ("succeeded", 2, None, None, 1, T0 + 60),
        2: ("failed", 3, "ENCODE_FAILED", "status 3", 1, T0 + 61),
        3: ("timed_out", None, "JOB_TIMEOUT", "too long", 1, T0 + 62),
        4: ("pending", None, None, None, 0, None),
    }
    # A final update without a stamp keeps the last one known.
    assert on_disk(path, "job_updated_at") == {1: "2027-01-15T08:01:00.000Z", 2: STAMP, 3: STAMP, 4: None}
    assert journal.in_flight() == []
    assert journal.has_unfinished()  # row 4 is still pending
    assert journal.rows_with_outcomes(["interrupted"]) == [4]


def test_progress_without_a_verdict_updates_the_job_but_keeps_the_row_submitted(journal, path):
    """record_progress with no final state stores the new encode status and stamp only."""
    journal.mark_sending([1], T0)
    submit(journal, 1, "job-1")
    journal.record_progress([update(1, 1, "2027-01-15T08:00:30.000Z", None, T0 + 30)])
    assert on_disk(path, "state", "encode_status", "job_updated_at", "finished_at") == {
        1: ("submitted", 1, "2027-01-15T08:00:30.000Z", None),
        2: ("pending", None, None, None),
        3: ("pending", None, None, None),
        4: ("pending", None, None, None),
    }


def test_sending_is_committed_before_it_returns_and_counts_an_attempt(journal, path):
    """`sending` is durable at once (the create may leave next); each attempt is counted with its time."""
    asyncio.run(journal.sending(1, T0))
    assert on_disk(path, "state", "attempts", "sent_at")[1] == ("sending", 1, T0)
    journal.mark_pending(1)
    asyncio.run(journal.sending(1, T0 + 5))
    assert on_disk(path, "state", "attempts", "sent_at")[1] == ("sending", 2, T0 + 5)


def test_rows_marked_sending_in_one_loop_turn_share_one_commit(journal, path):
    """Group commit: concurrent `sending` calls in one loop turn make a single transaction."""
    statements: list[str] = []
    journal._conn.set_trace_callback(statements.append)

    async def main() -> None:
        await asyncio.gather(
            journal.sending(1, T0), journal.sending(2, T0 + 0.1), journal.sending(3, T0 + 0.2)
        )
        await journal.sending(4, T0 + 1)  # a later turn: a commit of its own

    asyncio.run(main())
    journal._conn.set_trace_callback(None)
    assert statements.count("COMMIT") == 2
    # The batch is stamped with its first row's time: never later than any row's own send.
    assert on_disk(path, "state", "sent_at") == {
        1: ("sending", T0),
        2: ("sending", T0),
        3: ("sending", T0),
        4: ("sending", T0 + 1),
    }


def test_deferred_writes_reach_disk_only_at_a_flush_point(journal, path):
    """Group commit: non-durable changes stay in memory until flush, a read, close or a durable write."""
    journal.mark_sending([1, 2, 3], T0)
    submit(journal, 1, "job-1")
    journal.mark_pending(2)
    assert on_disk(path, "state") == {1: "sending", 2: "sending", 3: "sending", 4: "pending"}
    journal.flush()
    assert on_disk(path, "state") == {1: "submitted", 2: "pending", 3: "sending", 4: "pending"}

    journal.mark_error(3, http_status=400, code="BAD", message="refused", now=T0 + 2)
    assert on_disk(path, "state")[3] == "sending"
    assert journal.counts() == {"submitted": 1, "pending": 2, "error": 1}  # a read flushes first
    assert on_disk(path, "state")[3] == "error"

    journal.note_error(4, http_status=503, code=None, message="busy")
    asyncio.run(journal.sending(2, T0 + 3))  # a durable write carries the deferred ones with it
    assert on_disk(path, "state", "error_message") == {
        1: ("submitted", None),
        2: ("sending", None),
        3: ("error", "refused"),
        4: ("pending", "busy"),
    }


def test_deferred_writes_are_forced_out_at_defer_max(journal, path):
    """At most DEFER_MAX changes wait in memory: the one that reaches it commits them all."""
    for i in range(1, DEFER_MAX):
        journal.note_error(1, http_status=500, code=None, message=f"try {i}")
    assert on_disk(path, "error_message")[1] is None
    journal.note_error(1, http_status=500, code=None, message=f"try {DEFER_MAX}")
    assert on_disk(path, "error_message")[1] == f"try {DEFER_MAX}"  # the last one wins: order kept


def test_deferred_writes_commit_in_the_order_they_were_made(journal, path):
    """A row submitted, sent again after its job failed, and submitted anew ends with the new job."""
    journal.mark_sending([1], T0)
    submit(journal, 1, "job-a", follow="existing")
    journal.resend(1, "job-a", "job job-a failed: sent again")
    submit(journal, 1, "job-b")
    journal.flush()
    assert on_disk(path, "state", "job_id", "follow")[1] == ("submitted", "job-b", None)
    assert journal.job_ids() == {"job-a", "job-b"}  # job-a is known: never adopted for a doubt


def test_a_job_is_known_before_its_write_is_committed(journal):
    """knows_job sees deferred mark_submitted and resend job ids, so no other row's look-up adopts them."""
    journal.mark_sending([1, 2], T0)
    submit(journal, 1, "job-1")
    assert journal.knows_job("job-1")
    assert not journal.knows_job("job-2")
    journal.mark_submitted(
        2, job_id="job-2", media_id=None, job_profile_id=None, encode_status=None,
        created_at=None, updated_at=None, now=T0,
    )  # fmt: skip
    journal.resend(2, "job-2", "gone")
    journal.flush()
    assert journal.knows_job("job-1") and journal.knows_job("job-2")
    journal.add_known_jobs(["job-x"], "the retried run's")
    assert journal.knows_job("job-x")
    assert not journal.knows_job("job-y")


def test_a_failed_transaction_keeps_the_deferred_writes_for_the_next_commit(journal, path):
    """A commit that fails rolls back, but the deferred changes it carried are not lost."""
    journal.mark_sending([1], T0)
    submit(journal, 1, "job-1")
    with pytest.raises(TypeError):
        journal.set_meta(bad=object())  # not JSON: fails inside the transaction
    assert on_disk(path, "state")[1] == "sending"  # rolled back
    assert journal.knows_job("job-1")
    journal.flush()
    assert on_disk(path, "state", "job_id")[1] == ("submitted", "job-1")


def test_crash_while_sending_leaves_the_row_in_doubt_for_resume(journal, path):
    """Crash after `sending` (the create may have left): the reopened row is `sending`, with its send time."""
    asyncio.run(journal.sending(1, T0))
    submit(journal, 2, "job-2")  # deferred: lost in the crash
    crash(journal)
    reopened = Journal.open(path)
    doubt = reopened.tasks(["sending"])
    assert [(t.row, t.state, t.sent_at, t.attempts, t.job_id) for t in doubt] == [(1, "sending", T0, 1, None)]
    assert [t.row for t in reopened.tasks(["pending"])] == [2, 3, 4]
    assert reopened.in_flight() == []
    assert reopened.rows_with_outcomes(["interrupted"]) == [1, 2, 3, 4]
    reopened.close()


def test_crash_before_submitted_is_flushed_falls_back_to_sending_not_further(journal, path):
    """Crash between `submitted` (deferred) and its commit: the row is back in `sending`, looked up, never lost."""
    journal.mark_sending([1, 2], T0)
    submit(journal, 1, "job-1", now=T0 + 1)
    journal.flush()
    submit(journal, 2, "job-2", now=T0 + 2)
    journal.record_progress([update(1, 1, STAMP, None, T0 + 3)])  # commits, and row 2's submit with it
    journal.mark_error(3, http_status=400, code="BAD", message="refused", now=T0 + 4)  # deferred: lost
    crash(journal)
    reopened = Journal.open(path)
    assert [(f.row, f.job_id, f.submitted_at, f.job_updated_at) for f in reopened.in_flight()] == [
        (1, "job-1", T0 + 1, STAMP),
        (2, "job-2", T0 + 2, STAMP),
    ]
    assert reopened.counts() == {"submitted": 2, "pending": 2}
    reopened.close()


def test_final_states_recorded_by_a_poll_survive_a_crash(journal, path):
    """record_progress commits before returning: a verdict is never polled for twice."""
    journal.mark_sending([1], T0)
    submit(journal, 1, "job-1")
    journal.record_progress([update(1, 2, STAMP, "succeeded", T0 + 9)])
    crash(journal)
    reopened = Journal.open(path)
    assert reopened.counts() == {"succeeded": 1, "pending": 3}
    assert not reopened.in_flight()
    reopened.close()


def test_open_refuses_a_journal_of_a_newer_schema(journal, path):
    """A journal written by a newer batch-ingest is refused, not misread."""
    journal.set_meta(schema_version=99)
    journal.close()
    with pytest.raises(UsageError, match="schema 99"):
        Journal.open(path)


def test_a_journal_that_dies_while_being_built_leaves_no_half_journal(path, monkeypatch):
    """Killed (here: failing) while its rows go in, a new journal leaves only its `.new` file, which
    the next creation clears: never a `journal.sqlite` without its meta that every start refuses."""
    import types

    def dies(value: Any) -> str:
        raise KeyboardInterrupt  # as a kill -9 would: after the rows went in, before the meta

    monkeypatch.setattr("batch_ingest.journal.json", types.SimpleNamespace(dumps=dies))
    with pytest.raises(KeyboardInterrupt):
        Journal.create(path, plan(3), {"run_id": "r1"})
    monkeypatch.undo()
    assert not path.exists() and path.with_name(path.name + ".new").exists()
    j = Journal.create(path, plan(3), {"run_id": "r2"})
    assert j.meta()["run_id"] == "r2" and j.counts() == {"pending": 3}
    assert not path.with_name(path.name + ".new").exists()
    j.close()
