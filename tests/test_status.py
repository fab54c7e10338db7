"""`batch-ingest status`: a run seen from another terminal, read-only, while it runs and after."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from batch_ingest.emulator import EmulatorConfig
from batch_ingest.errors import UsageError
from batch_ingest.journal import SCHEMA_VERSION, JobUpdate, Journal
from batch_ingest.runfiles import JOURNAL_FILE, SUMMARY_JSON
from batch_ingest.runlock import RunLock
from batch_ingest.shard import ROOT_RECORD
from batch_ingest.status import (
    RATE_WINDOW_S,
    JournalReader,
    LockState,
    Phase,
    RootStatus,
    RunStatus,
    probe_lock,
    read_journal,
    run_status,
    status_of,
    watch,
)
from batch_ingest.vocabulary import RowState

from .helpers import FLAGS, PLAN_SCHEMA, run_cli, spawn_cli, summary_of, write_manifest

NOW = 1_800_000_000.0

# -- end to end: a real run against the emulator, in a process of its own -------------------------

# 6 rows that encode for ten minutes (emulator time), 2 whose source cannot be fetched (they fail as
# they leave the queue), 1 the platform refuses (STORAGE_NOT_FOUND), 1 invalid (rejected).
MANIFEST = "source,profile,ref_id\n" + "".join(
    [
        *(f"https://cdn.example.com/v/{i}.mp4,100,r-{i}\n" for i in range(6)),
        "https://gone.invalid/a.mp4,100,dead-a\n",
        "https://gone.invalid/b.mp4,100,dead-b\n",
        "https://cdn.example.com/no-storage/c.mp4,100,nostore\n",
        "ftp://cdn.example.com/d.mp4,100,bad\n",
    ]
)
SLOW = EmulatorConfig(
    rate_limit=0, queue_seconds=0.05, encode_seconds=600, jitter=0.0, storage_missing_for=("no-storage",)
)


def _wait_for(what: Callable[[], bool], proc: subprocess.Popen, deadline_s: float = 60) -> None:
    """Until `what()` holds (polling the run as a user would), or fail naming the run's output."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if what():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=30) if proc.poll() is None else ("", "")
    pytest.fail(f"the run never got there (exit {proc.returncode}): {out} {err}")


def _all_sent(run_dir: Path) -> bool:
    if not (run_dir / JOURNAL_FILE).exists():
        return False
    counts = run_status(run_dir).counts
    return counts["submitted"] == 6 and counts["failed"] == 2 and counts["error"] == 1


def _jump(server, seconds: float) -> None:
    """The emulator's clock moves on (its encodes end) without anyone waiting."""
    base = server.store.clock
    server.store.clock = lambda: base() + seconds


def _files(folder: Path) -> dict[str, Any]:
    """Every file in `folder` with its content hash and times, and the folder's own mtime."""
    found: dict[str, Any] = {".": folder.stat().st_mtime_ns}
    for p in sorted(folder.iterdir()):
        found[p.name] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return found


def test_status_of_a_running_then_finished_run(tmp_path, emulator_server):
    server = emulator_server(SLOW)
    manifest = write_manifest(tmp_path, MANIFEST)
    run_dir = tmp_path / "run"
    proc = spawn_cli(["run", str(manifest), "--report-dir", str(run_dir), *FLAGS], server.env())
    try:
        _wait_for(lambda: _all_sent(run_dir), proc)

        running = run_status(run_dir)
        assert running.phase == Phase.RUNNING and running.pid == proc.pid
        assert running.remaining == 6 and running.rows == 10
        assert {k: v for k, v in running.counts.items() if v} == {
            "submitted": 6,
            "failed": 2,
            "error": 1,
            "rejected": 1,
        }
        assert running.submitted_per_min > 0 and running.finished_per_min > 0
        assert running.eta_s is not None and running.eta_s > 0  # 6 left at the rate the 3 ended
        assert {e.ref_id: e.code for e in running.errors} == {
            "dead-a": "ENCODE_FAILED",
            "dead-b": "ENCODE_FAILED",
            "nostore": "STORAGE_NOT_FOUND",
        }
        assert running.next_step is None

        result = run_cli(["status", str(run_dir)])
        assert result.exit_code == 0, result.output
        assert f"running, in use by process {proc.pid}" in result.output
        assert (
            "rows: 10: submitted 6, failed 2, rejected 1, error 1" in result.output
            and "left: 6 rows" in result.output
        )
        assert "ref_id nostore [error STORAGE_NOT_FOUND]" in result.output
        data = json.loads(run_cli(["status", str(run_dir), "--json"]).output)
        assert data["state"] == "running" and data["pid"] == proc.pid and data["remaining"] == 6
        assert data["counts"]["submitted"] == 6 and len(data["newest_errors"]) == 3

        # Status kept nothing: the run still holds its lock and goes on to its end.
        lock = probe_lock(run_dir)
        assert lock.held and lock.pid == proc.pid
        _jump(server, 700)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err  # the failed rows
    assert "Traceback" not in err

    before = _files(run_dir)
    finished = run_status(run_dir)
    assert finished.phase == Phase.FINISHED and finished.pid is None and finished.exit_code == 1
    summary = summary_of(run_dir)
    outcomes = {k: v for k, v in summary["outcomes"].items() if v}
    assert {k: v for k, v in finished.counts.items() if v} == outcomes
    assert outcomes == {"succeeded": 6, "failed": 2, "error": 1, "rejected": 1}
    assert finished.eta_s is None and finished.next_step is None
    for args in (
        ["status", str(run_dir)],
        ["status", str(run_dir), "--json"],
        ["status", str(run_dir), "--watch", "1"],
    ):
        result = run_cli(args)
        assert result.exit_code == 0 and "finished" in result.output, result.output
    # Read only: the journal byte-identical, no -wal or -shm left, not even the folder's mtime moved.
    assert _files(run_dir) == before
    RunLock(run_dir).acquire().release()  # and the lock is free


def test_a_resume_started_while_status_reads_goes_on(tmp_path, emulator_server):
    server = emulator_server(SLOW)
    manifest = write_manifest(tmp_path, MANIFEST)
    run_dir = tmp_path / "run"
    proc = spawn_cli(["run", str(manifest), "--report-dir", str(run_dir), *FLAGS], server.env())
    try:
        _wait_for(lambda: _all_sent(run_dir), proc)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err

    stopped = run_status(run_dir)
    assert stopped.phase == Phase.STOPPED and stopped.remaining == 6
    assert stopped.next_step == f"batch-ingest resume {run_dir}"
    result = run_cli(["status", str(run_dir)])
    assert "stopped, 6 of 10 rows unfinished" in result.output
    assert f"next: batch-ingest resume {run_dir}" in result.output

    # A reader in the middle of its snapshot holds nothing the resume needs: it runs to its end.
    _jump(server, 700)
    with JournalReader.open(run_dir / JOURNAL_FILE) as reader, reader.snapshot():
        assert reader.counts()["submitted"] == 6
        resumed = run_cli(["resume", str(run_dir), *FLAGS], server.env())
        assert resumed.exit_code == 1, resumed.output  # the failed rows, as before: not 75
        assert reader.counts()["submitted"] == 6  # still the snapshot it began with
    assert run_status(run_dir).phase == Phase.FINISHED
    assert summary_of(run_dir)["outcomes"]["succeeded"] == 6


# -- the status logic on journals built by hand ---------------------------------------------------


def plan(n: int, *, status: str = "ready") -> pl.DataFrame:
    """A plan of `n` URL rows (row numbers from 1), all `status`."""
    rows = [
        {
            "row": r,
            "key": f"ref-{r}",
            "ref_id": f"r-{r}",
            "source": f"https://cdn.example.com/{r}.mp4",
            "source_type": "url",
            "job_profile_id": 100,
            "status": status,
            "error_code": "INVALID_ROW" if status == "rejected" else None,
        }
        for r in range(1, n + 1)
    ]
    return pl.DataFrame(rows, schema=PLAN_SCHEMA)


def new_journal(run_dir: Path, n: int, **meta: Any) -> Journal:
    """A run folder whose journal holds `n` pending rows."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return Journal.create(run_dir / JOURNAL_FILE, plan(n), {"run_id": run_dir.name, **meta})


def submit(journal: Journal, rows: list[int], at: float) -> None:
    journal.mark_sending(rows, at)
    for r in rows:
        journal.mark_submitted(
            r,
            job_id=f"j{r}",
            media_id=None,
            job_profile_id=100,
            encode_status=0,
            created_at=None,
            updated_at=None,
            now=at,
        )
    journal.flush()


def finish(journal: Journal, rows: list[int], at: float, state: RowState = RowState.SUCCEEDED) -> None:
    code, message = (None, None) if state == RowState.SUCCEEDED else ("ENCODE_FAILED", "the encode failed")
    journal.record_progress([JobUpdate(r, 2, None, state, at, code, message) for r in rows])


@contextlib.contextmanager
def held(run_dir: Path, since: float = NOW - 86_400) -> Iterator[None]:
    """This process holds the run's lock, as a run does, since `since`."""
    lock = RunLock(run_dir).acquire()
    lock.write_pid()
    os.utime(lock.path, (since, since))
    try:
        yield
    finally:
        lock.release()


def test_rate_eta_and_newest_errors_of_a_running_run(tmp_path):
    run_dir = tmp_path / "run"
    journal = new_journal(run_dir, 100, started_at=NOW - 3600)
    submit(journal, list(range(1, 61)), NOW - 1000)  # long before the window
    finish(journal, list(range(1, 11)), NOW - 900)  # before it: not in the rate
    submit(journal, list(range(61, 71)), NOW - 100)
    finish(journal, list(range(11, 41)), NOW - 200)  # 30 in the last five minutes
    finish(journal, [41, 42], NOW - 50, RowState.FAILED)
    journal.mark_error(
        43, http_status=404, code="STORAGE_NOT_FOUND", message="Storage not found", now=NOW - 10
    )
    journal.note_error(44, http_status=503, code="SERVER_ERROR", message="try later")  # still retried
    journal.flush()
    with held(run_dir):  # the journal stays open too, as the run's own connection would be
        status = run_status(run_dir, now=NOW)
        text = run_cli(["status", str(run_dir), "--errors", "2"]).output
    journal.close()
    assert status.phase == Phase.RUNNING and status.pid == os.getpid()
    assert status.window_s == RATE_WINDOW_S
    assert status.finished_per_min == pytest.approx(33 / 5)  # 30 succeeded, 2 failed, 1 error
    assert status.submitted_per_min == pytest.approx(10 / 5)
    assert status.remaining == 100 - 43  # 30 pending, 27 submitted
    assert status.eta_s == pytest.approx(57 / (33 / 300))
    assert [(e.row, e.code) for e in status.errors] == [
        (43, "STORAGE_NOT_FOUND"),
        (42, "ENCODE_FAILED"),
        (41, "ENCODE_FAILED"),
        (44, "SERVER_ERROR"),  # still being retried; its attempt was long ago
    ]
    assert status.as_json()["eta_at"] is not None
    assert f"running, in use by process {os.getpid()}" in text
    assert "row 43 ref_id r-43 [error STORAGE_NOT_FOUND]" in text and "row 41" not in text  # --errors 2


def test_a_run_begun_recently_measures_its_rate_since_it_began(tmp_path):
    run_dir = tmp_path / "run"
    journal = new_journal(run_dir, 20)
    submit(journal, list(range(1, 11)), NOW - 60)
    finish(journal, list(range(1, 6)), NOW - 30)
    journal.close()
    with held(run_dir, since=NOW - 60):
        status = run_status(run_dir, now=NOW)
        assert run_status(run_dir, now=NOW - 55).eta_s is None  # nothing finished yet: no rate to go by
    assert status.window_s == pytest.approx(60)
    assert status.finished_per_min == pytest.approx(5) and status.submitted_per_min == pytest.approx(10)
    assert status.eta_s == pytest.approx(15 * 60 / 5)
    # Stopped: measured over its last work, from the first event in the span.
    stopped = run_status(run_dir, now=NOW + 86_400)
    assert stopped.window_s == pytest.approx(30) and stopped.finished_per_min == pytest.approx(10)


def test_stopped_runs_say_what_goes_on(tmp_path):
    journal = new_journal(tmp_path / "a", 4)
    submit(journal, [1, 2], NOW - 10)
    journal.close()
    stopped = run_status(tmp_path / "a", now=NOW)
    assert stopped.phase == Phase.STOPPED and stopped.note == "4 of 4 rows unfinished"
    assert stopped.next_step == f"batch-ingest resume {tmp_path / 'a'}"
    assert stopped.finished_per_min == 0 and stopped.eta_s is None

    journal = new_journal(tmp_path / "b", 2, no_wait=True)  # `run --no-wait`: collect follows the jobs
    submit(journal, [1, 2], NOW - 10)
    journal.close()
    assert run_status(tmp_path / "b").next_step == f"batch-ingest collect {tmp_path / 'b'}"

    # Every row final, but the report was never written after (the process died first).
    journal = new_journal(tmp_path / "c", 2, finished_at=NOW - 100)
    submit(journal, [1, 2], NOW - 50)
    finish(journal, [1, 2], NOW - 20)
    journal.close()
    (tmp_path / "c" / "report.parquet").write_bytes(b"PAR1")
    (tmp_path / "c" / SUMMARY_JSON).write_text(json.dumps({"finished_at": "2027-01-15T08:00:00+00:00"}))
    late = run_status(tmp_path / "c", now=NOW)
    assert late.phase == Phase.STOPPED and "report was not written" in late.note
    assert late.next_step == f"batch-ingest resume {tmp_path / 'c'}"


def test_a_finished_canary_run_names_the_held_rows(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    journal = Journal.create(
        run_dir / JOURNAL_FILE, plan(3), {"run_id": "run", "finished_at": NOW}, held=([2, 3], "held back")
    )
    submit(journal, [1], NOW - 20)
    finish(journal, [1], NOW - 10)
    journal.close()
    (run_dir / "report.parquet").write_bytes(b"PAR1")
    (run_dir / SUMMARY_JSON).write_text(
        json.dumps({"finished_at": datetime.fromtimestamp(NOW, UTC).isoformat()})
    )
    status = run_status(run_dir, now=NOW + 5)
    assert status.phase == Phase.FINISHED and "2 rows held back" in status.note
    assert status.next_step == f"batch-ingest resume {run_dir} --all"


def test_not_a_run_folder_is_a_usage_error_naming_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "nowhere", tmp_path / "empty", tmp_path / "file"):
        result = run_cli(["status", str(path)])
        assert result.exit_code == 2, result.output
        assert str(path) in result.output and "run folder" in result.output
        assert "Traceback" not in result.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / JOURNAL_FILE).write_bytes(b"not a database at all" * 100)
    result = run_cli(["status", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "cannot be read as a batch-ingest journal" in result.output
    new_journal(tmp_path / "newer", 1).close()
    conn = sqlite3.connect(tmp_path / "newer" / JOURNAL_FILE)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(UsageError, match="use the batch-ingest that wrote it"):
        run_status(tmp_path / "newer")


def test_a_read_raced_by_a_checkpoint_is_read_again(tmp_path):
    """The file-less read of a closed journal is checked afterwards: a process that wrote into the
    journal meanwhile makes it read again through SQLite's shared memory."""
    new_journal(tmp_path, 3).close()
    path = tmp_path / JOURNAL_FILE
    seen: list[int] = []

    def read(reader: JournalReader) -> int:
        pending = reader.counts()["pending"]
        seen.append(pending)
        if len(seen) == 1:  # a resume comes, writes and goes (its close checkpoints into the file)
            journal = Journal.open(path)
            submit(journal, [1], NOW)
            journal.close()
        return pending

    assert read_journal(path, LockState(False), read) == 2
    assert seen == [3, 2]


def test_watch_refreshes_while_running_and_ctrl_c_ends_it(tmp_path, monkeypatch):
    new_journal(tmp_path / "run", 2).close()
    shown: list[RunStatus | RootStatus] = []

    def sleep(seconds: float) -> None:
        assert seconds == 2.5
        if len(shown) == 3:
            raise KeyboardInterrupt

    with held(tmp_path / "run"):
        with pytest.raises(KeyboardInterrupt):
            watch(tmp_path / "run", 2.5, shown.append, sleep=sleep)
        assert [s.phase for s in shown] == [Phase.RUNNING] * 3
        # The command: JSON lines, and Ctrl-C is how one stops watching (exit 0).
        calls: list[float] = []

        def interrupted(seconds: float) -> None:
            calls.append(seconds)
            raise KeyboardInterrupt

        monkeypatch.setattr(time, "sleep", interrupted)
        result = run_cli(["status", str(tmp_path / "run"), "--watch", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert calls == [1.0] and json.loads(result.output)["state"] == "running"
    # Not running: one status, then it returns by itself.
    assert watch(tmp_path / "run", 1, shown.append, sleep=interrupted).phase == Phase.STOPPED


def test_a_run_root_of_shards_shows_each_shard_and_the_total(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / ROOT_RECORD).write_text(json.dumps({"count": 3}))
    first = new_journal(root / "shard-0-of-3", 4)
    submit(first, [1, 2, 3], NOW - 100)
    finish(first, [1, 2], NOW - 50)
    finish(first, [3], NOW - 40, RowState.FAILED)
    first.close()
    second = new_journal(root / "shard-1-of-3", 2)
    submit(second, [1], NOW - 30)
    second.close()
    (root / "shard-2-of-3").mkdir()  # created, never got its journal

    status = status_of(root, now=NOW)
    assert isinstance(status, RootStatus)
    assert status.phase == Phase.STOPPED and status.missing == ["shard-2-of-3"]
    assert (
        status.counts["pending"] == 2 and status.counts["succeeded"] == 2 and status.counts["submitted"] == 1
    )
    assert [e.shard for e in status.errors] == ["shard-0-of-3"]
    with held(root / "shard-1-of-3"):
        result = run_cli(["status", str(root)])
        data = json.loads(run_cli(["status", str(root), "--json"]).output)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{root}: run root of 3 shards, running"
    assert lines[1].startswith("  shard-0-of-3: stopped, 1 of 4 rows unfinished: 4 rows, 1 left")
    assert lines[2].startswith(f"  shard-1-of-3: running, in use by process {os.getpid()}: 2 rows, 2 left")
    assert lines[3].startswith("  shard-2-of-3: no run yet")
    assert lines[4] == "  total: 6 rows: pending 2, submitted 1, succeeded 2, failed 1"
    assert f"next: batch-ingest resume {root / 'shard-0-of-3'}" in result.output
    assert data["state"] == "running" and data["rows"] == 6 and data["missing"] == ["shard-2-of-3"]
    assert [s["path"] for s in data["shards"]] == [str(root / "shard-0-of-3"), str(root / "shard-1-of-3")]
