"""Running from cron: where runs go, windows and caps on one night's work, --max-failures as a rate,
`--json` output, and what the help and the errors tell an operator."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest
from batch_ingest.api import Auth, SmartStreamClient
from batch_ingest.budget import FailureBudget
from batch_ingest.cli import main
from batch_ingest.emulator import EmulatorConfig
from batch_ingest.errors import AuthError, NotFoundError, UsageError
from batch_ingest.options import parse_until
from batch_ingest.settings import Secret
from batch_ingest.status import status_of
from click.testing import CliRunner

from .helpers import FAST, FLAGS, check_consistent, run_cli, summary_of, url_manifest, write_manifest

# Encodes long enough that a run is still polling when a test looks, short enough to finish quickly.
SLOWER = {**FAST, "encode_seconds": 0.3}


def _jobs_created(server) -> int:
    return sum(server.stats()["requests"].get("POST jobs", {}).values())


# -- --max-submissions and --until ------------------------------------------------------------------


def test_max_submissions_caps_a_night_and_the_next_nights_finish_without_a_duplicate(
    tmp_path, emulator_server
):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 8)
    run_dir = tmp_path / "run"
    first = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--max-submissions", "3", *FLAGS],
        env=server.env(),
    )
    assert first.exit_code == 0, first.output  # the rest wait for tomorrow: not a failure
    report = pl.read_parquet(run_dir / "report.parquet")
    assert (
        report["outcome"].to_list() == ["succeeded"] * 3 + ["interrupted"] * 5
    )  # the 3 were followed to their end
    window = summary_of(run_dir)["window"]
    assert window["max_submissions"] == 3 and window["submissions"] == 3
    assert window["closed_by"] == "--max-submissions 3 reached"
    assert _jobs_created(server) == 3

    second = run_cli(["resume", str(run_dir), "--max-submissions", "3", *FLAGS], env=server.env())
    assert second.exit_code == 0, second.output
    assert _jobs_created(server) == 6
    third = run_cli(["resume", str(run_dir), *FLAGS], env=server.env())  # no cap: the rest
    assert third.exit_code == 0, third.output
    assert "window" not in summary_of(run_dir)
    check_consistent(run_dir, server, 8)
    assert _jobs_created(server) == 8


def test_a_failure_within_the_window_still_fails_the_night(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = write_manifest(
        tmp_path,
        "source,profile\nhttps://gone.invalid/1.mp4,100\nhttps://cdn.example.com/2.mp4,100\n"
        "https://cdn.example.com/3.mp4,100\n",
    )
    result = run_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(tmp_path / "r"),
            "--max-submissions",
            "2",
            "--concurrency",
            "1",
            *FLAGS,
        ],
        env=server.env(),
    )
    assert result.exit_code == 1, result.output
    outcomes = pl.read_parquet(tmp_path / "r" / "report.parquet")["outcome"].to_list()
    assert outcomes == ["failed", "succeeded", "interrupted"]


def test_an_until_already_past_is_refused_before_anything(tmp_path, emulator_server):
    """A stale date left in a crontab would make every night an empty, green run: exit 2 instead."""
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 4)
    run_dir = tmp_path / "run"
    past = (datetime.now() - timedelta(minutes=5)).isoformat(timespec="seconds")
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--until", past, *FLAGS], env=server.env()
    )
    assert result.exit_code == 2 and "is already past" in result.output
    assert _jobs_created(server) == 0 and not run_dir.exists()


def test_until_stops_a_run_that_is_polling_as_a_graceful_stop(tmp_path, emulator_server, monkeypatch):
    """The window closes while jobs are encoding: the run ends without waiting for them, and a resume
    follows the same jobs (no second create)."""
    import asyncio
    import time

    from batch_ingest import engine

    server = emulator_server(EmulatorConfig(**{**FAST, "encode_seconds": 3600.0}))
    manifest = url_manifest(tmp_path, 3)
    run_dir = tmp_path / "run"

    seen: list = []

    async def window_closes_once_every_row_is_sent(until: float) -> None:
        # The deadline, an hour away, "arrives" once the three jobs exist: no waiting on the clock.
        while _jobs_created(server) < 3:
            await asyncio.sleep(0.01)
        seen.append(status_of(run_dir))  # what `status` in another terminal shows meanwhile

    monkeypatch.setattr(engine, "_wait_until", window_closes_once_every_row_is_sent)
    later = (datetime.now() + timedelta(hours=1)).isoformat(timespec="seconds")
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--until", later, *FLAGS], env=server.env()
    )
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(run_dir / "report.parquet")["outcome"].to_list() == ["interrupted"] * 3
    assert summary_of(run_dir)["window"]["closed_by"] == "--until reached"
    (running,) = seen
    assert (
        running.phase == "running" and "stops submitting at" in running.note and "(--until)" in running.note
    )
    assert running.as_json()["window"]["until"] is not None
    from batch_ingest.journal import Journal

    journal = Journal.open(run_dir / "journal.sqlite")
    try:
        assert not journal.meta().get("window_open")  # the window is closed: status stops saying so
    finally:
        journal.close()
    server.store.clock = lambda: time.time() + 7200  # the platform's night passes: the encodes are done
    again = run_cli(["resume", str(run_dir), *FLAGS], env=server.env())
    assert again.exit_code == 0, again.output
    check_consistent(run_dir, server, 3)
    assert _jobs_created(server) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("06:00", datetime(2026, 11, 29, 6, 0)),  # already past today: tomorrow
        ("22:30", datetime(2026, 11, 28, 22, 30)),
        ("2026-12-01T06:00", datetime(2026, 12, 1, 6, 0)),
    ],
)
def test_until_is_the_next_such_local_time_or_a_timestamp(text, expected):
    now = datetime(2026, 11, 28, 10, 0).astimezone()
    assert parse_until(text, now) == expected.astimezone().timestamp()


def test_until_with_an_offset_and_a_bad_value():
    assert (
        parse_until("2026-12-01T06:00+09:00") == datetime.fromisoformat("2026-11-30T21:00+00:00").timestamp()
    )
    with pytest.raises(UsageError, match="HH:MM"):
        parse_until("tomorrow")
    result = CliRunner().invoke(main, ["run", "m.csv", "--until", "25:99"])
    assert result.exit_code == 2 and "--until" in result.output


# -- --max-failures as a rate -------------------------------------------------------------------------


def test_failure_budget_parsing_and_text():
    def parsed(value: int | str) -> FailureBudget:
        budget = FailureBudget.parse(value)
        assert budget is not None
        return budget

    assert parsed("20").text() == "20" and parsed(3).count == 3
    assert (
        parsed("5%").text() == "5%" and parsed("5%/200").window == 200 and parsed("5%/200").text() == "5%/200"
    )
    assert FailureBudget.parse(None) is None
    for bad in ("x", "-1", "150%", "5%/3", "5%x"):
        with pytest.raises(UsageError, match="--max-failures"):
            FailureBudget.parse(bad)


def test_a_rate_budget_judges_the_recent_rows_only():
    budget = FailureBudget.parse("10%")
    assert budget is not None
    reasons = [budget.record(False) for _ in range(100)]
    reasons += [budget.record(True) for _ in range(10)]  # 10 of the last 100: at the limit, not over
    assert not any(reasons)
    assert budget.record(True) is not None  # the 11th: 11 of the last 100
    early = FailureBudget.parse("10%")
    assert early is not None
    assert [early.record(True) for _ in range(19)] == [None] * 19  # too few rows to judge
    assert early.record(True) is not None  # 20 rows ended, all failed


def test_max_failures_as_a_rate_stops_a_run_that_turns_bad(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    lines = ["source,profile"]
    lines += [f"https://cdn.example.com/{i}.mp4,100" for i in range(20)]
    lines += [f"https://gone.invalid/{i}.mp4,100" for i in range(40)]
    manifest = write_manifest(tmp_path, "\n".join(lines) + "\n")
    result = run_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(tmp_path / "r"),
            "--max-failures",
            "25%",
            "--concurrency",
            "1",
            "--max-in-flight",
            "1",
            *FLAGS,
        ],
        env=server.env(),
    )
    assert result.exit_code == 3, result.output
    summary = summary_of(tmp_path / "r")
    assert summary["abort_reason"].startswith("--max-failures 25%: ")
    # One job in the air at a time: 6 of 26 is 23%, the 7th failure (7 of 27, 26%) stops the run.
    assert summary["outcomes"]["succeeded"] == 20 and summary["outcomes"]["failed"] == 7
    assert _jobs_created(server) == 27


def test_max_failures_help_says_what_it_counts():
    result = CliRunner().invoke(main, ["run", "--help"], terminal_width=200)
    text = " ".join(result.output.split())
    assert (
        "A refused create counts at once, an encode failure or timeout when the platform reports it" in text
    )


# -- where runs go ------------------------------------------------------------------------------------


def test_runs_go_under_the_reports_root_and_a_retry_goes_beside_its_run(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = write_manifest(
        tmp_path, "source,profile\nhttps://cdn.example.com/1.mp4,100\nhttps://gone.invalid/2.mp4,100\n"
    )
    root = tmp_path / "nightly"
    env = {**server.env(), "SMARTSTREAM_REPORTS_ROOT": str(root)}
    result = run_cli(["run", str(manifest), *FLAGS], env=env)
    assert result.exit_code == 1
    (first,) = [p for p in root.iterdir() if p.is_dir()]
    assert Path(result.output.strip().splitlines()[-1]) == first / "report.parquet"
    retried = run_cli(
        ["retry", str(first), *FLAGS[:-1]], env={**server.env(), "SMARTSTREAM_REPORTS_ROOT": "elsewhere"}
    )
    assert retried.exit_code == 1
    second = Path(retried.output.strip().splitlines()[-1]).parent
    assert second.parent == root and second != first  # beside the run it retries
    assert f"batch-ingest report {first} {second}" in retried.output
    assert not (tmp_path / "elsewhere").exists()


def test_report_dir_still_names_the_folder_exactly(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 1)
    result = run_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(tmp_path / "exact"),
            "--reports-root",
            str(tmp_path / "root"),
            *FLAGS,
        ],
        env=server.env(),
    )
    assert result.exit_code == 0 and (tmp_path / "exact" / "report.parquet").exists()
    assert not (tmp_path / "root").exists()


# -- run --json and resume's plan line ----------------------------------------------------------------


def test_run_json_prints_the_summary_only(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 2)
    result = CliRunner().invoke(
        main,
        ["run", str(manifest), "--report-dir", str(tmp_path / "r"), "--json", *FLAGS[:-1]],
        env=server.env(),
    )
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary == summary_of(tmp_path / "r")
    assert summary["outcomes"]["succeeded"] == 2


def test_resume_says_what_is_left_not_the_whole_manifest(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 6)
    run_dir = tmp_path / "run"
    run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--max-submissions", "4", *FLAGS],
        env=server.env(),
    )
    result = CliRunner().invoke(main, ["resume", str(run_dir), *FLAGS[:-1]], env=server.env())
    assert result.exit_code == 0
    assert f"resuming {run_dir}: 2 of 6 rows left: 2 to submit" in " ".join(result.stderr.split())


# -- help and errors ----------------------------------------------------------------------------------


def test_the_top_level_help_lists_every_command_whole():
    result = CliRunner().invoke(main, ["--help"], terminal_width=100)
    text = " ".join(result.output.split())
    for name, command in main.commands.items():
        assert name in text
        assert " ".join(command.get_short_help_str(limit=1000).split()) in text, name
    assert "..." not in text.split("Commands:")[1]


def test_an_api_url_without_a_scheme_is_a_configuration_error_with_the_fix(tmp_path):
    manifest = url_manifest(tmp_path, 1)
    env = {
        "SMARTSTREAM_API_URL": "ovp-s-api.smartstream.ne.jp",
        "SMARTSTREAM_MERCHANT_ID": "m",
        "SMARTSTREAM_API_KEY": "k",
        "SMARTSTREAM_TOKEN": "t",
    }
    result = run_cli(["run", str(manifest)], env=env)
    assert result.exit_code == 2
    assert "write it as https://ovp-s-api.smartstream.ne.jp" in result.output


def _client(handler, base: str = "https://api.example.com", **auth) -> SmartStreamClient:
    from batch_ingest.api.ratelimit import RateLimiter

    return SmartStreamClient(
        base_url=base,
        merchant_id="m1",
        auth=Auth(Secret("key"), **auth),
        limiter=RateLimiter(0),
        transport=httpx.MockTransport(handler),
        get_retries=0,
    )


@pytest.mark.anyio
async def test_an_error_names_the_whole_url_so_a_doubled_v1_shows():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(404, json={"code": "NOT_FOUND", "message": "Not found"})

    async with _client(handler, base="https://api.example.com/v1", token=Secret("t")) as client:
        with pytest.raises(NotFoundError) as caught:
            await client.get_job("j1")
    assert "https://api.example.com/v1/v1/merchants/m1/jobs/j1" in str(caught.value)
    assert seen[0].startswith("https://api.example.com/v1/v1/merchants/m1/jobs/j1")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("auth", "hint"),
    [
        ({"token": Secret("t")}, "check the token (SMARTSTREAM_TOKEN: it may have expired"),
        ({"email": "a@b.c", "password": Secret("p")}, "the auth-token endpoint refused the login"),
    ],
)
async def test_a_401_says_what_to_check(auth, hint):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"code": "UNAUTHORIZED", "message": "Authentication failed"})

    async with _client(handler, **auth) as client:
        with pytest.raises(AuthError) as caught:
            await client.get_job("j1")
    text = str(caught.value)
    assert hint in text and "SMARTSTREAM_MERCHANT_ID" in text and "Secret" not in text
    assert text.count(hint) == 1


@pytest.mark.anyio
async def test_a_401_to_a_fresh_token_points_at_the_key_and_merchant():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/auth-token/"):
            return httpx.Response(200, json={"token": "fresh", "expiration": "2099-01-01T00:00:00.000Z"})
        return httpx.Response(401, json={"code": "UNAUTHORIZED", "message": "Authentication failed"})

    async with _client(handler, email="a@b.c", password=Secret("p")) as client:
        with pytest.raises(AuthError, match="a token just obtained with the email and password was refused"):
            await client.get_job("j1")


# -- --notify and --metrics-file from the commands ------------------------------------------------------


@pytest.fixture
def monitor():
    """docs/notify_receiver.py on a free loopback port in a thread: (its URL, the payloads it accepted)."""
    import importlib.util
    import threading

    path = Path(__file__).resolve().parent.parent / "docs" / "notify_receiver.py"
    spec = importlib.util.spec_from_file_location("notify_receiver_ops", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    events: list[dict] = []
    server = module.make_server("127.0.0.1", 0, "s3cret-for-tests", on_event=events.append)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook/t0ken", events
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_run_tells_its_monitor_and_writes_its_metrics_and_a_resume_does_too(
    tmp_path, emulator_server, monitor
):
    url, events = monitor
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = write_manifest(
        tmp_path,
        "source,profile\nhttps://gone.invalid/1.mp4,100\nhttps://cdn.example.com/2.mp4,100\n"
        "https://cdn.example.com/3.mp4,100\n",
    )
    metrics = tmp_path / "batch.prom"
    env = {**server.env(), "SMARTSTREAM_NOTIFY": url, "SMARTSTREAM_NOTIFY_SECRET": "s3cret-for-tests"}
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(run_dir),
            "--metrics-file",
            str(metrics),
            "--max-submissions",
            "2",
            "--concurrency",
            "1",
            *FLAGS,
        ],
        env=env,
    )
    assert result.exit_code == 1, result.output
    assert len(events) == 1 and events[0]["exit_code"] == 1 and events[0]["command"] == "run"
    assert events[0]["outcomes"]["failed"] == 1 and events[0]["run_id"] == summary_of(run_dir)["run_id"]
    assert events[0]["window"]["closed_by"] == "--max-submissions 2 reached"
    text = metrics.read_text()
    assert 'batch_ingest_rows{outcome="failed"} 1' in text and "batch_ingest_exit_code 1" in text
    # The notify URL (its path holds a token) is in no file of the run folder.
    for file in run_dir.iterdir():
        if file.is_file():
            assert "t0ken" not in file.read_bytes().decode("utf-8", "replace"), file
    again = run_cli(["resume", str(run_dir), "--metrics-file", str(metrics), *FLAGS], env=env)
    assert again.exit_code == 1  # row 1's failure stands; row 3 succeeded now
    assert [e["command"] for e in events] == ["run", "resume"]
    assert events[1]["outcomes"]["succeeded"] == 2 and events[1]["outcomes"]["interrupted"] == 0
    assert 'batch_ingest_rows{outcome="succeeded"} 2' in metrics.read_text()


def test_a_command_that_fails_before_its_run_tells_the_monitor(tmp_path, monitor):
    url, events = monitor
    env = {
        "SMARTSTREAM_NOTIFY": url,
        "SMARTSTREAM_NOTIFY_SECRET": "s3cret-for-tests",
        "SMARTSTREAM_MERCHANT_ID": "m",
        "SMARTSTREAM_API_KEY": "k",
        "SMARTSTREAM_TOKEN": "t",
        "SMARTSTREAM_API_URL": "http://127.0.0.1:9",
    }
    result = run_cli(
        ["run", str(tmp_path / "missing.csv"), "--metrics-file", str(tmp_path / "m.prom")], env=env
    )
    assert result.exit_code == 2
    assert len(events) == 1 and events[0]["exit_code"] == 2 and "missing.csv" in events[0]["error"]
    assert "batch_ingest_exit_code 2" in (tmp_path / "m.prom").read_text()


def test_a_monitor_that_refuses_the_notification_is_a_warning_not_a_failure(
    tmp_path, emulator_server, monitor
):
    url, events = monitor
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 1)
    env = {**server.env(), "SMARTSTREAM_NOTIFY": url, "SMARTSTREAM_NOTIFY_SECRET": "not-the-monitors"}
    result = CliRunner().invoke(
        main,
        ["run", str(manifest), "--report-dir", str(tmp_path / "r"), *FLAGS],
        env=env,
        catch_exceptions=False,
    )
    assert result.exit_code == 0  # the run's own code: the monitor's 401 does not change it
    assert events == []
    (warning,) = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warning.startswith("batch-ingest: warning: --notify http://127.0.0.1:") and "HTTP 401" in warning
    assert "t0ken" not in warning and "not-the-monitors" not in warning  # the URL's path, the secret


# -- a manifest from a spreadsheet, on every pass ----------------------------------------------------


def test_a_semicolon_cp1252_manifest_runs_and_its_resume_reads_it_the_same_way(tmp_path, emulator_server):
    """The resume re-reads the manifest for the real URLs of rows stored redacted (a token in the URL):
    with the run's own --delimiter and --encoding, or it could not find them."""
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = tmp_path / "export.csv"
    manifest.write_bytes(
        "source;profile;name\n"
        "https://cdn.example.com/caf\u00e9.mp4?token=s3cr3t;100;Caf\u00e9\n"
        "https://cdn.example.com/b.mp4?token=s3cr3t;100;Cr\u00e8me\n".encode("cp1252")
    )
    run_dir = tmp_path / "run"
    plain = run_cli(["validate", str(manifest)], env=server.env())
    assert plain.exit_code == 2 and "--encoding" in plain.output and "line 2" in plain.output
    first = run_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(run_dir),
            "--encoding",
            "cp1252",
            "--max-submissions",
            "1",
            *FLAGS,
        ],
        env=server.env(),
    )
    assert first.exit_code == 0, first.output
    again = run_cli(["resume", str(run_dir), *FLAGS], env=server.env())
    assert again.exit_code == 0, again.output
    check_consistent(run_dir, server, 2)
    assert sorted(j["name"] for j in server.jobs()) == ["Caf\u00e9", "Cr\u00e8me"]  # read as cp1252
    assert sorted(j["source_url"] for j in server.jobs()) == [
        "https://cdn.example.com/b.mp4?token=s3cr3t",
        "https://cdn.example.com/caf\u00e9.mp4?token=s3cr3t",
    ]


def test_bad_delimiter_and_encoding_options_exit_2_naming_them(tmp_path):
    manifest = url_manifest(tmp_path, 1)
    for args, option in ((["--delimiter", "ab"], "--delimiter"), (["--encoding", "klingon"], "--encoding")):
        result = run_cli(["validate", str(manifest), *args])
        assert result.exit_code == 2 and option in result.output, result.output


def test_a_resume_of_a_finished_run_tells_nobody_again(tmp_path, emulator_server, monitor):
    url, events = monitor
    server = emulator_server(EmulatorConfig(**FAST))
    env = {**server.env(), "SMARTSTREAM_NOTIFY": url, "SMARTSTREAM_NOTIFY_SECRET": "s3cret-for-tests"}
    run_dir, metrics = tmp_path / "run", tmp_path / "m.prom"
    assert (
        run_cli(
            ["run", str(url_manifest(tmp_path, 1)), "--report-dir", str(run_dir), *FLAGS], env=env
        ).exit_code
        == 0
    )
    assert len(events) == 1
    metrics.write_text("# kept\n")
    idle = run_cli(["resume", str(run_dir), "--metrics-file", str(metrics), *FLAGS], env=env)
    assert idle.exit_code == 0 and len(events) == 1  # nothing ran: nothing new to tell
    assert metrics.read_text() == "# kept\n"


def test_a_setting_that_does_not_resolve_still_reaches_the_monitor(tmp_path, monitor):
    url, events = monitor
    env = {
        "SMARTSTREAM_NOTIFY": url,
        "SMARTSTREAM_NOTIFY_SECRET": "s3cret-for-tests",
        "SMARTSTREAM_RATE": "abc",
    }
    result = run_cli(["run", str(url_manifest(tmp_path, 1))], env=env)
    assert result.exit_code == 2 and "SMARTSTREAM_RATE" in result.output
    assert len(events) == 1 and events[0]["exit_code"] == 2 and "SMARTSTREAM_RATE" in events[0]["error"]


def test_a_rate_budget_on_a_second_pass_counts_old_successes_as_well_as_old_failures(
    tmp_path, emulator_server
):
    """--skip-existing=any settles rows by the jobs a first run left: a quarter failed. A rate counting
    only their failures would stop the second pass at once; counting every row, it goes on."""
    server = emulator_server(EmulatorConfig(**FAST))
    lines = ["source,profile,ref_id"] + [
        f"https://{'gone.invalid' if i % 4 == 0 else 'cdn.example.com'}/{i}.mp4,100,r-{i}" for i in range(40)
    ]
    manifest = write_manifest(tmp_path, "\n".join(lines) + "\n")
    first = run_cli(["run", str(manifest), "--report-dir", str(tmp_path / "a"), *FLAGS], env=server.env())
    assert first.exit_code == 1
    manifest.write_text("\n".join([*lines, "https://cdn.example.com/new.mp4,100,r-new"]) + "\n")
    second = run_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(tmp_path / "b"),
            "--skip-existing=any",
            "--max-failures",
            "50%",
            *FLAGS,
        ],
        env=server.env(),
    )
    assert second.exit_code == 1, second.output  # the old failures are reported; nothing aborted
    summary = summary_of(tmp_path / "b")
    assert summary["abort_reason"] is None and summary["outcomes"]["succeeded"] == 1
    assert summary["outcomes"]["skipped"] == 30 and summary["outcomes"]["failed"] == 10


def test_a_shards_retry_goes_beside_the_run_root_not_into_it(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    lines = ["source,profile,ref_id"] + [
        f"https://{'gone.invalid' if i % 2 else 'cdn.example.com'}/{i}.mp4,100,r-{i}" for i in range(6)
    ]
    manifest = write_manifest(tmp_path, "\n".join(lines) + "\n")
    root = tmp_path / "mig"
    assert (
        run_cli(
            ["run", str(manifest), "--report-dir", str(root), "--shard", "0/2", *FLAGS], env=server.env()
        ).exit_code
        == 1
    )
    retried = run_cli(["retry", str(root / "shard-0-of-2"), *FLAGS], env=server.env())
    assert retried.exit_code == 1, retried.output
    new = Path(retried.output.strip().splitlines()[-1]).parent
    assert new.parent == tmp_path and [p.name for p in root.iterdir() if p.is_dir()] == ["shard-0-of-2"]


def test_an_api_url_without_a_scheme_but_with_a_port_gets_the_fix_too():
    from batch_ingest.errors import ConfigError
    from batch_ingest.settings import resolve_settings

    for value in ("localhost:8080", "api.example.com:443/v1", "api.example.com"):
        with pytest.raises(ConfigError, match="has no scheme"):
            resolve_settings(env={"SMARTSTREAM_API_URL": value})


def test_a_rate_is_judged_when_the_sample_fills_not_only_at_the_next_failure():
    budget = FailureBudget.parse("10%")
    assert budget is not None
    reasons = [budget.record(i < 3) for i in range(19)]  # 3 early failures, then successes
    assert not any(reasons)
    assert budget.record(False) is not None  # the 20th row: 3 of 20 (15%) is over 10%


def test_retry_warns_when_it_resends_rows_a_retry_cannot_fix(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, storage_missing_for=("no-storage",)))
    manifest = write_manifest(
        tmp_path,
        "source,profile\nhttps://cdn.example.com/no-storage/1.mp4,100\nhttps://cdn.example.com/2.mp4,100\n",
    )
    first = run_cli(["run", str(manifest), "--report-dir", str(tmp_path / "a"), *FLAGS], env=server.env())
    assert first.exit_code == 1
    retried = CliRunner().invoke(main, ["retry", str(tmp_path / "a"), *FLAGS[:-1]], env=server.env())
    assert retried.exit_code == 1
    text = " ".join(retried.stderr.split())
    assert "warning: 1 row(s) failed with STORAGE_NOT_FOUND (rows 1): sent again as they are" in text


def test_a_metrics_file_in_a_missing_folder_is_news_for_the_monitor(tmp_path, monitor):
    url, events = monitor
    env = {"SMARTSTREAM_NOTIFY": url, "SMARTSTREAM_NOTIFY_SECRET": "s3cret-for-tests"}
    result = run_cli(
        ["run", str(url_manifest(tmp_path, 1)), "--metrics-file", str(tmp_path / "no" / "m.prom")], env
    )
    assert result.exit_code == 2 and "--metrics-file" in result.output
    assert len(events) == 1 and "--metrics-file" in events[0]["error"]


def test_collect_prints_the_merged_summary_as_json_and_writes_metrics(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 4)
    root = tmp_path / "root"
    for index in range(2):
        shard = run_cli(
            ["run", str(manifest), "--report-dir", str(root), "--shard", f"{index}/2", "--no-wait", *FLAGS],
            env=server.env(),
        )
        assert shard.exit_code == 0, shard.output
    metrics = tmp_path / "collect.prom"
    result = CliRunner().invoke(
        main, ["collect", str(root), "--json", "--metrics-file", str(metrics), *FLAGS[:-1]], env=server.env()
    )
    assert result.exit_code == 0, result.output
    merged = json.loads(result.stdout)
    assert merged["outcomes"]["succeeded"] == 4 and merged["exit_code"] == 0
    assert 'batch_ingest_rows{outcome="succeeded"} 4' in metrics.read_text()


def test_a_typo_in_the_config_file_does_not_silence_its_monitor(tmp_path, monitor, monkeypatch):
    url, events = monitor
    (tmp_path / "cron.toml").write_text(f'notify = "{url}"\nratee = 5\n')
    env = {"SMARTSTREAM_NOTIFY_SECRET": "s3cret-for-tests"}
    result = run_cli(["run", str(url_manifest(tmp_path, 1)), "--config", str(tmp_path / "cron.toml")], env)
    assert result.exit_code == 2 and "ratee" in result.output
    assert len(events) == 1 and "ratee" in events[0]["error"] and events[0]["exit_code"] == 2
