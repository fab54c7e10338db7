"""What every command shares: the click group, option sets, settings, error handling."""

from __future__ import annotations

import contextlib
import functools
import os
import select
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from .._version import __version__
from ..errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    BatchIngestError,
    UsageError,
    error_log_folder,
    exit_code_for,
    first_leaf,
    local_state_problem,
    write_error_log,
)
from ..settings import SETTINGS, Setting, Settings, load_config_file, resolve_settings
from ..text import safe_text


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The one place a command's exit code is decided for what went wrong.

    Our exceptions print one line and exit with their documented code; bad local state (a damaged or
    read-only journal, a full disk, an unwritable path) exits 2 naming the fix; anything else is an
    internal error: one line on stderr, the traceback in RUN_DIR/error.log (or a private file in the
    temp folder), exit 4. No traceback ever reaches the terminal.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - the last line of defence
            exit_for(exc)

    return wrapper


def exit_for(exc: BaseException) -> NoReturn:
    """Print what went wrong in one line and exit with the documented code (see handle_errors)."""
    if isinstance(exc, KeyboardInterrupt):
        _say("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    exc = first_leaf(exc)
    if isinstance(exc, BrokenPipeError) and _reader_gone(sys.stdout):
        # Nothing is wrong but that nobody reads our output on: stop quietly.
        silence_stdout()
        sys.exit(EXIT_BROKEN_PIPE)
    if isinstance(exc, BatchIngestError):
        _say(f"batch-ingest: error: {safe_text(str(exc))}")
        sys.exit(exit_code_for(exc))
    local = local_state_problem(exc)
    if local is not None:
        _say(f"batch-ingest: error: {safe_text(local)}")
        sys.exit(EXIT_USAGE)
    if not isinstance(exc, Exception):
        raise exc
    log = write_error_log(error_log_folder.get(), exc)
    text = safe_text(f"{type(exc).__name__}: {exc}")[:300]
    _say(f"batch-ingest: internal error: {text}; details in {log}")
    sys.exit(EXIT_INTERNAL)


def _say(line: str) -> None:
    """One line on stderr, unless stderr itself is gone (a closed pipe): the exit code still tells."""
    with contextlib.suppress(OSError):
        click.echo(line, err=True)


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what is buffered for a reader
    that went away does not fail again on the way out."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _reader_gone(stream: Any) -> bool:
    """True when `stream` is a pipe whose reader closed its end (poll reports an error on ours)."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


class Group(click.Group):
    """The command group: errors raised before a command runs (while click converts an argument,
    say) go through the same `exit_for` as the commands' own; its help lists every command with its
    first sentence whole (click cuts them at 45 characters)."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001
            exit_for(exc)


def check_writable(path: Path | None, option: str) -> None:
    """UsageError (exit 2) now, before anything is sent, when `path` could not be written later."""
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder: give a file name")
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{option} {path}: not writable: check the permissions or choose another path")


def echo(text: str = "", *, err: bool = False, nl: bool = True) -> None:
    """click.echo for anything that may hold server or manifest text: control characters escaped."""
    click.echo(safe_text(text), err=err, nl=nl)


def _setting_option(spec: Setting) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of one declared setting: its help says the variable, the default and the range."""
    notes = [f"env {spec.env}"]
    default = spec.shown_default()
    if spec.required:
        notes.append("required to reach the API")
    elif default:
        notes.append(f"default: {default}")
    text = spec.meaning[:1].upper() + spec.meaning[1:] + " [" + "; ".join(notes) + "]."
    if spec.secret or spec.private:
        text += " Flags show in `ps` to every user of the machine: prefer the environment variable."
    if spec.kind.is_flag:
        # default None: "not given", so that the environment and the config file can still set it.
        return click.option(spec.option, is_flag=True, default=None, help=text)
    return click.option(spec.option, type=spec.kind.click_type, help=text)


def api_options_for(scope: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--config and one option per setting with a flag that a command of `scope` uses (see
    `settings.SCOPES`): `profiles` lists no upload or polling options it would ignore."""
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="TOML config file (default: ./batch-ingest.toml when present).",
        ),
        *(_setting_option(spec) for spec in SETTINGS if spec.flag and spec.used_by(scope)),
    ]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


api_options = api_options_for("work")
"""Every setting's flag: the commands that work rows through, and `config`."""


def setting_flags(options: dict[str, Any]) -> dict[str, Any]:
    """The settings' flags, popped from a command's `options` (None: not given)."""
    return {spec.name: options.pop(spec.name, None) for spec in SETTINGS if spec.flag}


def log_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--log-file and --log-format: an event log for cron (submissions, state changes, errors)."""
    fn = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Format of --log-file lines.",
    )(fn)
    return click.option(
        "--log-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Append one event per submission, state change and error to this file.",
    )(fn)


def progress_for(quiet: bool, options: dict[str, Any]):  # -> Progress
    """The progress sink for a command: screen output plus the optional event log."""
    from ..progress import choose_progress

    log_file, log_format = options.pop("log_file", None), options.pop("log_format", "text")
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600))
            os.chmod(log_file, 0o600)
        except OSError as exc:
            raise UsageError(f"--log-file {log_file}: cannot write: {exc.strerror}") from None
    return choose_progress(quiet=quiet, log_file=log_file, log_format=log_format)


def build_settings(options: dict[str, Any], stored: dict[str, Any] | None = None) -> Settings:
    """Settings from flags (popped from `options`), environment, a run's stored settings, config file, defaults."""
    flags = setting_flags(options)
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
        options.update(
            api_url=server.url, merchant_id=config.merchant_id, api_key=config.api_key, token=config.token
        )
        options.update(email=None, password=None)
        if options.get("poll_min_interval") is None:
            options["poll_min_interval"] = 0.5
        if options.get("poll_max_interval") is None:
            options["poll_max_interval"] = 2.0
        yield


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batch-ingest")
def main() -> None:
    """Move video libraries into SmartSTREAM in bulk: submit, poll, report."""
    # Run folders, reports, logs and HTML files are their user's alone, whatever the umask.
    os.umask(0o077)
