"""`batch-ingest run` end to end against the emulator on a loopback socket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from batch_ingest.cli import main
from batch_ingest.emulator import EmulatorConfig, free_port
from batch_ingest.report import REPORT_COLUMNS

from .helpers import FAST, FLAGS, QUICK_DOUBT, process_env, run_cli, write_manifest


def every_outcome_manifest(tmp_path: Path) -> Path:
    """Eight rows, one for each way a row can end (and both kinds of source)."""
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.mp4").write_bytes(b"A" * 3000)
    (tmp_path / "media" / "b.mp4").write_bytes(b"B" * 5000)
    return write_manifest(
        tmp_path,
        "source,profile,ref_id,name,Collection\n"
        "https://cdn.example.com/1.mp4,100,r-1,One,c1\n"
        "https://cdn.example.com/2.mp4,ref:hd,,Two,c2\n"
        "media/a.mp4,,r-3,,c3\n"
        "media/b.mp4,102,,,c4\n"
        "https://gone.invalid/5.mp4,100,r-5,,c5\n"
        "https://cdn.example.com/no-storage/6.mp4,100,r-6,,c6\n"
        "https://cdn.example.com/7.mp4,4242,r-7,,c7\n"
        "ftp://cdn.example.com/8.mp4,100,r-8,,c8\n",
    )


def test_mixed_manifest_report_cell_by_cell(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, storage_missing_for=("no-storage",)))
    manifest = every_outcome_manifest(tmp_path)
    result = run_cli(["run", str(manifest), "--report-dir", str(tmp_path / "run"), *FLAGS], env=server.env())
    assert result.exit_code == 1, result.output
    report_path = Path(result.output.strip().splitlines()[-1])
    assert report_path == tmp_path / "run" / "report.parquet"
    report = pl.read_parquet(report_path)
    assert report.columns == [*REPORT_COLUMNS, "collection"]
    expected = [
        # row, ref_id, source_type, profile, job_profile_id, outcome, encode_status, http_status, error_code, bytes
        (1, "r-1", "url", "100", 100, "succeeded", 2, None, None, None),
        (2, None, "url", "ref:hd", 101, "succeeded", 2, None, None, None),
        (3, "r-3", "file", None, 100, "succeeded", 2, None, None, 3000),
        (4, None, "file", "102", 102, "succeeded", 2, None, None, 5000),
        (5, "r-5", "url", "100", 100, "failed", 3, None, "ENCODE_FAILED", None),
        (6, "r-6", "url", "100", 100, "error", None, 404, "STORAGE_NOT_FOUND", None),
        (7, "r-7", "url", "4242", None, "rejected", None, None, "JOB_PROFILE_NOT_FOUND", None),
        (8, "r-8", "url", "100", 100, "rejected", None, None, "INVALID_ROW", None),
    ]
    got = report.select(
        "row",
        "ref_id",
        "source_type",
        "profile",
        "job_profile_id",
        "outcome",
        "encode_status",
        "http_status",
        "error_code",
        "bytes",
    ).rows()
    assert got == expected
    assert report["collection"].to_list() == [f"c{i}" for i in range(1, 9)]
    assert report["attempts"].to_list() == [1, 1, 1, 1, 1, 1, 0, 0]
    # Job ids and media ids agree with the emulator's own records, one job per submitted row.
    jobs = {j["id"]: j for j in server.jobs()}
    assert len(jobs) == 5
    for row in report.filter(pl.col("job_id").is_not_null()).iter_rows(named=True):
        job = jobs[row["job_id"]]
        assert job["media_id"] == row["media_id"]
        assert job["ref_id"] == row["ref_id"]
        assert job["encode_status"] == row["encode_status"]
    assert report.filter(pl.col("row") == 6)["error_message"].item() == "Storage not found"
    assert "ftp" in report.filter(pl.col("row") == 8)["error_message"].item()
    # CSV holds the same content.
    csv = pl.read_csv(tmp_path / "run" / "report.csv", infer_schema=False)
    assert csv.height == 8 and csv.columns == report.columns
    assert csv["job_id"].to_list() == report["job_id"].to_list()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["outcomes"] == {
        "succeeded": 4,
        "failed": 1,
        "rejected": 2,
        "error": 1,
        "timed_out": 0,
        "interrupted": 0,
        "skipped": 0,
        "held": 0,
        "submitted": 0,
    }
    assert summary["exit_code"] == 1
    assert summary["api_requests"] == server.stats()["requests_total"]
    # Each distinct profile is looked up once (100, ref:hd, 102, 4242), not once per row.
    assert server.stats()["requests"]["GET job_profiles/:id"] == {"200": 3, "404": 1}
    text = json.dumps(summary) + (tmp_path / "run" / "report.csv").read_text()
    assert server.config.token not in text and server.config.api_key not in text


def test_all_succeeded_exits_0_and_parquet_manifest(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    pl.DataFrame(
        {
            "Source_URL": [f"https://cdn.example.com/{i}.mp4" for i in range(5)],
            "profile": [100, 101, 102, 100, 101],
        }
    ).write_parquet(tmp_path / "m.parquet")
    result = run_cli(["run", str(tmp_path / "m.parquet"), *FLAGS], env=server.env())
    assert result.exit_code == 0, result.output
    report = pl.read_parquet(result.output.strip().splitlines()[-1])
    assert report["outcome"].to_list() == ["succeeded"] * 5
    assert report["job_profile_id"].to_list() == [100, 101, 102, 100, 101]
    assert Path(result.output.strip().splitlines()[-1]).parent.parent == Path("reports")


def test_timed_out_jobs(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(rate_limit=0, queue_seconds=0.1, encode_seconds=600))
    manifest = write_manifest(tmp_path, "source,profile\nhttps://cdn.example.com/slow.mp4,100\n")
    result = run_cli(["run", str(manifest), "--job-timeout", "0.3", *FLAGS], env=server.env())
    assert result.exit_code == 1
    report = pl.read_parquet(result.output.strip().splitlines()[-1])
    assert report.select("outcome", "error_code").row(0) == ("timed_out", "JOB_TIMEOUT")


@pytest.mark.xdist_group("measures")  # measures time or memory: never beside another such test
def test_request_economy_1000_jobs(tmp_path, emulator_server):
    """Submissions included, a 1,000-job run spends at most 1.1 requests per job."""
    # Encodes of seconds, in emulator time run 4 times faster (the client's poll bounds scaled to match).
    server = emulator_server(
        EmulatorConfig(rate_limit=0, queue_seconds=1.0, encode_seconds=3.0, jitter=0.5, time_scale=4.0)
    )
    lines = ["source,profile,ref_id"] + [f"https://cdn.example.com/v{i}.mp4,100,v{i}" for i in range(1000)]
    manifest = write_manifest(tmp_path, "\n".join(lines) + "\n")
    result = run_cli(
        [
            "run",
            str(manifest),
            "--concurrency",
            "16",
            "--rate",
            "0",
            "--poll-min-interval",
            "0.125",
            "--poll-max-interval",
            "0.5",
            "-q",
        ],
        env=server.env(),
    )
    assert result.exit_code == 0, result.output
    stats = server.stats()
    assert stats["jobs_created"] == 1000 and not stats["duplicate_ref_ids"]
    per_job = stats["requests_total"] / 1000
    print(f"requests per job: {per_job:.3f}", stats["requests"])
    assert per_job <= 1.1, stats["requests"]
    assert "GET jobs/:id" not in stats["requests"]  # no per-job polling at all


def test_in_doubt_creates_are_adopted_not_duplicated(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, drop_after_create_rate=0.3, seed=5))
    (tmp_path / "f.mp4").write_bytes(b"F" * 2048)
    rows = ["source,profile,ref_id"]
    rows += [f"https://cdn.example.com/r{i}.mp4,100,ref-{i}" for i in range(15)]  # found by ref_id
    rows += [f"https://cdn.example.com/n{i}.mp4,101," for i in range(15)]  # found among the newest jobs
    rows += ["f.mp4,102,"]
    manifest = write_manifest(tmp_path, "\n".join(rows) + "\n")
    env = {**server.env(), **QUICK_DOUBT}
    result = run_cli(["run", str(manifest), *FLAGS], env)
    assert result.exit_code == 0, result.output
    stats = server.stats()
    assert stats["faults"]["dropped_after_create"] > 3
    assert stats["jobs_created"] == 31
    assert stats["duplicate_ref_ids"] == {} and stats["duplicate_sources"] == {}
    report = pl.read_parquet(result.output.strip().splitlines()[-1])
    assert report["outcome"].to_list() == ["succeeded"] * 31
    assert report["job_id"].n_unique() == 31
    summary = json.loads((Path(result.output.strip().splitlines()[-1]).parent / "summary.json").read_text())
    assert summary["adopted_after_doubt"] == stats["faults"]["dropped_after_create"]


def test_wrong_token_aborts_with_exit_3(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = write_manifest(tmp_path, "source,profile\nhttps://cdn.example.com/1.mp4,100\n")
    env = {**server.env(), "SMARTSTREAM_TOKEN": "not-the-token"}
    result = run_cli(["run", str(manifest), *FLAGS], env=env)
    assert result.exit_code == 3
    assert "not-the-token" not in result.output
    assert server.stats()["jobs_created"] == 0


def test_missing_settings_exit_2_naming_flag_and_variable(tmp_path):
    manifest = write_manifest(tmp_path, "source,profile\nhttps://cdn.example.com/1.mp4,100\n")
    result = run_cli(["run", str(manifest)])
    assert result.exit_code == 2
    assert "--merchant-id" in result.output and "SMARTSTREAM_MERCHANT_ID" in result.output
    result = run_cli(["run", str(manifest)], env={"SMARTSTREAM_MERCHANT_ID": "m"})
    assert result.exit_code == 2 and "SMARTSTREAM_API_KEY" in result.output


def test_unreachable_api_aborts_with_exit_3(tmp_path):
    manifest = write_manifest(tmp_path, "source,profile\nhttps://cdn.example.com/1.mp4,100\n")
    env = {
        "SMARTSTREAM_API_URL": f"http://127.0.0.1:{free_port()}",
        "SMARTSTREAM_MERCHANT_ID": "demo",
        "SMARTSTREAM_API_KEY": "k",
        "SMARTSTREAM_TOKEN": "t",
    }
    result = run_cli(["run", str(manifest), "--retries", "0", "-q"], env=env)
    assert result.exit_code == 3
    assert "Traceback" not in result.output


def test_max_failures_trips(tmp_path, emulator_server):
    # Submission errors are counted as they happen, so with one worker the trip point is exact.
    server = emulator_server(EmulatorConfig(**FAST, storage_missing_for=("no-storage",)))
    rows = ["source,profile"] + [f"https://cdn.example.com/no-storage/{i}.mp4,100" for i in range(10)]
    manifest = write_manifest(tmp_path, "\n".join(rows) + "\n")
    result = run_cli(
        ["run", str(manifest), "--max-failures", "2", "--concurrency", "1", *FLAGS], env=server.env()
    )
    assert result.exit_code == 3
    report = pl.read_parquet(result.output.strip().splitlines()[-1])
    assert report.height == 10  # every row is in the report, finished or not
    assert report["outcome"].to_list() == ["error"] * 3 + ["interrupted"] * 7
    assert server.stats()["requests"]["POST jobs"] == {"404": 3}  # nothing sent after the trip


def test_sample_run_as_a_real_process(tmp_path):
    """The README's quick start, as a subprocess: every row accounted for, the path last."""
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "batch_ingest",
            "run",
            str(repo / "manifests" / "sample.csv"),
            "--emulator",
            "--report-dir",
            str(tmp_path / "sample"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=process_env(),
    )
    assert result.returncode == 1, result.stderr  # rows fail on purpose
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "sample" / "report.parquet")
    report = pl.read_parquet(tmp_path / "sample" / "report.parquet")
    manifest = pl.read_csv(repo / "manifests" / "sample.csv", infer_schema=False)
    assert report.height == manifest.height
    assert {"succeeded", "failed", "error", "rejected"} <= set(report["outcome"])
    assert "Traceback" not in result.stderr


def test_every_command_has_help():
    for name, command in main.commands.items():
        assert command.help and len(command.help) > 20, name
        result = run_cli([name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output
        for param in command.params:
            if isinstance(param, __import__("click").Option):
                assert param.help, f"{name} {param.opts}"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_validate_prints_plan_and_sends_nothing(tmp_path, emulator_server, fmt):
    server = emulator_server(EmulatorConfig(**FAST))
    repo = Path(__file__).resolve().parent.parent
    manifest = repo / "manifests" / f"sample.{fmt}"
    result = run_cli(["validate", str(manifest), "--json"], env=server.env())
    assert result.exit_code == 1
    info = json.loads(result.output)
    assert info["rows"] == 12 and info["to_submit"] == 7 and info["rejected"] == 5
    assert (
        info["profiles_checked"]
        and info["upload_bytes"] == 2 * (repo / "manifests/media/sample-clip.mp4").stat().st_size
    )
    stats = server.stats()
    assert stats["jobs_created"] == 0 and "POST jobs" not in stats["requests"]
    dry = run_cli(["run", str(manifest), "--dry-run"], env=server.env())
    assert dry.exit_code == 1 and "7 to submit" in dry.output
    assert server.stats()["jobs_created"] == 0


def test_concurrency_bounds_hold(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, latency=0.05))
    media = tmp_path / "media"
    media.mkdir()
    rows = ["source,profile"]
    for i in range(12):
        (media / f"{i}.mp4").write_bytes(b"v" * 1000)
        rows.append(f"media/{i}.mp4,100")
    rows += [f"https://cdn.example.com/{i}.mp4,100" for i in range(30)]
    manifest = write_manifest(tmp_path, "\n".join(rows) + "\n")
    result = run_cli(
        ["run", str(manifest), "--concurrency", "4", "--upload-concurrency", "1", *FLAGS],
        env=server.env(),
    )
    assert result.exit_code == 0, result.output
    stats = server.stats()
    assert stats["max_concurrent_uploads"] == 1
    # 4 submissions plus the one poller share the connection pool.
    assert 4 <= stats["max_concurrent_requests"] <= 5


def test_ndjson_manifest(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    path = tmp_path / "m.ndjson"
    path.write_text(
        '{"source": "https://cdn.example.com/1.mp4", "profile": 100, "ref_id": "n1", "tags": ["a"]}\n'
        '{"source": "https://cdn.example.com/2.mp4", "profile": "ref:sd", "ref_id": "n2", "tags": []}\n'
    )
    result = run_cli(["run", str(path), *FLAGS], env=server.env())
    assert result.exit_code == 0, result.output
    report = pl.read_parquet(result.output.strip().splitlines()[-1])
    assert report["job_profile_id"].to_list() == [100, 102]
    assert report["tags"].to_list() == [["a"], []]


@pytest.mark.xdist_group("measures")  # measures time or memory: never beside another such test
def test_paced_run_against_a_token_bucket_platform(tmp_path, emulator_server):
    """The platform enforces the same rate as a token bucket of capacity 5: an even pace meets no 429."""
    server = emulator_server(
        EmulatorConfig(rate_limit=600, bucket_capacity=5, queue_seconds=0.1, encode_seconds=0.3, jitter=0.2)
    )
    lines = ["source,profile,ref_id"] + [f"https://cdn.example.com/p{i}.mp4,100,p{i}" for i in range(60)]
    manifest = write_manifest(tmp_path, "\n".join(lines) + "\n")
    args = [
        "run",
        str(manifest),
        "--report-dir",
        str(tmp_path / "run"),
        "--rate",
        "600",
        "--poll-min-interval",
        "0.2",
        "--poll-max-interval",
        "1",
        "-q",
    ]
    result = run_cli(args, env=server.env())
    assert result.exit_code == 0, result.output
    stats = server.stats()
    assert stats["jobs_created"] == 60
    assert stats["rate_limited"] <= 0.01 * stats["requests_total"], stats


def test_max_in_flight_keeps_the_platforms_queue_under_its_cap(tmp_path, emulator_server):
    """The account takes at most 4 jobs queued or encoding (over-cap creates answer 429)."""
    server = emulator_server(
        EmulatorConfig(rate_limit=0, max_in_flight=4, queue_seconds=0.1, encode_seconds=0.4, jitter=0.2)
    )
    lines = ["source,profile,ref_id"] + [f"https://cdn.example.com/q{i}.mp4,100,q{i}" for i in range(30)]
    manifest = write_manifest(tmp_path, "\n".join(lines) + "\n")
    args = ["run", str(manifest), "--report-dir", str(tmp_path / "run"), "--max-in-flight", "4", *FLAGS]
    result = run_cli(args, env=server.env())
    assert result.exit_code == 0, result.output
    stats = server.stats()
    assert stats["jobs_created"] == 30 and stats["duplicate_ref_ids"] == {}
    assert stats["rate_limited"] == 0  # the run waited for room instead of meeting the cap


def test_bwlimit_uploads_arrive_whole(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    (tmp_path / "media").mkdir()
    data = bytes(range(256)) * 4096 * 3  # 3 MiB
    (tmp_path / "media" / "a.mp4").write_bytes(data)
    manifest = write_manifest(tmp_path, "source,profile\nmedia/a.mp4,100\n")
    result = run_cli(["run", str(manifest), "--bwlimit", "16M", *FLAGS], env=server.env())
    assert result.exit_code == 0, result.output
    import hashlib

    (job,) = server.jobs()
    assert job["upload_size"] == len(data) and job["upload_sha256"] == hashlib.sha256(data).hexdigest()
