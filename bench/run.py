"""The benchmark suite: batch-ingest against the baselines, against the emulator over loopback.

    uv run python bench/run.py --quick     # a few minutes
    uv run python bench/run.py             # the full suite; also rewrites BENCHMARKS.md

Every figure comes from this script; each scenario runs its baselines in the same process
against the same emulator settings, so ratios stay meaningful on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import polars as pl
from batch_ingest import RunOptions, Settings, Summary, plan_manifest, resolve_settings, run_manifest_async
from batch_ingest.emulator import EmulatorConfig, EmulatorProcess, create_app

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
CFG = EmulatorConfig()
HEADERS = {"X-Streaks-Api-Key": CFG.api_key, "Authorization": f"Bearer {CFG.token}"}
PREFIX = f"/v1/merchants/{CFG.merchant_id}"
FINAL = (2, 3, 4)


# -- helpers ------------------------------------------------------------------------------------


@contextmanager
def emulator_process(*args: str) -> Iterator[str]:
    """The emulator in its own process (its CPU is not ours), on a free loopback port: its URL."""
    with EmulatorProcess(*args, stdout=subprocess.DEVNULL, cwd=ROOT) as emulator:
        yield emulator.url


def stats(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_emulator/stats", timeout=60, trust_env=False).json()


def settings_for(url: str, **kw: Any) -> Settings:
    """Settings for the emulator at `url` with `kw` on top (no environment, no config file)."""
    flags = dict(
        api_url=url, merchant_id=CFG.merchant_id, api_key=CFG.api_key, token=CFG.token, allow_http=True
    )
    return resolve_settings({**flags, **kw}, env={}, config={})


def url_manifest(folder: Path, n: int, name: str = "m.csv") -> Path:
    path = folder / name
    pl.DataFrame(
        {
            "source": [f"https://cdn.example.com/v/{i}.mp4" for i in range(n)],
            "profile": ["100"] * n,
            "ref_id": [f"v{i}" for i in range(n)],
        }
    ).write_csv(path)
    return path


def run_batch_ingest(manifest: Path, settings: Settings, run_dir: Path, transport=None) -> Summary:
    result = asyncio.run(
        run_manifest_async(manifest, settings, RunOptions(run_dir=run_dir), transport=transport)
    )
    return result.summary


def measured_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, float, float, str]:
    """Run a command through bench/measure.py: (exit code, wall seconds, peak RSS MB of the command, stdout)."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "measure.py"), *cmd], capture_output=True, text=True, env=env, cwd=ROOT
    )
    data = json.loads(out.stdout)
    if data["rc"] not in (0, 1):
        print(data["err"], file=sys.stderr)
    return data["rc"], data["s"], data["mb"], data["out"]


def run_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTSTREAM_")}
    env.update(
        SMARTSTREAM_API_URL=url,
        SMARTSTREAM_MERCHANT_ID=CFG.merchant_id,
        SMARTSTREAM_API_KEY=CFG.api_key,
        SMARTSTREAM_TOKEN=CFG.token,
    )
    return env


# -- the baselines ------------------------------------------------------------------------------


async def _send(
    client: httpx.AsyncClient, method: str, path: str, counter: list[int], **kw: Any
) -> httpx.Response:
    """One request, waiting out 429s as a careful script would."""
    while True:
        counter[0] += 1
        r = await client.request(method, path, **kw)
        if r.status_code != 429:
            return r
        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))


async def per_job_polling(
    url: str, n: int, concurrency: int, poll_every: float, deadline_s: float | None = None
):
    """C workers, each: submit one job, poll it with GET jobs/:id until it finishes, take the next.

    concurrency=1 is the sequential baseline (a first script); more is `xargs -P` with curl.
    Returns (jobs finished, requests, seconds).
    """
    counter = [0]
    queue = list(range(n))
    done = [0]
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers=HEADERS, limits=limits, timeout=60, trust_env=False
    ) as c:

        async def worker() -> None:
            while queue and (deadline_s is None or time.perf_counter() - start < deadline_s):
                i = queue.pop()
                r = await _send(
                    c,
                    "POST",
                    f"{PREFIX}/jobs",
                    counter,
                    json={"source_url": f"https://b/{i}.mp4", "job_profile_id": 100},
                )
                job_id = r.json()["id"]
                while True:
                    await asyncio.sleep(poll_every)
                    r = await _send(c, "GET", f"{PREFIX}/jobs/{job_id}", counter)
                    if r.json()["encode_status"] in FINAL:
                        done[0] += 1
                        break

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done[0], counter[0], time.perf_counter() - start


async def bare_creates(
    url_or_transport, n: int, concurrency: int, lists: int = 0, client_per_worker: bool = False
) -> tuple[int, float]:
    """A bare httpx loop: n creates with `concurrency` workers, then `lists` list calls. (requests, seconds).

    `client_per_worker`: each worker has its own single-connection client instead of one shared pool.
    """
    counter = [0]
    queue = list(range(n))
    kw: dict[str, Any] = {
        "headers": HEADERS,
        "timeout": 60,
        "limits": httpx.Limits(max_connections=concurrency),
    }
    if isinstance(url_or_transport, str):
        kw.update(base_url=url_or_transport, trust_env=False)
    else:
        kw.update(base_url="http://emulator.test", transport=url_or_transport)
    start = time.perf_counter()
    async with httpx.AsyncClient(**kw) as c:

        async def worker(client: httpx.AsyncClient) -> None:
            while queue:
                i = queue.pop()
                body = {"source_url": f"https://b/{i}.mp4", "job_profile_id": 100}
                await _send(client, "POST", f"{PREFIX}/jobs", counter, json=body)

        async def own_client_worker() -> None:
            async with httpx.AsyncClient(**{**kw, "limits": httpx.Limits(max_connections=1)}) as mine:
                await worker(mine)

        if client_per_worker:
            await asyncio.gather(*(own_client_worker() for _ in range(concurrency)))
        else:
            await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        for _ in range(lists):
            await _send(
                c,
                "GET",
                f"{PREFIX}/jobs",
                counter,
                params={"limit": 100, "sort": "updated_at", "order": "DESC"},
            )
    return counter[0], time.perf_counter() - start


# -- scenarios ----------------------------------------------------------------------------------


def scenario_request_economy(tmp: Path, quick: bool) -> dict[str, Any]:
    """1,000 jobs whose encodes take tens of seconds (emulator time, run 10x faster): requests per job."""
    scale = 10.0
    args = ["--rate-limit", "0", "--queue-seconds", "5", "--encode-seconds", "30", "--time-scale", str(scale)]
    n, n_seq, n_par = 1000, (8 if quick else 20), (80 if quick else 200)
    poll = 5 / scale  # baselines poll every 5 emulator-seconds
    with emulator_process(*args) as url:
        s = settings_for(url, rate=0, poll_min_interval=2 / scale, poll_max_interval=30 / scale)
        summary = run_batch_ingest(url_manifest(tmp, n), s, tmp / "economy")
        ours = stats(url)["requests_total"] / n
        assert summary["outcomes"]["succeeded"] == n, summary["outcomes"]
    with emulator_process(*args) as url:
        done, req, _ = asyncio.run(per_job_polling(url, n_seq, 1, poll))
        seq = req / done
    with emulator_process(*args) as url:
        done, req, _ = asyncio.run(per_job_polling(url, n_par, 8, poll))
        par = req / done
    return {
        "batch_ingest_requests_per_job": round(ours, 3),
        "sequential_requests_per_job": round(seq, 3),
        "parallel_per_job_polling_requests_per_job": round(par, 3),
        "jobs": {"batch_ingest": n, "sequential": n_seq, "parallel": n_par},
        "target": "batch-ingest <= 1.05",
        "met": ours <= 1.05,
    }


def scenario_throughput(tmp: Path, quick: bool) -> dict[str, Any]:
    """R = 3,000 requests/minute enforced by the emulator: jobs finished per minute vs R / requests-per-job."""
    rate = 3000
    n = 3000 if quick else 6000
    args = ["--rate-limit", str(rate), "--queue-seconds", "0.5", "--encode-seconds", "2"]
    with emulator_process(*args) as url:
        s = settings_for(url, rate=rate, concurrency=16, poll_min_interval=1, poll_max_interval=5)
        t = time.perf_counter()
        summary = run_batch_ingest(url_manifest(tmp, n, "tp.csv"), s, tmp / "throughput")
        elapsed = time.perf_counter() - t
        st = stats(url)
    per_job = st["requests_total"] / n
    bound = rate / per_job
    achieved = summary["outcomes"]["succeeded"] / (elapsed / 60)
    baseline_s = 30 if quick else 60
    with emulator_process(*args) as url:
        done, _req, secs = asyncio.run(per_job_polling(url, 10**6, 8, 1.0, deadline_s=baseline_s))
        base_stats = stats(url)
    return {
        "rate_limit_per_min": rate,
        "jobs": n,
        "batch_ingest_jobs_per_min": round(achieved, 1),
        "bound_jobs_per_min": round(bound, 1),
        "share_of_bound": round(achieved / bound, 3),
        "batch_ingest_429_share": round(st["rate_limited"] / max(1, st["requests_total"]), 4),
        "parallel_per_job_polling_jobs_per_min": round(done / (secs / 60), 1),
        "parallel_per_job_polling_429_share": round(
            base_stats["rate_limited"] / max(1, base_stats["requests_total"]), 4
        ),
        "target": ">= 90% of bound, 429s < 1%",
        "met": achieved / bound >= 0.9 and st["rate_limited"] / st["requests_total"] < 0.01,
    }


def _submission_rate(run_dir: Path) -> float:
    con = sqlite3.connect(run_dir / "journal.sqlite")
    n = con.execute("SELECT count(*) FROM rows WHERE submitted_at IS NOT NULL").fetchone()[0]
    con.close()
    return n / _submission_span(run_dir)


def _submission_span(run_dir: Path) -> float:
    """Seconds from the first create sent to the last one answered, from the run's journal."""
    con = sqlite3.connect(run_dir / "journal.sqlite")
    first_sent, last_done = con.execute(
        "SELECT min(sent_at), max(submitted_at) FROM rows WHERE submitted_at IS NOT NULL"
    ).fetchone()
    con.close()
    return last_done - first_sent


def scenario_latency(tmp: Path, quick: bool) -> dict[str, Any]:
    """50 ms answers, no rate limit: submissions per second at C = 1, 8, 32, 64 against C / latency."""
    latency = 0.05
    out: dict[str, Any] = {"latency_s": latency, "by_concurrency": {}}
    met = True
    for c in (1, 8, 32, 64):
        n = c * (10 if quick else 25)
        args = [
            "--rate-limit",
            "0",
            "--latency",
            str(latency),
            "--queue-seconds",
            "0",
            "--encode-seconds",
            "0",
        ]
        with emulator_process(*args) as url:
            s = settings_for(
                url, rate=0, concurrency=c, upload_concurrency=1, poll_min_interval=0.5, poll_max_interval=1
            )
            run_batch_ingest(url_manifest(tmp, n, f"lat{c}.csv"), s, tmp / f"lat{c}")
            ours = _submission_rate(tmp / f"lat{c}")
        with emulator_process(*args) as url:
            # The machine's ceiling: one client (one connection) per worker, no shared pool at all.
            _, secs = asyncio.run(bare_creates(url, n, c, client_per_worker=True))
            ceiling = n / secs
        with emulator_process(*args) as url:
            _, secs = asyncio.run(bare_creates(url, n, c))
            bare = n / secs
        bound = c / latency
        out["by_concurrency"][c] = {
            "batch_ingest_per_s": round(ours, 1),
            "bare_httpx_per_s": round(bare, 1),
            "bound_per_s": bound,
            "batch_ingest_share_of_bound": round(ours / bound, 3),
            "bare_share_of_bound": round(bare / bound, 3),
            "bare_client_per_worker_per_s": round(ceiling, 1),
            "batch_ingest_share_of_client_per_worker": round(ours / ceiling, 3),
        }
        met = met and ours / bound >= 0.9
    out["target"] = ">= 90% of C / latency at every C"
    out["met"] = met
    return out


def scenario_overhead(tmp: Path, quick: bool) -> dict[str, Any]:
    """Instant encodes, in-process through httpx.ASGITransport: CPU per job, batch-ingest vs a bare loop."""
    n = 2000 if quick else 10000
    cfg = EmulatorConfig(rate_limit=0, queue_seconds=0, encode_seconds=0)
    app = create_app(cfg)
    transport = httpx.ASGITransport(app=app)
    s = settings_for(
        "http://emulator.test", rate=0, concurrency=8, poll_min_interval=0.5, poll_max_interval=2
    )
    cpu = time.process_time()
    summary = run_batch_ingest(url_manifest(tmp, n, "oh.csv"), s, tmp / "overhead", transport=transport)
    ours_cpu = time.process_time() - cpu
    with app.state.store.lock:
        lists = sum(v for (ep, _), v in app.state.store.counters.requests.items() if ep == "GET jobs")
    app2 = create_app(cfg)
    cpu = time.process_time()
    asyncio.run(bare_creates(httpx.ASGITransport(app=app2), n, 8, lists=lists))
    bare_cpu = time.process_time() - cpu
    ratio = ours_cpu / bare_cpu
    return {
        "jobs": n,
        "batch_ingest_cpu_us_per_job": round(ours_cpu / n * 1e6),
        "bare_loop_cpu_us_per_job": round(bare_cpu / n * 1e6),
        "ratio": round(ratio, 3),
        "requests": summary["api_requests"],
        "target": "<= 1.5x the bare loop",
        "met": ratio <= 1.5,
        "note": "both include the in-process emulator's own CPU",
    }


def scenario_upload(tmp: Path, quick: bool) -> dict[str, Any]:
    """A large sparse file: the runner's peak RSS and its upload throughput against a bare streamed upload."""
    size = (1 if quick else 10) << 30
    big = tmp / "big.mp4"
    with open(big, "wb") as f:
        f.truncate(size)
    manifest = tmp / "up.csv"
    ours, bare, peak_mb, rc = 0.0, 0.0, 0.0, 0
    with emulator_process("--rate-limit", "0", "--queue-seconds", "0", "--encode-seconds", "0") as url:
        for attempt in range(2):  # alternate, best of two each: the first upload to a fresh emulator is noisy
            manifest.write_text(f"source,ref_id\n{big},big-{attempt}\n")
            run_dir = tmp / f"up{attempt}"
            rc, _, mb, _ = measured_child(
                [
                    sys.executable,
                    "-m",
                    "batch_ingest",
                    "run",
                    str(manifest),
                    "--report-dir",
                    str(run_dir),
                    "-q",
                    "--poll-min-interval",
                    "0.5",
                ],
                env=run_env(url),
            )
            peak_mb = max(peak_mb, mb)
            con = sqlite3.connect(run_dir / "journal.sqlite")
            sent, submitted = con.execute("SELECT sent_at, submitted_at FROM rows").fetchone()
            con.close()
            ours = max(ours, size / (submitted - sent))
            bare_out = subprocess.run(
                [sys.executable, str(BENCH / "bare_upload.py"), url, str(big)], capture_output=True, text=True
            )
            bare = max(bare, size / json.loads(bare_out.stdout)["s"])
    big.unlink()
    return {
        "bytes": size,
        "exit_code": rc,
        "runner_peak_rss_mb": round(peak_mb, 1),
        "batch_ingest_mb_per_s": round(ours / 2**20, 1),
        "bare_httpx_mb_per_s": round(bare / 2**20, 1),
        "share_of_bare": round(ours / bare, 3),
        "target": "peak RSS <= 150 MB, throughput >= 80% of bare",
        "met": peak_mb <= 150 and ours / bare >= 0.8,
    }


def scenario_big_manifests(tmp: Path, quick: bool) -> dict[str, Any]:
    """validate of a 1,000,000-row CSV; a 1,000,000-row run end to end with instant encodes, no rate limit."""
    rows = 200_000 if quick else 1_000_000
    big = url_manifest(tmp, rows, "big.csv")
    rc, secs, mb, _ = measured_child([sys.executable, "-m", "batch_ingest", "validate", str(big)])
    run_rows = 10_000 if quick else 1_000_000
    manifest = url_manifest(tmp, run_rows, "run.csv")
    with emulator_process("--rate-limit", "0", "--queue-seconds", "0", "--encode-seconds", "0") as url:
        run_rc, run_secs, run_mb, _ = measured_child(
            [
                sys.executable,
                "-m",
                "batch_ingest",
                "run",
                str(manifest),
                "--report-dir",
                str(tmp / "bigrun"),
                "-q",
                "--rate",
                "0",
                "--concurrency",
                "16",
            ],
            env=run_env(url),
        )
    report = pl.read_parquet(tmp / "bigrun" / "report.parquet")
    return {
        "validate_rows": rows,
        "validate_exit_code": rc,
        "validate_s": round(secs, 2),
        "validate_peak_rss_mb": round(mb, 1),
        "run_rows": run_rows,
        "run_exit_code": run_rc,
        "run_s": round(run_secs, 1),
        "run_peak_rss_mb": round(run_mb, 1),
        "run_report_rows": report.height,
        "run_succeeded": int((report["outcome"] == "succeeded").sum()),
        "target": "validate <= 20 s and <= 400 MB; run completes with peak RSS <= 600 MB",
        "met": rc == 0
        and secs <= 20
        and mb <= 400
        and run_rc == 0
        and run_mb <= 600
        and report.height == run_rows,
    }


NOTES = """## Reading the misses

- **3, C = 32 and 64.** The limit is the machine, not the client: two cores run the client, the
  emulator (pure-Python h11) and the kernel's loopback, and batch-ingest is ahead of both bare
  baselines. A bare httpx loop sharing one pool of 64 connections reaches about a tenth of the
  bound, because httpcore's pool scans every connection for every queued request; batch-ingest
  splits its connections over pools of at most 16 for that reason.
- **4.** Most of what batch-ingest spends above the bare loop is the journal's durability: each
  group of `sending` rows is committed with `synchronous=FULL` (an fsync) before its requests leave,
  which is what keeps a power cut from causing a duplicate job.
"""


def scenario_wide_manifest(tmp: Path, quick: bool) -> dict[str, Any]:
    """validate of a manifest 10,000 columns wide, against polars reading the same file (same process)."""
    width, rows = 10_000, 100
    names = [f"c{i}" for i in range(width)]
    wide = tmp / "wide.csv"
    body = "".join(
        f"https://cdn.example.com/{r}.mp4,100," + ",".join("x" * width) + "\n" for r in range(rows)
    )
    wide.write_text("source,profile," + ",".join(names) + "\n" + body)
    best_read = best_plan = float("inf")
    for _ in range(3):  # best of three: the machine is shared and noisy
        started = time.perf_counter()
        pl.read_csv(wide, infer_schema=False)
        best_read = min(best_read, time.perf_counter() - started)
        started = time.perf_counter()
        plan = plan_manifest(wide)
        best_plan = min(best_plan, time.perf_counter() - started)
    return {
        "columns": width,
        "rows": rows,
        "validate_s": round(best_plan, 3),
        "polars_read_csv_s": round(best_read, 3),
        "ratio": round(best_plan / best_read, 1),
        "carried_columns": plan.frame.width - 17,
        "target": "10,000 columns in under a second",
        "met": best_plan < 1.0 and plan.frame.width - 17 == width,
    }


def _last_final_epoch(url: str) -> float:
    """When the emulator's last job reached its final state (its `updated_at`), as epoch seconds."""
    from datetime import datetime

    jobs = httpx.get(f"{url}/_emulator/jobs", timeout=60, trust_env=False).json()["jobs"]
    return max(datetime.fromisoformat(j["updated_at"].replace("Z", "+00:00")).timestamp() for j in jobs)


def scenario_tail(tmp: Path, quick: bool) -> dict[str, Any]:
    """The issue-11 run: R requests/minute enforced by the emulator and told to the client, default poll
    settings, encodes of seconds. How long after its last job ends does the run end, and at what cost?"""
    rate, n = (300, 150) if quick else (120, 240)
    args = ["--rate-limit", str(rate), "--queue-seconds", "2", "--encode-seconds", "8"]
    with emulator_process(*args) as url:
        s = settings_for(url, rate=rate)  # default poll intervals: the experience a user gets
        started = time.time()
        summary = run_batch_ingest(url_manifest(tmp, n, "tail.csv"), s, tmp / "tail")
        ended = time.time()
        st = stats(url)
        last_final = _last_final_epoch(url)
    per_job = st["requests_total"] / n
    budget_s = st["requests_total"] / rate * 60  # the fastest the limit allows these requests
    tail_s = ended - last_final
    return {
        "rate_limit_per_min": rate,
        "jobs": n,
        "succeeded": summary["outcomes"]["succeeded"],
        "elapsed_s": round(ended - started, 1),
        "budget_s": round(budget_s, 1),
        "share_of_budget_time": round(budget_s / (ended - started), 3),
        "tail_s": round(tail_s, 2),
        "requests_per_job": round(per_job, 3),
        "rate_limited": st["rate_limited"],
        # Requests per job is shown, not targeted: polling every ~2 s after submission is the price of the
        # short tail (the 1.05 target is scenario 1's, where it is amortised over 1,000 jobs).
        "target": "tail <= 5 s, no 429",
        "met": tail_s <= 5 and st["rate_limited"] == 0 and summary["outcomes"]["succeeded"] == n,
    }


def scenario_limiter_modes(tmp: Path, quick: bool) -> dict[str, Any]:
    """R per minute enforced as a sliding window or as a token bucket of capacity 5; the client told R,
    pacing (the default, --burst 3) or not (--burst 0). 429 share and jobs per minute as a share of R."""
    # More jobs than a minute's budget, so that the limit binds and the rate is measured over more than
    # one window; the unpaced client against the bucket crawls, so it gets fewer (its rate is what counts).
    rate, n, n_crawl = (600, 750, 100) if quick else (120, 240, 60)
    out: dict[str, Any] = {"rate_limit_per_min": rate, "jobs": n, "modes": {}}
    met = True
    for server_mode, extra in (
        ("sliding window", []),
        ("token bucket, capacity 5", ["--bucket-capacity", "5"]),
    ):
        for client_mode, burst in (("paced (--burst 3)", 3), ("unpaced (--burst 0)", 0)):
            jobs = n_crawl if extra and not burst else n
            args = ["--rate-limit", str(rate), "--queue-seconds", "0", "--encode-seconds", "0", *extra]
            name = f"{server_mode}; {client_mode}"
            run_dir = tmp / f"modes-{len(out['modes'])}"
            with emulator_process(*args) as url:
                s = settings_for(url, rate=rate, burst=burst)
                started = time.time()
                summary = run_batch_ingest(url_manifest(tmp, jobs, f"modes{jobs}.csv"), s, run_dir)
                elapsed = time.time() - started
                st = stats(url)
            jobs_per_min = jobs / _submission_span(run_dir) * 60
            share_429 = st["rate_limited"] / max(1, st["requests_total"])
            out["modes"][name] = {
                "jobs": jobs,
                "elapsed_s": round(elapsed, 1),
                "jobs_per_min": round(jobs_per_min, 1),
                "share_of_rate": round(jobs_per_min / rate, 3),
                "share_429": round(share_429, 4),
                "requests": st["requests_total"],
                "succeeded": summary["outcomes"]["succeeded"],
                "paced": bool(burst),
            }
            if burst:  # the target is the default (paced) client's, against both servers
                met = (
                    met
                    and share_429 <= 0.01
                    and jobs_per_min / rate >= 0.85
                    and summary["outcomes"]["succeeded"] == jobs
                )
    out["target"] = "paced: 429s <= 1% and >= 85% of R turned into jobs, against both server modes"
    out["met"] = met
    return out


SCENARIOS: dict[str, Callable[[Path, bool], dict[str, Any]]] = {
    "1 request economy": scenario_request_economy,
    "2 throughput inside a rate limit": scenario_throughput,
    "3 latency-bound submission": scenario_latency,
    "4 client overhead": scenario_overhead,
    "5 large upload": scenario_upload,
    "6 big manifests": scenario_big_manifests,
    "7 wide manifest": scenario_wide_manifest,
    "8 tail of a rate-limited run": scenario_tail,
    "9 limiter modes": scenario_limiter_modes,
}


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def to_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Mode: {results['mode']}; {m['cores']} cores, {m['cpu']}, Python {m['python']}, {m['platform']}. "
        "Each scenario's time of measurement is in the JSON results.",
        "",
        "| scenario | figure | batch-ingest | baselines | target | met |",
        "|---|---|---|---|---|---|",
    ]
    r = results["scenarios"]
    if "1 request economy" in r:
        x = r["1 request economy"]
        lines.append(
            f"| 1 request economy | API requests per job | {x['batch_ingest_requests_per_job']} | sequential "
            f"{x['sequential_requests_per_job']}, parallel per-job polling {x['parallel_per_job_polling_requests_per_job']} "
            f"| {x['target']} | {'yes' if x['met'] else 'no'} |"
        )
    if "2 throughput inside a rate limit" in r:
        x = r["2 throughput inside a rate limit"]
        lines.append(
            f"| 2 throughput, R={x['rate_limit_per_min']}/min | jobs finished per minute (share of R ÷ requests per job) "
            f"| {x['batch_ingest_jobs_per_min']} ({x['share_of_bound']:.0%} of {x['bound_jobs_per_min']}), 429s "
            f"{x['batch_ingest_429_share']:.2%} | parallel per-job polling {x['parallel_per_job_polling_jobs_per_min']}, "
            f"429s {x['parallel_per_job_polling_429_share']:.2%} | {x['target']} | {'yes' if x['met'] else 'no'} |"
        )
    if "3 latency-bound submission" in r:
        x = r["3 latency-bound submission"]
        for c, v in x["by_concurrency"].items():
            lines.append(
                f"| 3 latency 50 ms, C={c} | submissions per second (share of C ÷ latency = {v['bound_per_s']:g}) "
                f"| {v['batch_ingest_per_s']} ({v['batch_ingest_share_of_bound']:.0%}) | bare httpx loop "
                f"{v['bare_httpx_per_s']} ({v['bare_share_of_bound']:.0%}); one client per worker "
                f"{v['bare_client_per_worker_per_s']} ({v['bare_client_per_worker_per_s'] / v['bound_per_s']:.0%}) | ≥ 90% | "
                f"{'yes' if v['batch_ingest_share_of_bound'] >= 0.9 else 'no'} |"
            )
    if "4 client overhead" in r:
        x = r["4 client overhead"]
        lines.append(
            f"| 4 client overhead, {x['jobs']} jobs | CPU µs per job (emulator included) | {x['batch_ingest_cpu_us_per_job']} "
            f"| bare httpx loop {x['bare_loop_cpu_us_per_job']} (ratio {x['ratio']}) | {x['target']} | "
            f"{'yes' if x['met'] else 'no'} |"
        )
    if "5 large upload" in r:
        x = r["5 large upload"]
        lines.append(
            f"| 5 upload {x['bytes'] / 2**30:.0f} GiB sparse | runner peak RSS; MB/s | {x['runner_peak_rss_mb']} MB; "
            f"{x['batch_ingest_mb_per_s']} MB/s ({x['share_of_bare']:.0%} of bare) | bare streamed httpx "
            f"{x['bare_httpx_mb_per_s']} MB/s | {x['target']} | {'yes' if x['met'] else 'no'} |"
        )
    if "6 big manifests" in r:
        x = r["6 big manifests"]
        lines.append(
            f"| 6 validate {x['validate_rows']:,} rows; run {x['run_rows']:,} rows | time, peak RSS | validate "
            f"{x['validate_s']} s, {x['validate_peak_rss_mb']} MB; run {x['run_s']} s, {x['run_peak_rss_mb']} MB, "
            f"{x['run_succeeded']:,} succeeded | — | {x['target']} | {'yes' if x['met'] else 'no'} |"
        )
    if "7 wide manifest" in r:
        x = r["7 wide manifest"]
        lines.append(
            f"| 7 validate {x['columns']:,} columns × {x['rows']} rows | time (best of 3) | {x['validate_s']} s "
            f"({x['ratio']}× the read) | polars read_csv {x['polars_read_csv_s']} s | {x['target']} | "
            f"{'yes' if x['met'] else 'no'} |"
        )
    if "8 tail of a rate-limited run" in r:
        x = r["8 tail of a rate-limited run"]
        lines.append(
            f"| 8 tail, R={x['rate_limit_per_min']}/min, {x['jobs']} jobs | seconds from the last job's end to the "
            f"run's; requests per job | tail {x['tail_s']} s; {x['requests_per_job']} per job; run {x['elapsed_s']} s "
            f"({x['share_of_budget_time']:.0%} of it the budget's), 429s {x['rate_limited']} | — | {x['target']} | "
            f"{'yes' if x['met'] else 'no'} |"
        )
    if "9 limiter modes" in r:
        x = r["9 limiter modes"]
        for name, v in x["modes"].items():
            lines.append(
                f"| 9 limiter, R={x['rate_limit_per_min']}/min, {v.get('jobs', x['jobs'])} jobs: {name} | jobs per minute (share of R); "
                f"429s | {v['jobs_per_min']} ({v['share_of_rate']:.0%}); 429s {v['share_429']:.2%} | — | "
                f"{x['target'] if v['paced'] else 'shown for comparison'} | "
                f"{('yes' if v['share_429'] <= 0.01 and v['share_of_rate'] >= 0.85 else 'no') if v['paced'] else '—'} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a few minutes")
    parser.add_argument("--only", help="comma-separated scenario numbers, e.g. 1,3")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    chosen = {k: f for k, f in SCENARIOS.items() if not args.only or k.split()[0] in args.only.split(",")}
    results: dict[str, Any] = {
        "mode": mode,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "scenarios": {},
    }
    previous = RESULTS / f"{mode}.json"
    if args.only and previous.exists():
        # A partial run updates the chosen scenarios of the last run of the same mode.
        results["scenarios"] = json.loads(previous.read_text())["scenarios"]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for name, fn in chosen.items():
            folder = Path(tmp) / name.split()[0]
            folder.mkdir()
            started = time.perf_counter()
            print(f"== {name} ...", flush=True)
            results["scenarios"][name] = fn(folder, args.quick)
            results["scenarios"][name]["bench_seconds"] = round(time.perf_counter() - started, 1)
            results["scenarios"][name]["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            print(json.dumps(results["scenarios"][name], indent=2), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{mode}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = to_markdown(results)
    (RESULTS / f"{mode}.md").write_text(table)
    print(table)
    if mode == "full":
        (ROOT / "BENCHMARKS.md").write_text(
            "# Benchmarks\n\nThe latest full run of `uv run python bench/run.py` (see the README's Benchmarks "
            "section for what each figure means). Written by the script; not edited by hand.\n\n"
            + table
            + "\n"
            + NOTES
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
