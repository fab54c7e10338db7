"""The `emulator` command: serve the bundled SmartSTREAM API emulator on a socket."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import Any, get_args, get_origin, get_type_hints

import click

from ..emulator.store import EmulatorConfig
from ..errors import UsageError
from .common import echo, handle_errors, main


def _knob_options(command: Callable[..., None]) -> Callable[..., None]:
    """One option per `EmulatorConfig` field that has flag metadata: `--<field-name>`, the field's default
    and help text, its type from the field's annotation (a tuple is a repeatable option)."""
    hints = get_type_hints(EmulatorConfig)
    for knob in reversed(fields(EmulatorConfig)):  # click applies decorators bottom-up
        if "flag_help" not in knob.metadata:
            continue
        hint = hints[knob.name]
        kwargs: dict[str, Any] = {"help": knob.metadata["flag_help"]}
        if knob.metadata["flag_metavar"]:
            kwargs["metavar"] = knob.metadata["flag_metavar"]
        if hint is bool:
            kwargs["is_flag"] = True
        elif get_origin(hint) is tuple:
            kwargs["multiple"] = True
        else:
            base = next((t for t in get_args(hint) if t is not type(None)), hint)  # X | None: X
            choices = knob.metadata["flag_choices"]
            kwargs.update(
                type=click.Choice(choices) if choices else base,
                default=knob.default,
                show_default=knob.default is not None,
            )
        command = click.option("--" + knob.name.replace("_", "-"), **kwargs)(command)
    return command


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on (0: a free one).")
@_knob_options
@handle_errors
def emulator(host: str, port: int, **knobs: Any) -> None:
    """Serve the bundled SmartSTREAM API emulator and print the settings that point at it."""
    from ..emulator import env_for
    from ..emulator.server import bind, serve_forever

    try:
        sock = bind(host, port)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror}: pick another --port or --host"
        ) from None
    port = sock.getsockname()[1]
    config = EmulatorConfig(**knobs)
    display_host = f"[{host}]" if ":" in host else host
    for name, value in env_for(config, f"http://{display_host}:{port}").items():
        echo(f"export {name}={shlex.quote(value)}")
    echo("# or, to use the auth-token endpoint instead of the static token:")
    echo(f"#   export SMARTSTREAM_EMAIL={shlex.quote(config.email)}")
    echo(f"#   export SMARTSTREAM_PASSWORD={shlex.quote(config.password)}")
    echo(f"# counters: curl http://{display_host}:{port}/_emulator/stats", nl=True)
    sys.stdout.flush()
    try:
        serve_forever(config, sock)
    except KeyboardInterrupt:
        pass
