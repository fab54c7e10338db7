"""What the test modules share: emulator settings and CLI flags for quick runs, manifests, ways to run
the CLI (in-process or as a process), and the checks that a run kept its promises.

Fixtures are in conftest.py; everything here is a plain function or constant, imported by name.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import polars as pl
from batch_ingest.api import Auth, SmartStreamClient
from batch_ingest.cli import main
from batch_ingest.emulator import EmulatorConfig, Store, create_app
from batch_ingest.journal import Journal
from batch_ingest.runfiles import JOURNAL_FILE
from batch_ingest.settings import Secret
from click.testing import CliRunner, Result

# Emulator knobs for quick runs: no rate limit, encodes of a few tenths of a second.
FAST: dict[str, Any] = dict(rate_limit=0, queue_seconds=0.05, encode_seconds=0.15, jitter=0.5)
# CLI flags for quick runs: polls every 0.05-0.2 s, no client-side rate limit, retries enough for the
# fault scenarios, quiet. `FLAGS[:-1]` leaves out the -q.
FLAGS = ["--poll-min-interval", "0.05", "--poll-max-interval", "0.2", "--rate", "0", "--retries", "8", "-q"]
# A create in doubt is looked up after 0.05 s instead of the default (the platform needs no time here).
QUICK_DOUBT = {"SMARTSTREAM_IN_DOUBT_DELAY": "0.05"}
FINAL = {"succeeded", "failed", "error", "timed_out", "skipped", "rejected"}


# -- manifests ----------------------------------------------------------------------------------


def write_manifest(folder: Path, text: str, name: str = "manifest.csv") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def mixed_manifest(folder: Path, n: int = 200, *, url_host: str = "cdn.example.com") -> Path:
    """n rows: 70% URLs, 30% uploads; every other row has a ref_id; an extra column `batch`."""
    media = folder / "media"
    media.mkdir(exist_ok=True)
    lines = ["source,profile,ref_id,batch"]
    for i in range(n):
        ref = f"ref-{i}" if i % 2 == 0 else ""
        if i % 10 < 7:
            lines.append(f"https://{url_host}/v/{i}.mp4,{100 + i % 3},{ref},b{i % 4}")
        else:
            (media / f"{i}.mp4").write_bytes(bytes([i % 256]) * (1000 + i))
            lines.append(f"media/{i}.mp4,{'ref:hd' if i % 3 else ''},{ref},b{i % 4}")
    return write_manifest(folder, "\n".join(lines) + "\n")


def url_manifest(
    folder: Path, n: int, *, host: str = "cdn.example.com", refs: bool = True, name: str = "m.csv"
) -> Path:
    """n URL rows on `host`, profile 100, ref_ids r-0... (or none)."""
    lines = ["source,profile,ref_id"] + [
        f"https://{host}/v/{i}.mp4,100,{f'r-{i}' if refs else ''}" for i in range(n)
    ]
    return write_manifest(folder, "\n".join(lines) + "\n", name)


# -- running the CLI ----------------------------------------------------------------------------


def run_cli(args: list[str], env: dict[str, str] | None = None) -> Result:
    """`batch-ingest ARGS` in this process; an exception the CLI does not handle fails the test."""
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def process_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any SMARTSTREAM_* variable, plus `env`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SMARTSTREAM_")} | (env or {})


def spawn_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`batch-ingest ARGS` as a process of its own (stdout and stderr piped, as text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "batch_ingest", *args],
        env=process_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- what a run left ----------------------------------------------------------------------------


def report_of(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "report.parquet", glob=False)


def summary_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def journal_counts(run_dir: Path) -> dict[str, int]:
    """Rows per journal state; {} while the journal does not exist yet."""
    try:
        journal = Journal.open(run_dir / JOURNAL_FILE)
    except Exception:  # not created yet
        return {}
    try:
        return journal.counts()
    finally:
        journal.close()


def check_consistent(run_dir: Path, server, n: int, *, allow_unfinished: bool = False) -> pl.DataFrame:
    """A run of `n` rows kept its promises, checked against the emulator's own records:
    - every manifest row has exactly one row in the report, with a final outcome;
    - the emulator holds exactly one job per submitted row and no job that no row claims;
    - each report outcome agrees with the emulator's state of that job;
    - the journal and the report agree."""
    report = pl.read_parquet(run_dir / "report.parquet")
    assert report["row"].to_list() == list(range(1, n + 1))  # every row exactly once, in order
    if not allow_unfinished:
        assert set(report["outcome"]) <= FINAL, report.group_by("outcome").len()
    jobs = {j["id"]: j for j in server.jobs()}
    stats = server.stats()
    assert stats["duplicate_ref_ids"] == {}, stats["duplicate_ref_ids"]
    assert stats["duplicate_sources"] == {}, stats["duplicate_sources"]
    claimed = report.filter(pl.col("job_id").is_not_null())
    assert claimed["job_id"].n_unique() == claimed.height  # no job claimed by two rows
    assert set(claimed["job_id"]) == set(jobs), "a job on the platform that no row claims"
    for row in claimed.iter_rows(named=True):
        job = jobs[row["job_id"]]
        assert job["ref_id"] == row["ref_id"]
        if row["outcome"] == "succeeded":
            assert job["encode_status"] == 2, row
        elif row["outcome"] == "failed":
            assert job["encode_status"] in (3, 4), row
    journal = Journal.open(run_dir / JOURNAL_FILE)
    try:
        states = journal.to_frame()
    finally:
        journal.close()
    joined = report.join(states.select("row", "state", pl.col("job_id").alias("journal_job")), on="row")
    unfinished = joined.filter(pl.col("state").is_in(["pending", "sending", "submitted"]))
    assert (unfinished["outcome"] == "interrupted").all()
    done = joined.filter(~pl.col("state").is_in(["pending", "sending", "submitted"]))
    assert (done["outcome"] == done["state"]).all()
    assert joined.filter(pl.col("job_id").ne_missing(pl.col("journal_job"))).is_empty()
    return report


# -- the emulator in-process --------------------------------------------------------------------


# The plan's columns as Journal.create reads them (unit tests build small plans by hand).
PLAN_SCHEMA = {
    "row": pl.Int64,
    "key": pl.String,
    "ref_id": pl.String,
    "source": pl.String,
    "source_type": pl.String,
    "source_path": pl.String,
    "job_profile_id": pl.Int64,
    "name": pl.String,
    "description": pl.String,
    "bytes": pl.Int64,
    "status": pl.String,
    "error_code": pl.String,
    "reason": pl.String,
}


class FakeClock:
    """A clock that only moves when someone sleeps on it: time passes without waiting."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@dataclass
class Api:
    """An emulator and a way to build clients for it, in-process or over a socket."""

    mode: str
    store: Store
    make_client: Callable[..., SmartStreamClient]
    url: str


def client_for(
    url: str,
    config: EmulatorConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    static_token: bool = True,
    **kwargs: Any,
) -> SmartStreamClient:
    """A client with the emulator's credentials (static token, or email and password)."""
    clock = kwargs.pop("auth_clock", None) or time.time
    if static_token:
        auth = Auth(Secret(config.api_key), token=Secret(config.token), clock=clock)
    else:
        auth = Auth(Secret(config.api_key), email=config.email, password=Secret(config.password), clock=clock)
    kwargs.setdefault("get_retries", 0)
    return SmartStreamClient(
        base_url=url, merchant_id=config.merchant_id, auth=auth, transport=transport, **kwargs
    )


@asynccontextmanager
async def asgi_api(config: EmulatorConfig, clock: Callable[[], float] | None = None) -> AsyncIterator[Api]:
    """The emulator in-process through httpx.ASGITransport."""
    app = create_app(config, clock=clock) if clock else create_app(config)
    transport = httpx.ASGITransport(app=app)
    url = "http://emulator.test"
    yield Api("asgi", app.state.store, lambda **kw: client_for(url, config, transport=transport, **kw), url)
