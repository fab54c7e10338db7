"""`run`: a manifest planned, a new run folder made for it, and its rows worked to the end.

`resume.py` continues a run, `retry.py` makes a new run of the rows of an earlier one that
did not succeed; all three open a `RunDir` (rundir.py) and hand it to `engine.work`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from .api.client import SmartStreamClient
from .engine import Work, work
from .options import RunOptions
from .plan import Plan, plan_manifest, resolve_profiles
from .progress import Progress
from .rundir import RunDir, RunResult
from .settings import PRIVATE_FIELDS, Settings
from .settings import SECRET_FIELDS as SECRET_SETTINGS
from .shard import Shard
from .subset import choose_subset, held_message, subset_record
from .vocabulary import SourceType

__all__ = [
    "RunOptions",
    "RunResult",
    "new_run_id",
    "plan_run",
    "run_manifest",
    "run_manifest_async",
    "run_meta",
]


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a short random suffix."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def run_meta(settings: Settings, options: RunOptions, **values: Any) -> dict[str, Any]:
    """What a new run (or a retry's new run) records about itself: ids, the non-secret settings, the options."""
    return {
        **values,
        # Neither secrets nor private values (email, the --notify URL): masked, they could not be used again.
        "settings": {
            k: v for k, v in settings.masked().items() if k not in SECRET_SETTINGS and k not in PRIVATE_FIELDS
        },
        "options": {
            "max_failures": options.max_failures,
            "default_profile": options.default_profile,
            "fmt": options.fmt,
            "delimiter": options.delimiter,
            "encoding": options.encoding,
            "skip_existing": options.skip_existing,
            "extra_columns": list(options.extra_columns),
            "no_wait": options.no_wait,
            "adopt_existing": options.adopt_existing,
            "send_without_ref_id": options.send_without_ref_id,
        },
    }


async def plan_run(manifest: Path, options: RunOptions, client: SmartStreamClient | None) -> Plan:
    """Read, validate and (with a client) resolve profiles: everything short of sending."""
    plan = plan_manifest(
        manifest,
        fmt=options.fmt,
        default_profile=options.default_profile,
        extra_columns=options.extra_columns,
        delimiter=options.delimiter,
        encoding=options.encoding,
    )
    if options.shard is not None:
        # On the plan the manifest alone makes: a row's shard never depends on what one process saw
        # of the platform (profiles) or of the sources (checks), and each shard checks only its rows.
        plan = _shard_plan(plan, options.shard)
    if client is not None:
        plan = await resolve_profiles(plan, client)
    return plan


async def run_manifest_async(
    manifest: str | Path,
    settings: Settings,
    options: RunOptions = RunOptions(),
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run a manifest to the end: every row submitted, polled and reported."""
    manifest = Path(manifest)
    progress = progress or Progress()
    settings.require_api()
    if options.adopt_existing and options.skip_existing:
        from .errors import UsageError

        raise UsageError(
            "--adopt-existing and --skip-existing answer the same question two ways (adopt the job as this "
            "run's, or skip the row): choose one"
        )
    if options.send_without_ref_id and not (options.adopt_existing or options.shard):
        from .errors import UsageError

        raise UsageError("--send-without-ref-id goes with --adopt-existing (or --shard, which implies it)")
    if options.no_wait and settings.max_in_flight:
        from .errors import UsageError

        raise UsageError(
            "--no-wait cannot keep --max-in-flight: only polling sees jobs end. Leave out one of them"
        )
    if options.shard is not None:
        resumed, options, settings = await _shard_start(manifest, settings, options, transport, progress)
        if resumed is not None:
            return resumed
    if options.run_dir is not None:
        RunDir.check_new(options.run_dir)  # before a single request
    started = time.time()
    async with settings.make_client(
        transport=transport, shared=True, member=str(options.run_dir.resolve()) if options.run_dir else None
    ) as client:
        plan = await plan_run(manifest, options, client)
        if options.check_sources is not None or options.probe is not None:
            from .sources import examine  # before the canary chooses: held rows are checked too

            plan = await examine(plan, settings, check=options.check_sources, probe=options.probe)
        taken = choose_subset(plan, options.subset)
        if not plan.ready.filter(pl.col("source_type") == SourceType.OBJECT).is_empty():
            from .sources import check_signing  # the rows sent now: held ones may go from elsewhere

            await check_signing(plan, settings.make_object_stores(), rows=taken.taken if taken else None)
        run_id = options.run_dir.name if options.run_dir else new_run_id()
        path = options.run_dir or Path(settings.reports_root) / run_id
        meta = run_meta(
            settings,
            options,
            run_id=run_id,
            manifest=str(manifest.resolve()),
            started_at=started,
            extras=plan.extras,
            profiles={str(k): v for k, v in plan.profile_names.items()},  # id -> name, for the reviews
        )
        if options.shard is not None:
            meta["shard"] = options.shard.record()
        held = None
        if options.subset is not None and taken is not None:
            meta["subsets"] = [subset_record("run", options.subset, len(taken.taken))]
            held = (taken.held, held_message(path, options.subset))
        with RunDir.create(path, plan.frame, meta, held=held) as run:
            if options.subset is not None and taken is not None:
                progress.message(
                    f"canary run ({options.subset.describe()}): {len(taken.taken)} of {plan.ready.height} ready rows "
                    + (
                        f"taken, {len(taken.held)} held back; `batch-ingest resume {path} --all` sends the rest"
                        if taken.held
                        else "taken: that is every ready row, nothing is held back"
                    )
                )
            spec = Work(
                settings,
                options,
                client,
                progress,
                "run",
                started=started,
                notes=tuple(plan.notes),
                secret_sources=plan.secrets,
            )
            return await work(run, spec)


async def _shard_start(
    manifest: Path,
    settings: Settings,
    options: RunOptions,
    transport: httpx.AsyncBaseTransport | None,
    progress: Progress,
) -> tuple[RunResult | None, RunOptions, Settings]:
    """A shard's folder under the run root: its run resumed when it holds one (a retried pod or array
    child), else the options and settings of a new run there (this shard's share of the budget)."""
    from dataclasses import replace

    from .errors import UsageError
    from .resume import resume_run_async
    from .runfiles import JOURNAL_FILE
    from .shard import check_root

    shard = options.shard
    assert shard is not None
    if options.run_dir is None:
        raise UsageError(
            "--shard needs --report-dir ROOT: the folder the shards share (a volume), where shard I of N "
            "keeps its run in ROOT/shard-I-of-N and finds it again when it is started again"
        )
    try:
        path = check_root(options.run_dir, shard, manifest)
    except OSError as exc:
        raise UsageError(
            f"cannot use {manifest} or --report-dir {options.run_dir} ({exc.strerror}): check both paths"
        ) from None
    if (path / JOURNAL_FILE).exists():
        with RunDir.open(path, error_log=False) as run:
            recorded = run.meta().get("shard") or {}
        mine = (shard.count, shard.index, shard.by)
        if (recorded.get("count"), recorded.get("index"), recorded.get("by")) != mine:
            raise UsageError(
                f"{path} holds a run that is not shard {shard.index} of {shard.count} by "
                f"{shard.by or 'key'}: check --shard and --shard-by"
            )
        progress.message(f"{path} holds this shard's run: resuming it")
        ignored = [
            flag
            for flag, given in (
                ("--limit/--rows/--sample", options.subset is not None),
                ("--check-sources", options.check_sources is not None),
                ("--probe", options.probe is not None),
            )
            if given
        ]
        if ignored:
            progress.message(
                f"{', '.join(ignored)} ignored: the shard's run resumes as it was planned "
                f"(`batch-ingest resume {path} --all` sends rows a canary held back)"
            )
        kept = replace(options, run_dir=path, shard=None, subset=None)
        return (
            await resume_run_async(path, settings, kept, transport=transport, progress=progress),
            options,
            settings,
        )
    if settings.rate and shard.count > 1 and settings.rate_store:
        progress.message(
            f"{shard.describe()}: --rate {settings.rate:g} is shared with every process on the rate store"
        )
    elif settings.rate and shard.count > 1:
        # --rate is the account's: without a shared store, N shards split it evenly.
        settings = replace(settings, rate=settings.rate / shard.count)
        progress.message(
            f"{shard.describe()}: this shard paces itself at {settings.rate:g} requests per minute, "
            f"1/{shard.count} of --rate"
        )
    if not options.skip_existing and not options.adopt_existing:
        # No folder: a first start, or a shard that lost its disk (a pod evicted without a volume). Its
        # jobs may exist already: rows with a ref_id are looked up before anything is sent.
        options = replace(options, adopt_existing=True)
        progress.message(
            f"{path} holds no run: if this shard ran before and lost its folder, its jobs are on the platform; "
            "rows with a ref_id are looked up and existing jobs adopted (--adopt-existing, implied)"
            + (
                ""
                if options.send_without_ref_id
                else "; rows without ref_id are not sent (--send-without-ref-id sends them)"
            )
        )
    return None, replace(options, run_dir=path), settings


def _shard_plan(plan: Plan, shard: Shard) -> Plan:
    """The plan's rows of this shard, with a note saying which and how many."""
    from dataclasses import replace

    from .shard import select

    frame = select(plan.frame, shard, plan.extras)
    rows = set(frame["row"].to_list())
    note = f"{shard.describe()}: {frame.height} of the manifest's {plan.frame.height} rows"
    return replace(
        plan,
        frame=frame,
        secrets={r: url for r, url in plan.secrets.items() if r in rows},
        notes=[*plan.notes, note],
    )


def run_manifest(
    manifest: str | Path,
    settings: Settings,
    options: RunOptions = RunOptions(),
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run a manifest from synchronous code (see `run_manifest_async`)."""
    return asyncio.run(
        run_manifest_async(manifest, settings, options, transport=transport, progress=progress)
    )
