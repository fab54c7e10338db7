"""The command line: parse options, build settings, call the library, map errors to exit codes.

No business logic lives here; every command is one library call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import EXIT_INTERRUPTED, EXIT_ROWS_FAILED, BatchIngestError, UsageError, exit_code_for


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our exceptions into a one-line message on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BatchIngestError as exc:
            click.echo(f"batch-ingest: error: {exc}", err=True)
            sys.exit(exit_code_for(exc))

    return wrapper


def api_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options that say how to reach the API and pace requests; each also reads SMARTSTREAM_*."""
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="TOML config file (default: ./batch-ingest.toml when present)."),
        click.option("--api-url", help="API base URL [env SMARTSTREAM_API_URL; default the SmartSTREAM API]."),
        click.option("--merchant-id", help="Merchant id [env SMARTSTREAM_MERCHANT_ID]."),
        click.option("--api-key", help="API key [env SMARTSTREAM_API_KEY]; prefer the variable, flags show in ps."),
        click.option("--token", help="Bearer token as is [env SMARTSTREAM_TOKEN]."),
        click.option("--email", help="Email for the auth-token endpoint [env SMARTSTREAM_EMAIL]."),
        click.option("--password", help="Password for the auth-token endpoint [env SMARTSTREAM_PASSWORD]."),
        click.option("--rate", type=float, help="Requests per minute for everything the run sends [default 50; 0: no limit]."),
        click.option("--concurrency", type=int, help="Submissions in flight at most [default 8]."),
        click.option("--upload-concurrency", type=int, help="Uploads in flight at most [default 2]."),
        click.option("--retries", type=int, help="Retries of a transient failure [default 5]."),
        click.option("--job-timeout", type=float, help="Seconds a job may take after submission [default 21600]."),
        click.option("--poll-min-interval", type=float, help="Shortest pause between polls, seconds [default 2]."),
        click.option("--poll-max-interval", type=float, help="Longest pause between polls, seconds [default 30]."),
        click.option("--encode-status-map", help="Terminal encode statuses, e.g. 'succeeded=2;failed=3,4'."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def log_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--log-file and --log-format: an event log for cron (submissions, state changes, errors)."""
    fn = click.option(
        "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
        help="Format of --log-file lines.",
    )(fn)  # fmt: skip
    return click.option(
        "--log-file", type=click.Path(dir_okay=False, path_type=Path),
        help="Append one event per submission, state change and error to this file.",
    )(fn)  # fmt: skip


def progress_for(quiet: bool, options: dict[str, Any]):  # -> Progress
    """The progress sink for a command: screen output plus the optional event log."""
    from .progress import choose_progress

    log_file, log_format = options.pop("log_file", None), options.pop("log_format", "text")
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.open("a").close()
        except OSError as exc:
            raise UsageError(f"--log-file {log_file}: cannot write: {exc.strerror}") from None
    return choose_progress(quiet=quiet, log_file=log_file, log_format=log_format)


_SETTING_FLAGS = (
    "api_url", "merchant_id", "api_key", "token", "email", "password", "rate", "concurrency",
    "upload_concurrency", "retries", "job_timeout", "poll_min_interval", "poll_max_interval", "encode_status_map",
)  # fmt: skip


def build_settings(options: dict[str, Any], stored: dict[str, Any] | None = None):  # -> Settings
    """Settings from flags (popped from `options`), environment, a run's stored settings, config file, defaults."""
    from .settings import load_config_file, resolve_settings

    flags = {name: options.pop(name, None) for name in _SETTING_FLAGS}
    config, _ = load_config_file(options.pop("config_file", None))
    return resolve_settings(flags, config={**config, **(stored or {})})


@contextlib.contextmanager
def emulator_for_run(enabled: bool, options: dict[str, Any]) -> Iterator[None]:
    """With --emulator: serve the bundled emulator on a free loopback port and point the run at it."""
    if not enabled:
        yield
        return
    from .emulator.server import RUN_CONFIG, EmulatorServer

    with EmulatorServer(RUN_CONFIG) as server:
        config = server.config
        options.update(api_url=server.url, merchant_id=config.merchant_id, api_key=config.api_key, token=config.token)
        options.update(email=None, password=None)
        if options.get("poll_min_interval") is None:
            options["poll_min_interval"] = 0.5
        if options.get("poll_max_interval") is None:
            options["poll_max_interval"] = 2.0
        yield


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batch-ingest")
def main() -> None:
    """Move video libraries into SmartSTREAM in bulk: submit, poll, report."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on (0: a free one).")
@click.option("--merchant-id", default="demo", show_default=True, help="Merchant id the emulator accepts.")
@click.option("--api-key", default="emulator-api-key", show_default=True, help="API key it accepts.")
@click.option("--token", default="emulator-token", show_default=True, help="Static bearer token it accepts.")
@click.option("--email", default="ops@example.com", show_default=True, help="Email its auth-token endpoint accepts.")
@click.option("--password", default="emulator-password", show_default=True, help="Password for that email.")
@click.option("--rate-limit", type=int, default=50, show_default=True, help="Requests per rolling minute (0: off).")
@click.option(
    "--retry-after",
    type=click.Choice(["seconds", "date", "none"]),
    default="seconds",
    show_default=True,
    help="Form of Retry-After on a 429.",
)
@click.option("--queue-seconds", type=float, default=1.0, show_default=True, help="Time a job waits before encoding.")
@click.option("--encode-seconds", type=float, default=5.0, show_default=True, help="Time an encode takes.")
@click.option("--jitter", type=float, default=0.5, show_default=True, help="+/- share of randomness on durations.")
@click.option("--failure-rate", type=float, default=0.0, show_default=True, help="Share of encodes that fail.")
@click.option(
    "--unreachable", multiple=True, help="Source URLs containing this text cannot be fetched (repeatable)."
)
@click.option("--token-ttl", type=float, default=3600.0, show_default=True, help="Lifetime of issued tokens (s).")
@click.option("--static-token-ttl", type=float, default=None, help="Fault: the static token expires after this (s).")
@click.option("--latency", type=float, default=0.0, show_default=True, help="Fault: seconds added to every answer.")
@click.option("--error-rate", type=float, default=0.0, show_default=True, help="Fault: share of requests answered 500.")
@click.option("--burst-429-rate", type=float, default=0.0, show_default=True, help="Fault: chance a 429 burst starts.")
@click.option(
    "--drop-after-create-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Fault: share of creates that create the job, then drop the connection.",
)
@click.option("--hang-rate", type=float, default=0.0, show_default=True, help="Fault: share of requests that hang.")
@click.option("--storage-missing", is_flag=True, help="Fault: every create answers STORAGE_NOT_FOUND.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for durations, failures and faults.")
@click.option("--time-scale", type=float, default=1.0, show_default=True, help="Emulator seconds per real second.")
@handle_errors
def emulator(**options: Any) -> None:
    """Serve the bundled SmartSTREAM API emulator and print the settings that point at it."""
    from .emulator import EmulatorConfig, env_for
    from .emulator.server import bind, serve_forever

    host, port = options.pop("host"), options.pop("port")
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}: pick another --port or --host") from None
    port = sock.getsockname()[1]
    renames = {
        "queue_seconds": "queue_s",
        "encode_seconds": "encode_s",
        "token_ttl": "token_ttl_s",
        "static_token_ttl": "static_token_ttl_s",
        "latency": "latency_s",
    }
    knobs = {renames.get(k, k): v for k, v in options.items()}
    knobs["unreachable"] = tuple(knobs["unreachable"])
    config = EmulatorConfig().with_changes(**knobs)
    display_host = f"[{host}]" if ":" in host else host
    for name, value in env_for(config, f"http://{display_host}:{port}").items():
        click.echo(f"export {name}={shlex.quote(value)}")
    click.echo("# or, to use the auth-token endpoint instead of the static token:")
    click.echo(f"#   export SMARTSTREAM_EMAIL={shlex.quote(config.email)}")
    click.echo(f"#   export SMARTSTREAM_PASSWORD={shlex.quote(config.password)}")
    click.echo(f"# counters: curl http://{display_host}:{port}/_emulator/stats", nl=True)
    sys.stdout.flush()
    try:
        serve_forever(config, sock)
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "ndjson"]), help="Manifest format (default: by extension).")
@click.option("--profile", "default_profile", help="Job profile for rows with an empty profile cell (id or ref:<ref_id>).")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), help="The run's folder [default reports/<run-id>].")
@click.option("--max-failures", type=int, help="Abort (exit 3) once more than this many rows have failed.")
@click.option("--skip-existing", is_flag=True, help="Skip rows whose ref_id already has a job on the platform (cron).")
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; create no job (same as `validate`).")
@click.option("--emulator", is_flag=True, help="Run against the bundled emulator on a free loopback port.")
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), help="Also write a self-contained HTML report.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the report path.")
@log_options
@api_options
@handle_errors
def run(
    manifest: Path, fmt, default_profile, report_dir, max_failures, skip_existing, dry_run, emulator, html, quiet,
    **options: Any,
) -> None:
    """Submit every row of MANIFEST, poll until every job finished, and write the report.

    Exit codes: 0 every row succeeded or was skipped; 1 some row did not; 2 usage,
    configuration or manifest error; 3 run aborted; 130 interrupted.
    """
    if dry_run:
        options.pop("log_file", None), options.pop("log_format", None)
        _validate(manifest, fmt, default_profile, emulator, options)
        return
    from .runner import RunOptions, run_manifest

    progress = progress_for(quiet, options)

    with emulator_for_run(emulator, options):
        settings = build_settings(options)
        run_options = RunOptions(
            run_dir=report_dir,
            fmt=fmt,
            default_profile=default_profile,
            max_failures=max_failures,
            skip_existing=skip_existing,
            handle_signals=True,
        )
        result = run_manifest(manifest, settings, run_options, progress=progress)
    if html is not None:
        from .review import write_html_report

        write_html_report([result.run_dir], html)
    _finish(result, quiet)


def _finish(result, quiet: bool) -> None:
    """Print the summary (unless quiet) and the report path last; exit with the run's code."""
    if not quiet:
        click.echo(result.summary_text())
    click.echo(str(result.report_path))
    sys.exit(result.exit_code)


def _validate(manifest: Path, fmt, default_profile, emulator: bool, options: dict[str, Any], as_json: bool = False) -> None:
    from .api.client import SmartStreamClient
    from .plan import describe_plan, format_plan
    from .runner import RunOptions, plan_run

    with emulator_for_run(emulator, options):
        settings = build_settings(options)
        run_options = RunOptions(fmt=fmt, default_profile=default_profile)

        async def go():
            try:
                settings.require_api()
            except BatchIngestError:
                return await plan_run(manifest, settings, run_options, None)
            async with SmartStreamClient.from_settings(settings) as client:
                return await plan_run(manifest, settings, run_options, client)

        info = describe_plan(asyncio.run(go()))
    click.echo(json.dumps(info, indent=2, default=str) if as_json else format_plan(info))
    sys.exit(EXIT_ROWS_FAILED if info["rejected"] else 0)


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "ndjson"]), help="Manifest format (default: by extension).")
@click.option("--profile", "default_profile", help="Job profile for rows with an empty profile cell.")
@click.option("--emulator", is_flag=True, help="Check profiles against the bundled emulator.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@api_options
@handle_errors
def validate(manifest: Path, fmt, default_profile, emulator, as_json, **options: Any) -> None:
    """Check MANIFEST and print the plan; create no job. Exit 0 when no row is rejected, 1 otherwise.

    Profiles are checked against the platform when API settings are available.
    """
    _validate(manifest, fmt, default_profile, emulator, options, as_json)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--max-failures", type=int, help="Abort (exit 3) once more than this many rows have failed.")
@click.option("--skip-existing", is_flag=True, help="Skip rows whose ref_id already has a job on the platform.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the report path.")
@log_options
@api_options
@handle_errors
def resume(run_dir: Path, max_failures, skip_existing, quiet, **options: Any) -> None:
    """Continue the run in RUN_DIR from its journal and rewrite its report.

    Finished rows are left alone, submitted jobs are polled, rows whose create was in doubt
    are looked up on the platform before anything is sent again, and the rest are submitted.
    Resuming a finished run changes nothing. Credentials come from flags or the environment
    as for `run`; the API URL and other non-secret settings default to the run's own.
    """
    from .runner import RunOptions, resume_run, stored_settings

    progress = progress_for(quiet, options)
    settings = build_settings(options, stored_settings(run_dir))
    run_options = RunOptions(max_failures=max_failures, skip_existing=skip_existing, handle_signals=True)
    _finish(resume_run(run_dir, settings, run_options, progress=progress), quiet)


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--only",
    default="failed,error,timed_out,interrupted",
    show_default=True,
    help="Outcomes to retry, comma-separated.",
)
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), help="The new run's folder.")
@click.option("--max-failures", type=int, help="Abort (exit 3) once more than this many rows have failed.")
@click.option("--skip-existing", is_flag=True, help="Skip rows whose ref_id already has a job on the platform.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the report path.")
@log_options
@api_options
@handle_errors
def retry(source: Path, only: str, report_dir, max_failures, skip_existing, quiet, **options: Any) -> None:
    """Start a new run of the rows of SOURCE (a run folder or its report) that did not succeed.

    The new run's summary.json links to the original; `batch-ingest report ORIGINAL NEW` shows
    the merged view (latest attempt per row). Interrupted rows keep their job: it is polled,
    not submitted again.
    """
    from .runner import RunOptions, retry_run, stored_settings

    progress = progress_for(quiet, options)
    settings = build_settings(options, stored_settings(source if source.is_dir() else source.parent))
    outcomes = tuple(o.strip() for o in only.split(",") if o.strip())
    run_options = RunOptions(
        run_dir=report_dir, max_failures=max_failures, skip_existing=skip_existing, handle_signals=True
    )
    result = retry_run(source, settings, run_options, only=outcomes, progress=progress)
    if result is None:
        click.echo(f"nothing to retry: no row of {source} has outcome {', '.join(outcomes)}")
        sys.exit(0)
    _finish(result, quiet)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--failed", is_flag=True, help="List only the rows that did not succeed.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON, for scripts.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the merged (or --failed) report: .parquet or .csv.")
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), help="Write a self-contained HTML report.")
@handle_errors
def report(paths: tuple[Path, ...], failed: bool, as_json: bool, out: Path | None, html: Path | None) -> None:
    """Summarise one or more runs (run folders or report files), merged: the latest attempt per row wins.

    Prints totals per outcome, profile and source type, failures grouped by error code with
    examples, duration percentiles, and the commands that retry or resume what did not succeed.
    """
    from .review import format_review, load_run, merge_runs, not_succeeded, summarize, write_frame

    runs = [load_run(p) for p in paths]
    merged = merge_runs(runs)
    info = summarize(merged, runs)
    shown = not_succeeded(merged) if failed else merged
    if out is not None:
        write_frame(shown, out)
    if html is not None:
        from .html import write_html

        write_html(merged, info, html)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
    elif failed:
        cols = [c for c in ("row", "ref_id", "source", "outcome", "error_code", "error_message") if c in shown.columns]
        for rec in shown.select(cols).iter_rows(named=True):
            click.echo("\t".join("" if rec[c] is None else str(rec[c]) for c in cols))
    else:
        click.echo(format_review(info))
    if out is not None and not as_json:
        click.echo(f"wrote {out}", err=True)


def _client_call(options: dict[str, Any], call):  # noqa: ANN001, ANN202
    from .api.client import SmartStreamClient

    settings = build_settings(options)

    async def go():  # noqa: ANN202
        async with SmartStreamClient.from_settings(settings) as client:
            return await call(client)

    return asyncio.run(go())


@main.command()
@click.option("--emulator", is_flag=True, help="Ask the bundled emulator instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@api_options
@handle_errors
def profiles(emulator: bool, as_json: bool, **options: Any) -> None:
    """List the account's job profiles (id, ref_id, name): the values a manifest's profile column takes."""

    async def call(client):  # noqa: ANN001, ANN202
        return [p async for p in client.iter_job_profiles(sort="id", order="ASC")]

    with emulator_for_run(emulator, options):
        found = _client_call(options, call)
    for p in found:
        if as_json:
            click.echo(json.dumps({"id": p.id, "ref_id": p.ref_id, "name": p.name, "description": p.description}))
        else:
            click.echo(f"{p.id:>8}  ref:{p.ref_id or '-':<20}  {p.name or ''}")


@main.command()
@click.argument("job", required=False)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="How many of the newest jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@api_options
@handle_errors
def jobs(job: str | None, limit: int, as_json: bool, **options: Any) -> None:
    """Show one job (JOB is an id or ref:<ref_id>), or the newest jobs."""
    from dataclasses import asdict

    async def call(client):  # noqa: ANN001, ANN202
        if job:
            return [await client.get_job(job)]
        return (await client.list_jobs(limit=limit, sort="created_at", order="DESC")).items

    found = _client_call(options, call)
    if as_json:
        data = [asdict(j) for j in found]
        click.echo(json.dumps(data[0] if job else data, indent=2))
        return
    for j in found:
        if job:
            for key, value in asdict(j).items():
                click.echo(f"{key:>15}: {'' if value is None else value}")
        else:
            click.echo(f"{j.id}  status {j.encode_status}  {j.updated_at}  ref:{j.ref_id or '-'}  {j.source_url or ''}")


@main.command()
@api_options
@handle_errors
def config(**options: Any) -> None:
    """Show the resolved settings (flag, environment, config file, default) with secrets masked."""
    from .settings import load_config_file, resolve_settings

    flags = {name: options.pop(name, None) for name in _SETTING_FLAGS}
    file_config, path = load_config_file(options.pop("config_file", None), warn=lambda m: click.echo(f"warning: {m}", err=True))
    settings = resolve_settings(flags, config=file_config)
    click.echo(f"# config file: {path or '(none)'}")
    for key, value in settings.masked().items():
        click.echo(f"{key} = {'' if value is None else value}")
