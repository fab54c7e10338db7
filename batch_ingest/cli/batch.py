"""The batch commands: run, validate, resume, retry, report."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import EXIT_ROWS_FAILED, BatchIngestError, exit_code_for

if TYPE_CHECKING:
    from ..options import ProbeOptions
    from ..settings import Settings
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

check_sources_option = click.option(
    "--check-sources",
    type=click.Choice(["reject", "warn"]),
    is_flag=False,
    flag_value="reject",
    default=None,
    help="Fetch the first byte of every URL source (a ranged GET) and look up every s3://, gs://, az:// "
    "object in its store, before any create and never through the SmartSTREAM API; reject rows whose "
    "source is missing, forbidden, unreachable or not a video; =warn only reports them.",
)


def probe_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--probe`, `--max-size` and `--max-duration`, given to the command as one `probe` (None: off)."""

    for option in reversed(
        [
            click.option(
                "--probe",
                type=click.Choice(["files", "all"]),
                is_flag=False,
                flag_value="files",
                default=None,
                help="Open every local file as media before sending (PyAV): the container opens, a video "
                "stream decodes, the duration is above zero; reject the others as MEDIA_INVALID. =all "
                "also reads URLs and objects (ranged GETs).",
            ),
            click.option(
                "--max-size",
                metavar="SIZE",
                help="With --probe (implied): reject a video over this size (10G, 500M).",
            ),
            click.option(
                "--max-duration",
                type=click.FloatRange(min=0, min_open=True),
                metavar="SECONDS",
                help="With --probe (implied): reject a video longer than this.",
            ),
        ]
    ):
        command = option(command)
    return command


def _probe(probe: str | None, max_size: str | None, max_duration: float | None) -> ProbeOptions | None:
    """The probe options from the flags; a limit alone implies --probe (files)."""
    from ..options import ProbeOptions

    if probe is None and max_size is None and max_duration is None:
        return None
    size = None
    if max_size is not None:
        from ..api.ratelimit import parse_bandwidth

        try:
            size = int(parse_bandwidth(max_size))
        except (ValueError, IndexError):
            size = 0
        if size < 1:
            raise click.BadParameter(
                f"{max_size!r}: give a size such as 10G, 500M or 2000000 (bytes), at least 1 byte",
                param_hint="--max-size",
            )
    if max_duration is not None and not math.isfinite(max_duration):
        raise click.BadParameter(
            f"{max_duration}: give a number of seconds such as 7200", param_hint="--max-duration"
        )
    return ProbeOptions(remote=probe == "all", max_size=size, max_duration=max_duration)


def reading_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--delimiter and --encoding: how a CSV manifest exported from a spreadsheet is read."""
    command = click.option(
        "--encoding",
        metavar="NAME",
        help="The CSV manifest's text encoding when it is not UTF-8: cp1252 (Excel, Western Europe), "
        "shift_jis or cp932 (Excel, Japan), latin-1, utf-16 [default: UTF-8, or what a byte-order mark says].",
    )(command)
    return click.option(
        "--delimiter",
        metavar="CHAR",
        help="The CSV manifest's field separator: one character, or tab, comma, semicolon, pipe "
        "[default: detected: comma, else ; tab or | when the header holds a source column that way].",
    )(command)


def _reading(delimiter: str | None, encoding: str | None) -> dict[str, Any]:
    """--delimiter and --encoding checked now (exit 2 naming the option), as RunOptions fields."""
    from ..manifest import parse_delimiter, parse_encoding

    if delimiter is not None:
        parse_delimiter(delimiter)
    if encoding is not None:
        parse_encoding(encoding)
    return {"delimiter": delimiter, "encoding": encoding}


extra_columns_option = click.option(
    "--extra-columns",
    metavar="COL[,COL...]",
    default="",
    help="Manifest columns to carry into the report as they are although their names look like a known "
    "column's (e.g. 'profle' next to 'profile'): without this such a column stops the run (exit 2).",
)


def subset_options(among: str):
    """The canary options: which rows a command takes (subset.py); `among` names them in the help
    ("ready rows" for run, "held rows" for resume)."""

    def decorate(fn):
        for option in (
            click.option(
                "--seed", type=int, help="Seed of --sample (default: a random one, printed and recorded)."
            ),
            click.option(
                "--sample",
                type=int,
                metavar="N",
                help=f"Take N {among} at random (seeded: see --seed); hold the rest.",
            ),
            click.option(
                "--rows",
                "rows_range",
                metavar="RANGES",
                help=f"Take the {among} with these numbers (as in the report), e.g. 100-200 or 1-10,50; hold the rest.",
            ),
            click.option("--limit", type=int, metavar="N", help=f"Take the first N {among}; hold the rest."),
        ):
            fn = option(fn)
        return fn

    return decorate


def _subset(
    limit: int | None, rows_range: str | None, sample: int | None, seed: int | None, take_all: bool = False
):
    from ..subset import Subset

    return Subset.from_options(limit=limit, rows=rows_range, sample=sample, seed=seed, take_all=take_all)


def _columns(text: str) -> tuple[str, ...]:
    return tuple(c.strip().lower() for c in text.split(",") if c.strip())


def submit_options(fn):
    """The options of every command that submits: failure budget, cron skipping, output, API."""
    for option in (
        api_options,
        log_options,
        click.option("-q", "--quiet", is_flag=True, help="Print only errors and the report path."),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            help="Print the run's summary as JSON on stdout (as summary.json holds it), for scripts.",
        ),
        click.option(
            "--metrics-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write the run's figures in Prometheus' text format to this file when it ends (for "
            "node_exporter's textfile collector: counts per outcome, requests, 429s, duration, exit code).",
        ),
        click.option(
            "--max-submissions",
            type=click.IntRange(min=1),
            metavar="N",
            help="Send at most N creates in this process and follow their jobs to the end; the rows left "
            "wait for `resume RUN_DIR` (exit 0 when nothing failed). One night's share of a long migration.",
        ),
        click.option(
            "--until",
            metavar="HH:MM|ISO",
            help="Stop at this local time (the next HH:MM) or ISO timestamp as a graceful stop does: no new "
            "creates, requests on the wire finish, the rest waits for `resume RUN_DIR` (exit 0 when nothing "
            "failed).",
        ),
        click.option(
            "--skip-existing",
            type=click.Choice(["not-failed", "any"]),
            is_flag=False,
            flag_value="not-failed",
            default=None,
            help="Don't send a row whose ref_id already has a job on the platform that succeeded or is still "
            "encoding (followed to its end); a row whose job failed is sent again. "
            "--skip-existing=any never sends such a row and reports the failed job (cron).",
        ),
        click.option(
            "--max-failures",
            metavar="N|P%",
            help="Abort (exit 3) once more than N rows have failed, or more than P% of the last 100 rows "
            "to end (P%/W: of the last W; judged after 20). A refused create counts at once, an encode "
            "failure or timeout when the platform reports it: jobs still encoding cannot count yet, so "
            "more rows may have been sent by then (--max-in-flight bounds how many).",
        ),
    ):
        fn = option(fn)
    return fn


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
    subset = _subset(limit, rows_range, sample, seed)
    probing = _probe(probe, max_size, max_duration)
    reading = _reading(delimiter, encoding)
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
    outputs = _Outputs(options)
    progress = progress_for(quiet, options)

    with _announcing_failures(outputs, "run"), emulator_for_run(emulator, options):
        window = _window(options)
        settings = build_settings(options)
        outputs.settings = settings  # a failure from here on is announced with them
        run_options = RunOptions(
            run_dir=report_dir,
            fmt=fmt,
            default_profile=default_profile,
            max_failures=max_failures,
            skip_existing=skip_existing,
            extra_columns=_columns(extra_columns),
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
    _finish(result, quiet, outputs, settings)


def _window(options: dict[str, Any]) -> dict[str, Any]:
    """--until and --max-submissions (popped from `options`) as RunOptions fields."""
    from ..options import parse_until

    until = options.pop("until", None)
    return {
        "until": parse_until(until) if until is not None else None,
        "max_submissions": options.pop("max_submissions", None),
    }


class _Outputs:
    """Where a finished run is told: --json, --metrics-file, --notify (popped from a command's options)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.as_json: bool = options.pop("as_json", False)
        self.metrics_file: Path | None = options.pop("metrics_file", None)
        self.failed_exit_code = 1
        self.settings: Settings | None = None  # the command's settings once built (None: not resolved)
        # Kept to reach the monitor even when the settings as a whole do not resolve (a bad --rate).
        self.notify_flag: str | None = options.get("notify")
        self.config_file: Path | None = options.get("config_file")

    def monitor_settings(self):  # -> Settings | None
        """The --notify settings alone (flag, environment, config file), or None when they too are bad.
        The config file is read leniently here: an unknown key elsewhere in it must not silence the
        monitor that is to hear of it."""
        import tomllib

        from ..settings import DEFAULT_CONFIG_FILE, resolve_settings_with_origins

        config: dict[str, Any] = {}
        try:
            data = tomllib.loads(Path(self.config_file or DEFAULT_CONFIG_FILE).read_text(encoding="utf-8"))
            table = data.get("batch-ingest", data)
            config = {k.replace("-", "_"): v for k, v in table.items() if isinstance(k, str)}
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
            pass
        try:
            settings, _ = resolve_settings_with_origins(
                {"notify": self.notify_flag}, config=config, only=("notify", "notify_secret")
            )
        except BatchIngestError:
            return None
        return settings


def _finish(
    result, quiet: bool, outputs: _Outputs | None = None, settings=None, command: str = "run"
) -> None:
    """Tell the world how the run ended (metrics file, notification), print the summary (quiet: one
    line of counts, only when the run did not fully succeed; --json: the summary as JSON) and the
    report path last; exit with the run's code."""
    from ..report import format_counts

    if outputs is not None and result.worked:  # a resume of a finished run: it was announced then
        _announce(result, outputs, settings, command=command)
    try:
        if outputs is not None and outputs.as_json:
            echo(json.dumps(result.summary, indent=2, default=str))
        else:
            if not quiet:
                echo(result.summary_text())
            elif result.exit_code != 0:
                echo(format_counts(result.summary))
            retry_of = (result.summary.get("retry_of") or {}).get("run_dir")
            if retry_of and not quiet:
                echo(
                    f"both runs, the latest attempt per row: batch-ingest report {retry_of} {result.run_dir}"
                )
            echo(str(result.report_path))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`| head`): the run is done, its code stands
        silence_stdout()
    sys.exit(result.exit_code)


def _announce(result, outputs: _Outputs, settings, *, command: str, error: str | None = None) -> None:
    """--metrics-file, then --notify (it may take up to 30 s): neither ever changes the run's exit code;
    a failure is a warning, shown even with -q. `result` None: the command failed before it had a run
    to summarise (`error` says why, and the exit code is that error's)."""
    summary = result.summary if result is not None else None
    exit_code = result.exit_code if result is not None else outputs.failed_exit_code
    if outputs.metrics_file is not None:
        from ..metrics import MetricsWriteError, write_metrics

        try:
            write_metrics(outputs.metrics_file, summary, exit_code)
        except MetricsWriteError as exc:
            echo(f"batch-ingest: warning: {exc}", err=True)
    if settings is not None and settings.notify:
        from ..notify import send_notification

        try:
            sent = send_notification(
                settings.notify,
                summary,
                exit_code,
                secret=settings.notify_secret,
                command=command,
                error=error,
            )
        except KeyboardInterrupt:  # a second Ctrl-C: the run is over, the monitor is not waited for
            echo("batch-ingest: warning: --notify interrupted: the monitor was not told", err=True)
            return
        if sent.warning:
            echo(f"batch-ingest: {sent.warning}", err=True)


@contextlib.contextmanager
def _announcing_failures(outputs: _Outputs, command: str) -> Iterator[None]:
    """A command that fails before it has a run to summarise (the API unreachable, a manifest error):
    the monitor and the metrics file hear of it too, with the error's exit code; then it is raised on."""
    try:
        check_writable(outputs.metrics_file, "--metrics-file")  # in here: a bad path is news for the monitor
        yield
    except SystemExit:
        raise  # a command that decided its own exit (nothing to retry) has nothing to announce
    except BaseException as exc:  # told, then raised on to the one place exit codes are made
        outputs.failed_exit_code = _exit_code_of(exc)
        settings = outputs.settings or outputs.monitor_settings()
        text = str(exc) if isinstance(exc, BatchIngestError | click.ClickException) else type(exc).__name__
        _announce(None, outputs, settings, command=command, error=text)
        raise


def _exit_code_of(exc: BaseException) -> int:
    """The exit code `handle_errors` will give `exc` (for the monitor, told before it exits)."""
    from ..errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, first_leaf, local_state_problem

    leaf = first_leaf(exc)  # in the order exit_for takes them
    if isinstance(leaf, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(leaf, click.ClickException | click.exceptions.Exit):
        return leaf.exit_code
    if isinstance(leaf, click.exceptions.Abort):
        return 1
    if isinstance(leaf, BatchIngestError):
        return exit_code_for(leaf)
    return EXIT_USAGE if local_state_problem(leaf) is not None else EXIT_INTERNAL


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
            fmt=fmt, default_profile=default_profile, extra_columns=_columns(extra_columns), **(reading or {})
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
        probe=_probe(probe, max_size, max_duration),
        subset=_subset(limit, rows_range, sample, seed),
        reading=_reading(delimiter, encoding),
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
    subset = _subset(limit, rows_range, sample, seed, take_all)
    from ..resume import resume_run, stored_settings
    from ..runner import RunOptions

    outputs = _Outputs(options)
    progress = progress_for(quiet, options)
    explicit_url = options.get("api_url") is not None
    with _announcing_failures(outputs, "resume"):
        window = _window(options)
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
    _finish(result, quiet, outputs, settings, "resume")


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

    outputs = _Outputs(options)
    progress = progress_for(quiet, options)
    explicit_url = options.get("api_url") is not None
    folders, _ = expand(paths)
    with _announcing_failures(outputs, "collect"):
        settings = build_settings(options, stored_settings(folders[0]) if folders else None)
        outputs.settings = settings  # a failure from here on is announced with them
        merged_out = out or default_merged(list(paths))
        if merged_out is not None:
            check_writable(merged_out, "--out")
        result = collect_runs(
            list(paths), settings, merged_out=merged_out, allow_api_url_change=explicit_url, progress=progress
        )
    merged = merge_summaries([r.summary for r in result.results], exit_code=result.exit_code)
    _announce(
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

    outputs = _Outputs(options)
    progress = progress_for(quiet, options)
    explicit_url = options.get("api_url") is not None
    outcomes = tuple(o.strip() for o in only.split(",") if o.strip())
    with _announcing_failures(outputs, "retry"):
        window = _window(options)
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
    _finish(result, quiet, outputs, settings, "retry")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--failed", is_flag=True, help="List only the rows that did not succeed.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON, for scripts.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the merged (or --failed) report: .parquet or .csv.",
)
@click.option(
    "--html", type=click.Path(dir_okay=False, path_type=Path), help="Write a self-contained HTML report."
)
@handle_errors
def report(paths: tuple[Path, ...], failed: bool, as_json: bool, out: Path | None, html: Path | None) -> None:
    """Summarise one or more runs (run folders or report files), merged: the latest attempt per row wins.

    Prints totals per outcome, profile and source type, failures grouped by error code with
    examples, duration percentiles, and the commands that retry or resume what did not succeed.
    """
    import polars as pl

    from ..collect import expand, unstarted_rows
    from ..review import format_review, load_run, merge_runs, not_succeeded, summarize, write_frame
    from ..shard import shard_folders

    # A shards' run root stands for its shard folders; one it lacks, or one without a report yet (still
    # running, or stopped before it wrote one), is named, not left out quietly.
    runs, missing = [], []
    for p in paths:
        shards = shard_folders(p)
        if not shards:
            runs.append(load_run(p))
            continue
        _, gaps = expand([p])  # shards with no run: their rows come from the manifest, as collect has them
        unreported = []
        for folder in shards:
            try:
                runs.append(load_run(folder))
            except BatchIngestError:
                unreported.append(folder.name)
        if unreported:
            echo(
                f"batch-ingest: warning: {p}: no report yet from {', '.join(sorted(unreported))} (running, or "
                "stopped: `batch-ingest resume` on its folder finishes it): their rows are not in this report",
                err=True,
            )
        metas = [(r.path, _run_meta(r.path)) for r in runs if r.path.parent == p]
        for gap in gaps:
            echo(
                f"batch-ingest: warning: {p}: {gap.names()} holds no run yet: its rows are `interrupted` here",
                err=True,
            )
            missing.append(unstarted_rows(gap, metas, lambda text: echo(f"batch-ingest: {text}", err=True)))
    if not runs:
        raise click.UsageError("no shard of these run roots has a report yet")
    merged = merge_runs(runs)
    if any(not m.is_empty() for m in missing):
        merged = pl.concat([merged, *(m for m in missing if not m.is_empty())], how="diagonal_relaxed").sort(
            "row", maintain_order=True
        )
    info = summarize(merged, runs)
    shown = not_succeeded(merged) if failed else merged
    if out is not None:
        write_frame(shown, out)
    if html is not None:
        from ..html import write_html

        write_html(merged, info, html)
    if as_json:
        echo(json.dumps(info, indent=2, default=str))
    elif failed:
        cols = [
            c
            for c in ("row", "ref_id", "source", "outcome", "error_code", "error_message")
            if c in shown.columns
        ]
        for rec in shown.select(cols).iter_rows(named=True):
            echo("\t".join("" if rec[c] is None else str(rec[c]) for c in cols))
    else:
        echo(format_review(info))
    if out is not None and not as_json:
        echo(f"wrote {out}", err=True)


def _run_meta(folder: Path) -> dict[str, Any]:
    """A run folder's recorded meta, read without its lock (report only reads); {} when unreadable."""
    from ..journal import Journal
    from ..runfiles import JOURNAL_FILE

    try:
        journal = Journal.open(folder / JOURNAL_FILE, migrate=False)
    except Exception:  # noqa: BLE001 - no journal, or one being written: no meta to read the manifest from
        return {}
    try:
        return journal.meta()
    finally:
        journal.close()
