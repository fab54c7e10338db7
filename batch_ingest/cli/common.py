"""What every command shares: the click group, option sets, settings, error handling."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..errors import EXIT_INTERRUPTED, BatchIngestError, UsageError, exit_code_for


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
    from ..progress import choose_progress

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
    from ..settings import load_config_file, resolve_settings

    flags = {name: options.pop(name, None) for name in _SETTING_FLAGS}
    config, _ = load_config_file(options.pop("config_file", None))
    return resolve_settings(flags, config={**config, **(stored or {})})


@contextlib.contextmanager
def emulator_for_run(enabled: bool, options: dict[str, Any]) -> Iterator[None]:
    """With --emulator: serve the bundled emulator on a free loopback port and point the run at it."""
    if not enabled:
        yield
        return
    from ..emulator.server import RUN_CONFIG, EmulatorServer

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


