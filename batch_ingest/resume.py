"""`resume`: continue a run from its journal; finished rows stay, in-doubt rows are looked up first.

A resume locks the run folder (`runlock.py`), sends credentials only to the API URL the user's
own flags, environment or config name (never silently to the one a run folder stores), and
keeps a row to one job. `retry` lives in retry.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from .engine import Work, finish, work
from .errors import BatchIngestError, UsageError
from .journal import Journal
from .options import RunOptions
from .plan import plan_manifest
from .progress import Progress
from .redact import redact_url
from .rundir import RunDir, RunResult, SegmentRecord, skip_mode
from .runfiles import JOURNAL_FILE
from .settings import PRIVATE_FIELDS, Settings
from .subset import Subset, subset_record
from .text import first_few

# Settings a resume does not take from the run folder: where credentials go is the user's word.
NOT_INHERITED = ("api_url",)


def stored_settings(run_dir: Path) -> dict[str, Any]:
    """The non-secret settings a run was started with, but the API URL (a layer under flags and
    environment on resume). Empty when `run_dir` holds no journal (the command reports that itself)."""
    if not (run_dir / JOURNAL_FILE).exists():
        return {}
    journal = Journal.open(run_dir / JOURNAL_FILE, migrate=False)  # not under the run's lock yet
    try:
        stored = journal.meta().get("settings") or {}
    finally:
        journal.close()
    from .redact import REDACTED

    # A store URL whose password was masked when it was recorded cannot be used again: it comes from
    # the flags or the environment, as credentials do.
    return {
        k: v
        for k, v in stored.items()
        if k not in NOT_INHERITED
        and k not in PRIVATE_FIELDS  # masked when an older version stored them
        and not (k == "rate_store" and REDACTED in str(v or ""))
    }


def recover_secret_sources(
    meta: dict[str, Any], stored: dict[int, str], progress: Progress
) -> dict[int, str]:
    """The real URLs of the rows whose source is stored redacted, read again from the run's manifest
    (matched by row and by their redacted form: a URL signed anew since is taken).

    A row whose URL the manifest no longer holds (gone, edited) is left out: it ends as an error
    naming the fix, and every other row goes on."""
    if not stored:
        return {}
    options = meta.get("options") or {}
    manifest = str(meta.get("manifest") or "")
    try:
        plan = plan_manifest(
            manifest,
            fmt=options.get("fmt"),
            default_profile=options.get("default_profile"),
            extra_columns=tuple(options.get("extra_columns") or ()),
            delimiter=options.get("delimiter"),
            encoding=options.get("encoding"),
        )
    except (BatchIngestError, OSError) as exc:
        progress.message(
            f"{len(stored)} row(s) have URLs with credentials, which are never stored, and the manifest "
            f"{manifest} cannot be read again ({exc}): those rows end as errors"
        )
        return {}
    # The same URL but for its credential (a URL signed anew is welcome): the row's own video.
    found = {row: url for row, url in plan.secrets.items() if stored.get(row) == redact_url(url)}
    if len(found) < len(stored):
        progress.message(
            f"{len(stored) - len(found)} row(s) have URLs with credentials that the manifest {manifest} no longer "
            "holds as they were: those rows end as errors"
        )
    return found


def check_api_url(run_dir: Path, meta: dict[str, Any], settings: Settings, options: RunOptions) -> None:
    """Refuse to send credentials to an API URL other than the run's own unless the user named it."""
    started_with = str((meta.get("settings") or {}).get("api_url") or "").rstrip("/")
    current = settings.api_url.rstrip("/")
    if not started_with or started_with == current or options.allow_api_url_change:
        return
    raise UsageError(
        f"{run_dir} was started against {started_with}, but the API URL now is {current} "
        "(from SMARTSTREAM_API_URL, the config file or the default). Credentials go only where you say: "
        f"pass --api-url {started_with} to continue against the run's own API, or --api-url {current} "
        "to continue against this one"
    )


async def continue_run(
    run: RunDir,
    settings: Settings,
    options: RunOptions,
    *,
    kind: str,
    started: float,
    transport: httpx.AsyncBaseTransport | None,
    progress: Progress,
) -> RunResult:
    """Work an existing journal (a resume, or a retry's new run) to its end on one client."""
    secrets = recover_secret_sources(run.meta(), run.journal.secret_rows(), progress)
    async with settings.make_client(
        transport=transport, shared=True, member=str(run.path.resolve())
    ) as client:
        spec = Work(settings, options, client, progress, kind, started=started, secret_sources=secrets)
        return await work(run, spec)


async def resume_run_async(
    run_dir: str | Path,
    settings: Settings,
    options: RunOptions = RunOptions(),
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Continue a run from its journal: finished rows stay, in-doubt rows are looked up, the rest sent.

    A run with nothing left to do changes no file: its report and summary are read back as they are.
    """
    run_dir = Path(run_dir)
    progress = progress or Progress()
    started = time.time()
    with RunDir.open(run_dir) as run:
        run.plan  # noqa: B018 - read now: a folder without a readable plan is refused before anything else
        if options.subset is not None:
            run.claim()
            check_api_url(run_dir, run.meta(), settings, options)
            settings.require_api()
            _take_held(run, options.subset, progress)
        if not run.journal.has_unfinished():
            done = run.finished_result()
            if done is not None and run.report_is_current():
                done.worked = False  # the monitor and the metrics heard of this run when it ended
                return done
            # Finished, but the report was never written (the process died just before): write it.
            run.claim()
            return finish(run, SegmentRecord("resume", started, started), progress)
        meta = run.meta()
        if meta.get("handover_pending"):
            retried = (meta.get("retry_of") or {}).get("run_dir")
            raise UsageError(
                f"{run_dir} is a retry run that stopped before {retried} let go of its rows, so that run still "
                f"owns them: resume {retried} (or retry it again) instead, and delete {run_dir}"
            )
        run.claim()
        check_api_url(run_dir, meta, settings, options)
        note_lost_store(meta, settings, progress)
        settings = _shard_rate(meta, settings, progress)
        stored = meta.get("options") or {}
        options = replace(
            options,
            max_failures=options.max_failures
            if options.max_failures is not None
            else stored.get("max_failures"),
            skip_existing=options.skip_existing or skip_mode(stored.get("skip_existing")),
            adopt_existing=options.adopt_existing or bool(stored.get("adopt_existing")),
            send_without_ref_id=options.send_without_ref_id or bool(stored.get("send_without_ref_id")),
            no_wait=options.no_wait,
        )
        settings.require_api()
        return await continue_run(
            run, settings, options, kind="resume", started=started, transport=transport, progress=progress
        )


def note_lost_store(meta: dict[str, Any], settings: Settings, progress: Progress) -> None:
    """Say so when the run shared its budget through a rate store and this process has none: a store
    URL with a password is never recorded, so it must be given again."""
    if (meta.get("settings") or {}).get("rate_store") and not settings.rate_store:
        progress.message(
            "warning: this run shared --rate through a rate store, and none is set now (a store URL with a "
            "password is never recorded): pass --rate-store or export SMARTSTREAM_RATE_STORE, or this process "
            "paces itself as if it were alone on the account"
        )


def _shard_rate(meta: dict[str, Any], settings: Settings, progress: Progress) -> Settings:
    """A shard resumed on its own: a --rate other than the one it ran at is the account's (as `run
    --shard` takes it), so the shard takes its 1/N of it, unless a rate store shares it."""
    shard = meta.get("shard") or {}
    count = int(shard.get("count") or 1)
    ran = meta.get("settings") or {}
    if count <= 1 or settings.rate_store or not settings.rate:
        return settings
    if settings.rate == ran.get("rate") and not ran.get("rate_store"):
        return settings  # the share it ran at

    progress.message(
        f"--rate {settings.rate:g} is the account's: this shard of {count} paces itself at "
        f"{settings.rate / count:g} requests per minute (--rate-store shares the whole of it instead)"
    )
    return replace(settings, rate=settings.rate / count)


def _take_held(run: RunDir, subset: Subset, progress: Progress) -> None:
    """Widen a canary run: the held rows `subset` chooses become pending, and the meta records it.

    A run that holds nothing back is left as it is (a repeated `resume --all` is a no-op)."""
    held = run.journal.held_rows()
    if not held:
        progress.message(f"{run.path} holds no rows back: {subset.describe()} takes nothing")
        return
    chosen = subset.choose(held)
    if not chosen:
        raise UsageError(
            f"{subset.describe()} takes none of the {len(held)} rows {run.path} holds back "
            f"(rows {first_few(held)}): choose among them, or pass --all"
        )
    run.journal.take(chosen)
    subsets = [*(run.meta().get("subsets") or []), subset_record("resume", subset, len(chosen))]
    run.journal.set_meta(subsets=subsets)
    progress.message(f"taking {len(chosen)} of the {len(held)} held rows ({subset.describe()})")


def resume_run(
    run_dir: str | Path, settings: Settings, options: RunOptions = RunOptions(), **kwargs: Any
) -> RunResult:
    """Resume a run from synchronous code (see `resume_run_async`)."""
    return asyncio.run(resume_run_async(run_dir, settings, options, **kwargs))
