"""Second passes keep their word: retry, re-check, skip-existing, resume, one process per run folder.

Each test drives the CLI against the emulator on a loopback socket and checks the emulator's own
records: which jobs exist, how many, for which rows.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import polars as pl
import pytest
from batch_ingest.api.clock import PlatformClock
from batch_ingest.emulator import EmulatorConfig
from batch_ingest.journal import Journal
from batch_ingest.manifest import KNOWN_COLUMNS
from batch_ingest.plan import MAX_URL_LENGTH, RESERVED_COLUMNS
from batch_ingest.runfiles import JOURNAL_FILE
from batch_ingest.runlock import RunLock

from .helpers import (
    FAST,
    FLAGS,
    QUICK_DOUBT,
    check_consistent,
    journal_counts,
    mixed_manifest,
    report_of,
    run_cli,
    spawn_cli,
    url_manifest,
)


def set_knobs(server, **knobs) -> None:
    """Change the running emulator's faults between two passes."""
    server.store.config = server.store.config.with_changes(**knobs)


def jump_platform_clock(server, seconds: float) -> None:
    """The platform's clock moves on by `seconds` (as minutes passing would), without anyone waiting."""
    base = server.store.clock
    server.store.clock = lambda: base() + seconds


# -- retry re-sends -----------------------------------------------------------------------------


def test_retry_failed_resends_even_when_the_retried_create_gets_no_answer(tmp_path, emulator_server):
    """The in-doubt look-up after a failed retried create must not adopt the original run's failed job."""
    # Queues of about a second: each job ends well after its create's answer came back (submitted_at).
    server = emulator_server(EmulatorConfig(**{**FAST, "queue_seconds": 1.0}, unreachable=("flaky",)))
    manifest = mixed_manifest(tmp_path, 40, url_host="flaky.example.com")
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_cli(["run", str(manifest), "--report-dir", str(first), *FLAGS], server.env()).exit_code == 1
    failed = report_of(first).filter(pl.col("outcome") == "failed")
    assert failed.height == 28  # every URL row: the host is unreachable
    set_knobs(server, unreachable=(), create_error_once=True)  # each retried create: 500 the first time
    result = run_cli(
        ["retry", str(first), "--only", "failed", "--report-dir", str(second), *FLAGS],
        {**server.env(), **QUICK_DOUBT},
    )
    assert result.exit_code == 0, result.output
    retried = report_of(second)
    assert retried["row"].to_list() == failed["row"].to_list()
    assert (retried["outcome"] == "succeeded").all()
    assert set(retried["job_id"]).isdisjoint(set(failed["job_id"]))  # new jobs, not the old failed ones
    assert (retried["submitted_at"] <= retried["finished_at"]).all()
    assert server.stats()["jobs_created"] == 40 + 28
    summary = json.loads((second / "summary.json").read_text())
    assert (
        summary["adopted_after_doubt"] == 0 and summary["jobs_submitted"] == 28 and summary["in_doubt"] == 28
    )


def test_same_manifest_minutes_later_never_adopts_the_first_runs_jobs(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 30)
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_cli(["run", str(manifest), "--report-dir", str(first), *FLAGS], server.env()).exit_code == 0
    jump_platform_clock(server, 240)  # four minutes later, inside the old 300 s look-up window
    set_knobs(server, create_error_once=True)
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(second), *FLAGS], {**server.env(), **QUICK_DOUBT}
    )
    assert result.exit_code == 0, result.output
    old, new = report_of(first), report_of(second)
    assert set(new["job_id"]).isdisjoint(set(old["job_id"]))
    assert server.stats()["jobs_created"] == 60


def test_platform_clock_bounds():
    clock = PlatformClock()
    assert clock.floor(1000.0) == 1000.0 - 300.0  # nothing learnt: the wide window
    clock.observe_date("Thu, 01 Jan 1970 00:20:00 GMT", received_at=1000.0)  # platform 200 s ahead
    assert clock.floor(1000.0) == pytest.approx(1000.0 + 200.0 - 10.0)
    clock.observe_created("1970-01-01T00:20:00.500Z", received_at=1000.2)
    assert clock.floor(2000.0) == pytest.approx(2000.0 + 200.3 - 1.0)


# -- timed-out rows keep their job ----------------------------------------------------------------


def test_retry_timed_out_rechecks_the_job_and_resends_only_what_failed(tmp_path, emulator_server):
    server = emulator_server(
        # Every job is still queued when its 0.2 s are up (the dead ones fail only when their queue time ends).
        EmulatorConfig(rate_limit=0, queue_seconds=1.0, encode_seconds=0.3, jitter=0.2, unreachable=("dead",))
    )
    lines = ["source,profile,ref_id"] + [
        f"https://{'dead' if i < 3 else 'cdn'}.example.com/v/{i}.mp4,100,r-{i}" for i in range(10)
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    first, second = tmp_path / "first", tmp_path / "second"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(first), "--job-timeout", "0.2", *FLAGS], server.env()
    )
    assert result.exit_code == 1
    timed_out = report_of(first).filter(pl.col("outcome") == "timed_out")
    assert timed_out.height == 10
    # What `report` suggests for them never re-ingests a video whose job may still succeed.
    review = json.loads(run_cli(["report", str(first), "--json"]).output)
    assert any(
        step.startswith(f"batch-ingest retry {first} --only") and "timed_out" in step
        for step in review["next_steps"]
    )
    set_knobs(server, unreachable=())  # a re-sent row can now succeed
    # No --job-timeout: the retry takes the current default (hours), not the old run's 0.2 s.
    result = run_cli(
        ["retry", str(first), "--only", "timed_out", "--report-dir", str(second), *FLAGS], server.env()
    )
    assert result.exit_code == 0, result.output
    retried = report_of(second).join(timed_out.select("row", pl.col("job_id").alias("old_job")), on="row")
    assert (retried["outcome"] == "succeeded").all()
    assert retried["media_id"].is_not_null().all() and retried["encode_s"].is_not_null().all()
    good = retried.filter(pl.col("row") > 3)
    assert (good["job_id"] == good["old_job"]).all()  # polled, not sent again
    dead = retried.filter(pl.col("row") <= 3)
    assert dead.height == 3 and (dead["job_id"] != dead["old_job"]).all()  # their job failed: sent again
    assert server.stats()["jobs_created"] == 10 + dead.height
    assert set(server.stats()["duplicate_ref_ids"]) == set(dead["ref_id"])
    # A second retry of the same run leaves the rows to the run that took them.
    result = run_cli(["retry", str(first), "--only", "timed_out", *FLAGS], server.env())
    assert result.exit_code == 0 and "already retried" in result.output
    assert server.stats()["jobs_created"] == 10 + dead.height


def test_a_rechecked_row_whose_job_fails_is_sent_once_even_while_pending_rows_queue(
    tmp_path, emulator_server
):
    """The re-sent row must not be queued both by the pending pass and by the resend queue."""
    server = emulator_server(
        EmulatorConfig(
            rate_limit=0,
            queue_seconds=0.05,
            encode_seconds=30,
            jitter=0.0,
            storage_missing_for=("gone",),
            unreachable=("dead",),
        )
    )
    n = 120
    lines = ["source,profile,ref_id"] + [f"https://cdn.example.com/gone/{i}.mp4,100,r-{i}" for i in range(n)]
    lines.append("https://dead.example.com/last.mp4,100,r-last")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    first = tmp_path / "first"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(first), "--job-timeout", "0.01", *FLAGS], server.env()
    )
    assert result.exit_code == 1
    assert report_of(first).filter(pl.col("ref_id") == "r-last")["outcome"].item() == "timed_out"
    # Its job has failed meanwhile: the re-check finds that while 120 error rows are sent ahead of it.
    set_knobs(server, storage_missing_for=(), latency=0.04, encode_seconds=0.2)
    result = run_cli(
        ["retry", str(first), "--only", "error,timed_out", "--report-dir", str(tmp_path / "r"), *FLAGS],
        server.env(),
    )
    assert result.exit_code == 1, result.output  # the dead host still fails
    refs = server.stats()["duplicate_ref_ids"]
    assert refs == {"r-last": 2}, refs  # the timed-out job and exactly one new one
    assert server.stats()["jobs_created"] == 1 + n + 1


# -- --skip-existing never hides a failure -------------------------------------------------------


def test_skip_existing_second_night_resends_failed_and_follows_encoding(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, unreachable=("dead",)))
    lines = ["source,profile,ref_id"] + [
        f"https://{'dead' if i < 2 else 'cdn'}.example.com/v/{i}.mp4,100,{f'r-{i}' if i < 8 else ''}"
        for i in range(10)
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    assert (
        run_cli(["run", str(manifest), "--report-dir", str(tmp_path / "n1"), *FLAGS], server.env()).exit_code
        == 1
    )
    # Night 2 with --skip-existing=any: the failed jobs are reported, nothing is sent for them.
    result = run_cli(
        ["run", str(manifest), "--skip-existing=any", "--report-dir", str(tmp_path / "any"), *FLAGS],
        server.env(),
    )
    assert result.exit_code == 1
    any_report = report_of(tmp_path / "any")
    assert any_report.filter(pl.col("row") <= 2)["outcome"].to_list() == ["failed", "failed"]
    assert (any_report.filter(pl.col("row").is_between(3, 8))["outcome"] == "skipped").all()
    assert server.stats()["jobs_created"] == 10 + 2  # only the two rows without ref_id were sent
    # Night 2 with --skip-existing: the failed ones are sent again and the night goes green.
    set_knobs(server, unreachable=())
    result = run_cli(
        ["run", str(manifest), "--skip-existing", "--report-dir", str(tmp_path / "n2"), *FLAGS], server.env()
    )
    assert result.exit_code == 0, result.output
    n2 = report_of(tmp_path / "n2")
    assert n2.filter(pl.col("row") <= 2)["outcome"].to_list() == ["succeeded", "succeeded"]
    assert (n2.filter(pl.col("row").is_between(3, 8))["outcome"] == "skipped").all()
    assert server.stats()["jobs_created"] == 12 + 2 + 2
    plan = run_cli(["validate", str(manifest), "--skip-existing"]).output
    assert "--skip-existing: 2 row(s) have no ref_id" in plan and "(rows 9, 10)" in plan
    summary = json.loads((tmp_path / "n2" / "summary.json").read_text())
    assert summary["skip_existing"] == {
        "mode": "not-failed",
        "rows_without_ref_id": 2,
        "rows_without_ref_id_first": [9, 10],
    }
    assert summary["jobs_submitted"] == 4  # two re-sent, two without ref_id; the skipped are not counted
    # A job still encoding is followed to its end, not sent again.
    set_knobs(server, encode_seconds=1.0, jitter=0.0)
    slow = url_manifest(tmp_path, 3, host="slow.example.com", name="slow.csv")
    result = run_cli(
        ["run", str(slow), "--report-dir", str(tmp_path / "s1"), "--job-timeout", "0.2", *FLAGS], server.env()
    )
    assert (report_of(tmp_path / "s1")["outcome"] == "timed_out").all()
    created = server.stats()["jobs_created"]
    result = run_cli(
        ["run", str(slow), "--skip-existing", "--report-dir", str(tmp_path / "s2"), *FLAGS], server.env()
    )
    assert result.exit_code == 0, result.output
    s2 = report_of(tmp_path / "s2")
    assert (s2["outcome"] == "skipped").all() and (s2["encode_status"] == 2).all()
    assert server.stats()["jobs_created"] == created


# -- columns are accounted for -----------------------------------------------------------------


def test_misspelt_columns_stop_validate_and_run_unless_named(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    (tmp_path / "a.mp4").write_bytes(b"x" * 100)
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,profle,refid,batch\na.mp4,101,r-1,b1\n")
    result = run_cli(["validate", str(manifest)])
    assert result.exit_code == 2
    assert "'profle' looks like 'profile'" in result.output and "'refid' looks like 'ref_id'" in result.output
    assert "--extra-columns profle,refid" in result.output
    result = run_cli(["run", str(manifest), *FLAGS], server.env())
    assert result.exit_code == 2 and server.stats()["jobs_created"] == 0
    result = run_cli(["validate", str(manifest), "--extra-columns", "profle,refid"])
    assert result.exit_code == 0, result.output
    assert "columns carried into the report unchanged, not used: profle, refid, batch" in result.output


def test_over_long_url_and_ref_id_are_rejected_rows(tmp_path):
    long_url = "https://cdn.example.com/" + "a" * MAX_URL_LENGTH
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        f"source,profile,ref_id\n{long_url},100,r1\nhttps://cdn.example.com/ok.mp4,100,{'x' * 300}\n"
    )
    info = json.loads(run_cli(["validate", str(manifest), "--json"]).output)
    reasons = [r["reason"] for r in info["rejected_rows"]]
    assert info["rejected"] == 2
    assert (
        f"the longest accepted is {MAX_URL_LENGTH}" in reasons[0] and "ref_id is 300 characters" in reasons[1]
    )


def test_manifest_columns_never_impersonate_the_runs_own(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, unreachable=("dead",)))
    reserved = [*sorted(RESERVED_COLUMNS - set(KNOWN_COLUMNS)), "_attempt", "error_code_journal"]
    header = ["source", "profile", *reserved]
    rows = [
        ["https://dead.example.com/1.mp4", "100", *["succeeded" for _ in reserved]],
        ["ftp://nope/2.mp4", "100", *["succeeded" for _ in reserved]],
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    result = run_cli(["validate", str(manifest)])
    assert result.exit_code == 2 and "'job_profile_id' looks like 'profile'" in result.output
    named = ["--extra-columns", "job_profile_id"]
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(tmp_path / "run"), *named, *FLAGS], server.env()
    )
    assert result.exit_code == 1, result.output
    report = report_of(tmp_path / "run")
    assert report["outcome"].to_list() == ["failed", "rejected"]  # from the journal, never the manifest
    for name in reserved:
        assert report[f"manifest_{name}"].to_list() == ["succeeded", "succeeded"]
    assert run_cli(["resume", str(tmp_path / "run")]).exit_code == 1  # read back as it is
    # Two columns that would be carried under one name: refused before anything is sent.
    manifest.write_text("source,profile,row,manifest_row\nhttps://cdn.example.com/1.mp4,100,a,b\n")
    result = run_cli(["validate", str(manifest)])
    assert result.exit_code == 2
    assert (
        "columns 'row' and 'manifest_row' would both be carried into the report as 'manifest_row'"
        in result.output
    )


# -- a run's figures are cumulative; a resume with nothing to do writes nothing -----------------


def test_summary_adds_up_every_segment_and_idle_resume_writes_nothing(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, static_token_ttl=1.0, latency=0.03))
    manifest = mixed_manifest(tmp_path, 120)
    run_dir = tmp_path / "run"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--concurrency", "2", *FLAGS], server.env()
    )
    assert result.exit_code == 3  # the static token expired mid-run
    env = {k: v for k, v in server.env().items() if k != "SMARTSTREAM_TOKEN"}
    env.update(
        SMARTSTREAM_EMAIL=server.config.email, SMARTSTREAM_PASSWORD=server.config.password, **QUICK_DOUBT
    )
    assert run_cli(["resume", str(run_dir), "-q"], env).exit_code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    stats = server.stats()
    assert summary["api_requests"] == stats["requests_total"]
    assert summary["created"] + summary["adopted_after_doubt"] == stats["jobs_created"] == 120
    assert summary["jobs_submitted"] == 120 and summary["resumes"] == 1
    assert [s["kind"] for s in summary["segments"]] == ["run", "resume"]
    assert summary["elapsed_s"] == pytest.approx(sum(s["elapsed_s"] for s in summary["segments"]), abs=0.01)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}
    result = run_cli(["resume", str(run_dir)], {})  # nothing to do: no credentials needed, no file written
    assert result.exit_code == 0, result.output
    assert "run " in result.output and result.output.strip().splitlines()[-1] == str(
        run_dir / "report.parquet"
    )
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}
    assert after == before


# -- one process per run folder ----------------------------------------------------------------


def _interrupted_run(tmp_path: Path, server, n: int = 60) -> Path:
    run_dir = tmp_path / "run"
    manifest = mixed_manifest(tmp_path, n)
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--max-failures", "0", *FLAGS], server.env()
    )
    assert result.exit_code == 3, result.output
    return run_dir


def test_a_locked_run_folder_is_refused_naming_the_holder(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, failure_rate=0.5, seed=3))
    run_dir = _interrupted_run(tmp_path, server)
    lock = RunLock(run_dir).acquire()
    lock.write_pid()
    try:
        holder = f"{run_dir} is in use by process {os.getpid()}"
        for args, says, code in (
            (["resume", str(run_dir)], holder, 75),  # in use: the same command later succeeds
            (["retry", str(run_dir)], holder, 75),
            (["collect", str(run_dir)], holder, 75),
            # A new run is refused for the journal already there, before it would ask for the lock.
            (["run", str(tmp_path / "manifest.csv"), "--report-dir", str(run_dir)], "already holds a run", 2),
        ):
            result = run_cli([*args, *FLAGS], server.env())
            assert result.exit_code == code, (args, result.output)
            assert says in result.output, (args, result.output)
    finally:
        lock.release()


def test_two_resumes_started_together_send_each_row_once(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, failure_rate=0.5, seed=3))
    run_dir = _interrupted_run(tmp_path, server)
    set_knobs(server, failure_rate=0.0, latency=0.2)  # the resumes take seconds: they overlap
    env = {**server.env(), **QUICK_DOUBT}
    procs = [spawn_cli(["resume", str(run_dir), "--max-failures", "1000", *FLAGS], env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [1, 75], outs  # the winner finishes the run (some rows failed before); the other: in use
    loser = outs[[p.returncode for p in procs].index(75)]
    assert "in use by process" in loser[1] and "Traceback" not in loser[1]
    check_consistent(run_dir, server, 60)


# -- credentials go where the user says --------------------------------------------------------


def test_resume_refuses_an_api_url_other_than_the_runs_unless_named(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, failure_rate=0.5, seed=3))
    run_dir = _interrupted_run(tmp_path, server)
    requests = server.stats()["requests_total"]
    env = {k: v for k, v in server.env().items() if k != "SMARTSTREAM_API_URL"}
    for command in (["resume", str(run_dir)], ["retry", str(run_dir)]):
        result = run_cli([*command, *FLAGS], env)
        assert result.exit_code == 2, result.output
        assert (
            f"was started against {server.url}" in result.output
            and f"--api-url {server.url}" in result.output
        )
    assert server.stats()["requests_total"] == requests  # nothing sent anywhere
    result = run_cli(["resume", str(run_dir), "--api-url", server.url, "--max-failures", "1000", *FLAGS], env)
    # Exit 1: the row whose failure tripped --max-failures 0 in the first run stays failed.
    assert result.exit_code == 1, result.output
    check_consistent(run_dir, server, 60)


# -- stop means stop ---------------------------------------------------------------------------


@pytest.mark.xdist_group("measures")  # measures time or memory: never beside another such test
def test_ctrl_c_with_the_rate_limiter_saturated_exits_at_once(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 40)
    run_dir = tmp_path / "run"
    # 12 requests a minute: after the first few creates, every row waits for a slot.
    proc = spawn_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(run_dir),
            "--rate",
            "12",
            "--concurrency",
            "8",
            "--poll-min-interval",
            "0.2",
            "--poll-max-interval",
            "0.5",
        ],
        server.env(),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = journal_counts(run_dir)
        if counts.get("submitted", 0) + counts.get("succeeded", 0) >= 3:
            break
        time.sleep(0.05)
    sent_before = server.stats()["jobs_created"]
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert time.monotonic() - stopped_at < 10, "requests waiting for the rate limiter held up the stop"
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    counts = journal_counts(run_dir)
    assert counts.get("sending", 0) == 0  # rows waiting for a slot were never sent, so never in doubt
    assert counts.get("pending", 0) >= 20 and sum(counts.values()) == 40
    assert server.stats()["jobs_created"] == sent_before
    result = run_cli(["resume", str(run_dir), "--rate", "0", *FLAGS], server.env())
    assert result.exit_code == 0, result.output
    assert server.stats()["jobs_created"] == 40 and server.stats()["duplicate_ref_ids"] == {}


# -- cron output -------------------------------------------------------------------------------


def test_quiet_failed_run_prints_counts_and_json_events_carry_keys(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, unreachable=("dead",)))
    manifest = url_manifest(tmp_path, 14, host="dead.example.com")
    log = tmp_path / "events.jsonl"
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(run_dir),
            "--log-file",
            str(log),
            "--log-format",
            "json",
            *FLAGS,
        ],
        server.env(),
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == ["run run: failed 14 (exit 1)", str(run_dir / "report.parquet")]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(e["run_id"] == "run" for e in events)
    rows = [e for e in events if e["event"] in ("submitted", "finished")]
    assert rows and all(e["key"] == e["ref_id"] and e["ref_id"].startswith("r-") for e in rows)
    last = events[-1]
    assert last["event"] == "run_ended" and last["exit_code"] == 1 and last["outcomes"]["failed"] == 14
    assert last["report"] == str(run_dir / "report.parquet")
    text = run_cli(["report", str(run_dir)]).output
    full = run_cli(["resume", str(run_dir)]).output
    assert "... and 4 more: batch-ingest report" in full and f"{run_dir} --failed lists them all" in full
    assert "failed 14" in text


def test_csv_report_writes_nested_values_as_json(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = tmp_path / "m.ndjson"
    manifest.write_text(
        json.dumps(
            {
                "source": "https://cdn.example.com/1.mp4",
                "profile": "100",
                "tags": ["a", "b"],
                "meta": {"k": 1},
            }
        )
        + "\n"
    )
    result = run_cli(["run", str(manifest), "--report-dir", str(tmp_path / "run"), *FLAGS], server.env())
    assert result.exit_code == 0, result.output
    csv = pl.read_csv(tmp_path / "run" / "report.csv", infer_schema=False)
    assert json.loads(csv["tags"][0]) == ["a", "b"] and json.loads(csv["meta"][0]) == {"k": 1}


# -- journals written by the previous version ----------------------------------------------------

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE rows (
    row INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, ref_id TEXT, source TEXT, source_type TEXT,
    source_path TEXT, job_profile_id INTEGER, name TEXT, description TEXT, bytes INTEGER, state TEXT NOT NULL,
    job_id TEXT, media_id TEXT, encode_status INTEGER, job_created_at TEXT, job_updated_at TEXT,
    http_status INTEGER, error_code TEXT, error_message TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    sent_at REAL, submitted_at REAL, finished_at REAL
);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO rows (row, key, source, source_type, state, job_id, error_message) VALUES
    (1, 'r-1', 'https://cdn.example.com/1.mp4', 'url', 'handed_over', 'j1', 'continued by the retry run in /runs/b'),
    (2, 'r-2', 'https://cdn.example.com/2.mp4', 'url', 'pending', NULL, NULL);
"""


def test_a_version_1_journal_is_migrated_under_the_lock_and_keeps_its_hand_overs(tmp_path):
    import sqlite3

    path = tmp_path / JOURNAL_FILE
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")  # as version 1 made it
    conn.executescript(V1_SCHEMA)
    conn.close()
    before = path.read_bytes()
    journal = Journal.open(path, migrate=False)  # reading settings before the lock: no change
    assert journal.has_unfinished() and journal.meta()["schema_version"] == 1
    journal.close()
    assert path.read_bytes() == before
    journal = Journal.open(path)
    try:
        assert journal.meta()["schema_version"] == 2
        assert journal.handed_to() == {1: "/runs/b"}
        assert [t.row for t in journal.tasks(("pending",))] == [2]
        journal.migrate()  # twice is harmless
    finally:
        journal.close()


def test_a_retry_that_dies_before_the_hand_over_never_lets_both_runs_send(
    tmp_path, emulator_server, monkeypatch
):
    server = emulator_server(EmulatorConfig(**FAST, failure_rate=0.5, seed=3))
    run_dir = _interrupted_run(tmp_path, server)
    pending = report_of(run_dir).filter(pl.col("outcome") == "interrupted").height
    assert pending > 0

    def die(self, rows, to_run):
        raise KeyboardInterrupt

    monkeypatch.setattr(Journal, "hand_over", die)
    second = tmp_path / "second"
    result = run_cli(["retry", str(run_dir), "--report-dir", str(second), *FLAGS], server.env())
    assert result.exit_code == 130
    monkeypatch.undo()
    result = run_cli(["resume", str(second), *FLAGS], server.env())
    assert result.exit_code == 2 and "still owns them" in result.output
    result = run_cli(["resume", str(run_dir), "--max-failures", "1000", *FLAGS], server.env())
    assert result.exit_code == 1, result.output
    check_consistent(run_dir, server, 60)


def test_a_429_never_uses_up_a_rows_retries(tmp_path, emulator_server):
    """Bursts of 429s with no retries allowed at all: every row still gets its job, once."""
    server = emulator_server(
        EmulatorConfig(**FAST, burst_429_rate=0.2, burst_429_len=3, seed=5, retry_after="none")
    )
    manifest = url_manifest(tmp_path, 40)
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(tmp_path / "run"), *FLAGS, "--retries", "0"], server.env()
    )
    assert result.exit_code == 0, result.output
    assert server.stats()["faults"].get("429_burst", 0) > 10
    assert (report_of(tmp_path / "run")["outcome"] == "succeeded").all()
    assert server.stats()["jobs_created"] == 40 and server.stats()["duplicate_ref_ids"] == {}
