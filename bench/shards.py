"""Shards and one account budget (issue 14): many processes, one emulator enforcing R per rolling minute.

    uv run python bench/shards.py                       # A, B and C (about 10 minutes)
    uv run python bench/shards.py --rows-per-shard 500 --rate 1500 --only A

A. 8 shards x ROWS rows run as a Kubernetes Indexed Job runs them (`run --shard auto/8 --no-wait` with
   JOB_COMPLETION_INDEX=i, SMARTSTREAM_RATE=R) sharing R through a Redis `--rate-store`; two shards are
   killed (SIGKILL) mid-run and started again with the same index; then `collect ROOT`.
B. The same without `--rate-store`: the static split, each shard pacing itself at R/8.
C. A migration of 4 shards and a "cron" `run` of its own, started while the migration is under way,
   both on one `--rate-store` and one R: each one's share of the requests while both were active.

Every process is a `batch-ingest` process of its own; the emulator runs in its own process on loopback
and Redis is Debian's `redis-server` on a free loopback port. The figures are ratios and shares (the
machine is small and shared), each with its target. Results go to bench/results/shards.{md,json}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
from batch_ingest.emulator import EmulatorConfig, EmulatorProcess
from batch_ingest.emulator.server import env_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: its tests' helpers
from tests.redis_server import RedisServer

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
CFG = EmulatorConfig()
SHARDS = 8
C_SHARDS = 4
# The emulator: short encodes so that the run is the budget's, not the encodes'.
ENCODE_ARGS = ["--queue-seconds", "1", "--encode-seconds", "2", "--jitter", "0.5"]
KILLS = {2: 0.3, 5: 0.6}  # shard index -> share of its rows submitted when it is killed (SIGKILL)
RESTART_DELAY_S = 5.0  # a killed shard's pod comes back after this
CRON_AFTER = 0.25  # the cron starts once this share of the migration's jobs exists
INDEX_VARIABLES = ("JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX", "PARALLEL_SEQ")


def cli() -> list[str]:
    """The `batch-ingest` command of this environment."""
    script = Path(sys.executable).parent / "batch-ingest"
    return [str(script)] if script.exists() else [sys.executable, "-m", "batch_ingest"]


# -- Redis, the emulator, the stats -------------------------------------------------------------


def Redis(folder: Path) -> RedisServer:
    """Debian's `redis-server` on a free loopback port, no persistence: the tests' own server."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    folder.mkdir(parents=True, exist_ok=True)
    server = RedisServer(folder)
    server.start()
    return server


def get(url: str, path: str) -> Any:
    return httpx.get(f"{url}{path}", timeout=120, trust_env=False).json()


class Sampler(threading.Thread):
    """Reads the emulator's stats every second: (time, requests so far, jobs so far, 429s so far)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.samples: list[tuple[float, int, int, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30, trust_env=False) as client:
            while not self.halt.is_set():
                try:
                    st = client.get("/_emulator/stats").json()
                    self.samples.append(
                        (time.time(), st["requests_total"], st["jobs_created"], st["rate_limited"])
                    )
                except httpx.HTTPError:
                    pass
                self.halt.wait(1.0)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)

    def jobs_created(self) -> int:
        return self.samples[-1][2] if self.samples else 0

    def requests_at(self, t: float) -> float:
        """Requests the emulator had counted at time `t` (linear between the samples around it)."""
        s = self.samples
        if not s:
            return 0.0
        if t <= s[0][0]:
            return float(s[0][1])
        for (t0, r0, _, _), (t1, r1, _, _) in itertools.pairwise(s):
            if t0 <= t <= t1:
                return r0 + (r1 - r0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
        return float(s[-1][1])

    def per_minute(self, start: float) -> list[int]:
        """Requests in each whole minute from `start` (by the samples): the run's timeline."""
        out = []
        t = start
        while t + 60 <= self.samples[-1][0]:
            out.append(round(self.requests_at(t + 60) - self.requests_at(t)))
            t += 60
        return out


def epoch(api_date: str) -> float:
    return datetime.fromisoformat(api_date.replace("Z", "+00:00")).timestamp()


# -- processes ----------------------------------------------------------------------------------


def base_env(url: str, rate: int, store: str | None) -> dict[str, str]:
    """The environment of a pod: the emulator's SMARTSTREAM_* settings, R, and the store when shared."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SMARTSTREAM_") and k not in INDEX_VARIABLES
    }
    env.update(env_for(CFG, url))
    env["SMARTSTREAM_RATE"] = str(rate)
    if store:
        env["SMARTSTREAM_RATE_STORE"] = store
    return env


def launch(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def progress_of(run_dir: Path) -> tuple[int, int] | None:
    """(rows, rows with a job id) of a shard's journal, read-only; None before it exists or while busy."""
    path = run_dir / "journal.sqlite"
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            rows, submitted = con.execute("SELECT count(*), count(job_id) FROM rows").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return int(rows), int(submitted)


def manifest(path: Path, n: int, host: str, ref: str) -> Path:
    pl.DataFrame(
        {
            "source": [f"https://{host}/v/{i}.mp4" for i in range(n)],
            "profile": ["100"] * n,
            "ref_id": [f"{ref}-{i}" for i in range(n)],
        }
    ).write_csv(path)
    return path


class Shards:
    """N shard processes of an Indexed Job, each `run MANIFEST --shard auto/N --no-wait -q` with its
    JOB_COMPLETION_INDEX; some killed (SIGKILL) once they submitted a share of their rows, and started
    again with the same index after RESTART_DELAY_S, as a pod is."""

    def __init__(
        self, folder: Path, manifest_path: Path, n: int, env: dict[str, str], kills: dict[int, float]
    ) -> None:
        self.folder, self.n, self.env = folder, n, env
        self.root = folder / "root"
        self.cmd = [*cli(), "run", str(manifest_path), "--shard", f"auto/{n}", "--report-dir", str(self.root)]
        if env.get("SMARTSTREAM_RATE_STORE"):
            self.cmd += ["--rate-store", env["SMARTSTREAM_RATE_STORE"]]
        self.cmd += ["--no-wait", "-q"]
        self.kills = dict(kills)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.ended: dict[int, float] = {}
        self.exit_codes: dict[int, list[int]] = {i: [] for i in range(n)}
        self.kill_log: list[dict[str, Any]] = []
        self.restart_at: dict[int, float] = {}
        self.t0 = time.time()

    def log(self, i: int) -> Path:
        return self.folder / f"shard-{i}.log"

    def start(self, i: int) -> None:
        self.procs[i] = launch(
            self.cmd, {**self.env, "JOB_COMPLETION_INDEX": str(i)}, self.folder, self.log(i)
        )

    def start_all(self) -> None:
        for i in range(self.n):
            self.start(i)

    def running(self) -> bool:
        return len(self.ended) < self.n

    def step(self) -> None:
        """Kill, restart, and note the shards that ended."""
        now = time.time()
        for i, when in list(self.restart_at.items()):
            if now >= when:
                del self.restart_at[i]
                self.start(i)
        for i, share in list(self.kills.items()):
            proc = self.procs.get(i)
            if proc is None or proc.poll() is not None:
                continue
            prog = progress_of(self.root / f"shard-{i}-of-{self.n}")
            if prog is None or prog[1] < share * prog[0]:
                continue
            del self.kills[i]
            if prog[1] >= prog[0]:
                self.kill_log.append(
                    {"shard": i, "note": "had submitted every row before its kill: not killed"}
                )
                continue
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            self.exit_codes[i].append(proc.returncode)
            after = progress_of(self.root / f"shard-{i}-of-{self.n}")
            self.kill_log.append(
                {
                    "shard": i,
                    "rows": prog[0],
                    "submitted_when_killed": (after or prog)[1],
                    "killed_at_s": round(now - self.t0, 1),
                }
            )
            self.restart_at[i] = time.time() + RESTART_DELAY_S
        for i, proc in self.procs.items():
            if i in self.ended or i in self.restart_at:  # ended, or killed and not started again yet
                continue
            rc = proc.poll()
            if rc is None:
                continue
            self.exit_codes[i].append(rc)
            if rc == 75:  # the folder still held by the one before: a pod would be retried
                self.restart_at[i] = time.time() + 1.0
                continue
            self.ended[i] = time.time()

    def run(self, t0: float, while_running: Callable[[], None] | None = None) -> None:
        self.t0 = t0
        self.start_all()
        while self.running():
            self.step()
            if while_running is not None:
                while_running()
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def collect(folder: Path, root: Path, env: dict[str, str]) -> tuple[int, float]:
    """`batch-ingest collect ROOT`: (exit code, wall seconds)."""
    started = time.time()
    with (folder / "collect.log").open("ab") as out:
        cmd = [*cli(), "collect", str(root), "-q"]
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        rc = subprocess.run(cmd, env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT).returncode
    return rc, time.time() - started


def shard_summaries(root: Path, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in range(n):
        path = root / f"shard-{i}-of-{n}" / "summary.json"
        if not path.exists():
            out[str(i)] = None
            continue
        summary = json.loads(path.read_text())
        settings = summary.get("settings") or {}
        out[str(i)] = {
            "rate": settings.get("rate"),
            "rate_store": bool(settings.get("rate_store")),
            "rows": summary.get("rows"),
            "resumes": summary.get("resumes"),
            "adopted_after_doubt": summary.get("adopted_after_doubt"),
            "segments": [seg["kind"] for seg in summary.get("segments", [])],
        }
    return out


def steady(times: list[float]) -> float | None:
    """Events per minute between the 10th and the 90th percentile of their times."""
    if len(times) < 20:
        return None
    lo, hi = times[len(times) // 10], times[len(times) * 9 // 10]
    return round((len(times) * 9 // 10 - len(times) // 10) / ((hi - lo) / 60), 1) if hi > lo else None


def tail(path: Path, n: int = 600) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def check(value: Any, target: str, met: bool) -> dict[str, Any]:
    return {"value": value, "target": target, "result": "PASS" if met else "MISS"}


def report_rows(path: Path) -> tuple[int, dict[str, int]]:
    if not path.exists():
        return 0, {}
    df = pl.read_parquet(path)
    counts = df["outcome"].value_counts()
    return df.height, {str(k): int(v) for k, v in zip(counts["outcome"], counts["count"], strict=True)}


# -- scenarios A and B --------------------------------------------------------------------------


def scenario_shards(folder: Path, rows_per_shard: int, rate: int, shared: bool) -> dict[str, Any]:
    """8 shards, two killed and restarted, then one collector; with or without the shared store."""
    n_rows = SHARDS * rows_per_shard
    path = manifest(folder / "manifest.csv", n_rows, "cdn.example.com", "r")
    redis = Redis(folder / "redis") if shared else None
    shards: Shards | None = None
    try:
        with EmulatorProcess(
            "--rate-limit", str(rate), *ENCODE_ARGS, stdout=subprocess.DEVNULL, cwd=ROOT
        ) as emulator:
            url = emulator.url
            env = base_env(url, rate, redis.url if redis else None)
            sampler = Sampler(url)
            sampler.start()
            shards = Shards(folder, path, SHARDS, env, KILLS)
            t0 = time.time()
            shards.run(t0)
            shards_end = time.time()
            collect_rc, collect_s = collect(folder, shards.root, env)
            t_end = time.time()
            sampler.stop()
            st = get(url, "/_emulator/stats")
            jobs = get(url, "/_emulator/jobs")["jobs"]
    finally:
        if shards is not None:
            shards.stop()
        if redis is not None:
            redis.stop()

    elapsed = t_end - t0
    requests = st["requests_total"]
    per_job = requests / n_rows
    succeeded = st["jobs_by_encode_status"].get("2", 0)
    jobs_per_min = succeeded / (elapsed / 60)
    bound = rate / per_job
    rows, outcomes = report_rows(shards.root / "report.parquet")
    creates = sorted(epoch(j["created_at"]) for j in jobs)
    last_final = max(epoch(j["updated_at"]) for j in jobs)
    duplicates = len(st["duplicate_ref_ids"])
    figures = {
        "max_requests_per_minute": check(
            st["max_requests_per_minute"],
            f"<= R = {rate}",
            st["max_requests_per_minute"] <= rate,
        ),
        "requests_answered_429": check(st["rate_limited"], "0", st["rate_limited"] == 0),
        "jobs_finished_per_minute_share_of_bound": check(
            round(jobs_per_min / bound, 3),
            ">= 0.90 of R / requests per job",
            jobs_per_min / bound >= 0.9,
        ),
        "requests_per_job": check(round(per_job, 4), "<= 1.1 (shards + collector)", per_job <= 1.1),
        "duplicates": check(
            {"duplicate_ref_ids": duplicates, "jobs_created": st["jobs_created"]},
            f"0 duplicates, {n_rows} jobs",
            duplicates == 0 and st["jobs_created"] == n_rows,
        ),
        "merged_report_rows": check(rows, str(n_rows), rows == n_rows),
    }
    return {
        "store": "shared (--rate-store redis)" if shared else "none: static split, R/8 per shard",
        "rows": n_rows,
        "shards": SHARDS,
        "rate_limit_per_min": rate,
        "figures": figures,
        "detail": {
            "elapsed_s": round(elapsed, 1),
            "shards_phase_s": round(shards_end - t0, 1),
            "collect_s": round(collect_s, 1),
            "jobs_per_min": round(jobs_per_min, 1),
            "bound_jobs_per_min": round(bound, 1),
            "succeeded_on_emulator": succeeded,
            "requests_total": requests,
            "requests_by_endpoint": st["requests"],
            "max_concurrent_requests": st["max_concurrent_requests"],
            # The shards' phase alone: creates per minute while they ran, as a share of R.
            "shards_phase_creates_per_min": round(
                sum(1 for c in creates if c <= shards_end) / ((shards_end - t0) / 60), 1
            ),
            "shards_phase_share_of_rate": round(
                sum(1 for c in creates if c <= shards_end) / ((shards_end - t0) / 60) / rate, 3
            ),
            # From the first create (the processes started, on a small machine) to the collector's end.
            "jobs_per_min_from_first_create": round(succeeded / ((t_end - creates[0]) / 60), 1),
            "share_of_bound_from_first_create": round(succeeded / ((t_end - creates[0]) / 60) / bound, 3),
            # Whether the machine drives R: creates per minute between the 10th and the 90th percentile.
            "steady_creates_per_min": steady(creates),
            "first_create_s": round(creates[0] - t0, 1),
            "last_create_s": round(creates[-1] - t0, 1),
            "last_job_final_s": round(last_final - t0, 1),
            "requests_per_whole_minute": sampler.per_minute(t0),
            "kills": shards.kill_log,
            "shard_exit_codes": {str(k): v for k, v in shards.exit_codes.items()},
            "shard_end_s": {str(k): round(v - t0, 1) for k, v in sorted(shards.ended.items())},
            # What each shard's summary.json recorded: the rate it paced at, the store, its resumes.
            "shard_summaries": shard_summaries(shards.root, SHARDS),
            "collect_exit_code": collect_rc,
            "collect_output_tail": tail(folder / "collect.log"),
            "report_outcomes": outcomes,
            "duplicate_sources": len(st["duplicate_sources"]),
        },
    }


def scenario_a(folder: Path, rows_per_shard: int, rate: int, cron_rows: int) -> dict[str, Any]:
    return scenario_shards(folder, rows_per_shard, rate, shared=True)


def scenario_b(folder: Path, rows_per_shard: int, rate: int, cron_rows: int) -> dict[str, Any]:
    return scenario_shards(folder, rows_per_shard, rate, shared=False)


# -- scenario C ---------------------------------------------------------------------------------


def scenario_c(folder: Path, rows_per_shard: int, rate: int, cron_rows: int) -> dict[str, Any]:
    """A migration (4 shards, --no-wait, then collect) and a cron `run` started while it is under way,
    one store, one R: together within R, no 429, and each one's share while both were active."""
    n_mig = C_SHARDS * rows_per_shard
    mig_manifest = manifest(folder / "migration.csv", n_mig, "cdn.example.com", "m")
    cron_manifest = manifest(folder / "cron.csv", cron_rows, "cron.example.com", "c")
    redis = Redis(folder / "redis")
    shards: Shards | None = None
    cron: subprocess.Popen[bytes] | None = None
    try:
        with EmulatorProcess(
            "--rate-limit", str(rate), *ENCODE_ARGS, stdout=subprocess.DEVNULL, cwd=ROOT
        ) as emulator:
            url = emulator.url
            env = base_env(url, rate, redis.url)
            sampler = Sampler(url)
            sampler.start()
            shards = Shards(folder, mig_manifest, C_SHARDS, env, {})
            cron_cmd = [*cli(), "run", str(cron_manifest), "--report-dir", str(folder / "cron")]
            cron_cmd += ["--rate-store", redis.url, "-q"]
            times: dict[str, float] = {}

            def start_cron() -> None:
                nonlocal cron
                if cron is None and sampler.jobs_created() >= CRON_AFTER * n_mig:
                    times["cron_start"] = time.time()
                    cron = launch(cron_cmd, env, folder, folder / "cron.log")

            def cron_done() -> None:
                if cron is not None and "cron_end" not in times and cron.poll() is not None:
                    times["cron_end"] = time.time()

            def watch() -> None:
                start_cron()
                cron_done()

            t0 = time.time()
            shards.run(t0, watch)
            shards_end = time.time()
            if cron is None:  # the migration ended before its quarter was seen: start it now anyway
                times["cron_start"] = time.time()
                cron = launch(cron_cmd, env, folder, folder / "cron.log")
            # The migration's collector (on the same store) while the cron may still run.
            collect_rc, collect_s = collect(folder, shards.root, env)
            collect_end = time.time()
            cron_rc = cron.wait()
            cron_done()
            time.sleep(2)
            sampler.stop()
            st = get(url, "/_emulator/stats")
            jobs = get(url, "/_emulator/jobs")["jobs"]
    finally:
        if shards is not None:
            shards.stop()
        if cron is not None and cron.poll() is None:
            cron.kill()
            cron.wait()
        redis.stop()

    cron_start, cron_end = times["cron_start"], times["cron_end"]
    mig_creates = [epoch(j["created_at"]) for j in jobs if "cron.example.com" not in j["source_url"]]
    cron_creates = [epoch(j["created_at"]) for j in jobs if "cron.example.com" in j["source_url"]]
    # Both active: from the cron's start until the first of them ends (the migration's shards, or the cron).
    lo, hi = cron_start, min(cron_end, shards_end)
    span_min = (hi - lo) / 60
    total = sampler.requests_at(hi) - sampler.requests_at(lo)
    # The migration's shards (--no-wait) only create once started (a profile and a ref_id look-up
    # each at their start, before the cron's): its requests in the span are its creates there. The
    # rest of the span's requests are the cron's: its creates and its polls of the account's list.
    mig = sum(1 for c in mig_creates if lo <= c <= hi)
    cron_req = total - mig
    cron_summary = json.loads((folder / "cron" / "summary.json").read_text())
    cron_rows_n, cron_outcomes = report_rows(folder / "cron" / "report.parquet")
    mig_rows, mig_outcomes = report_rows(shards.root / "report.parquet")
    cron_share = cron_req / total if total else 0.0
    mig_share = mig / total if total else 0.0
    duplicates = len(st["duplicate_ref_ids"])
    both_rpm = total / span_min if span_min > 0 else 0.0
    figures = {
        "max_requests_per_minute": check(
            st["max_requests_per_minute"], f"<= R = {rate}", st["max_requests_per_minute"] <= rate
        ),
        "requests_answered_429": check(st["rate_limited"], "0", st["rate_limited"] == 0),
        "neither_starves": check(
            {"cron_share": round(cron_share, 3), "migration_share": round(mig_share, 3)},
            "each >= 10% of the requests while both were active",
            cron_share >= 0.1 and mig_share >= 0.1,
        ),
        "both_together_per_minute": check(
            round(both_rpm, 1), f"<= R = {rate} (while both were active)", both_rpm <= rate
        ),
        "duplicates": check(
            {"duplicate_ref_ids": duplicates, "jobs_created": st["jobs_created"]},
            f"0 duplicates, {n_mig + cron_rows} jobs",
            duplicates == 0 and st["jobs_created"] == n_mig + cron_rows,
        ),
        "reports": check(
            {"migration_rows": mig_rows, "cron_rows": cron_rows_n, "cron_exit_code": cron_rc},
            f"migration {n_mig}, cron {cron_rows} rows, cron exit 0",
            mig_rows == n_mig and cron_rows_n == cron_rows and cron_rc == 0,
        ),
    }
    return {
        "store": "shared (--rate-store redis), migration and cron alike",
        "migration_rows": n_mig,
        "migration_shards": C_SHARDS,
        "cron_rows": cron_rows,
        "rate_limit_per_min": rate,
        "figures": figures,
        "detail": {
            "cron_started_s": round(cron_start - t0, 1),
            "cron_ended_s": round(cron_end - t0, 1),
            "migration_shards_ended_s": round(shards_end - t0, 1),
            "migration_collect_ended_s": round(collect_end - t0, 1),
            "both_active_s": round(hi - lo, 1),
            "both_active_requests": round(total),
            "cron_requests_per_min_both_active": round(cron_req / span_min, 1) if span_min else None,
            "migration_requests_per_min_both_active": round(mig / span_min, 1) if span_min else None,
            "cron_creates_per_min_both_active": (
                round(sum(1 for c in cron_creates if lo <= c <= hi) / span_min, 1) if span_min else None
            ),
            # Slots in flight: each shard and the cron have --concurrency 8; shared by demand, a share
            # near the cron's part of the slots (8 of 8 + 4 x 8) is what taking turns gives.
            "cron_share_of_slots_in_flight": round(8 / (8 + 8 * C_SHARDS), 3),
            "cron_requests_total": cron_summary.get("api_requests"),
            "cron_requests_per_job": round(cron_summary.get("api_requests", 0) / cron_rows, 3),
            "cron_elapsed_s": round(cron_end - cron_start, 1),
            "cron_outcomes": cron_outcomes,
            "migration_outcomes": mig_outcomes,
            "migration_collect_exit_code": collect_rc,
            "migration_collect_s": round(collect_s, 1),
            "requests_total": st["requests_total"],
            "requests_per_job_all": round(st["requests_total"] / (n_mig + cron_rows), 4),
            "requests_by_endpoint": st["requests"],
            "requests_per_whole_minute": sampler.per_minute(t0),
            "shard_exit_codes": {str(k): v for k, v in shards.exit_codes.items()},
            "cron_output_tail": tail(folder / "cron.log"),
        },
    }


SCENARIOS: dict[str, Callable[[Path, int, int, int], dict[str, Any]]] = {
    "A": scenario_a,
    "B": scenario_b,
    "C": scenario_c,
}
TITLES = {
    "A": "8 shards sharing R through --rate-store, 2 killed and restarted, then collect",
    "B": "8 shards, static split (no --rate-store: R/8 each), 2 killed and restarted, then collect",
    "C": "a migration (4 shards) and a cron run on one --rate-store",
}


def machine() -> dict[str, Any]:
    """bench/run.py's description of the machine, with the cores this process may use (nproc)."""
    from run import machine as described  # bench/run.py, beside this script

    m = described()
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": m["cpu"], "python": m["python"]}


def code_state() -> dict[str, Any]:
    """The commit measured and the files of batch_ingest/ that differ from it (read-only git)."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "batch_ingest")
    return {"commit": git("rev-parse", "HEAD") or None, "batch_ingest_changed": changed.splitlines()}


def to_markdown(results: dict[str, Any]) -> str:
    m, p = results["machine"], results["parameters"]
    lines = [
        "# Shards and one account budget (issue 14)",
        "",
        f"Written by `uv run python bench/shards.py` on {results['date']}; {m['nproc']} cores (nproc), "
        f"{m['cpu']}, Python {m['python']}."
        + (
            f" Code: commit {results['code']['commit'][:12]}"
            + (
                f", with changes to {', '.join(c.split()[-1] for c in results['code']['batch_ingest_changed'])}"
                if results["code"]["batch_ingest_changed"]
                else ""
            )
            + "."
            if results.get("code", {}).get("commit")
            else ""
        ),
        "",
        f"Parameters: R = {p['rate']} requests per rolling minute (emulator `--rate-limit`, and "
        f"SMARTSTREAM_RATE of every process); {p['rows_per_shard']:,} rows per shard; emulator "
        f"`{' '.join(p['emulator_args'])}`; shards {', '.join(str(k) for k in p['kills'])} killed (SIGKILL) "
        f"at {', '.join(f'{v:.0%}' for v in p['kills'].values())} of their rows submitted and started again "
        f"{p['restart_delay_s']:g} s later; C: the cron ({p['cron_rows']:,} rows) starts once "
        f"{p['cron_after']:.0%} of the migration's jobs exist.",
        "",
    ]
    for key in sorted(results["scenarios"]):
        x = results["scenarios"][key]
        lines += [f"## {key}. {TITLES[key]}", "", f"Measured {x.get('measured_at', '?')}.", ""]
        lines += ["| figure | value | target | result |", "|---|---|---|---|"]
        for name, f in x["figures"].items():
            value = f["value"]
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            lines.append(f"| {name.replace('_', ' ')} | {value} | {f['target']} | {f['result']} |")
        d = x["detail"]
        lines.append("")
        if key in ("A", "B"):
            lines.append(
                f"Run {d['elapsed_s']} s (shards {d['shards_phase_s']} s, collect {d['collect_s']} s); "
                f"{d['jobs_per_min']} jobs per minute against the bound {d['bound_jobs_per_min']} "
                f"(R ÷ {x['figures']['requests_per_job']['value']} requests per job); while the shards ran, "
                f"{d['shards_phase_creates_per_min']} creates per minute ({d['shards_phase_share_of_rate']:.0%} "
                f"of R); from the first create to the collector's end, {d['jobs_per_min_from_first_create']} jobs "
                f"per minute ({d['share_of_bound_from_first_create']:.0%} of the bound); steady creates per minute "
                f"(10th to 90th percentile) {d['steady_creates_per_min']}; first create {d['first_create_s']} s after "
                f"the launch. Requests per whole minute from the start: {d['requests_per_whole_minute']}. Kills: "
                + "; ".join(
                    f"shard {k['shard']} at {k.get('killed_at_s', '?')} s with "
                    f"{k.get('submitted_when_killed', '?')} of {k.get('rows', '?')} rows submitted"
                    if "rows" in k
                    else f"shard {k['shard']}: {k['note']}"
                    for k in d["kills"]
                )
                + f"; shard exit codes {d['shard_exit_codes']}; collect exit {d['collect_exit_code']}."
            )
        else:
            lines.append(
                f"The cron started at {d['cron_started_s']} s and ended at {d['cron_ended_s']} s; the "
                f"migration's shards ended at {d['migration_shards_ended_s']} s. Both active for "
                f"{d['both_active_s']} s: cron {d['cron_requests_per_min_both_active']} requests per minute "
                f"({d['cron_creates_per_min_both_active']} of them creates), migration "
                f"{d['migration_requests_per_min_both_active']}; the cron holds "
                f"{d['cron_share_of_slots_in_flight']:.0%} of the request slots in flight. The cron: "
                f"{d['cron_requests_total']} requests, {d['cron_requests_per_job']} per job (its polls read the "
                f"migration's jobs too), exit {x['figures']['reports']['value']['cron_exit_code']}. Requests "
                f"per whole minute from the start: {d['requests_per_whole_minute']}."
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows-per-shard", type=int, default=2000, help="rows per shard (default 2000)")
    parser.add_argument(
        "--rate", type=int, default=6000, help="R, requests per rolling minute (default 6000)"
    )
    parser.add_argument("--cron-rows", type=int, default=1000, help="rows of C's cron run (default 1000)")
    parser.add_argument("--only", help="comma-separated scenarios, e.g. A,C")
    parser.add_argument("--keep", action="store_true", help="keep the scenarios' folders (logs, runs)")
    args = parser.parse_args()
    chosen = [k for k in SCENARIOS if not args.only or k in args.only.upper().split(",")]
    parameters = {
        "rate": args.rate,
        "rows_per_shard": args.rows_per_shard,
        "cron_rows": args.cron_rows,
        "emulator_args": ["--rate-limit", str(args.rate), *ENCODE_ARGS],
        "kills": {str(k): v for k, v in KILLS.items()},
        "restart_delay_s": RESTART_DELAY_S,
        "cron_after": CRON_AFTER,
    }
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "code": code_state(),
        "parameters": parameters,
        "scenarios": {},
    }
    previous = RESULTS / "shards.json"
    if args.only and previous.exists():
        old = json.loads(previous.read_text())
        if old.get("parameters") == parameters:  # a partial run updates the last run's scenarios
            results["scenarios"] = old["scenarios"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        for key in chosen:
            folder = tmp / key
            folder.mkdir()
            print(f"== {key}: {TITLES[key]} ...", flush=True)
            started = time.perf_counter()
            out = SCENARIOS[key](folder, args.rows_per_shard, args.rate, args.cron_rows)
            out["bench_seconds"] = round(time.perf_counter() - started, 1)
            out["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            results["scenarios"][key] = out
            print(json.dumps(out, indent=2), flush=True)
    finally:
        if args.keep:
            print(f"folders kept in {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "shards.json").write_text(json.dumps(results, indent=2) + "\n")
    table = to_markdown(results)
    (RESULTS / "shards.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
