"""A hostile world: every failure ends as a row outcome or a documented exit code, never a hang,
a traceback or a leak.

A hostile server wraps the emulator and misbehaves in one way per mode; the CLI runs against it
in a subprocess, which must end within a bound, print no traceback, exit with a documented code
and leave a report.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import uvicorn
from batch_ingest.emulator import EmulatorConfig, create_app, free_port

from .helpers import FAST, FLAGS, QUICK_DOUBT, mixed_manifest, process_env, run_cli

DOCUMENTED = {0, 1, 2, 3, 4, 130}


class Hostile:
    """An ASGI app: the emulator, with one misbehaviour switched on by `mode`."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.inner = create_app(config)
        self.config = config
        self.mode = ""
        self.requests = 0
        self.url = ""  # set once it listens

    @property
    def store(self):
        return self.inner.state.store

    async def _forward(self, scope, receive) -> tuple[int, list, bytes]:
        out: dict[str, Any] = {"body": b""}

        async def send(message) -> None:
            if message["type"] == "http.response.start":
                out["status"], out["headers"] = message["status"], message.get("headers", [])
            elif message["type"] == "http.response.body":
                out["body"] += message.get("body", b"")

        await self.inner(scope, receive, send)
        return out["status"], out["headers"], out["body"]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        path, method = scope["path"], scope["method"]
        creating = method == "POST" and path.endswith("/jobs")
        listing = method == "GET" and path.endswith("/jobs")
        status, headers, body = await self._forward(scope, receive)
        mode = self.mode
        if mode == "date_overflow":
            headers = [(k, v) for k, v in headers if k.lower() != b"date"] + [
                (b"date", b"Mon, 01 Jan 99999999999 00:00:00 GMT")
            ]
        if mode == "ref_403" and method == "GET" and "/jobs/ref:" in path:
            status, body = 403, b'{"code": "FORBIDDEN", "message": "no"}'
        if mode == "ref_403" and listing and status < 300:  # a big account: look-ups per row are cheaper
            body = json.dumps({**json.loads(body), "count": 10**6}).encode()
        if mode == "list_401" and listing:
            status, body = 401, b'{"code": "UNAUTHORIZED", "message": "Authentication failed"}'
        if creating and status < 300 and mode == "create_nested":
            body = b"[" * 100_000 + b"]" * 100_000
        elif creating and status < 300 and mode == "create_gzip_lie":
            headers = [*headers, (b"content-encoding", b"gzip")]
        elif creating and status < 300 and mode.startswith("create_"):
            job = json.loads(body)
            body = (
                json.dumps(
                    {
                        "create_no_id": {k: v for k, v in job.items() if k != "id"},
                        "create_list": [job],
                        "create_media_object": {**job, "media_id": {"id": job["media_id"]}},
                        "create_not_json": None,
                    }[mode]
                ).encode()
                if mode != "create_not_json"
                else b"<html>ok</html>"
            )
        elif listing and status < 300 and mode == "list_int_dates":
            data = json.loads(body)
            for job in data["jobs"]:
                job["updated_at"], job["created_at"] = 1_800_000_000, 1_800_000_000
            body = json.dumps(data).encode()
        elif listing and mode in ("list_endless", "list_repeats"):
            page = int(
                dict(p.split("=") for p in scope["query_string"].decode().split("&") if "=" in p).get(
                    "page", 1
                )
            )
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 3600))
            salt = 0 if mode == "list_repeats" else page
            jobs = [
                {"id": f"x{salt}-{i}", "encode_status": 1, "updated_at": stamp, "created_at": stamp}
                for i in range(100)
            ]
            body, status = (
                json.dumps({"count": 250 if mode == "list_endless" else 100, "jobs": jobs}).encode(),
                200,
            )
        elif listing and mode == "list_huge":
            body, status = b'{"count": 1, "jobs": [' + b" " * (20 * 1024 * 1024) + b"]}", 200
        elif listing and mode == "list_trickle":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            for byte in body:
                await send({"type": "http.response.body", "body": bytes([byte]), "more_body": True})
                await asyncio.sleep(0.2)
            await send({"type": "http.response.body", "body": b""})
            return
        elif method == "GET" and path.endswith("/job_profiles") and mode == "profiles_repeat":
            profiles = [{"id": str(1000 + i), "ref_id": f"p{i}", "name": "x"} for i in range(100)]
            body, status = json.dumps({"count": 100, "job_profiles": profiles}).encode(), 200
        elif "job_profiles/" in path and mode == "profile_id_object" and status < 300:
            data = json.loads(body)
            body = json.dumps({**data, "id": {"id": data["id"]}}).encode()
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def hostile():
    """A hostile server on a free loopback port."""
    app = Hostile(EmulatorConfig(**FAST))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="critical",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    app.url = f"http://127.0.0.1:{port}"
    yield app
    server.should_exit = True
    thread.join(timeout=10)


def env_for(app: Hostile, **extra: str) -> dict[str, str]:
    return process_env(
        dict(
            SMARTSTREAM_API_URL=app.url,
            SMARTSTREAM_MERCHANT_ID=app.config.merchant_id,
            SMARTSTREAM_API_KEY=app.config.api_key,
            SMARTSTREAM_TOKEN=app.config.token,
            **QUICK_DOUBT,
            **extra,
        )
    )


def run_bounded(args: list[str], env: dict[str, str], bound_s: float = 60) -> tuple[int, str, str, float]:
    """The CLI in a subprocess that must end within `bound_s` (the watchdog)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batch_ingest", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=bound_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the process did not end within {bound_s} s: {err[-2000:]}")
    return proc.returncode, out, err, time.monotonic() - started


def assert_clean(code: int, out: str, err: str, run_dir: Path | None = None) -> None:
    assert code in DOCUMENTED, (code, err)
    assert "Traceback" not in out + err, err
    if run_dir is not None:
        assert (run_dir / "report.parquet").exists(), err


@pytest.mark.parametrize(
    "mode",
    [
        "create_no_id",
        "create_list",
        "create_media_object",
        "create_not_json",
        "create_nested",
        "create_gzip_lie",
        "date_overflow",
    ],
)
def test_malformed_create_answers_leave_rows_in_doubt_and_the_run_goes_on(tmp_path, hostile, mode):
    hostile.mode = mode
    manifest = mixed_manifest(tmp_path, 12)
    run_dir = tmp_path / "run"
    code, out, err, _ = run_bounded(
        ["run", str(manifest), "--report-dir", str(run_dir), "--retries", "1", *FLAGS], env_for(hostile)
    )
    assert_clean(code, out, err, run_dir)
    assert code == 0, err  # every create was in doubt, looked up and adopted
    jobs = hostile.store.jobs
    by_ref = {j.ref_id for j in jobs.values() if j.ref_id}
    report = pl.read_parquet(run_dir / "report.parquet")
    # Rows with a ref_id were found again by the look-up and adopted: one job each, never two.
    assert len(jobs) == len({(j.source_url, j.ref_id) for j in jobs.values()})
    adopted = report.filter(pl.col("ref_id").is_not_null() & pl.col("job_id").is_not_null())
    assert set(adopted["ref_id"]) <= by_ref
    # The journal stays usable: once the server behaves, resume finishes every row with no duplicate.
    hostile.mode = ""
    code, out, err, _ = run_bounded(["resume", str(run_dir), *FLAGS], env_for(hostile))
    assert_clean(code, out, err, run_dir)
    assert len(hostile.store.jobs) == len({(j.source_url, j.ref_id) for j in hostile.store.jobs.values()})


@pytest.mark.parametrize(
    ("mode", "extra", "expected"),
    [
        ("list_int_dates", {}, "timed_out"),
        ("list_endless", {}, "interrupted"),
        ("list_repeats", {}, "interrupted"),
        ("list_huge", {}, "timed_out"),
        (
            "list_trickle",
            {"SMARTSTREAM_READ_TIMEOUT": "0.5", "SMARTSTREAM_CONNECT_TIMEOUT": "0.5"},
            "timed_out",
        ),
    ],
)
def test_hostile_job_lists_end_in_an_outcome_not_a_hang(tmp_path, hostile, mode, extra, expected):
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "source,profile,ref_id\n" + "".join(f"https://cdn.example.com/{i}.mp4,100,r{i}\n" for i in range(5))
    )
    run_dir = tmp_path / "run"
    hostile.mode = mode
    args = [
        "run",
        str(manifest),
        "--report-dir",
        str(run_dir),
        "--job-timeout",
        "3",
        "--retries",
        "1",
        *FLAGS,
    ]
    code, out, err, _took = run_bounded(args, env_for(hostile, **extra), bound_s=90)
    assert_clean(code, out, err, run_dir)
    report = pl.read_parquet(run_dir / "report.parquet")
    assert report.height == 5 and set(report["outcome"]) == {expected}, (report["outcome"].to_list(), err)
    if expected == "interrupted":
        assert code == 3 and "pages without end" in out
    else:
        assert code == 1


def test_a_malformed_profile_is_an_error_not_a_traceback(tmp_path, hostile):
    hostile.mode = "profile_id_object"
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,profile\nhttps://cdn.example.com/1.mp4,100\n")
    code, out, err, _ = run_bounded(["validate", str(manifest)], env_for(hostile))
    assert_clean(code, out, err)
    assert code == 3 and "malformed jobprofile" in err and "job_profiles/100" in err


def test_a_profiles_listing_without_end_stops_with_a_message(hostile):
    hostile.mode = "profiles_repeat"
    code, out, err, _ = run_bounded(["profiles"], env_for(hostile), bound_s=30)
    assert_clean(code, out, err)
    assert code == 3 and "pages without end" in err


def test_a_worker_that_fails_unexpectedly_ends_the_run_not_hangs_it(tmp_path, emulator_server, monkeypatch):
    """More rows queued than the queue holds, and one worker raises something that is not an API error."""
    import batch_ingest.submit as submit

    server = emulator_server(EmulatorConfig(**FAST))
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "source,profile\n" + "".join(f"https://cdn.example.com/{i}.mp4,100\n" for i in range(100))
    )
    original = submit.Submitter._create

    async def create(self, task, admitted):
        if task.row == 5:
            raise RuntimeError("injected: not an API error")
        return await original(self, task, admitted)

    monkeypatch.setattr(submit.Submitter, "_create", create)
    outcome: dict[str, Any] = {}

    from batch_ingest import resolve_settings
    from batch_ingest.runner import RunOptions, run_manifest

    settings = resolve_settings({"concurrency": 2, "rate": 0}, env=server.env())

    def run() -> None:  # in a thread of its own, so that a hang fails the test instead of hanging it
        outcome["result"] = run_manifest(manifest, settings, RunOptions(run_dir=tmp_path / "run"))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the run hung after a worker failed"
    assert outcome["result"].exit_code == 4
    assert "RuntimeError: injected" in (tmp_path / "run" / "error.log").read_text()
    report = pl.read_parquet(tmp_path / "run" / "report.parquet")
    assert report.height == 100  # every row reported; resume finishes the rest
    monkeypatch.setattr(submit.Submitter, "_create", original)
    result = run_cli(["resume", str(tmp_path / "run"), *FLAGS], server.env())
    assert result.exit_code == 0, result.output
    assert server.stats()["jobs_created"] == 100 and server.stats()["duplicate_sources"] == {}


def test_a_file_that_vanished_or_changed_ends_its_row_and_resume_finishes(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, static_token_ttl=0.5, latency=0.05))
    media = tmp_path / "media"
    media.mkdir()
    lines = ["source,profile,ref_id"]
    for i in range(12):
        (media / f"{i}.mp4").write_bytes(b"v" * (100 + i))
        lines.append(f"media/{i}.mp4,,f{i}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    env = process_env(server.env())
    code, out, err, _ = run_bounded(
        ["run", str(manifest), "--report-dir", str(run_dir), "--concurrency", "1", *FLAGS], env
    )
    assert code == 3, err  # the token expired: most rows are left
    left = (
        pl.read_parquet(run_dir / "report.parquet")
        .filter(pl.col("outcome") == "interrupted")["row"]
        .to_list()
    )
    assert len(left) >= 4
    gone, grown, folder, unreadable = (media / f"{r - 1}.mp4" for r in left[:4])
    gone.unlink()
    grown.write_bytes(b"v" * 5000)
    folder.unlink()
    folder.mkdir()
    unreadable.chmod(0)
    env.pop("SMARTSTREAM_TOKEN")
    env.update(SMARTSTREAM_EMAIL=server.config.email, SMARTSTREAM_PASSWORD=server.config.password)
    code, out, err, _ = run_bounded(["resume", str(run_dir), *FLAGS], env)
    assert_clean(code, out, err, run_dir)
    assert code == 1
    report = pl.read_parquet(run_dir / "report.parquet")
    broken = report.filter(pl.col("row").is_in(left[:4]))
    expect_unreadable = 4 if os.geteuid() != 0 else 3  # root reads a chmod 0 file anyway
    assert (broken["error_code"] == "SOURCE_UNREADABLE").sum() == expect_unreadable, broken.select(
        "row", "error_message"
    )
    assert (report.filter(~pl.col("row").is_in(left[:4]))["outcome"] == "succeeded").all()


def test_bad_local_state_exits_2_and_a_bug_exits_4_with_the_traceback_in_error_log(
    tmp_path, emulator_server, monkeypatch
):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 4)
    run_dir = tmp_path / "run"
    assert run_cli(["run", str(manifest), "--report-dir", str(run_dir), *FLAGS], server.env()).exit_code == 0
    # A journal that is not one.
    other = tmp_path / "other"
    other.mkdir()
    (other / "journal.sqlite").write_bytes(b"this is not a database" * 100)
    (other / "plan.parquet").write_bytes(b"")
    result = run_cli(["resume", str(other)], server.env())
    assert result.exit_code == 2 and "not a batch-ingest journal" in result.output
    # A NUL byte in a path.
    result = run_cli(["report", "bad\x00path"])
    assert result.exit_code == 2 and "NUL" in result.output
    # A bug: one line, exit 4, the traceback in the run folder's error.log, the report still written.
    import batch_ingest.poll as poll

    async def broken(self) -> None:
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(poll.Poller, "poll_once", broken)
    run2 = tmp_path / "run2"
    result = run_cli(["run", str(manifest), "--report-dir", str(run2), *FLAGS], env=server.env())
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output and f"details in {run2 / 'error.log'}" in result.output
    assert "ZeroDivisionError: injected" in (run2 / "error.log").read_text()
    assert (run2 / "report.parquet").exists()


def test_run_folder_and_files_are_private_and_secrets_never_stored(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    secret_url = "https://user:hunter2@cdn.example.com/a.mp4?X-Amz-Signature=deadbeefcafe&X-Amz-Credential=AKIAEXAMPLE&v=1"
    manifest = tmp_path / "m.csv"
    manifest.write_text(f'source,profile,ref_id,note,@cmd\n{secret_url},100,s1,=HYPERLINK("http://evil"),x\n')
    run_dir = tmp_path / "run"
    log = tmp_path / "events.log"
    env = process_env(server.env())
    env.update(SMARTSTREAM_EMAIL="ops@example.com", SMARTSTREAM_PASSWORD="pw-secret")
    old_umask = os.umask(0o022)  # a permissive umask: the files must still be private
    code, out, err, _ = run_bounded(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(run_dir),
            "--log-file",
            str(log),
            "--html",
            str(tmp_path / "r.html"),
            *FLAGS[:-1],
        ],
        env,
    )
    os.umask(old_umask)
    assert code == 0, err
    # The platform got the real URL; nothing we wrote or printed holds any part of the credential.
    assert [j.source_url for j in server.store.jobs.values()] == [secret_url]
    texts = [out, err]
    for path in [*run_dir.iterdir(), log, tmp_path / "r.html"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        texts.append(path.read_bytes().decode("utf-8", "replace"))
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    blob = "\n".join(texts)
    for secret in (
        "hunter2",
        "deadbeefcafe",
        "AKIAEXAMPLE",
        "ops@example.com",
        "pw-secret",
        server.config.token,
    ):
        assert secret not in blob, secret
    assert "REDACTED" in (run_dir / "report.csv").read_text()
    # A formula in a cell is defused in the CSV, kept as it is in Parquet.
    assert "'=HYPERLINK" in (run_dir / "report.csv").read_text()
    assert (run_dir / "report.csv").read_text().splitlines()[0].endswith(",note,'@cmd")
    assert pl.read_parquet(run_dir / "report.parquet")["note"][0].startswith("=HYPERLINK")
    # A resume in another process gets the real URL back from the manifest.
    # The email is private: not even its mask is stored (a masked value could not be used again).
    assert "email" not in json.loads((run_dir / "summary.json").read_text())["settings"]


def test_terminal_output_escapes_control_characters(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = tmp_path / "m.csv"
    manifest.write_text('source,profile\n"ftp://x/\x1b]0;pwned\x07\x1b[2J.mp4",100\n')
    result = run_cli(["validate", str(manifest)], server.env())
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\x07" not in result.output and "\\x1b" in result.output


def test_plain_http_to_another_host_needs_allow_http(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,profile\nhttps://cdn.example.com/1.mp4,100\n")
    env = {
        "SMARTSTREAM_API_URL": "http://api.example.com",
        "SMARTSTREAM_MERCHANT_ID": "m",
        "SMARTSTREAM_API_KEY": "k",
        "SMARTSTREAM_TOKEN": "t",
    }
    result = run_cli(["run", str(manifest)], env)
    assert result.exit_code == 2 and "--allow-http" in result.output
    result = run_cli(["run", "--help"])
    assert "show in `ps`" in result.output


def test_unwritable_html_is_refused_before_anything_is_sent(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 3)
    result = run_cli(
        ["run", str(manifest), "--html", str(tmp_path / "no" / "r.html"), *FLAGS], env=server.env()
    )
    assert result.exit_code == 2 and "does not exist" in result.output
    assert server.stats()["requests_total"] == 0
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = run_cli(["run", str(manifest), "--report-dir", str(tmp_path / "full"), *FLAGS], env=server.env())
    assert result.exit_code == 2 and "not empty and holds no run" in result.output
    assert server.stats()["requests_total"] == 0


def test_retry_after_beyond_the_ceiling_is_capped(fake_clock):
    from batch_ingest.api.ratelimit import RETRY_AFTER_CEILING_S, RateLimiter

    limiter = RateLimiter(50, clock=fake_clock, sleep=fake_clock.sleep)
    assert limiter.on_rate_limited(999_999_999.0) == RETRY_AFTER_CEILING_S


def test_validate_is_linear_in_columns(tmp_path):
    """10,000 extra columns: every one carried, none lost (the timing is in bench/)."""
    names = [f"c{i}" for i in range(10_000)]
    manifest = tmp_path / "wide.csv"
    manifest.write_text(
        "source,profile,"
        + ",".join(names)
        + "\nhttps://cdn.example.com/1.mp4,100,"
        + ",".join("x" * 10_000)
        + "\n"
    )
    result = run_cli(["validate", str(manifest), "--json"])
    assert result.exit_code == 0, result.output[-500:]
    assert "c0, c1, c2" in result.output and "and 9980 more" in result.output
    from batch_ingest.plan import plan_manifest

    assert plan_manifest(manifest).frame.columns[-10_000:] == names


def test_resume_reads_urls_with_credentials_again_from_the_manifest(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, static_token_ttl=1.0, latency=0.05))
    rows = [f"https://cdn.example.com/{i}.mp4?sig=s3cr3t{i}x&v=1" for i in range(40)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,profile\n" + "".join(f"{u},100\n" for u in rows))
    run_dir = tmp_path / "run"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--concurrency", "1", *FLAGS],
        env=server.env(),
    )
    assert result.exit_code == 3, result.output  # the static token expired mid-run
    env = process_env(server.env())
    env.pop("SMARTSTREAM_TOKEN")
    env.update(SMARTSTREAM_EMAIL=server.config.email, SMARTSTREAM_PASSWORD=server.config.password)
    # Meanwhile one row's URL changed in the manifest (another object): that row cannot be sent, the
    # others are. Another row's URL was signed anew (the same object): the new signature is used.
    report = pl.read_parquet(run_dir / "report.parquet")
    left = report.filter(pl.col("outcome") == "interrupted")["row"].to_list()
    changed_row, resigned_row = left[-1], left[-2]
    text = manifest.read_text()
    text = text.replace(f"/{changed_row - 1}.mp4?", "/elsewhere.mp4?")
    text = text.replace(f"s3cr3t{resigned_row - 1}x&", "fr3sh&")
    manifest.write_text(text)
    code, out, err, _ = run_bounded(["resume", str(run_dir), *FLAGS], env)
    assert_clean(code, out, err, run_dir)
    report = pl.read_parquet(run_dir / "report.parquet")
    assert report.filter(pl.col("row") == changed_row)["error_code"].item() == "SOURCE_UNREADABLE"
    assert (report.filter(pl.col("row") != changed_row)["outcome"] == "succeeded").all()
    expected = [u for i, u in enumerate(rows) if i != changed_row - 1]
    expected = [u.replace(f"s3cr3t{resigned_row - 1}x&", "fr3sh&") for u in expected]
    assert sorted(j.source_url for j in server.store.jobs.values()) == sorted(expected)
    for path in run_dir.iterdir():
        text = path.read_bytes().decode("utf-8", "replace")
        assert "s3cr3t" not in text and "fr3sh" not in text, path


def test_disk_full_while_writing_the_report_exits_2_naming_the_fix(tmp_path, emulator_server, monkeypatch):
    import errno

    import batch_ingest.rundir as rundir

    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 3)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "report.parquet"))

    monkeypatch.setattr(rundir, "write_report_in_chunks", full)
    result = run_cli(["run", str(manifest), "--report-dir", str(tmp_path / "run"), *FLAGS], env=server.env())
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.output and "resume" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("mode", "expected_code", "says"), [("list_401", 3, "authentication failed"), ("ref_403", 1, "")]
)
def test_skip_existing_look_ups_that_fail_end_as_documented(tmp_path, hostile, mode, expected_code, says):
    hostile.mode = mode
    manifest = tmp_path / "m.csv"
    # --skip-existing lists every job once (list_401: refused, the run stops), or, on a big account,
    # looks each ref_id up (ref_403: refused, so the rows cannot be sent safely and wait for a later run).
    rows = 5
    manifest.write_text(
        "source,profile,ref_id\n"
        + "".join(f"https://cdn.example.com/{i}.mp4,100,r{i}\n" for i in range(rows))
    )
    run_dir = tmp_path / "run"
    code, out, err, _ = run_bounded(
        ["run", str(manifest), "--skip-existing", "--report-dir", str(run_dir), *FLAGS], env_for(hostile)
    )
    assert_clean(code, out, err, run_dir)
    assert code == expected_code, out + err
    assert says in (out + err).lower()
    assert len(hostile.store.jobs) == 0  # nothing sent without knowing whether it exists


def test_small_hostile_inputs_are_config_errors_or_ignored(tmp_path, emulator_server):
    from batch_ingest.api.auth import expiration_epoch
    from batch_ingest.api.ratelimit import parse_retry_after

    assert expiration_epoch(1_900_000_000) is None  # type: ignore[arg-type]
    assert parse_retry_after("Mon, 01 Jan 99999999999 00:00:00 GMT") is None
    for args, says in (
        (["--api-url", "http://[::1"], "not a valid URL"),
        (["--api-url", "https://user:pw@api.example.com"], "holds credentials"),
        (["--rate", "nan"], "finite"),
        (["--rate", "inf"], "finite"),
        (["--concurrency", "100000"], "at most 256"),
        (["--upload-concurrency", "1000"], "at most 64"),
        (["--api-key", "kéy"], "printable ASCII"),
    ):
        result = run_cli(["config", *args])
        assert result.exit_code == 2 and says in result.output, (args, result.output)
        assert "pw" not in result.output and "kéy" not in result.output
    # `jobs` shows a job's source URL redacted, as everything else does.
    server = emulator_server(EmulatorConfig(**FAST))
    secret = "https://u:hunter2@cdn.example.com/a.mp4?X-Amz-Signature=deadbeef"
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"source,profile,ref_id\n{secret},100,j1\n")
    assert run_cli(["run", str(manifest), *FLAGS], server.env()).exit_code == 0
    for args in (["jobs"], ["jobs", "ref:j1"], ["jobs", "--json"]):
        out = run_cli(args, server.env()).output
        assert "hunter2" not in out and "deadbeef" not in out and "REDACTED" in out, args
