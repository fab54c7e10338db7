"""The Kubernetes Indexed Job of deploy/kubernetes, simulated: its shard command in N processes (each
with its JOB_COMPLETION_INDEX), one Redis rate store, an emulator enforcing the account's rate; two
shards killed with SIGKILL mid-run and started again with the same index; then the collector Job's
command. Nothing lost, nothing twice, no 429, one report of the whole manifest."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import polars as pl
import yaml  # type: ignore[import-untyped]
from batch_ingest.emulator import EmulatorConfig

from .helpers import FAST, journal_counts, spawn_cli, url_manifest
from .redis_server import RedisServer

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
# The account's: 10 requests a second, enforced as a token bucket of 10 (a second's jitter: nine Python
# processes on two cores delay some requests between their admission and the wire). Shards that did
# not share a budget would send 8 x 3 at once, and 8 times the rate.
RATE = 600
ROWS = 48


def _container(
    job_file: str, root: Path, manifest: Path, store: str
) -> tuple[list[str], dict[str, str], int]:
    """The container's args and plain env values as the Job file gives them, with its volume and Redis
    replaced by ours; and the Job's completions (N)."""
    job = yaml.safe_load((DEPLOY / job_file).read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]

    def ours(text: object) -> str:
        return (
            str(text)
            .replace("/runs/manifest.csv", str(manifest))
            .replace("/runs/", f"{root}/")
            .replace("redis://redis:6379/0", store)
        )

    env = {e["name"]: ours(e["value"]) for e in container.get("env", []) if "value" in e}
    return [ours(a) for a in container["args"]], env, int(job["spec"].get("completions", 1))


def test_an_indexed_job_with_two_shards_killed_then_the_collector(
    tmp_path, emulator_server, redis_server: RedisServer
):
    server = emulator_server(
        EmulatorConfig(**{**FAST, "rate_limit": RATE, "bucket_capacity": 10, "latency": 0.05})
    )
    manifest = url_manifest(tmp_path, ROWS)
    shard_args, shard_env, n = _container("ingest-job.yaml", tmp_path, manifest, redis_server.url)
    assert "--no-wait" in shard_args and f"auto/{n}" in shard_args
    env = {
        **shard_env,
        **server.env(),
        "SMARTSTREAM_RATE": str(RATE),
        "SMARTSTREAM_CONCURRENCY": "1",  # slow enough to be killed mid-run
        "SMARTSTREAM_IN_DOUBT_DELAY": "0.05",
        "SMARTSTREAM_POLL_MIN_INTERVAL": "0.1",
        "SMARTSTREAM_POLL_MAX_INTERVAL": "0.5",
    }
    pods = {i: spawn_cli(shard_args, {**env, "JOB_COMPLETION_INDEX": str(i)}) for i in range(n)}
    root = Path(shard_args[shard_args.index("--report-dir") + 1])
    killed = []
    for i in (1, 5):  # once each has sent something, and before it has sent everything
        folder = root / f"shard-{i}-of-{n}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and pods[i].poll() is None:
            counts = journal_counts(folder)
            if sum(v for k, v in counts.items() if k != "pending") >= 1:
                break
            time.sleep(0.01)
        if pods[i].poll() is None and journal_counts(folder).get("pending"):
            pods[i].send_signal(signal.SIGKILL)
            pods[i].communicate(timeout=30)
            killed.append(i)
            pods[i] = spawn_cli(shard_args, {**env, "JOB_COMPLETION_INDEX": str(i)})  # the pod's retry
    assert killed, "no shard could be killed mid-run: slow the emulator down"
    for i, pod in pods.items():
        out, err = pod.communicate(timeout=180)
        assert pod.returncode == 0, (i, out, err)
    collect_args, collect_env, _ = _container("collector-job.yaml", tmp_path, manifest, redis_server.url)
    collector = spawn_cli(collect_args, {**env, **collect_env, "SMARTSTREAM_RATE": str(RATE)})
    out, err = collector.communicate(timeout=180)
    assert collector.returncode == 0, (out, err)
    stats = server.store.stats()
    assert stats["jobs_created"] == ROWS and stats["duplicate_ref_ids"] == {}, stats
    assert stats["rate_limited"] == 0, stats
    assert stats["max_requests_per_minute"] <= RATE, stats
    merged = pl.read_parquet(root / "report.parquet")
    assert sorted(merged["row"].to_list()) == list(range(1, ROWS + 1))
    assert set(merged["outcome"].to_list()) == {"succeeded"}
