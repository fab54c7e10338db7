"""The `emulator` command: serve the bundled SmartSTREAM API emulator on a socket."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from ..errors import UsageError
from .common import echo, handle_errors, main


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on (0: a free one).")
@click.option("--merchant-id", default="demo", show_default=True, help="Merchant id the emulator accepts.")
@click.option("--api-key", default="emulator-api-key", show_default=True, help="API key it accepts.")
@click.option("--token", default="emulator-token", show_default=True, help="Static bearer token it accepts.")
@click.option(
    "--email", default="ops@example.com", show_default=True, help="Email its auth-token endpoint accepts."
)
@click.option("--password", default="emulator-password", show_default=True, help="Password for that email.")
@click.option(
    "--rate-limit", type=int, default=50, show_default=True, help="Requests per rolling minute (0: off)."
)
@click.option(
    "--bucket-capacity",
    type=int,
    default=0,
    show_default=True,
    help="Enforce --rate-limit as a token bucket of this capacity instead of a rolling minute (0: rolling minute).",
)
@click.option(
    "--retry-after",
    type=click.Choice(["seconds", "date", "none"]),
    default="seconds",
    show_default=True,
    help="Form of Retry-After on a 429.",
)
@click.option(
    "--max-in-flight",
    type=int,
    default=0,
    show_default=True,
    help="Jobs queued or encoding at once on the account; a create over the cap answers 429 (0: no cap).",
)
@click.option(
    "--queue-seconds", type=float, default=1.0, show_default=True, help="Time a job waits before encoding."
)
@click.option("--encode-seconds", type=float, default=5.0, show_default=True, help="Time an encode takes.")
@click.option(
    "--jitter", type=float, default=0.5, show_default=True, help="+/- share of randomness on durations."
)
@click.option(
    "--failure-rate", type=float, default=0.0, show_default=True, help="Share of encodes that fail."
)
@click.option(
    "--unreachable", multiple=True, help="Source URLs containing this text cannot be fetched (repeatable)."
)
@click.option(
    "--token-ttl", type=float, default=3600.0, show_default=True, help="Lifetime of issued tokens (s)."
)
@click.option(
    "--static-token-ttl", type=float, default=None, help="Fault: the static token expires after this (s)."
)
@click.option(
    "--latency", type=float, default=0.0, show_default=True, help="Fault: seconds added to every answer."
)
@click.option(
    "--error-rate", type=float, default=0.0, show_default=True, help="Fault: share of requests answered 500."
)
@click.option(
    "--burst-429-rate", type=float, default=0.0, show_default=True, help="Fault: chance a 429 burst starts."
)
@click.option(
    "--drop-after-create-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Fault: share of creates that create the job, then drop the connection.",
)
@click.option(
    "--hang-rate", type=float, default=0.0, show_default=True, help="Fault: share of requests that hang."
)
@click.option("--storage-missing", is_flag=True, help="Fault: every create answers STORAGE_NOT_FOUND.")
@click.option(
    "--storage-missing-for",
    metavar="TEXT",
    multiple=True,
    help="Fault: creates whose source contains this text answer STORAGE_NOT_FOUND (repeatable; "
    "`run --emulator` uses 'no-storage', as manifests/sample.csv expects).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for durations, failures and faults."
)
@click.option(
    "--time-scale", type=float, default=1.0, show_default=True, help="Emulator seconds per real second."
)
@handle_errors
def emulator(**options: Any) -> None:
    """Serve the bundled SmartSTREAM API emulator and print the settings that point at it."""
    from ..emulator import EmulatorConfig, env_for
    from ..emulator.server import bind, serve_forever

    host, port = options.pop("host"), options.pop("port")
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror}: pick another --port or --host"
        ) from None
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
    knobs["storage_missing_for"] = tuple(knobs["storage_missing_for"])
    config = EmulatorConfig().with_changes(**knobs)
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
