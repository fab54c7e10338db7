"""How a command that works a run tells the world it ended: the summary on stdout (text, `--json`), the
report path last, `--metrics-file`, `--notify`, and the exit code; and a failure before any run, too."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import BatchIngestError, exit_code_for
from .common import check_writable, echo, silence_stdout

if TYPE_CHECKING:
    from ..settings import Settings


def window_choice(options: dict[str, Any]) -> dict[str, Any]:
    """--until and --max-submissions (popped from `options`) as RunOptions fields."""
    from ..options import parse_until

    until = options.pop("until", None)
    return {
        "until": parse_until(until) if until is not None else None,
        "max_submissions": options.pop("max_submissions", None),
    }


class Outputs:
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
        from ..settings import load_config_file, resolve_settings_with_origins

        try:
            config, _ = load_config_file(self.config_file, strict=False)
        except BatchIngestError:  # unreadable, or not TOML: no monitor to be found there
            config = {}
        try:
            settings, _ = resolve_settings_with_origins(
                {"notify": self.notify_flag}, config=config, only=("notify", "notify_secret")
            )
        except BatchIngestError:
            return None
        return settings


def finish(result, quiet: bool, outputs: Outputs | None = None, settings=None, command: str = "run") -> None:
    """Tell the world how the run ended (metrics file, notification), print the summary (quiet: one
    line of counts, only when the run did not fully succeed; --json: the summary as JSON) and the
    report path last; exit with the run's code."""
    from ..report import format_counts

    if outputs is not None and result.worked:  # a resume of a finished run: it was announced then
        announce(result, outputs, settings, command=command)
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


def announce(result, outputs: Outputs, settings, *, command: str, error: str | None = None) -> None:
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
def announcing_failures(outputs: Outputs, command: str) -> Iterator[None]:
    """A command that fails before it has a run to summarise (the API unreachable, a manifest error):
    the monitor and the metrics file hear of it too, with the error's exit code; then it is raised on."""
    try:
        check_writable(outputs.metrics_file, "--metrics-file")  # in here: a bad path is news for the monitor
        yield
    except SystemExit:
        raise  # a command that decided its own exit (nothing to retry) has nothing to announce
    except BaseException as exc:  # told, then raised on to the one place exit codes are made
        outputs.failed_exit_code = exit_code_of(exc)
        settings = outputs.settings or outputs.monitor_settings()
        text = str(exc) if isinstance(exc, BatchIngestError | click.ClickException) else type(exc).__name__
        announce(None, outputs, settings, command=command, error=text)
        raise


def exit_code_of(exc: BaseException) -> int:
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
