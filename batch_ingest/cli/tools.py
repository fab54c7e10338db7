"""Commands around the batch: the emulator, profiles, jobs, config."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from typing import Any

import click

from ..errors import UsageError
from .common import _SETTING_FLAGS, api_options, build_settings, echo, emulator_for_run, handle_errors, main


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


def _client_call(options: dict[str, Any], call):
    from ..api.client import SmartStreamClient

    settings = build_settings(options)

    async def go():
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

    async def call(client):
        return [p async for p in client.iter_job_profiles(sort="id", order="ASC")]

    with emulator_for_run(emulator, options):
        found = _client_call(options, call)
    for p in found:
        if as_json:
            echo(json.dumps({"id": p.id, "ref_id": p.ref_id, "name": p.name, "description": p.description}))
        else:
            echo(f"{p.id:>8}  ref:{p.ref_id or '-':<20}  {p.name or ''}")


@main.command()
@click.argument("job", required=False)
@click.option(
    "--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="How many of the newest jobs."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@api_options
@handle_errors
def jobs(job: str | None, limit: int, as_json: bool, **options: Any) -> None:
    """Show one job (JOB is an id or ref:<ref_id>), or the newest jobs."""
    from dataclasses import asdict, replace

    async def call(client):
        if job:
            return [await client.get_job(job)]
        return (await client.list_jobs(limit=limit, sort="created_at", order="DESC")).items

    from ..redact import redact_url

    # A job's source URL may carry a credential (a presigned URL): shown redacted, like everywhere else.
    found = [
        replace(j, source_url=redact_url(j.source_url)) if j.source_url else j
        for j in _client_call(options, call)
    ]
    if as_json:
        data = [asdict(j) for j in found]
        echo(json.dumps(data[0] if job else data, indent=2))
        return
    for j in found:
        if job:
            for key, value in asdict(j).items():
                echo(f"{key:>15}: {'' if value is None else value}")
        else:
            echo(
                f"{j.id}  status {j.encode_status}  {j.updated_at}  ref:{j.ref_id or '-'}  {j.source_url or ''}"
            )


@main.command()
@api_options
@handle_errors
def config(**options: Any) -> None:
    """Show the resolved settings (flag, environment, config file, default) with secrets masked."""
    from ..settings import load_config_file, resolve_settings

    flags = {name: options.pop(name, None) for name in _SETTING_FLAGS}
    file_config, path = load_config_file(
        options.pop("config_file", None), warn=lambda m: echo(f"warning: {m}", err=True)
    )
    settings = resolve_settings(flags, config=file_config)
    echo(f"# config file: {path or '(none)'}")
    for key, value in settings.masked().items():
        echo(f"{key} = {'' if value is None else value}")
