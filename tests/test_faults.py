"""Fault injection: whatever the API or the operator does, every row ends once and no video twice.

Each scenario runs a few hundred rows (URLs and uploads, with and without ref_id) and checks,
against the emulator's own records, that:
- every manifest row has exactly one row in the report, with a final outcome;
- the emulator holds exactly one job per submitted row and no job that no row claims;
- each report outcome agrees with the emulator's state of that job;
- the journal and the report agree.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from batch_ingest.emulator import EmulatorConfig

from .helpers import (
    FAST,
    FLAGS,
    QUICK_DOUBT,
    check_consistent,
    journal_counts,
    mixed_manifest,
    run_cli,
    spawn_cli,
)


@pytest.mark.parametrize(
    ("name", "knobs", "env_extra"),
    [
        ("500s", dict(error_rate=0.10), {}),
        ("dropped creates", dict(drop_after_create_rate=0.05), {}),
        ("timeouts", dict(hang_rate=0.02, hang_s=1.5), {"SMARTSTREAM_READ_TIMEOUT": "0.4"}),
        ("429 storm with Retry-After", dict(burst_429_rate=0.02, burst_429_len=6), {}),
        ("429 storm without Retry-After", dict(burst_429_rate=0.02, burst_429_len=6, retry_after="none"), {}),
        ("slow responses", dict(latency=0.05), {}),
        ("everything at once", dict(error_rate=0.05, drop_after_create_rate=0.03, latency=0.01), {}),
    ],
)
def test_hostile_api(tmp_path, emulator_server, name, knobs, env_extra):
    server = emulator_server(EmulatorConfig(**FAST, seed=11, **knobs))
    manifest = mixed_manifest(tmp_path)
    env = {**server.env(), **QUICK_DOUBT, **env_extra}
    result = run_cli(["run", str(manifest), "--report-dir", str(tmp_path / "run"), *FLAGS], env)
    assert result.exit_code == 0, result.output
    report = check_consistent(tmp_path / "run", server, 200)
    assert (report["outcome"] == "succeeded").all()
    assert server.stats()["jobs_created"] == 200


def test_token_expiring_mid_run_is_renewed(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, token_ttl=3.0, token_revoke_after_s=1.0))
    manifest = mixed_manifest(tmp_path, 150)
    env = {k: v for k, v in server.env().items() if k != "SMARTSTREAM_TOKEN"}
    env.update(SMARTSTREAM_EMAIL=server.config.email, SMARTSTREAM_PASSWORD=server.config.password)
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(tmp_path / "run"), "--concurrency", "2", *FLAGS], env
    )
    assert result.exit_code == 0, result.output
    check_consistent(tmp_path / "run", server, 150)
    stats = server.stats()
    assert stats["requests"]["POST auth-token"]["200"] >= 2
    text = (tmp_path / "run" / "summary.json").read_text() + (tmp_path / "run" / "report.csv").read_text()
    assert server.config.password not in text


def test_static_token_expiry_stops_cleanly_and_resumes(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, static_token_ttl=1.0, latency=0.03))
    manifest = mixed_manifest(tmp_path, 150)
    run_dir = tmp_path / "run"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--concurrency", "2", *FLAGS], server.env()
    )
    assert result.exit_code == 3, result.output
    report = check_consistent(run_dir, server, 150, allow_unfinished=True)
    assert (report["outcome"] == "interrupted").any()
    # The operator gets credentials that can renew, and resumes.
    env = {k: v for k, v in server.env().items() if k != "SMARTSTREAM_TOKEN"}
    env.update(
        SMARTSTREAM_EMAIL=server.config.email, SMARTSTREAM_PASSWORD=server.config.password, **QUICK_DOUBT
    )
    result = run_cli(["resume", str(run_dir), "-q"], env)
    assert result.exit_code == 0, result.output
    check_consistent(run_dir, server, 150)
    assert server.stats()["jobs_created"] == 150


def test_all_rows_fail(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, failure_rate=1.0))
    manifest = mixed_manifest(tmp_path, 120, url_host="gone.invalid")
    result = run_cli(["run", str(manifest), "--report-dir", str(tmp_path / "run"), *FLAGS], server.env())
    assert result.exit_code == 1
    report = check_consistent(tmp_path / "run", server, 120)
    assert (report["outcome"] == "failed").all()
    assert set(report["error_code"]) == {"ENCODE_FAILED"}


def test_max_failures_trip_then_resume(tmp_path, emulator_server):
    # Slow answers keep submissions going while the first failures come back from the poller.
    server = emulator_server(EmulatorConfig(**FAST, failure_rate=0.5, seed=2, latency=0.02))
    manifest = mixed_manifest(tmp_path, 120)
    run_dir = tmp_path / "run"
    args = [
        "run",
        str(manifest),
        "--report-dir",
        str(run_dir),
        "--max-failures",
        "5",
        "--concurrency",
        "2",
        *FLAGS,
    ]
    result = run_cli(args, server.env())
    assert result.exit_code == 3
    first = check_consistent(run_dir, server, 120, allow_unfinished=True)
    assert (first["outcome"] == "interrupted").any()
    result = run_cli(["resume", str(run_dir), "--max-failures", "1000", "-q"], server.env())
    assert result.exit_code == 1
    check_consistent(run_dir, server, 120)
    assert server.stats()["jobs_created"] == 120


def test_resume_of_a_finished_run_changes_nothing(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 30)
    run_dir = tmp_path / "run"
    assert run_cli(["run", str(manifest), "--report-dir", str(run_dir), *FLAGS], server.env()).exit_code == 0
    before = pl.read_parquet(run_dir / "report.parquet")
    requests = server.stats()["requests_total"]
    result = run_cli(["resume", str(run_dir), "-q"], {})  # needs no credentials: nothing to send
    assert result.exit_code == 0, result.output
    assert server.stats()["requests_total"] == requests
    assert pl.read_parquet(run_dir / "report.parquet").equals(before)


def test_skip_existing_for_nightly_cron(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 40)
    assert run_cli(["run", str(manifest), *FLAGS], server.env()).exit_code == 0
    created = server.stats()["jobs_created"]
    result = run_cli(
        ["run", str(manifest), "--skip-existing", "--report-dir", str(tmp_path / "again"), *FLAGS],
        server.env(),
    )
    assert result.exit_code == 0, result.output
    report = pl.read_parquet(tmp_path / "again" / "report.parquet")
    with_ref = report.filter(pl.col("ref_id").is_not_null())
    assert (with_ref["outcome"] == "skipped").all() and with_ref["job_id"].is_not_null().all()
    without_ref = report.filter(pl.col("ref_id").is_null())
    assert (without_ref["outcome"] == "succeeded").all()  # no key on the platform: sent again
    assert server.stats()["jobs_created"] == created + without_ref.height


def test_retry_runs_only_the_rows_that_did_not_succeed(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, failure_rate=0.3, seed=4))
    manifest = mixed_manifest(tmp_path, 60)
    first = tmp_path / "first"
    assert run_cli(["run", str(manifest), "--report-dir", str(first), *FLAGS], server.env()).exit_code == 1
    failed = pl.read_parquet(first / "report.parquet").filter(pl.col("outcome") == "failed")
    assert failed.height > 5
    server.store.config = server.store.config.with_changes(failure_rate=0.0)  # the platform recovered
    second = tmp_path / "second"
    result = run_cli(
        ["retry", str(first), "--only", "failed", "--report-dir", str(second), *FLAGS], server.env()
    )
    assert result.exit_code == 0, result.output  # every retried row succeeds now
    retried = pl.read_parquet(second / "report.parquet")
    assert retried["row"].to_list() == failed["row"].to_list()
    assert (retried["outcome"] == "succeeded").all()
    assert server.stats()["jobs_created"] == 60 + failed.height  # only the failed rows were sent again
    assert json.loads((second / "summary.json").read_text())["retry_of"]["run_dir"] == str(first)


# -- the process dies, or is asked to stop ----------------------------------------------------


def _spawn_run(manifest: Path, run_dir: Path, env: dict[str, str], *resume: str) -> subprocess.Popen:
    args = ["resume", str(run_dir)] if resume else ["run", str(manifest), "--report-dir", str(run_dir)]
    return spawn_cli([*args, *FLAGS[:-1], "--concurrency", "4"], env)


def _wait_for_progress(
    run_dir: Path, proc: subprocess.Popen, at_least: int, deadline_s: float = 60, *, finished: bool = False
) -> None:
    """Wait until the journal shows `at_least` rows past pending (or finished), or the process ends."""
    skip = ("pending", "rejected", "sending", "submitted") if finished else ("pending", "rejected")
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and proc.poll() is None:
        counts = journal_counts(run_dir)
        if sum(v for k, v in counts.items() if k not in skip) >= at_least:
            return
        time.sleep(0.02)


def test_sigkill_at_random_moments_then_resume(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, latency=0.01, drop_after_create_rate=0.02, seed=9))
    n = 240
    manifest = mixed_manifest(tmp_path, n)
    run_dir = tmp_path / "run"
    env = {**server.env(), **QUICK_DOUBT}
    rng = random.Random(1234)
    kills = 0
    proc = _spawn_run(manifest, run_dir, env)
    for _ in range(6):
        _wait_for_progress(run_dir, proc, rng.randint(5, 40) + kills * 35)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        proc = _spawn_run(manifest, run_dir, env, "resume")
    _out, err = proc.communicate(timeout=300)
    while proc.returncode != 0:  # a last kill may have left it unfinished: resume until done
        assert proc.returncode == -signal.SIGKILL, err  # killed by the last kill, not ended by a failure
        proc = _spawn_run(manifest, run_dir, env, "resume")
        _out, err = proc.communicate(timeout=300)
    assert kills >= 5
    assert "Traceback" not in err
    check_consistent(run_dir, server, n)
    assert server.stats()["jobs_created"] == n


def test_first_sigint_stops_gracefully_second_exits_at_once(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, latency=0.05))
    n = 200
    manifest = mixed_manifest(tmp_path, n)
    run_dir = tmp_path / "run"
    proc = _spawn_run(manifest, run_dir, server.env())
    _wait_for_progress(run_dir, proc, 20)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"batch-ingest resume {run_dir}" in err
    assert out.strip().splitlines()[-1] == str(run_dir / "report.parquet")
    report = check_consistent(run_dir, server, n, allow_unfinished=True)
    assert (report["outcome"] == "interrupted").any()
    assert journal_counts(run_dir).get("sending", 0) == 0  # requests in flight were allowed to finish

    # A second signal during the graceful stop exits at once; the journal stays usable.
    proc = _spawn_run(manifest, run_dir, server.env(), "resume")
    _wait_for_progress(
        run_dir, proc, report.filter(pl.col("outcome") != "interrupted").height + 10, finished=True
    )
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    result = run_cli(["resume", str(run_dir), *FLAGS], server.env())
    assert result.exit_code == 0, result.output
    check_consistent(run_dir, server, n)
    assert server.stats()["jobs_created"] == n


def test_retry_takes_over_interrupted_rows_and_the_original_lets_go(tmp_path, emulator_server):
    """Interrupted rows keep their job in the retry run; resuming the original afterwards sends nothing."""
    server = emulator_server(EmulatorConfig(**FAST, static_token_ttl=1.0, latency=0.03))
    manifest = mixed_manifest(tmp_path, 120)
    first, second = tmp_path / "first", tmp_path / "second"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(first), "--concurrency", "2", *FLAGS], server.env()
    )
    assert result.exit_code == 3  # the static token expired mid-run
    interrupted = pl.read_parquet(first / "report.parquet").filter(pl.col("outcome") == "interrupted")
    assert interrupted.height > 0
    env = {k: v for k, v in server.env().items() if k != "SMARTSTREAM_TOKEN"}
    env.update(
        SMARTSTREAM_EMAIL=server.config.email, SMARTSTREAM_PASSWORD=server.config.password, **QUICK_DOUBT
    )
    result = run_cli(["retry", str(first), "--report-dir", str(second), *FLAGS], env)
    assert result.exit_code == 0, result.output
    assert server.stats()["jobs_created"] == 120 and server.stats()["duplicate_ref_ids"] == {}
    created = server.stats()["jobs_created"]
    result = run_cli(["resume", str(first), *FLAGS], env)  # the original: nothing left that is its own
    assert server.stats()["jobs_created"] == created
    again = pl.read_parquet(first / "report.parquet").filter(
        pl.col("row").is_in(interrupted["row"].to_list())
    )
    assert (again["outcome"] == "interrupted").all()
    assert again["error_message"].str.contains("continued by the retry run").all()
    merged = json.loads(run_cli(["report", str(first), str(second), "--json"], {}).output)
    assert merged["rows"] == 120 and merged["outcomes"]["succeeded"] == 120
