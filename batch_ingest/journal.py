"""The run's SQLite journal: one row per manifest row, the single source of truth of a run.

Row states::

    pending ─▶ sending ─▶ submitted ─▶ succeeded | failed | timed_out
       │          │
       │          └─▶ error (the submission failed for good)
       └─▶ skipped (already on the platform)            rejected (invalid, never sent)
    held ─▶ pending (a canary run's ready row outside its subset, until a resume takes it)

    pending | sending | submitted ─▶ handed_over (a `retry` run took the row, with its job or doubt)
    submitted ─▶ pending (a *followed* job failed or vanished: the row is sent again)

A row may *follow* a job it did not create in this attempt (`follow`): `recheck` for a
timed-out row re-checked by `retry`, `existing` / `existing-any` for a job `--skip-existing`
found still encoding. A followed job that fails sends the row again (`existing-any`: it is
reported as failed); one that succeeds ends the row `succeeded` (`recheck`) or `skipped`.

`known_jobs` holds job ids this run must never adopt for a row in doubt: the jobs of the run
it retries, and failed jobs a row is being sent again after.

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
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from .errors import UsageError
from .vocabulary import INTERRUPTED_STATES, UNFINISHED_STATES, Follow, Outcome, PlanStatus, RowState

SCHEMA_VERSION = 2
DEFER_MAX = 256  # deferred state changes held before a commit is forced
FRAME_CHUNK_ROWS = 50_000  # rows read into the report frame at a time

# Indexes any version's journal may lack: created with the schema, and on every migrate (idempotent).
_INDEXES = ("CREATE INDEX IF NOT EXISTS rows_job ON rows(job_id) WHERE job_id IS NOT NULL;",)
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
    finished_at REAL,
    follow TEXT,
    handed_to TEXT,
    source_secret INTEGER
);
CREATE INDEX IF NOT EXISTS rows_state ON rows(state, row);
CREATE TABLE IF NOT EXISTS known_jobs (job_id TEXT PRIMARY KEY, origin TEXT NOT NULL);
""" + "\n".join(_INDEXES)
_MIGRATIONS = {  # from version N to N + 1
    1: (
        "ALTER TABLE rows ADD COLUMN follow TEXT",
        "ALTER TABLE rows ADD COLUMN handed_to TEXT",
        "ALTER TABLE rows ADD COLUMN source_secret INTEGER",
        # Version 1 marked a hand-over by state alone; version 2 also needs whom the row went to.
        "UPDATE rows SET handed_to = coalesce(nullif(replace(error_message, 'continued by the retry run in ', ''), "
        "error_message), 'an earlier retry run') WHERE state = 'handed_over'",
        "CREATE TABLE IF NOT EXISTS known_jobs (job_id TEXT PRIMARY KEY, origin TEXT NOT NULL)",
    ),
}
_ROW_COLUMNS = (
    "row",
    "key",
    "ref_id",
    "source",
    "source_type",
    "source_path",
    "job_profile_id",
    "name",
    "description",
    "bytes",
    "state",
    "error_code",
    "error_message",
    "source_secret",
)
_TASK_COLUMNS = (
    "row, key, ref_id, source, source_type, source_path, job_profile_id, name, description, bytes, "
    "state, job_id, sent_at, attempts, source_secret"
)


# The journal's side of the report join (`Journal.to_frame`).
FRAME_SCHEMA = {
    "row": pl.Int64,
    "key": pl.String,
    "state": pl.String,
    "job_id": pl.String,
    "media_id": pl.String,
    "journal_profile_id": pl.Int64,
    "encode_status": pl.Int64,
    "http_status": pl.Int64,
    "error_code": pl.String,
    "error_message": pl.String,
    "attempts": pl.Int64,
    "submitted_at": pl.Float64,
    "finished_at": pl.Float64,
    "job_created_at": pl.String,
    "job_updated_at": pl.String,
}


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
    source_secret: bool | None = None  # `source` is the redacted form of a URL with a credential


@dataclass(frozen=True)
class InFlight:
    """A submitted, unfinished row, as the poller needs it."""

    row: int
    key: str
    ref_id: str | None
    job_id: str
    submitted_at: float | None
    job_updated_at: str | None
    follow: str | None
    source_type: str | None = None
    job_created_at: str | None = None


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """What a poll learnt of one row's job: its encode status, and its final state once it has one."""

    row: int
    encode_status: int | None
    updated_at: str | None
    final: RowState | None  # None: still in progress
    now: float
    code: str | None = None  # the report's error code and message for a final state
    message: str | None = None


@dataclass(frozen=True)
class CarriedRow:
    """An unfinished (or re-checked) row a retry run takes over from the run it retries."""

    row: int
    state: str
    job_id: str | None
    sent_at: float | None
    submitted_at: float | None
    job_updated_at: str | None
    follow: str | None = None
    media_id: str | None = None
    encode_status: int | None = None
    job_created_at: str | None = None
    job_profile_id: int | None = None


NEW_SUFFIX = ".new"  # a journal being built (see Journal.create)


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort where a folder cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Journal:
    """Open with `Journal.create` (new run) or `Journal.open` (resume, report)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._deferred: list[tuple[str, tuple]] = []
        self._deferred_jobs: set[str] = set()  # job ids in deferred writes (see `knows_job`)
        self._sending: list[tuple[int, float, asyncio.Future[None]]] = []

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    @classmethod
    def create(
        cls,
        path: Path,
        plan: pl.DataFrame,
        meta: dict[str, Any],
        *,
        held: tuple[list[int], str] | None = None,
    ) -> Journal:
        """A new journal holding every plan row: ready rows `pending`, the others `rejected`.

        `held`: (ready rows outside a canary subset, the reason shown for them): they start `held`."""
        if path.exists():
            raise UsageError(
                f"{path} already exists: a run folder holds one journal; resume that run instead"
            )
        # Built whole beside its place, then renamed into it: a process killed meanwhile (a 200,000-row
        # journal takes seconds) leaves no half journal that every later start would refuse, only a
        # `.new` file that a new run in the folder clears (nothing was sent before the journal was).
        building = path.with_name(path.name + NEW_SUFFIX)
        for leftover in (building, *(building.with_name(building.name + s) for s in ("-wal", "-shm"))):
            leftover.unlink(missing_ok=True)
        # Created private first: SQLite gives the -wal and -shm files the database file's mode.
        os.close(os.open(building, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        conn = cls._connect(building)
        journal = cls(building, conn)
        conn.executescript(_SCHEMA)
        is_held = pl.col("row").is_in(held[0]) if held else pl.lit(False)
        frame = plan.select(
            "row",
            "key",
            "ref_id",
            "source",
            "source_type",
            "source_path",
            "job_profile_id",
            "name",
            "description",
            "bytes",
            pl.when(pl.col("status") != PlanStatus.READY)
            .then(pl.lit(RowState.REJECTED))
            .when(is_held)
            .then(pl.lit(RowState.HELD))
            .otherwise(pl.lit(RowState.PENDING))
            .alias("state"),
            "error_code",
            pl.when(is_held)
            .then(pl.lit(held[1] if held else None))
            .otherwise(pl.col("reason"))
            .alias("error_message"),
            (
                pl.col("source_secret").cast(pl.Int64)
                if "source_secret" in plan.columns
                else pl.lit(None, pl.Int64)
            ).alias("source_secret"),
        )
        with journal._tx():
            conn.executemany(
                f"INSERT INTO rows ({', '.join(_ROW_COLUMNS)}) VALUES ({', '.join('?' * len(_ROW_COLUMNS))})",
                frame.iter_rows(),
            )
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION))] + [(k, json.dumps(v)) for k, v in meta.items()],
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()  # the last connection: the -wal and -shm files go with it
        os.replace(building, path)
        fsync_folder(path.parent)
        return cls(path, cls._connect(path))

    @classmethod
    def open(cls, path: Path, *, migrate: bool = True) -> Journal:
        """An existing journal; refuses one of a newer schema version. An older one is brought up to
        date unless `migrate` is False (then only reads that every version supports are allowed:
        `meta`, `counts`, `has_unfinished`); call `migrate()` under the run's lock."""
        if not path.exists():
            raise UsageError(f"{path} does not exist: give the run folder that holds {path.name}")
        conn = cls._connect(path)
        try:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"{path} is not a batch-ingest journal: {exc}") from None
        found = int(version[0]) if version is not None and str(version[0]).isdigit() else None
        if found is None or found > SCHEMA_VERSION:
            raise UsageError(
                f"{path} has journal schema {version[0] if version else '?'}; this batch-ingest reads "
                f"{SCHEMA_VERSION} and older: use the batch-ingest that wrote it"
            )
        journal = cls(path, conn)
        if migrate:
            journal.migrate()
        return journal

    def migrate(self) -> None:
        """Bring an older journal up to SCHEMA_VERSION in one transaction (a no-op when it is current)."""
        with self._tx():
            version = int(
                self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            )
            for step in range(version, SCHEMA_VERSION):
                for sql in _MIGRATIONS[step]:
                    self._conn.execute(sql)
            for sql in _INDEXES:
                self._conn.execute(sql)
            self._conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

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
        if not self._deferred:
            self._deferred_jobs.clear()

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

    def _write_many(self, sql: str, params: list[tuple]) -> None:
        """Several rows of one statement, committed now."""
        if params:
            with self._tx():
                self._conn.executemany(sql, params)

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
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    # -- reads --------------------------------------------------------------------------------

    def tasks(self, states: Iterable[str], *, after_row: int = 0, limit: int = 1000) -> list[RowTask]:
        """Rows in `states`, in manifest order, after `after_row`."""
        self.flush()
        states = list(states)
        cur = self._conn.execute(
            f"SELECT {_TASK_COLUMNS} FROM rows WHERE state IN ({', '.join('?' * len(states))}) "
            "AND row > ? ORDER BY row LIMIT ?",
            (*states, after_row, limit),
        )
        return [RowTask(*r) for r in cur.fetchall()]

    def in_flight(self) -> list[InFlight]:
        """Every submitted, unfinished row."""
        self.flush()
        cur = self._conn.execute(
            "SELECT row, key, ref_id, job_id, submitted_at, job_updated_at, follow, source_type, job_created_at "
            "FROM rows WHERE state = ? "
            "ORDER BY row",
            (RowState.SUBMITTED,),
        )
        return [InFlight(*r) for r in cur.fetchall()]

    def task(self, row: int) -> RowTask | None:
        """One row as a submitter needs it."""
        self.flush()
        found = self._conn.execute(f"SELECT {_TASK_COLUMNS} FROM rows WHERE row = ?", (row,)).fetchone()
        return RowTask(*found) if found else None

    def counts(self) -> dict[str, int]:
        """Rows per state."""
        self.flush()
        return dict(self._conn.execute("SELECT state, count(*) FROM rows GROUP BY state").fetchall())

    def job_ids(self) -> set[str]:
        """Every job id the run has recorded or must never adopt (see `known_jobs`)."""
        self.flush()
        rows = {r[0] for r in self._conn.execute("SELECT job_id FROM rows WHERE job_id IS NOT NULL")}
        return rows | {r[0] for r in self._conn.execute("SELECT job_id FROM known_jobs")}

    def knows_job(self, job_id: str) -> bool:
        """True when a row of this run holds `job_id`, or the run must never adopt it (`known_jobs`):
        asked of the journal, not of a set in memory, which would grow by a job id per row."""
        if job_id in self._deferred_jobs:  # written, but not committed yet
            return True
        return (
            self._conn.execute(
                "SELECT 1 FROM rows WHERE job_id = ? UNION ALL SELECT 1 FROM known_jobs WHERE job_id = ? LIMIT 1",
                (job_id, job_id),
            ).fetchone()
            is not None
        )

    def add_known_jobs(self, job_ids: Iterable[str], origin: str) -> None:
        """Jobs that are not this run's to adopt (another run's, or a failed job a row is sent again after)."""
        self._write_many(
            "INSERT OR IGNORE INTO known_jobs (job_id, origin) VALUES (?, ?)", [(j, origin) for j in job_ids]
        )

    def to_frame(self, first_row: int | None = None, last_row: int | None = None) -> pl.DataFrame:
        """Every row's journal state (or rows `first_row` to `last_row`) as a polars frame, in manifest order."""
        self.flush()
        cur = self._conn.execute(
            "SELECT row, key, state, job_id, media_id, job_profile_id, encode_status, http_status, error_code, "
            "error_message, attempts, submitted_at, finished_at, job_created_at, job_updated_at FROM rows "
            "WHERE row BETWEEN ? AND ? ORDER BY row",
            (first_row if first_row is not None else -(2**62), last_row if last_row is not None else 2**62),
        )
        # In chunks: a million rows as Python tuples at once would take most of a gigabyte.
        chunks = []
        while batch := cur.fetchmany(FRAME_CHUNK_ROWS):
            chunks.append(pl.DataFrame(batch, schema=FRAME_SCHEMA, orient="row"))
        if not chunks:
            return pl.DataFrame(schema=FRAME_SCHEMA)
        return pl.concat(chunks, rechunk=True) if len(chunks) > 1 else chunks[0]

    # -- state changes: committed before returning where `_write(..., durable=True)` or `_write_many`
    # -- says so; the others are deferred to the next commit (group commit, see `_write`) ----------

    def mark_sending(self, rows: list[int], now: float) -> None:
        """Rows about to be sent: committed before any of them leaves."""
        with self._tx():
            self._conn.executemany(
                "UPDATE rows SET state = ?, attempts = attempts + 1, sent_at = ? WHERE row = ?",
                [(RowState.SENDING, now, r) for r in rows],
            )

    def mark_pending(self, row: int) -> None:
        """The request surely never reached the server (or the look-up found nothing): send again."""
        self._write("UPDATE rows SET state = ? WHERE row = ?", (RowState.PENDING, row))

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
        follow: str | None = None,
        message: str | None = None,
    ) -> None:
        """The platform holds a job for the row (created, adopted after a look-up, or followed);
        `message` is what the report says of it meanwhile (why a found job is followed)."""
        self._deferred_jobs.add(job_id)
        self._write(
            "UPDATE rows SET state = ?, job_id = ?, media_id = ?, job_profile_id = coalesce(?, job_profile_id), "
            "encode_status = ?, job_created_at = ?, job_updated_at = ?, submitted_at = coalesce(submitted_at, ?), "
            "follow = ?, http_status = NULL, error_code = NULL, error_message = ? WHERE row = ?",
            (
                RowState.SUBMITTED,
                job_id,
                media_id,
                job_profile_id,
                encode_status,
                created_at,
                updated_at,
                now,
                follow,
                message,
                row,
            ),
        )

    def mark_existing(
        self,
        row: int,
        *,
        state: str,
        job_id: str,
        media_id: str | None,
        encode_status: int | None,
        job_profile_id: int | None,
        created_at: str | None,
        updated_at: str | None,
        now: float,
        message: str,
    ) -> None:
        """--skip-existing found a final job with the row's ref_id: `skipped` (it succeeded) or `failed`;
        `message` says so in the report."""
        code = "ENCODE_FAILED" if state == RowState.FAILED else None
        self._deferred_jobs.add(job_id)
        self._write(
            "UPDATE rows SET state = ?, job_id = ?, media_id = ?, encode_status = ?, "
            "job_profile_id = coalesce(?, job_profile_id), job_created_at = ?, job_updated_at = ?, finished_at = ?, "
            "error_code = ?, error_message = ? WHERE row = ?",
            (
                state,
                job_id,
                media_id,
                encode_status,
                job_profile_id,
                created_at,
                updated_at,
                now,
                code,
                message,
                row,
            ),
        )

    def carry_over(self, rows: list[CarriedRow]) -> None:
        """Take over rows of an earlier run (retry): their state, job and doubt, and what they follow."""
        self._write_many(
            "UPDATE rows SET state = ?, job_id = ?, sent_at = ?, submitted_at = ?, job_updated_at = ?, follow = ?, "
            "media_id = ?, encode_status = ?, job_created_at = ?, job_profile_id = coalesce(?, job_profile_id) "
            "WHERE row = ?",
            [
                (
                    c.state,
                    c.job_id,
                    c.sent_at,
                    c.submitted_at,
                    c.job_updated_at,
                    c.follow,
                    c.media_id,
                    c.encode_status,
                    c.job_created_at,
                    c.job_profile_id,
                    c.row,
                )
                for c in rows
            ],
        )

    def hand_over(self, rows: list[int], to_run: str) -> None:
        """Rows a retry run has taken: unfinished ones become `handed_over` (resume leaves them alone),
        final ones keep their outcome; a later retry of this run leaves every one of them alone."""
        self._write_many(
            "UPDATE rows SET handed_to = ?, "
            "state = CASE WHEN state IN (?, ?, ?) THEN ? ELSE state END, "
            "error_message = CASE WHEN state IN (?, ?, ?) THEN ? ELSE error_message END WHERE row = ?",
            [
                (
                    to_run,
                    *UNFINISHED_STATES,
                    RowState.HANDED_OVER,
                    *UNFINISHED_STATES,
                    f"continued by the retry run in {to_run}",
                    r,
                )
                for r in rows
            ],
        )

    def handed_to(self) -> dict[int, str]:
        """Rows a retry run already took, and that run's folder."""
        self.flush()
        return dict(
            self._conn.execute(
                "SELECT row, coalesce(handed_to, 'an earlier retry run') FROM rows WHERE handed_to IS NOT NULL "
                "OR state = ?",
                (RowState.HANDED_OVER,),
            ).fetchall()
        )

    def carried_rows(self, rows: Iterable[int]) -> list[CarriedRow]:
        """The state a retry run takes over for `rows`: unfinished rows keep job and doubt, timed-out
        rows keep their job to be re-checked; other rows start afresh (not returned)."""
        self.flush()
        wanted = set(rows)
        cur = self._conn.execute(
            "SELECT row, state, job_id, sent_at, submitted_at, job_updated_at, follow, media_id, encode_status, "
            "job_created_at, job_profile_id FROM rows WHERE state IN (?, ?, ?, ?) ORDER BY row",
            (*UNFINISHED_STATES, RowState.TIMED_OUT),
        )
        out = []
        for row, state, job_id, sent_at, submitted_at, updated_at, follow, *job in cur.fetchall():
            if row not in wanted:
                continue
            if state == RowState.TIMED_OUT:
                if job_id is None:
                    continue
                out.append(
                    CarriedRow(
                        row, RowState.SUBMITTED, job_id, sent_at, None, updated_at, Follow.RECHECK, *job
                    )
                )
            else:
                out.append(CarriedRow(row, state, job_id, sent_at, submitted_at, updated_at, follow, *job))
        return out

    def error_codes(self, rows: Iterable[int]) -> dict[tuple[str | None, int | None], list[int]]:
        """The rows among `rows` that ended `error` or `failed` with an error code or HTTP status, by
        (code, status)."""
        self.flush()
        wanted = set(rows)
        out: dict[tuple[str | None, int | None], list[int]] = {}
        cur = self._conn.execute(
            "SELECT row, error_code, http_status FROM rows "
            "WHERE state IN (?, ?) AND (error_code IS NOT NULL OR http_status IS NOT NULL) ORDER BY row",
            (RowState.ERROR, RowState.FAILED),  # an unfinished row's noted error was a look-up's
        )
        for row, code, status in cur.fetchall():
            if row in wanted:
                out.setdefault((code, status), []).append(row)
        return out

    def rows_without_ref(self) -> list[int]:
        """Rows still to send that have no ref_id (so --skip-existing cannot ask the platform about them)."""
        self.flush()
        return [
            r
            for (r,) in self._conn.execute(
                "SELECT row FROM rows WHERE ref_id IS NULL AND state IN (?, ?) ORDER BY row",
                (RowState.PENDING, RowState.SENDING),
            )
        ]

    def secret_rows(self) -> dict[int, str]:
        """Rows whose source is stored redacted (it carries a credential), with that redacted form."""
        self.flush()
        return dict(self._conn.execute("SELECT row, source FROM rows WHERE source_secret = 1").fetchall())

    def bytes_to_send(self) -> int:
        """Bytes of the local files still to upload (rows pending or in doubt)."""
        self.flush()
        found = self._conn.execute(
            "SELECT sum(bytes) FROM rows WHERE source_type = 'file' AND state IN (?, ?)",
            (RowState.PENDING, RowState.SENDING),
        ).fetchone()
        return int(found[0] or 0)

    def pending_ref_ids(self) -> set[str]:
        """The ref_ids of the rows still to send (what --skip-existing asks the platform about)."""
        self.flush()
        return {
            r
            for (r,) in self._conn.execute(
                "SELECT ref_id FROM rows WHERE state = ? AND ref_id IS NOT NULL", (RowState.PENDING,)
            )
        }

    def rows_with_outcomes(self, outcomes: Iterable[str], *, handed_to_collect: bool = False) -> list[int]:
        """Rows whose report outcome is one of `outcomes`, in manifest order. The outcome is the state,
        but an unfinished row (pending, sending, submitted, handed over) is `interrupted`, as the report has it;
        with `handed_to_collect` (the last segment was `run --no-wait`) a submitted row is `submitted`."""
        self.flush()
        outcomes = tuple(outcomes)
        states = {str(o) for o in outcomes if o not in (Outcome.INTERRUPTED, Outcome.SUBMITTED)}
        if Outcome.INTERRUPTED in outcomes:
            states |= {s for s in INTERRUPTED_STATES if not (handed_to_collect and s == RowState.SUBMITTED)}
        if Outcome.SUBMITTED in outcomes and handed_to_collect:
            states.add(RowState.SUBMITTED)
        if not states:
            return []
        return [
            r
            for (r,) in self._conn.execute(
                f"SELECT row FROM rows WHERE state IN ({', '.join('?' * len(states))}) ORDER BY row",
                sorted(states),
            )
        ]

    def held_rows(self) -> list[int]:
        """Rows a canary run holds back, in manifest order."""
        self.flush()
        return [
            r
            for (r,) in self._conn.execute(
                "SELECT row FROM rows WHERE state = ? ORDER BY row", (RowState.HELD,)
            )
        ]

    def take(self, rows: list[int]) -> None:
        """Held rows a resume takes into the run: they become `pending`, to be sent."""
        self._write_many(
            "UPDATE rows SET state = ?, error_message = NULL WHERE row = ? AND state = ?",
            [(RowState.PENDING, r, RowState.HELD) for r in rows],
        )

    def has_unfinished(self) -> bool:
        """True while some row is pending, sending or submitted."""
        self.flush()
        return (
            self._conn.execute(
                "SELECT 1 FROM rows WHERE state IN (?, ?, ?) LIMIT 1", UNFINISHED_STATES
            ).fetchone()
            is not None
        )

    def resend(self, row: int, old_job_id: str, reason: str) -> None:
        """A followed job failed or vanished: send the row again, never adopting the old job."""
        self._deferred_jobs.add(old_job_id)
        self._write("INSERT OR IGNORE INTO known_jobs (job_id, origin) VALUES (?, ?)", (old_job_id, reason))
        self._write(
            "UPDATE rows SET state = ?, job_id = NULL, media_id = NULL, encode_status = NULL, job_created_at = NULL, "
            "job_updated_at = NULL, submitted_at = NULL, follow = NULL, error_message = ? WHERE row = ?",
            (RowState.PENDING, reason, row),
        )

    def mark_error(
        self, row: int, *, http_status: int | None, code: str | None, message: str, now: float
    ) -> None:
        """The submission failed for good."""
        self._write(
            "UPDATE rows SET state = ?, http_status = ?, error_code = ?, error_message = ?, finished_at = ? "
            "WHERE row = ?",
            (RowState.ERROR, http_status, code, message, now, row),
        )

    def note_error(self, row: int, *, http_status: int | None, code: str | None, message: str) -> None:
        """Remember the last transient error of a row that is still being retried."""
        self._write(
            "UPDATE rows SET http_status = ?, error_code = ?, error_message = ? WHERE row = ?",
            (http_status, code, message, row),
        )

    def record_progress(self, updates: list[JobUpdate]) -> None:
        """Poll results in one transaction: encode statuses, and final states with their code and message."""
        if not updates:
            return
        with self._tx():
            for u in updates:
                if u.final is None:
                    self._conn.execute(
                        "UPDATE rows SET encode_status = ?, job_updated_at = ? WHERE row = ?",
                        (u.encode_status, u.updated_at, u.row),
                    )
                else:
                    self._conn.execute(
                        "UPDATE rows SET state = ?, encode_status = ?, job_updated_at = coalesce(?, job_updated_at), "
                        "finished_at = ?, error_code = ?, error_message = ? WHERE row = ?",
                        (u.final, u.encode_status, u.updated_at, u.now, u.code, u.message, u.row),
                    )
