"""Commands around the batch: profiles, jobs, config."""

from __future__ import annotations

import json
from typing import Any

import click

from ..settings import load_config_file, resolve_settings_with_origins
from .common import (
    api_options,
    api_options_for,
    build_settings,
    echo,
    emulator_for_run,
    handle_errors,
    main,
    setting_flags,
)


def _client_call(options: dict[str, Any], call):
    """(settings, what `call(client)` returned) for a look-up command."""
    import asyncio  # with httpx, loaded only by the commands that talk to the API

    settings = build_settings(options)

    async def go():
        async with settings.make_client() as client:
            return await call(client)

    return settings, asyncio.run(go())


@main.command()
@click.option("--emulator", is_flag=True, help="Ask the bundled emulator instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@api_options_for("api")
@handle_errors
def profiles(emulator: bool, as_json: bool, **options: Any) -> None:
    """List the account's job profiles (id, ref_id, name): the values a manifest's profile column takes."""

    async def call(client):
        return [p async for p in client.iter_job_profiles(sort="id", order="ASC")]

    with emulator_for_run(emulator, options):
        _, found = _client_call(options, call)
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
@api_options_for("api")
@handle_errors
def jobs(job: str | None, limit: int, as_json: bool, **options: Any) -> None:
    """Show one job (JOB is an id or ref:<ref_id>), or the newest jobs.

    Exit codes: 0 shown; 1 no such job; 2 usage or configuration error; 3 the API refused or failed."""
    import sys
    from dataclasses import asdict, replace

    from ..errors import NotFoundError

    async def call(client):
        if job:
            return [await client.get_job(job)]
        return (await client.list_jobs(limit=limit, sort="created_at", order="DESC")).items

    from ..redact import redact_url

    try:
        settings, listed = _client_call(options, call)
    except NotFoundError as exc:
        if not job or exc.code != "JOB_NOT_FOUND":
            raise  # the listing, or a 404 that is not the API's (a wrong --api-url): the whole error
        echo(
            f"batch-ingest: no job {job} on the platform ({exc}); `batch-ingest jobs` lists the newest",
            err=True,
        )
        sys.exit(1)
    if not listed:
        echo("batch-ingest: the account has no jobs yet", err=True)
    # A job's source URL may carry a credential (a presigned URL): shown redacted, like everywhere else.
    found = [replace(j, source_url=redact_url(j.source_url)) if j.source_url else j for j in listed]
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
                f"{j.id}  status {j.encode_status} ({settings.encode_status_map.classify(j.encode_status).value})  "
                f"{j.updated_at}  ref:{j.ref_id or '-'}  {j.source_url or ''}"
            )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the settings and their origins as JSON.")
@api_options
@handle_errors
def config(as_json: bool, **options: Any) -> None:
    """Show the resolved settings with secrets masked, and where each value came from: a flag, an
    environment variable, the config file, or the default (in that order of precedence)."""
    flags = setting_flags(options)
    file_config, path = load_config_file(
        options.pop("config_file", None), warn=lambda m: echo(f"warning: {m}", err=True)
    )
    settings, origins = resolve_settings_with_origins(
        flags, config=file_config, config_name=f"file {path}" if path else "config file"
    )
    masked = settings.masked()
    if as_json:
        echo(
            json.dumps(
                {
                    "config_file": str(path) if path else None,
                    "settings": {k: {"value": v, "from": origins[k]} for k, v in masked.items()},
                },
                indent=2,
                default=str,
            )
        )
        return
    echo(f"# config file: {path or '(none)'}")
    width = max(len(f"{k} = {'' if v is None else v}") for k, v in masked.items())
    for key, value in masked.items():
        line = f"{key} = {'' if value is None else value}"
        echo(f"{line:<{width}}  # {origins[key]}")
