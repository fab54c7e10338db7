"""From a manifest frame to a `Plan`: one row per manifest row, each either ready or rejected.

Row checks are polars expressions over the whole frame; only the file checks (one `stat`
per distinct path) and profile look-ups (one request per distinct profile) leave polars.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import stat
from collections import Counter
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from polars.expr.whenthen import ChainedThen, Then

from .errors import ManifestError, NotFoundError
from .journal import FRAME_SCHEMA
from .manifest import KNOWN_COLUMNS, RAGGED, SOURCE_COLUMNS, read_manifest
from .objects import SCHEMES, object_problem
from .redact import redact_url
from .report import REPORT_COLUMNS, profile_counts
from .text import first_few
from .vocabulary import PlanStatus, SourceType

INVALID_ROW = "INVALID_ROW"
DUPLICATE_KEY = "DUPLICATE_KEY"
PROFILE_NOT_FOUND = "JOB_PROFILE_NOT_FOUND"
_SCHEME = r"^[A-Za-z][A-Za-z0-9+.\-]*:"
_DRIVE = r"^[A-Za-z]:[\\/]"
_OBJECT_SCHEME = rf"(?i)^({'|'.join(SCHEMES)})://"
_HTTP = r"(?i)^https?://(?:[^/\s?#@]*@)?[^/\s?#@]+(?:[/?#]\S*)?$"
# Plan columns in order; the manifest's own other columns follow them.
PLAN_COLUMNS = (
    "row",
    "key",
    "ref_id",
    "source",
    "source_type",
    "source_path",
    "profile",
    "profile_kind",
    "profile_value",
    "job_profile_id",
    "name",
    "description",
    "bytes",
    "status",
    "error_code",
    "reason",
    "source_secret",
)
# Every name the plan, the journal's frame or the report uses. A manifest column with one of these
# names (or starting with "_", or ending in the join's "_journal") is carried as manifest_<name>.
RESERVED_COLUMNS = frozenset(PLAN_COLUMNS) | frozenset(REPORT_COLUMNS) | frozenset(FRAME_SCHEMA)
EXTRA_PREFIX = "manifest_"
# Longest cells a row may hold. The vendor publishes no limits: 2,048 characters is the longest
# URL that browsers, CDNs and HTTP servers accept everywhere; a ref_id travels in a URL path
# (`jobs/ref:<ref_id>`), so it is held to 255 like a file name.
MAX_URL_LENGTH = 2048
MAX_REF_ID_LENGTH = 255
# Column names people write for a known column; close spellings are found by `_looks_like`.
_ALIASES = {
    "url": "source",
    "video_url": "source",
    "file": "source_file",
    "path": "source_file",
    "file_path": "source_file",
    "filename": "source_file",
    "profile_id": "profile",
    "job_profile": "profile",
    "job_profile_id": "profile",
    "ref": "ref_id",
    "reference": "ref_id",
    "reference_id": "ref_id",
    "external_id": "ref_id",
    "title": "name",
}


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_KNOWN_SQUASHED = {_squash(k): k for k in KNOWN_COLUMNS}
_KNOWN_LETTERS = {k: Counter(k) for k in _KNOWN_SQUASHED}
CLOSE = 0.8  # difflib's ratio at which a column name is taken for a misspelt known one


def _looks_like(name: str) -> str | None:
    """The known column `name` is probably meant to be (a misspelling or a common alias), or None."""
    if name in _ALIASES:
        return _ALIASES[name]
    squashed = _squash(name)
    if squashed in _KNOWN_SQUASHED:
        return _KNOWN_SQUASHED[squashed]
    letters = set(squashed)
    for known, original in _KNOWN_SQUASHED.items():
        # A cheap upper bound of the letters the two share first: most names are nothing like a known one.
        counts = _KNOWN_LETTERS[known]
        shared = sum(counts[c] for c in letters.intersection(counts))
        if 2 * min(shared, len(squashed)) < CLOSE * (len(known) + len(squashed)):
            continue
        if difflib.SequenceMatcher(a=known, b=squashed, autojunk=False).ratio() >= CLOSE:
            return original
    return None


def account_for_columns(
    manifest: Path, columns: list[str], extra_columns: tuple[str, ...] = ()
) -> tuple[list[str], dict[str, str]]:
    """The extra columns and their report names; ManifestError (exit 2) for a column that looks like a
    misspelt known one (unless named in `extra_columns`) or whose report name would collide."""
    extras = [c for c in columns if c not in KNOWN_COLUMNS and c != RAGGED]
    allowed = {c.strip().lower() for c in extra_columns}
    unknown_allowed = sorted(allowed - set(extras))
    if unknown_allowed:
        raise ManifestError(
            f"{manifest}: --extra-columns names {', '.join(unknown_allowed)}, but the manifest has no such "
            f"extra column; its extra columns: {', '.join(extras) or '(none)'}"
        )
    suspicious = [(c, k) for c in extras if c not in allowed and (k := _looks_like(c)) is not None]
    if suspicious:
        listed = "; ".join(f"{c!r} looks like {k!r}" for c, k in suspicious)
        raise ManifestError(
            f"{manifest}: {listed}. A misspelt column would be ignored, not used: rename it, or pass "
            f"--extra-columns {','.join(c for c, _ in suspicious)} to carry it into the report as it is"
        )
    renamed = {
        c: EXTRA_PREFIX + c if c in RESERVED_COLUMNS or c.startswith("_") or c.endswith("_journal") else c
        for c in extras
    }
    seen: dict[str, str] = {}
    for original, name in renamed.items():
        if name in seen:
            raise ManifestError(
                f"{manifest}: columns {seen[name]!r} and {original!r} would both be carried into the report as "
                f"{name!r} (batch-ingest uses {name.removeprefix(EXTRA_PREFIX)!r} itself): rename one of them"
            )
        seen[name] = original
    return extras, renamed


@dataclass
class Plan:
    """The validated manifest: `frame` has PLAN_COLUMNS then the extra columns."""

    manifest: Path
    frame: pl.DataFrame
    extras: list[str]
    blank_rows: int = 0
    profiles_checked: bool = False
    notes: list[str] = field(default_factory=list)
    # row -> the real URL of a source that carries a credential; `frame` holds only its redacted form.
    secrets: dict[int, str] = field(default_factory=dict)
    profile_names: dict[int, str] = field(default_factory=dict)  # id -> name, of the profiles looked up

    @property
    def ready(self) -> pl.DataFrame:
        """Rows that will be submitted."""
        return self.frame.filter(pl.col("status") == PlanStatus.READY)

    @property
    def rejected(self) -> pl.DataFrame:
        """Rows that will not, with their reasons."""
        return self.frame.filter(pl.col("status") == PlanStatus.REJECTED)


def _text(columns: Collection[str], name: str) -> pl.Expr:
    """A text column, trimmed, empty as null (null when the manifest has no such column)."""
    if name in columns:
        expr = pl.col(name).cast(pl.String).str.strip_chars()
        return pl.when(expr == "").then(None).otherwise(expr)
    return pl.lit(None, dtype=pl.String)


def _reject(cond: pl.Expr, reason: pl.Expr | str, code: str = INVALID_ROW) -> tuple[pl.Expr, pl.Expr, str]:
    return cond, reason if isinstance(reason, pl.Expr) else pl.lit(reason), code


def _file_checks(paths: list[str]) -> dict[str, tuple[int | None, str | None]]:
    """For each distinct path: (size, None) when uploadable, else (None, reason)."""
    out: dict[str, tuple[int | None, str | None]] = {}
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            out[p] = (None, f"file not found: {p}")
            continue
        except OSError as exc:
            out[p] = (None, f"cannot read {p}: {exc.strerror}")
            continue
        if stat.S_ISDIR(st.st_mode):
            out[p] = (None, f"{p} is a folder, not a video file")
        elif not stat.S_ISREG(st.st_mode):
            out[p] = (None, f"{p} is not a regular file")
        elif st.st_size == 0:
            out[p] = (None, f"{p} is empty (0 bytes)")
        else:
            try:
                with open(p, "rb") as f:
                    f.read(1)
            except OSError as exc:
                out[p] = (None, f"cannot read {p}: {exc.strerror}")
                continue
            out[p] = (st.st_size, None)
    return out


def _derived_key(source: str, profile: str | None) -> str:
    digest = hashlib.sha256(f"{source}\x00{profile or ''}".encode()).hexdigest()[:20]
    return f"auto:{digest}"


def build_plan(
    frame: pl.DataFrame,
    manifest: Path,
    *,
    default_profile: str | None = None,
    extra_columns: tuple[str, ...] = (),
) -> Plan:
    """Validate every row; rejected rows keep their number and reason. Never drops a row silently.

    Each step below is one concern, in the order a row meets them: blank lines out, cells trimmed,
    sources and profiles classified, local files looked at, rules applied, credentials redacted,
    keys derived and duplicates found, statuses set."""
    extras, renamed = account_for_columns(manifest, frame.columns, extra_columns)
    schema = frame.schema  # read once: each read of it costs a walk of every column
    frame, blank_rows = _without_blank_lines(frame, schema)
    # Extras stay out of the working frame (each step over a wide frame costs a walk of every column)
    # and join it again, row for row, at the end; so no extra can ever meet a working column either.
    carried = frame.select(extras)
    work = _working_frame(frame, set(schema), manifest)
    del frame  # the working copy has what is needed; the caller passes the manifest's frame on, not keeps it
    work = _classify(work, default_profile)
    work = _look_at_files(work, manifest.resolve().parent)
    work = _apply_rules(work)
    work, secrets = _redact_credentials(work)
    work = _keys_and_statuses(work)
    out = _plan_columns(work, secrets)
    out = pl.concat([out, carried.rename(renamed)], how="horizontal") if extras else out
    notes = [f"{blank_rows} blank line(s) skipped: they are not rows"] if blank_rows else []
    if extras:
        carried_names = [c if renamed[c] == c else f"{c} (as {renamed[c]})" for c in extras]
        notes.append(f"columns carried into the report unchanged, not used: {first_few(carried_names)}")
    return Plan(
        manifest=manifest,
        frame=out,
        extras=[renamed[c] for c in extras],
        blank_rows=blank_rows,
        notes=notes,
        secrets=secrets,
    )


def _without_blank_lines(frame: pl.DataFrame, schema: pl.Schema) -> tuple[pl.DataFrame, int]:
    """The frame without its blank lines (every cell empty: they are not rows), and how many there were."""
    # Blank lines (every cell empty) are not rows; count them so the plan can say so.
    texts = [c for c, t in schema.items() if t in (pl.String, pl.Null) and c != RAGGED]
    others = [c for c, t in schema.items() if t not in (pl.String, pl.Null) and c != RAGGED]
    # One expression per kind of column, not one per column: linear in the width of the manifest.
    blank = pl.lit(True)
    if texts:
        joined = pl.concat_str([pl.col(texts).cast(pl.String).fill_null("")], separator="")
        blank = blank & (joined.str.strip_chars() == "")
    if others:
        blank = blank & pl.all_horizontal(pl.col(others).is_null())
    # Only a row without a source can be blank: check the whole width of those rows alone.
    no_source = pl.all_horizontal([_text(schema, c).is_null() for c in SOURCE_COLUMNS])
    candidates = (
        frame.select(pl.arg_where(no_source)).to_series() if frame.height else pl.Series([], dtype=pl.UInt32)
    )
    blank_at = (
        candidates.filter(frame[candidates.to_list()].select(blank).to_series())
        if len(candidates)
        else candidates
    )
    blank_rows = len(blank_at)
    if blank_rows:
        frame = frame.filter(~pl.int_range(pl.len(), dtype=pl.UInt32).is_in(blank_at.to_list()))
    return frame, blank_rows


def _working_frame(frame: pl.DataFrame, present_columns: set[str], manifest: Path) -> pl.DataFrame:
    """The known columns, trimmed (`_<name>`), with the row number; ManifestError when there are no rows."""
    # A cell is trimmed, and empty means missing; a column that needs neither is taken as it is
    # (shared with the manifest's frame, not copied: a million-row copy is a hundred MB).
    needs_work = (
        frame.select(
            pl.col(c).cast(pl.String).str.contains(r"^\s|\s$|^$").any().alias(c)
            for c in KNOWN_COLUMNS
            if c in present_columns
        ).row(0, named=True)
        if frame.height
        else {}
    )
    cells = [
        (_text(present_columns, c) if needs_work.get(c, True) else pl.col(c).cast(pl.String)).alias(f"_{c}")
        for c in KNOWN_COLUMNS
    ]
    work = frame.select(*cells, *([pl.col(RAGGED)] if RAGGED in present_columns else []))
    if work.height == 0:
        raise ManifestError(
            f"{manifest}: no rows: the manifest has a header ({', '.join(frame.columns)}) but no data rows"
        )
    work = work.with_row_index("row", offset=1).with_columns(pl.col("row").cast(pl.Int64))

    return work


def _classify(work: pl.DataFrame, default_profile: str | None) -> pl.DataFrame:
    """The row's one source, its type (URL or file), its profile and the profile's kind (id, ref, bad)."""
    present = [pl.col(f"_{c}").is_not_null().cast(pl.Int8) for c in SOURCE_COLUMNS]
    n_sources = pl.sum_horizontal(present)
    source = pl.coalesce([pl.col(f"_{c}") for c in SOURCE_COLUMNS])
    profile = pl.col("_profile").fill_null(
        pl.lit(default_profile.strip() if default_profile else None, pl.String)
    )
    work = work.with_columns(source.alias("source"), n_sources.alias("_n_sources"), profile.alias("profile"))

    has_scheme = pl.col("source").str.contains(_SCHEME) & ~pl.col("source").str.contains(_DRIVE)
    work = work.with_columns(
        pl.when(pl.col("source").is_null())
        .then(None)
        .when(pl.col("source").str.contains(_OBJECT_SCHEME))
        .then(pl.lit(SourceType.OBJECT.value))
        .when(has_scheme)
        .then(pl.lit(SourceType.URL.value))
        .otherwise(pl.lit(SourceType.FILE.value))
        .alias("source_type"),
    )
    profile_kind = (
        pl.when(pl.col("profile").is_null())
        .then(None)
        .when(pl.col("profile").str.contains(r"^[0-9]+$"))
        .then(pl.lit("id"))
        .when(pl.col("profile").str.contains(r"^ref:\S.*$"))
        .then(pl.lit("ref"))
        .otherwise(pl.lit("bad"))
    )
    work = work.with_columns(profile_kind.alias("profile_kind"))

    return work


def _look_at_files(work: pl.DataFrame, base: Path) -> pl.DataFrame:
    """Local files resolved against the manifest's folder, with their size or what is wrong with them."""
    # Files: resolve against the manifest's folder, then one stat per distinct path.
    raw_path = pl.col("source").str.replace(r"^~", str(Path.home()))
    work = work.with_columns(
        pl.when(pl.col("source_type") == SourceType.FILE)
        .then(
            pl.when(raw_path.str.starts_with("/"))
            .then(raw_path)
            .otherwise(pl.lit(str(base) + os.sep) + raw_path)
        )
        .alias("source_path")
    )
    paths = (
        work.filter(pl.col("source_type") == SourceType.FILE)["source_path"].unique().drop_nulls().to_list()
    )
    normalised = {p: os.path.normpath(p) for p in paths}
    checks = _file_checks(list(set(normalised.values())))
    # Looked up in place (no join, no re-sort): a manifest of URLs alone pays nothing here.
    work = (
        work.with_columns(
            pl.col("source_path")
            .replace_strict(
                {p: checks[n][0] for p, n in normalised.items()}, default=None, return_dtype=pl.Int64
            )
            .alias("bytes"),
            pl.col("source_path")
            .replace_strict(
                {p: checks[n][1] for p, n in normalised.items()}, default=None, return_dtype=pl.String
            )
            .alias("_file_problem"),
            pl.col("source_path")
            .replace_strict(normalised, default=None, return_dtype=pl.String)
            .alias("source_path"),
        )
        if paths
        else work.with_columns(
            pl.lit(None, pl.Int64).alias("bytes"), pl.lit(None, pl.String).alias("_file_problem")
        )
    )

    return work


def _apply_rules(work: pl.DataFrame) -> pl.DataFrame:
    """The first rule a row breaks, as its `reason` (null: the row is valid so far)."""
    is_http = pl.col("source").str.contains(_HTTP)
    scheme = pl.col("source").str.extract(r"^([A-Za-z][A-Za-z0-9+.\-]*):", 1).str.to_lowercase()
    ragged = pl.col(RAGGED) if RAGGED in work.columns else pl.lit(None, pl.String)
    objects = work.filter(pl.col("source_type") == SourceType.OBJECT)["source"].unique().to_list()
    problems = {src: object_problem(src) for src in objects}
    work = work.with_columns(
        pl.col("source")
        .replace_strict(problems, default=None, return_dtype=pl.String)
        .alias("_object_problem")
        if objects
        else pl.lit(None, pl.String).alias("_object_problem")
    )
    rules = [
        _reject(ragged.is_not_null(), ragged),
        _reject(
            pl.col("_n_sources") == 0,
            "empty source: give an http(s) URL, an s3://, gs:// or az:// object, or a local file path",
        ),
        _reject(pl.col("_n_sources") > 1, "more than one source (source, source_url, source_file): keep one"),
        _reject(
            pl.col("source").str.contains(r"\s") & (pl.col("source_type") == SourceType.URL),
            "the URL contains white space: percent-encode it",
        ),
        _reject(
            (pl.col("source_type") == SourceType.URL) & ~scheme.is_in(["http", "https"]),
            pl.format(
                "unsupported source scheme '{}:': use an http(s) URL, an s3://, gs:// or az:// object, "
                "or a local file path",
                scheme,
            ),
        ),
        _reject(pl.col("_object_problem").is_not_null(), pl.col("_object_problem")),
        _reject(
            (pl.col("source_type") == SourceType.URL) & ~is_http,
            "malformed URL: it needs a host, as in https://host/path",
        ),
        _reject(
            (pl.col("source_type") == SourceType.URL) & (pl.col("source").str.len_chars() > MAX_URL_LENGTH),
            pl.format(
                f"the URL is {{}} characters long; the longest accepted is {MAX_URL_LENGTH}",
                pl.col("source").str.len_chars(),
            ),
        ),
        _reject(
            pl.col("_ref_id").str.len_chars() > MAX_REF_ID_LENGTH,
            pl.format(
                f"ref_id is {{}} characters long; the longest accepted is {MAX_REF_ID_LENGTH}",
                pl.col("_ref_id").str.len_chars(),
            ),
        ),
        _reject(pl.col("_file_problem").is_not_null(), pl.col("_file_problem")),
        _reject(
            pl.col("profile_kind") == "bad",
            pl.format(
                "malformed profile '{}': use a numeric job profile id or ref:<ref_id>", pl.col("profile")
            ),
        ),
        _reject(
            pl.col("source_type").is_in([SourceType.URL.value, SourceType.OBJECT.value])
            & pl.col("profile").is_null(),
            "a remote URL needs a job profile: fill the profile column or pass --profile",
        ),
    ]
    reason: Then | ChainedThen = pl.when(rules[0][0]).then(rules[0][1])
    for cond, why, _ in rules[1:]:
        reason = reason.when(cond).then(why)
    work = work.with_columns(reason.otherwise(None).alias("reason"))

    return work


def _redact_credentials(work: pl.DataFrame) -> tuple[pl.DataFrame, dict[int, str]]:
    """Sources with a credential replaced by their redacted form, and the real URLs by row (kept in memory)."""
    # A URL with a credential in it (user:password@, a signature) is kept in memory only: the plan,
    # the journal and the key see its redacted form (the same object signed twice is the same video).
    suspects = work.filter((pl.col("source_type") == SourceType.URL) & pl.col("source").str.contains("[@?]"))
    secrets: dict[int, str] = {}
    redacted: dict[int, str] = {}
    for row, url in suspects.select("row", "source").iter_rows():
        shown = redact_url(url)
        if shown != url:
            secrets[row], redacted[row] = url, shown
    if secrets:
        work = work.with_columns(
            pl.col("row")
            .replace_strict(redacted, default=pl.col("source"), return_dtype=pl.String)
            .alias("source")
        )

    return work, secrets


def _keys_and_statuses(work: pl.DataFrame) -> pl.DataFrame:
    """Row keys (ref_id, or derived from source and profile), duplicates rejected, statuses and profile ids."""
    # Row keys: ref_id, or derived from source and profile. Later duplicates are rejected.
    key_source = (
        pl.when(pl.col("source_type") == SourceType.FILE)
        .then(pl.col("source_path"))
        .otherwise(pl.col("source"))
    )
    work = work.with_columns(key_source.alias("_key_source"))
    # Derived keys (a sha256 each) only for the rows without a ref_id, in one pass over plain strings;
    # rows are numbered from 1 in frame order, so row - 1 is the position to fill.
    unkeyed = work.filter(pl.col("_ref_id").is_null()).select("row", "_key_source", "profile")
    keys = work["_ref_id"].alias("key")
    if unkeyed.height:
        keys = keys.scatter(
            unkeyed["row"] - 1,
            [
                _derived_key(s or "", p)
                for s, p in zip(unkeyed["_key_source"].to_list(), unkeyed["profile"].to_list(), strict=True)
            ],
        )
    del unkeyed
    work = work.with_columns(keys)
    # Later rows with a key already seen are duplicates; the first row of each such key is looked up
    # among the duplicated keys alone (a window over every key costs hundreds of MB at a million rows).
    repeated = work.select(pl.col("key").is_first_distinct().not_()).to_series()
    if repeated.any():
        dup_keys = work.filter(repeated)["key"].unique()
        firsts = (
            work.filter(pl.col("key").is_in(dup_keys.implode()))
            .group_by("key")
            .agg(pl.col("row").min().alias("_first"))
        )
        first_row = pl.col("key").replace_strict(firsts["key"], firsts["_first"], default=pl.col("row"))
        is_dup = pl.col("reason").is_null() & repeated
    else:
        first_row, is_dup = pl.col("row"), pl.lit(False)
    work = work.with_columns(
        pl.when(is_dup)
        .then(
            pl.format(
                "duplicate of row {} (same {})",
                first_row,
                pl.when(pl.col("_ref_id").is_not_null())
                .then(pl.lit("ref_id"))
                .otherwise(pl.lit("source and profile")),
            )
        )
        .otherwise(pl.col("reason"))
        .alias("reason"),
        pl.when(is_dup)
        .then(pl.lit(DUPLICATE_KEY))
        .when(pl.col("reason").is_not_null())
        .then(pl.lit(INVALID_ROW))
        .otherwise(None)
        .alias("error_code"),
    )
    del repeated
    # A duplicate-row rejection must not hide the first row's key from a later row: keys stay unique
    # among ready rows only, and a rejected row's key gets its row number so the journal can hold it.
    work = work.with_columns(
        pl.when(pl.col("reason").is_null())
        .then(pl.lit(PlanStatus.READY))
        .otherwise(pl.lit(PlanStatus.REJECTED))
        .alias("status"),
        pl.when(pl.col("reason").is_null())
        .then(pl.col("key"))
        .otherwise(pl.format("rejected:{}", pl.col("row")))
        .alias("key"),
        pl.when(pl.col("profile_kind") == "id")
        .then(pl.col("profile").str.to_integer(strict=False))
        .otherwise(None)
        .alias("job_profile_id"),
        pl.when(pl.col("profile_kind") == "ref")
        .then(pl.col("profile").str.slice(4))
        .when(pl.col("profile_kind") == "id")
        .then(pl.col("profile"))
        .otherwise(None)
        .alias("profile_value"),
    )
    return work


def _plan_columns(work: pl.DataFrame, secrets: dict[int, str]) -> pl.DataFrame:
    """The plan's own columns, in order."""
    secret_flag = pl.col("row").is_in(list(secrets)) if secrets else pl.lit(False)
    out = work.select(
        pl.col("row"),
        pl.col("key"),
        pl.col("_ref_id").alias("ref_id"),
        pl.col("source"),
        pl.col("source_type"),
        pl.col("source_path"),
        pl.col("profile"),
        pl.col("profile_kind"),
        pl.col("profile_value"),
        pl.col("job_profile_id"),
        pl.col("_name").alias("name"),
        pl.col("_description").alias("description"),
        pl.col("bytes"),
        pl.col("status"),
        pl.col("error_code"),
        pl.col("reason"),
        secret_flag.alias("source_secret"),
    )
    return out


def plan_manifest(
    path: str | Path,
    *,
    fmt: str | None = None,
    default_profile: str | None = None,
    extra_columns: tuple[str, ...] = (),
    delimiter: str | None = None,
    encoding: str | None = None,
) -> Plan:
    """Read and validate a manifest (no network). Raises ManifestError for structural problems."""
    path = Path(path)
    return build_plan(
        read_manifest(path, fmt, delimiter=delimiter, encoding=encoding),
        path,
        default_profile=default_profile,
        extra_columns=extra_columns,
    )


async def resolve_profiles(plan: Plan, client) -> Plan:  # client: SmartStreamClient
    """Look up each distinct profile once; fill `job_profile_id`; reject rows whose profile is unknown."""
    ready = plan.ready.filter(pl.col("profile_kind").is_not_null())
    wanted = ready.select("profile_kind", "profile_value").unique().rows()
    found: dict[tuple[str, str], int | None] = {}
    names: dict[int, str] = {}
    for kind, value in sorted(wanted):
        try:
            profile = await client.get_job_profile(f"ref:{value}" if kind == "ref" else value)
            found[(kind, value)] = int(profile.id)
            if profile.name:
                names[int(profile.id)] = profile.name
        except NotFoundError:
            found[(kind, value)] = None
    mapping = pl.DataFrame(
        {
            "profile_kind": [k for k, _ in found],
            "profile_value": [v for _, v in found],
            "_resolved": list(found.values()),
        },
        schema={"profile_kind": pl.String, "profile_value": pl.String, "_resolved": pl.Int64},
    )
    frame = plan.frame.join(mapping, on=["profile_kind", "profile_value"], how="left", maintain_order="left")
    unknown = (
        (pl.col("status") == PlanStatus.READY)
        & pl.col("profile_kind").is_not_null()
        & pl.col("_resolved").is_null()
    )
    frame = frame.with_columns(
        pl.when(pl.col("status") == PlanStatus.READY)
        .then(pl.col("_resolved"))
        .otherwise(pl.col("job_profile_id"))
        .alias("job_profile_id"),
        pl.when(unknown).then(pl.lit(PlanStatus.REJECTED)).otherwise(pl.col("status")).alias("status"),
        pl.when(unknown).then(pl.lit(PROFILE_NOT_FOUND)).otherwise(pl.col("error_code")).alias("error_code"),
        pl.when(unknown)
        .then(
            pl.format(
                "job profile {} not found on the platform: check it with `batch-ingest profiles`",
                pl.col("profile"),
            )
        )
        .otherwise(pl.col("reason"))
        .alias("reason"),
        pl.when(unknown).then(pl.format("rejected:{}", pl.col("row"))).otherwise(pl.col("key")).alias("key"),
    ).drop("_resolved")
    return Plan(plan.manifest, frame, plan.extras, plan.blank_rows, True, plan.notes, plan.secrets, names)


@dataclass(frozen=True)
class PlanInfo:
    """The plan in numbers, as `validate` prints it (and `--json` writes it, key for key)."""

    manifest: str
    rows: int
    to_submit: int
    urls: int
    files: int
    upload_bytes: int
    with_ref_id: int
    # Rows to submit per profile looked up (`101 (ref:hd)`: both spellings), or as written (`ref:x (unresolved)`).
    per_profile: dict[str, int]
    rejected: int
    rejected_rows: list[dict[str, Any]]  # the first few: row, source, error_code, reason
    profiles_checked: bool
    notes: list[str]
    objects: int = 0  # s3://, gs://, az:// sources (signed at submit time)
    fetch_bytes: int | None = None  # what the platform will fetch, when --check-sources measured it
    rejected_by_code: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The description as JSON-ready values, in the order `validate --json` has always written them."""
        return asdict(self)


def describe_plan(plan: Plan, *, max_rejected: int = 100, skip_existing: str | None = None) -> PlanInfo:
    """The plan in numbers: rows to submit, rejected rows with reasons, counts per profile, bytes."""
    ready, rejected = plan.ready, plan.rejected
    notes = list(plan.notes)
    if skip_existing:
        no_ref = ready.filter(pl.col("ref_id").is_null())["row"].to_list()
        if no_ref:
            notes.append(
                f"--skip-existing: {len(no_ref)} row(s) have no ref_id, so the platform cannot be asked about them: "
                f"they are always sent (rows {first_few(no_ref)})"
            )
    # Per profile looked up (two spellings of one profile are one line), or as written when it was not.
    per_profile = profile_counts(ready, pl.lit(plan.profiles_checked), plan.profile_names).iter_rows()
    return PlanInfo(
        manifest=str(plan.manifest),
        rows=plan.frame.height,
        to_submit=ready.height,
        urls=int((ready["source_type"] == SourceType.URL).sum()),
        files=int((ready["source_type"] == SourceType.FILE).sum()),
        upload_bytes=int(ready["bytes"].fill_null(0).sum()),
        with_ref_id=int(ready["ref_id"].is_not_null().sum()),
        per_profile=dict(per_profile),
        rejected=rejected.height,
        rejected_rows=rejected.head(max_rejected).select("row", "source", "error_code", "reason").to_dicts(),
        profiles_checked=plan.profiles_checked,
        notes=notes,
        objects=int((ready["source_type"] == SourceType.OBJECT).sum()),
        fetch_bytes=int(ready["source_bytes"].sum()) if "source_bytes" in ready.columns else None,
        rejected_by_code=dict(sorted(rejected.group_by("error_code").len().iter_rows())),
    )


def format_plan(info: PlanInfo) -> str:
    """The plan as text for a person."""
    lines = [
        f"{info.manifest}: {info.rows} rows, {info.to_submit} to submit "
        f"({info.urls} URLs, {info.objects} objects, {info.files} files, {info.upload_bytes} bytes to upload), "
        f"{info.rejected} rejected",
    ]
    if info.fetch_bytes is not None:
        lines.append(f"bytes the platform will fetch (from --check-sources): {info.fetch_bytes:,}")
    if info.rejected_by_code:
        lines.append("rejected by code: " + ", ".join(f"{k} {v}" for k, v in info.rejected_by_code.items()))
    if info.per_profile:
        lines.append("per profile: " + "; ".join(f"{k}: {v}" for k, v in info.per_profile.items()))
    for r in info.rejected_rows:
        lines.append(f"  row {r['row']} rejected [{r['error_code']}]: {r['reason']} ({r['source']})")
    if info.rejected > len(info.rejected_rows):
        lines.append(f"  ... and {info.rejected - len(info.rejected_rows)} more rejected rows")
    if not info.profiles_checked:
        lines.append("profiles were not checked against the platform: no API settings (see --help)")
    lines.extend(info.notes)
    return "\n".join(lines)
