"""The run's vocabulary: row states, outcomes, what a row follows, source types, plan statuses.

Each is an `enum.StrEnum`: its members *are* their strings, so SQLite, polars and JSON keep
plain text (`RowState.PENDING == "pending"`), while code that misspells one fails at import,
not in a 200,000-row run. Predicates over them ("did not succeed") are defined here, once.

One caution: polars infers an `Enum` dtype from a Python list of StrEnum members; build
frames from `.value`s (or from SQLite's text) when the column must stay `String`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


class RowState(StrEnum):
    """A row's state in the journal (the state machine is drawn in journal.py's docstring)."""

    PENDING = "pending"
    SENDING = "sending"  # committed before the create leaves: found later, the row is in doubt
    SUBMITTED = "submitted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"  # invalid in the manifest: never sent
    ERROR = "error"  # the submission failed for good
    SKIPPED = "skipped"  # already on the platform (--skip-existing)
    HANDED_OVER = "handed_over"  # unfinished, taken over by a retry run: this run leaves it alone
    HELD = "held"  # ready, outside a canary run's subset (subset.py): never sent until a resume takes it


# Rows a run still has to work: to send, in doubt, or waiting for their job.
UNFINISHED_STATES = (RowState.PENDING, RowState.SENDING, RowState.SUBMITTED)
# Rows the report shows as `interrupted`: unfinished here, or taken over by a retry run.
INTERRUPTED_STATES = (*UNFINISHED_STATES, RowState.HANDED_OVER)


class Outcome(StrEnum):
    """A row's outcome in the report: its final state, or `interrupted` when the run did not finish it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    ERROR = "error"
    TIMED_OUT = "timed_out"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"
    HELD = "held"
    SUBMITTED = "submitted"  # `run --no-wait`: created and handed to `collect`, not followed here


# The report's outcomes in the order summaries list them.
OUTCOMES: tuple[Outcome, ...] = tuple(Outcome)
# Outcomes that are not a failure: the exit code, "not succeeded" lists and retries leave them out.
# `held`: a canary run's row outside its subset, not yet sent (subset.py).
# `submitted`: a `run --no-wait` row whose job `collect` follows.
NOT_FAILED_OUTCOMES = frozenset({Outcome.SUCCEEDED, Outcome.SKIPPED, Outcome.HELD, Outcome.SUBMITTED})
# Outcomes `retry` takes (rejected rows need a fixed manifest; held rows are sent by `resume --all`).
RETRYABLE_OUTCOMES = (Outcome.FAILED, Outcome.ERROR, Outcome.TIMED_OUT, Outcome.INTERRUPTED)


def is_failure(outcome: str) -> bool:
    """Whether a row with this outcome (or final state) counts as not succeeded."""
    return outcome not in NOT_FAILED_OUTCOMES


def did_not_succeed(column: str = "outcome") -> pl.Expr:
    """A polars filter for the rows whose outcome counts as not succeeded."""
    import polars as pl

    return ~pl.col(column).is_in([o.value for o in NOT_FAILED_OUTCOMES])


class Follow(StrEnum):
    """What a row follows instead of a job it created in this attempt (see journal.py)."""

    RECHECK = "recheck"  # a timed-out row re-checked by `retry`
    EXISTING = "existing"  # a job --skip-existing found still encoding
    EXISTING_ANY = "existing-any"  # the same under --skip-existing=any: its failure is reported, not resent
    ADOPTED = "adopted"  # --adopt-existing: a job an earlier run of this row created, this run's own now


# A followed job that fails sends its row again under these.
RESEND_ON_FAILURE = frozenset({Follow.RECHECK, Follow.EXISTING})


class SourceType(StrEnum):
    """Where a row's video comes from."""

    FILE = "file"  # a local file, uploaded
    URL = "url"  # a remote URL the platform fetches
    OBJECT = "object"  # s3://, gs://, az://: the platform fetches a URL signed for each attempt


class PlanStatus(StrEnum):
    """A manifest row's status in the plan, before anything is sent."""

    READY = "ready"
    REJECTED = "rejected"
    HELD = "held"  # outside a canary's subset (validate --limit/--rows/--sample, run --dry-run)


class SkipExisting(StrEnum):
    """--skip-existing: which jobs already on the platform keep a row from being sent (submit.py)."""

    NOT_FAILED = "not-failed"
    ANY = "any"


# What the report says of a row in these cases (the flags named are the ones that lead there).
EXISTING_MESSAGE = "a job with this ref_id already exists on the platform (--skip-existing)"
EXISTING_FAILED_MESSAGE = (
    "the job with this ref_id on the platform failed; not sent again (--skip-existing=any)"
)
ADOPTED_MESSAGE = (
    "adopted: the job an earlier run of this row created (--adopt-existing, e.g. a shard that lost its disk)"
)
NO_REF_ID_MESSAGE = (
    "not sent: --adopt-existing cannot look a row without ref_id up, so sending it might ingest it twice; give "
    "rows ref_ids (or shards a persistent volume), or pass --send-without-ref-id; `batch-ingest retry` sends it"
)
TIMED_OUT_MESSAGE = "the job did not finish within --job-timeout"
