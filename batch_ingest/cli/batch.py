"""The batch commands: run, validate, resume, retry, collect (`report` is in review.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import EXIT_ROWS_FAILED, BatchIngestError
from .common import (
    api_options,
    api_options_for,
    build_settings,
    check_writable,
    echo,
    emulator_for_run,
    handle_errors,
    log_options,
    main,
    progress_for,
    silence_stdout,
)
from .options import (
    check_sources_option,
    column_list,
    extra_columns_option,
    probe_choice,
    probe_options,
    reading_choice,
    reading_options,
    submit_options,
    subset_choice,
    subset_options,
)
from .outputs import Outputs, announce, announcing_failures, finish, window_choice

if TYPE_CHECKING:
    from ..options import ProbeOptions


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet", "ndjson"]),
    help="Manifest format (default: by extension).",
)
@click.option(
    "--profile",
    "default_profile",
    help="Job profile for rows with an empty profile cell (id or ref:<ref_id>).",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The run's folder [default reports/<run-id>].",
)
@click.option(
    "--dry-run", is_flag=True, help="Validate and print the plan; create no job (same as `validate`)."
)
@click.option("--emulator", is_flag=True, help="Run against the bundled emulator on a free loopback port.")
@click.option(
    "--html", type=click.Path(dir_okay=False, path_type=Path), help="Also write a self-contained HTML report."
)
@reading_options
@check_sources_option
@probe_options
@extra_columns_option
@subset_options("ready rows")
@click.option(
    "--shard",
    "shard_spec",
    metavar="I/N",
    help="Run shard I (0-based) of N: the rows whose key hashes to I. auto/N takes I from "
    "JOB_COMPLETION_INDEX (Kubernetes), AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch) or PARALLEL_SEQ (GNU "
    "parallel). The run lives in REPORT_DIR/shard-I-of-N and resumes when started again; each shard "
    "takes 1/N of --rate (all of it, shared, with --rate-store).",
)
@click.option(
    "--shard-by", metavar="COLUMN", help="With --shard: hash this column's value instead of the row's key."
)
@click.option(
    "--adopt-existing",
    is_flag=True,
    help="Look every row's ref_id up before sending and adopt a job found (follow it, count it as this "
    "run's): for a run whose folder was lost. Implied for a --shard with no folder yet.",
)
@click.option(
    "--send-without-ref-id",
    is_flag=True,
    help="With --adopt-existing (or --shard): send rows without ref_id too, though a run that lost its "
    "folder may have sent them already.",
)
@click.option(
    "--no-wait",
    is_flag=True,
    help="Submit every row, record the job ids and exit (0 when every row was submitted or succeeded); "
    "`batch-ingest collect` then follows the jobs of many runs with one poller.",
)
@submit_options
@handle_errors
def run(
    manifest: Path,
    fmt,
    default_profile,
    report_dir,
    max_failures,
    skip_existing,
    dry_run,
    emulator,
    html,
    quiet,
    check_sources,
    probe,
    max_size,
    max_duration,
    extra_columns,
    limit,
    rows_range,
    sample,
    seed,
    shard_spec,
    shard_by,
    adopt_existing,
    send_without_ref_id,
    no_wait,
    delimiter,
    encoding,
    **options: Any,
) -> None:
    """Submit every row of MANIFEST, poll until every job finished, and write the report.

    A canary run (--limit, --rows, --sample) takes only some ready rows and holds the rest back:
    they are reported `held`, and `batch-ingest resume RUN_DIR --all` sends them in the same run.

    Exit codes: 0 every row succeeded, was skipped or is held (with --no-wait: every row was submitted
    or ended); 1 some row did not; 2 usage, configuration or manifest error; 3 run aborted; 4 internal
    error; 75 the run folder is in use by another process; 130 interrupted.
    """
    subset = subset_choice(limit, rows_range, sample, seed)
    probing = probe_choice(probe, max_size, max_duration)
    reading = reading_choice(delimiter, encoding)
    shard = None
    if shard_spec is not None:
        from ..shard import parse_shard

        shard = parse_shard(shard_spec, by=shard_by)
    elif shard_by is not None:
        raise click.UsageError("--shard-by needs --shard I/N")
    if shard is not None and dry_run:
        raise click.UsageError("--dry-run plans the whole manifest: leave out --shard (or use validate)")
    if dry_run:
        as_json = options.pop("as_json", False)
        for name in ("log_file", "log_format", "metrics_file", "until", "max_submissions"):
            options.pop(name, None)
        _validate(
            manifest,
            options,
            as_json=as_json,
            fmt=fmt,
            default_profile=default_profile,
            emulator=emulator,
            extra_columns=extra_columns,
            skip_existing=skip_existing,
            check_sources=check_sources,
            probe=probing,
            subset=subset,
            reading=reading,
        )
        return
    from ..runner import RunOptions, run_manifest

    check_writable(html, "--html")
    outputs = Outputs(options)
    progress = progress_for(quiet, options)

    with announcing_failures(outputs, "run"), emulator_for_run(emulator, options):
        window = window_choice(options)
        settings = build_settings(options)
        outputs.settings = settings  # a failure from here on is announced with them
        run_options = RunOptions(
            run_dir=report_dir,
            fmt=fmt,
            default_profile=default_profile,
            max_failures=max_failures,
            skip_existing=skip_existing,
            extra_columns=column_list(extra_columns),
            handle_signals=True,
            subset=subset,
            check_sources=check_sources,
            probe=probing,
            shard=shard,
            no_wait=no_wait,
            adopt_existing=adopt_existing,
            send_without_ref_id=send_without_ref_id,
            **window,
            **reading,
        )
        result = run_manifest(manifest, settings, run_options, progress=progress)
    if html is not None:
        from ..review import write_html_report

        try:
            write_html_report([result.run_dir], html)
        except (BatchIngestError, OSError) as exc:  # the run is done: its exit code stands
            echo(f"batch-ingest: warning: the HTML report was not written: {exc}", err=True)
    finish(result, quiet, outputs, settings)


def _validate(
    manifest: Path,
    options: dict[str, Any],
    *,
    fmt: str | None,
    default_profile: str | None,
    emulator: bool,
    as_json: bool = False,
    extra_columns: str = "",
    skip_existing: str | None = None,
    upload_rate: str | None = None,
    check_sources: str | None = None,
    probe: ProbeOptions | None = None,
    subset=None,
    reading: dict[str, Any] | None = None,
) -> None:
    import asyncio  # with httpx, loaded only by the commands that talk to the API

    from ..api.ratelimit import parse_bandwidth
    from ..estimate import estimate_run, format_estimate
    from ..plan import describe_plan, format_plan
    from ..runner import RunOptions, plan_run

    upload_bps = 0.0
    if upload_rate is not None:
        try:
            upload_bps = parse_bandwidth(upload_rate)
        except ValueError:
            upload_bps = -1.0
        if upload_bps < 1:
            raise click.BadParameter(
                f"{upload_rate!r}: give your upload bandwidth as 10M (MiB/s), 1G or 500K, at least 1 byte per second",
                param_hint="--upload-rate",
            )

    with emulator_for_run(emulator, options):
        settings = build_settings(options)
        run_options = RunOptions(
            fmt=fmt,
            default_profile=default_profile,
            extra_columns=column_list(extra_columns),
            **(reading or {}),
        )

        async def go():
            try:
                settings.require_api()
            except BatchIngestError:
                return await plan_run(manifest, run_options, None)
            async with settings.make_client() as client:
                return await plan_run(manifest, run_options, client)

        plan = asyncio.run(go())
        if check_sources is not None or probe is not None:  # as `run` does: before a canary chooses
            from ..sources import examine

            plan = asyncio.run(examine(plan, settings, check=check_sources, probe=probe))
        if (plan.ready["source_type"] == "object").any():
            from ..sources import check_signing

            try:  # a warning here: the run may be meant for a machine that has the credentials
                asyncio.run(check_signing(plan, settings.make_object_stores()))
            except BatchIngestError as exc:
                plan.notes.append(f"warning: {str(exc).removesuffix('; nothing was sent')}: `run` would stop")
        if subset is not None:
            from ..subset import canary_plan

            plan = canary_plan(plan, subset)
        info = describe_plan(plan, skip_existing=skip_existing)
        estimate = estimate_run(
            info,
            rate_per_minute=settings.rate,
            upload_rate=upload_bps or settings.bwlimit,
            skip_existing=bool(skip_existing),
        )
    echo(
        json.dumps({**info.to_dict(), "estimate": estimate.to_dict()}, indent=2, default=str)
        if as_json
        else format_plan(info) + "\n" + format_estimate(estimate)
    )
    sys.exit(EXIT_ROWS_FAILED if info.rejected else 0)


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet", "ndjson"]),
    help="Manifest format (default: by extension).",
)
@click.option("--profile", "default_profile", help="Job profile for rows with an empty profile cell.")
@click.option("--emulator", is_flag=True, help="Check profiles against the bundled emulator.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--skip-existing",
    type=click.Choice(["not-failed", "any"]),
    is_flag=False,
    flag_value="not-failed",
    default=None,
    help="Plan for a run with --skip-existing: name the rows that cannot be skipped (no ref_id).",
)
@click.option(
    "--upload-rate",
    metavar="RATE",
    help="Your upload bandwidth to the platform (10M = 10 MiB/s, 1G, 500K), so the estimate includes uploads "
    "[default: --bwlimit when set, else uploads are left out of the estimate and it says so].",
)
@reading_options
@check_sources_option
@probe_options
@extra_columns_option
@subset_options("ready rows")
@api_options_for("plan")
@handle_errors
def validate(
    manifest: Path,
    fmt,
    default_profile,
    emulator,
    as_json,
    skip_existing,
    upload_rate,
    check_sources,
    probe,
    max_size,
    max_duration,
    extra_columns,
    limit,
    rows_range,
    sample,
    seed,
    delimiter,
    encoding,
    **options: Any,
) -> None:
    """Check MANIFEST, print the plan and how long the run will take; create no job.
    Exit 0 when no row is rejected, 1 otherwise.

    Profiles are checked against the platform when API settings are available. The estimate is
    the API requests over --rate (about 1.05 per job, measured), and uploads over --upload-rate.
    With --check-sources every URL source is fetched (its first byte), and every object looked up in
    its store, before anything else; with --probe every local file is opened as media.
    """
    _validate(
        manifest,
        options,
        fmt=fmt,
        default_profile=default_profile,
        emulator=emulator,
        as_json=as_json,
        extra_columns=extra_columns,
        skip_existing=skip_existing,
        upload_rate=upload_rate,
        check_sources=check_sources,
        probe=probe_choice(probe, max_size, max_duration),
        subset=subset_choice(limit, rows_range, sample, seed),
        reading=reading_choice(delimiter, encoding),
    )


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--all", "take_all", is_flag=True, help="Take every row a canary run held back, then continue.")
@subset_options("held rows")
@submit_options
@handle_errors
def resume(
    run_dir: Path,
    max_failures,
    skip_existing,
    quiet,
    take_all,
    limit,
    rows_range,
    sample,
    seed,
    **options: Any,
) -> None:
    """Continue the run in RUN_DIR from its journal and rewrite its report.

    Finished rows are left alone, submitted jobs are polled, rows whose create was in doubt
    are looked up on the platform before anything is sent again, and the rest are submitted.
    Resuming a finished run changes nothing. Credentials and the API URL come from flags, the
    environment or the config file as for `run` (a run started against another API URL is
    refused unless --api-url names one); other non-secret settings default to the run's own.

    A canary run's held rows are taken with --all, or some of them with --limit, --rows or
    --sample (chosen among the held rows); without these they stay held.
    """
    subset = subset_choice(limit, rows_range, sample, seed, take_all)
    from ..resume import resume_run, stored_settings
    from ..runner import RunOptions

    outputs = Outputs(options)
    progress = progress_for(quiet, options)
    explicit_url = options.get("api_url") is not None
    with announcing_failures(outputs, "resume"):
        window = window_choice(options)
        settings = build_settings(options, stored_settings(run_dir))
        outputs.settings = settings  # a failure from here on is announced with them
        run_options = RunOptions(
            max_failures=max_failures,
            skip_existing=skip_existing,
            handle_signals=True,
            allow_api_url_change=explicit_url,
            subset=subset,
            **window,
        )
        result = resume_run(run_dir, settings, run_options, progress=progress)
    finish(result, quiet, outputs, settings, "resume")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The merged report of every run (.parquet, with a .csv beside it; or .csv) "
    "[default: ROOT/report.parquet when one run root is given].",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the report path.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the merged summary of the runs as JSON on stdout, for scripts.",
)
@click.option(
    "--metrics-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the runs' merged figures in Prometheus' text format to this file (node_exporter's textfile "
    "collector).",
)
@log_options
@api_options
@handle_errors
def collect(paths: tuple[Path, ...], out: Path | None, quiet: bool, **options: Any) -> None:
    """Follow the submitted jobs of the runs in PATHS (run folders, or the run root of shards) to their
    end with ONE poller, write each run's report and a merged one.

    Made for `run --no-wait`: shards submit, the collector polls once for all of them instead of each
    shard reading the whole account's jobs list. It locks every run it works on, is resumable (stop
    it, start it again), and a collect of finished runs sends nothing. Credentials and the API URL
    come from flags, environment or config; other non-secret settings default to the first run's.

    Exit codes as for `run`, the worst of the runs': 0 every row succeeded, was skipped or is held; 1 some
    row did not (rows a shard never sent are `interrupted`: resume that shard); 2 usage or configuration
    error; 3 aborted; 4 internal error; 75 a run is still in use (by its shard, say): collect again later.
    """
    from ..collect import collect as collect_runs
    from ..collect import default_merged, expand
    from ..metrics import merge_summaries
    from ..report import format_counts
    from ..resume import stored_settings
    from ..rundir import RunResult

    outputs = Outputs(options)
    progress = progress_for(quiet, options)
    explicit_url = options.get("api_url") is not None
    folders, _ = expand(paths)
    with announcing_failures(outputs, "collect"):
        settings = build_settings(options, stored_settings(folders[0]) if folders else None)
        outputs.settings = settings  # a failure from here on is announced with them
        merged_out = out or default_merged(list(paths))
        if merged_out is not None:
            check_writable(merged_out, "--out")
        result = collect_runs(
            list(paths), settings, merged_out=merged_out, allow_api_url_change=explicit_url, progress=progress
        )
    merged = merge_summaries([r.summary for r in result.results], exit_code=result.exit_code)
    announce(
        RunResult(Path(paths[0]), merged, result.exit_code),  # type: ignore[arg-type]
        outputs,
        settings,
        command="collect",
    )
    if outputs.as_json:
        echo(json.dumps(merged, indent=2, default=str))
        sys.exit(result.exit_code)
    try:
        for run in result.results:
            if not quiet:
                echo(run.summary_text())
            elif run.exit_code != 0:
                echo(format_counts(run.summary))
        if not quiet:
            echo(f"collect: {result.api_requests} API requests for {len(result.results)} run(s)")
        echo(str(result.merged or "\n".join(str(r.report_path) for r in result.results)))
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
    sys.exit(result.exit_code)


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--only",
    default="failed,error,timed_out,interrupted",
    show_default=True,
    help="Outcomes to retry, comma-separated.",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The new run's folder [default: beside the run it retries, as <run-id>].",
)
@submit_options
@handle_errors
def retry(source: Path, only: str, report_dir, max_failures, skip_existing, quiet, **options: Any) -> None:
    """Start a new run of the rows of SOURCE (a run folder or its report) that did not succeed.

    The new run's summary.json links to the original; `batch-ingest report ORIGINAL NEW` shows
    the merged view (latest attempt per row). Failed and error rows are sent again (never
    adopting a job of the original run). Interrupted rows keep their job: it is polled, not
    submitted again. Timed-out rows keep their job too: it is re-checked with this run's
    --job-timeout (counted from now), and the row is sent again only if that job failed or is
    gone. The retry runs with the current flags, environment and config, not the old run's.
    """
    from ..retry import NothingToRetry, retry_run
    from ..runner import RunOptions

    outputs = Outputs(options)
    progress = progress_for(quiet, options)
    explicit_url = options.get("api_url") is not None
    outcomes = tuple(o.strip() for o in only.split(",") if o.strip())
    with announcing_failures(outputs, "retry"):
        window = window_choice(options)
        settings = build_settings(options)
        outputs.settings = settings  # a failure from here on is announced with them
        run_options = RunOptions(
            run_dir=report_dir,
            max_failures=max_failures,
            skip_existing=skip_existing,
            handle_signals=True,
            allow_api_url_change=explicit_url,
            **window,
        )
        try:
            result = retry_run(source, settings, run_options, only=outcomes, progress=progress)
        except NothingToRetry as exc:  # nothing ran: nothing to announce, and nothing went wrong
            echo(json.dumps({"retried": 0, "message": str(exc)}) if outputs.as_json else str(exc))
            sys.exit(0)
    finish(result, quiet, outputs, settings, "retry")
