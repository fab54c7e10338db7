"""The run's vocabulary: row states, outcomes, what a row follows, source types, plan statuses, and
which error codes a retry can fix.

Each of the first five is an `enum.StrEnum`: its members *are* their strings, so SQLite, polars and
JSON keep plain text (`RowState.PENDING == "pending"`), while code that misspells one fails at
import, not in a 200,000-row run. Predicates over them ("did not succeed") are defined here, once.

One caution: polars infers an `Enum` dtype from a Python list of StrEnum members; build
frames from `.value`s (or from SQLite's text) when the column must stay `String`.

Error codes stay plain strings (most are the API's own, and new ones arrive with it): what matters
here is which ones a retry can fix (`needs_fix_first`).
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


# Error codes, by whether sending the row again as it is can help. `retry` sends a row exactly as the
# run planned it (same source address, profile id and file size): a failure caused by the row, its
# source or the account fails the same way until someone fixes that. The codes come from the plan
# (plan.py), the source checks and probes (sources.py, probe.py, objects.py), the submitter (the API's
# own codes, errors.py) and the poller (poll.py).
#
# Failures a retry can fix: the platform or the network had a bad moment, or time ran out.
# ENCODE_FAILED is here: the API says no more than "failed", and a platform's encoder fails now and
# then; a source that is the cause is found by `validate --check-sources --probe`, not by the code.
TRANSIENT_CODES = frozenset(
    {
        "SERVER_ERROR",  # 5xx
        "TOO_MANY_REQUESTS",  # 429
        "SIGNATURE_EXPIRED",  # retried with a fresh (and longer: --presign-ttl) signature
        "JOB_TIMEOUT",  # re-checked, not re-sent
        "JOB_NOT_FOUND",  # the job vanished on the platform: the row gets a new one
        "ENCODE_FAILED",
        "SOURCE_UNREACHABLE",  # DNS, TLS, no answer: may be the network's moment
        "NO_REF_ID",  # held back on purpose (--adopt-existing): `retry` is how such a row is sent
    }
)
# Failures a retry cannot fix, with what to fix first. A row with one of these (or with an API answer
# 4xx other than 408 and 429, whatever its code) is sent again by `retry` as it is, to fail again.
FIX_FIRST: dict[str, str] = {
    "INVALID_ROW": "the row breaks a rule of the manifest (error_message says which): fix it in the manifest",
    "DUPLICATE_KEY": "another row has the same ref_id (or source and profile): drop one or give it its own ref_id",
    "JOB_PROFILE_NOT_FOUND": (
        "the job profile is not on the platform: fix the profile column (`batch-ingest profiles` lists the "
        "account's profiles)"
    ),
    "MEDIA_INVALID": (
        "the media is not a video the platform can ingest (error_message says why): replace or re-export the file"
    ),
    "SOURCE_NOT_FOUND": "the source does not exist: put it in place or correct its address",
    "SOURCE_FORBIDDEN": "the source refused access: grant read access to it (or correct the credentials)",
    "SOURCE_NOT_VIDEO": "the source is not a video (a web page, an empty object): correct its address",
    "SOURCE_SIGN_FAILED": (
        "the object's URL could not be signed here: set the store's credentials (error_message names them)"
    ),
    "SOURCE_UNREADABLE": (
        "the local file vanished, became unreadable or changed size since it was validated: put it back as it was"
    ),
    "STORAGE_NOT_FOUND": "the platform has no storage for this source: check the account's storage with SmartSTREAM",
    "BAD_REQUEST": "the API refused the request as malformed (error_message says why): correct the row",
    "UNAUTHORIZED": "the API refused the credentials: set a valid API key and token",
}
# API answers that a retry may get past: request timeout and rate limit (every other 4xx is permanent).
_RETRYABLE_4XX = frozenset({408, 429})


def needs_fix_first(code: str | None, http_status: int | None = None) -> bool:
    """Whether a row that ended with this error code (and HTTP status) would fail again if sent as it is."""
    if code in FIX_FIRST:
        return True
    if code in TRANSIENT_CODES:
        return False
    return http_status is not None and 400 <= http_status < 500 and http_status not in _RETRYABLE_4XX


def fix_for(code: str | None, http_status: int | None = None) -> str:
    """What to fix before a row with this error code is sent again (`needs_fix_first` holds)."""
    if code in FIX_FIRST:
        return FIX_FIRST[code]
    status = f"HTTP {http_status}" if http_status is not None else "an error"
    return (
        f"the API answered {status}, which a retry gets again (error_message says why): correct the row first"
    )
