"""The run's SQLite journal: one row per manifest row, the single source of truth of a run.

Row states::

    pending ─▶ sending ─▶ submitted ─▶ succeeded | failed | timed_out
       │          │
       │          └─▶ error (the submission failed for good)
       └─▶ skipped (already on the platform)            rejected (invalid, never sent)

    pending | sending | submitted ─▶ handed_over (a `retry` run took the row, with its job or doubt)

`sending` is committed *before* the request leaves; a row found in `sending` later is in
doubt and is looked up on the platform before it is ever sent again. Rows not finished
when a run stops stay as they are and show as `interrupted` in the report.

Durability: WAL mode with synchronous=FULL, so every committed state survives a process
crash (kill -9) and a power loss alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from .errors import UsageError

SCHEMA_VERSION = 1
PENDING, SENDING, SUBMITTED = "pending", "sending", "submitted"
SUCCEEDED, FAILED, TIMED_OUT = "succeeded", "failed", "timed_out"
REJECTED, ERROR, SKIPPED = "rejected", "error", "skipped"
HANDED_OVER = "handed_over"  # unfinished, and taken over by a retry run: this run leaves it alone
FINAL_STATES = frozenset({SUCCEEDED, FAILED, TIMED_OUT, REJECTED, ERROR, SKIPPED})
JOURNAL_FILE = "journal.sqlite"
DEFER_MAX = 256  # deferred state changes held before a commit is forced

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    row INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    ref_id TEXT,
    source TEXT,
    source_type TEXT,
    source_path TEXT,
    job_profile_id INTEGER,
    name TEXT,
    description TEXT,
    bytes INTEGER,
    state TEXT NOT NULL,
    job_id TEXT,
    media_id TEXT,
    encode_status INTEGER,
    job_created_at TEXT,
    job_updated_at TEXT,
    http_status INTEGER,
    error_code TEXT,
    error_message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    sent_at REAL,
    submitted_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS rows_state ON rows(state, row);
"""
_ROW_COLUMNS = (
    "row", "key", "ref_id", "source", "source_type", "source_path", "job_profile_id", "name",
    "description", "bytes", "state", "error_code", "error_message",
)  # fmt: skip


@dataclass(frozen=True)
class RowTask:
    """What a submitter needs of one row."""

    row: int
    key: str
    ref_id: str | None
    source: str
    source_type: str
    source_path: str | None
    job_profile_id: int | None
    name: str | None
    description: str | None
    bytes: int | None
    state: str
    job_id: str | None
    sent_at: float | None
    attempts: int


class Journal:
    """Open with `Journal.create` (new run) or `Journal.open` (resume, report)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._deferred: list[tuple[str, tuple]] = []
        self._sending: list[tuple[int, float, asyncio.Future[None]]] = []

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    @classmethod
    def create(cls, path: Path, plan: pl.DataFrame, meta: dict[str, Any]) -> Journal:
        """A new journal holding every plan row: ready rows `pending`, the others `rejected`."""
        if path.exists():
            raise UsageError(f"{path} already exists: resume that run, or choose another --report-dir")
        conn = cls._connect(path)
        journal = cls(path, conn)
        conn.executescript(_SCHEMA)
        frame = plan.select(
            "row", "key", "ref_id", "source", "source_type", "source_path", "job_profile_id", "name",
            "description", "bytes",
            pl.when(pl.col("status") == "ready").then(pl.lit(PENDING)).otherwise(pl.lit(REJECTED)).alias("state"),
            "error_code",
            pl.col("reason").alias("error_message"),
        )  # fmt: skip
        with journal._tx():
            conn.executemany(
                f"INSERT INTO rows ({', '.join(_ROW_COLUMNS)}) VALUES ({', '.join('?' * len(_ROW_COLUMNS))})",
                frame.iter_rows(),
            )
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION))] + [(k, json.dumps(v)) for k, v in meta.items()],
            )
        return journal

    @classmethod
    def open(cls, path: Path) -> Journal:
        """An existing journal; refuses one of another schema version."""
        if not path.exists():
            raise UsageError(f"{path} does not exist: give the run folder that holds {JOURNAL_FILE}")
        conn = cls._connect(path)
        try:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"{path} is not a batch-ingest journal: {exc}") from None
        if version is None or int(version[0]) != SCHEMA_VERSION:
            raise UsageError(
                f"{path} has journal schema {version[0] if version else '?'}; this batch-ingest reads {SCHEMA_VERSION}"
            )
        return cls(path, conn)

    def close(self) -> None:
        """Commit what is deferred and close the connection (checkpointing the WAL)."""
        self.flush()
        self._conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction; deferred writes go first, so they become durable with it."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            deferred, self._deferred = self._deferred, []
            for sql, group in itertools.groupby(deferred, key=lambda d: d[0]):  # order kept
                self._conn.executemany(sql, [params for _, params in group])
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            self._deferred = deferred + self._deferred
            raise
        self._conn.execute("COMMIT")

    def _write(self, sql: str, params: tuple, *, durable: bool = False) -> None:
        """A state change: committed now when `durable`, else with the next commit.

        Only `sending` must be on disk before its request leaves. Any other change lost in a
        crash leaves the row in an earlier state that resume handles safely (a `sending` row
        is looked up, a `submitted` one polled), at the cost of a request.
        """
        if durable:
            with self._tx():
                self._conn.execute(sql, params)
            return
        self._deferred.append((sql, params))
        if len(self._deferred) >= DEFER_MAX:
            self.flush()

    def flush(self) -> None:
        """Commit every deferred state change."""
        if self._deferred:
            with self._tx():
                pass

    async def sending(self, row: int, now: float) -> None:
        """Commit `row` as `sending`, grouped with every other row marked in the same loop turn."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._sending.append((row, now, fut))
        if len(self._sending) == 1:
            loop.call_soon(self._commit_sending)
        await fut

    def _commit_sending(self) -> None:
        batch, self._sending = self._sending, []
        try:
            self.mark_sending([r for r, _, _ in batch], batch[0][1])
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for _, _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    # -- meta ---------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        """Everything in the meta table, JSON-decoded."""
        self.flush()
        out = {}
        for key, value in self._conn.execute("SELECT key, value FROM meta"):
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        return out

    def set_meta(self, **values: Any) -> None:
        """Store (or replace) meta values."""
        with self._tx():
            self._conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()]
            )

    # -- reads --------------------------------------------------------------------------------

    def tasks(self, states: Iterable[str], *, after_row: int = 0, limit: int = 1000) -> list[RowTask]:
        """Rows in `states`, in manifest order, after `after_row`."""
        self.flush()
        states = list(states)
        cur = self._conn.execute(
            "SELECT row, key, ref_id, source, source_type, source_path, job_profile_id, name, description, bytes, "
            f"state, job_id, sent_at, attempts FROM rows WHERE state IN ({', '.join('?' * len(states))}) "
            "AND row > ? ORDER BY row LIMIT ?",
            (*states, after_row, limit),
        )
        return [RowTask(*r) for r in cur.fetchall()]

    def in_flight(self) -> list[tuple[int, str, float | None, str | None]]:
        """(row, job id, submitted_at, job updated_at) of every submitted, unfinished row."""
        self.flush()
        return self._conn.execute(
            "SELECT row, job_id, submitted_at, job_updated_at FROM rows WHERE state = ? ORDER BY row", (SUBMITTED,)
        ).fetchall()

    def counts(self) -> dict[str, int]:
        """Rows per state."""
        self.flush()
        return dict(self._conn.execute("SELECT state, count(*) FROM rows GROUP BY state").fetchall())

    def job_ids(self) -> set[str]:
        """Every job id the run has recorded (to never adopt one job for two rows)."""
        self.flush()
        return {r[0] for r in self._conn.execute("SELECT job_id FROM rows WHERE job_id IS NOT NULL")}

    def to_frame(self) -> pl.DataFrame:
        """Every row's journal state as a polars frame, in manifest order."""
        self.flush()
        cur = self._conn.execute(
            "SELECT row, key, state, job_id, media_id, job_profile_id, encode_status, http_status, error_code, "
            "error_message, attempts, submitted_at, finished_at, job_created_at, job_updated_at FROM rows ORDER BY row"
        )
        schema = {
            "row": pl.Int64, "key": pl.String, "state": pl.String, "job_id": pl.String, "media_id": pl.String,
            "journal_profile_id": pl.Int64, "encode_status": pl.Int64, "http_status": pl.Int64,
            "error_code": pl.String, "error_message": pl.String, "attempts": pl.Int64,
            "submitted_at": pl.Float64, "finished_at": pl.Float64, "job_created_at": pl.String,
            "job_updated_at": pl.String,
        }  # fmt: skip
        return pl.DataFrame(cur.fetchall(), schema=schema, orient="row")

    # -- state changes (each commits before returning) ------------------------------------------

    def mark_sending(self, rows: list[int], now: float) -> None:
        """Rows about to be sent: committed before any of them leaves."""
        with self._tx():
            self._conn.executemany(
                "UPDATE rows SET state = ?, attempts = attempts + 1, sent_at = ? WHERE row = ?",
                [(SENDING, now, r) for r in rows],
            )

    def mark_pending(self, row: int) -> None:
        """The request surely never reached the server (or the look-up found nothing): send again."""
        self._write("UPDATE rows SET state = ? WHERE row = ?", (PENDING, row))

    def mark_submitted(
        self,
        row: int,
        *,
        job_id: str,
        media_id: str | None,
        job_profile_id: int | None,
        encode_status: int | None,
        created_at: str | None,
        updated_at: str | None,
        now: float,
    ) -> None:
        """The platform holds a job for the row (created, or adopted after a look-up)."""
        self._write(
            "UPDATE rows SET state = ?, job_id = ?, media_id = ?, job_profile_id = coalesce(?, job_profile_id), "
            "encode_status = ?, job_created_at = ?, job_updated_at = ?, submitted_at = coalesce(submitted_at, ?), "
            "http_status = NULL, error_code = NULL, error_message = NULL WHERE row = ?",
            (SUBMITTED, job_id, media_id, job_profile_id, encode_status, created_at, updated_at, now, row),
        )

    def mark_skipped(self, row: int, *, job_id: str, media_id: str | None, encode_status: int | None,
                     job_profile_id: int | None, now: float) -> None:
        """The platform already holds a job with the row's ref_id (--skip-existing): record it, send nothing."""
        self._write(
            "UPDATE rows SET state = ?, job_id = ?, media_id = ?, encode_status = ?, "
            "job_profile_id = coalesce(?, job_profile_id), finished_at = ?, error_code = NULL, "
            "error_message = 'a job with this ref_id already exists on the platform' WHERE row = ?",
            (SKIPPED, job_id, media_id, encode_status, job_profile_id, now, row),
        )

    def carry_over(self, states: list[tuple]) -> None:
        """Copy unfinished states from an earlier run's journal (retry): (row, state, job_id, sent_at, submitted_at, updated_at)."""
        with self._tx():
            self._conn.executemany(
                "UPDATE rows SET state = ?, job_id = ?, sent_at = ?, submitted_at = ?, job_updated_at = ? WHERE row = ?",
                [(state, job_id, sent_at, submitted_at, updated_at, row) for row, state, job_id, sent_at, submitted_at, updated_at in states],
            )

    def hand_over(self, rows: list[int], to_run: str) -> None:
        """Unfinished rows another run has taken over: resuming this run must not touch them again."""
        with self._tx():
            self._conn.executemany(
                "UPDATE rows SET state = ?, error_message = ? WHERE row = ? AND state IN (?, ?, ?)",
                [(HANDED_OVER, f"continued by the retry run in {to_run}", r, PENDING, SENDING, SUBMITTED) for r in rows],
            )

    def unfinished(self) -> list[tuple]:
        """(row, state, job_id, sent_at, submitted_at, job_updated_at) of rows not yet final."""
        self.flush()
        return self._conn.execute(
            "SELECT row, state, job_id, sent_at, submitted_at, job_updated_at FROM rows WHERE state IN (?, ?, ?) ORDER BY row",
            (PENDING, SENDING, SUBMITTED),
        ).fetchall()

    def mark_error(self, row: int, *, http_status: int | None, code: str | None, message: str, now: float) -> None:
        """The submission failed for good."""
        self._write(
            "UPDATE rows SET state = ?, http_status = ?, error_code = ?, error_message = ?, finished_at = ? "
            "WHERE row = ?",
            (ERROR, http_status, code, message, now, row),
        )

    def note_error(self, row: int, *, http_status: int | None, code: str | None, message: str) -> None:
        """Remember the last transient error of a row that is still being retried."""
        self._write(
            "UPDATE rows SET http_status = ?, error_code = ?, error_message = ? WHERE row = ?",
            (http_status, code, message, row),
        )

    def record_progress(self, updates: list[tuple[int, int | None, str | None, str | None, float | None]]) -> None:
        """Poll results in one transaction: (row, encode_status, updated_at, final state or None, now)."""
        if not updates:
            return
        with self._tx():
            for row, status, updated_at, final, now in updates:
                if final is None:
                    self._conn.execute(
                        "UPDATE rows SET encode_status = ?, job_updated_at = ? WHERE row = ?", (status, updated_at, row)
                    )
                else:
                    code, message = (None, None)
                    if final == FAILED:
                        code, message = "ENCODE_FAILED", f"the encode ended with encode_status {status}"
                    elif final == TIMED_OUT:
                        code, message = "JOB_TIMEOUT", "the job did not finish within --job-timeout"
                    self._conn.execute(
                        "UPDATE rows SET state = ?, encode_status = ?, job_updated_at = coalesce(?, job_updated_at), "
                        "finished_at = ?, error_code = ?, error_message = ? WHERE row = ?",
                        (final, status, updated_at, now, code, message, row),
                    )

