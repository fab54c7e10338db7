"""`--rate-store`: processes of one account share its budget through a real Redis, end to end.

The emulator enforces the account's rate as a token bucket of capacity 5 (refilled at R per
minute; 5 is common on platforms): a platform that answers two processes each pacing itself at R with 429s at once. Sharing
the store, the two together pace at R: no 429. Without it, the same two runs meet 429s: the test
can fail.
"""

from __future__ import annotations

import json
import time

import pytest
from batch_ingest.emulator import EmulatorConfig

from .helpers import FAST, run_cli, spawn_cli, url_manifest
from .redis_server import RedisServer, free_port

RATE = 300  # per minute: 5 a second for the account, so two runs of 12 rows take a few seconds


def _flags(rate: int = RATE) -> list[str]:
    return ["--poll-min-interval", "0.2", "--poll-max-interval", "0.5", "--rate", str(rate), "--retries", "8"]


def _bucket_emulator(emulator_server):
    return emulator_server(EmulatorConfig(**{**FAST, "rate_limit": RATE, "bucket_capacity": 5}))


def _two_runs_at_once(tmp_path, server, extra: list[str]) -> list[tuple[int, str]]:
    processes = []
    for name in ("cron", "migration"):
        manifest = url_manifest(tmp_path, 12, name=f"{name}.csv", host=f"{name}.example.com")
        processes.append(
            spawn_cli(
                ["run", str(manifest), "--report-dir", str(tmp_path / name), *_flags(), *extra], server.env()
            )
        )
    out = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        out.append((process.returncode, stdout + stderr))
    return out


def _rate_limited(server) -> int:
    return int(server.store.stats()["rate_limited"])


def test_two_runs_sharing_a_store_stay_inside_the_account_budget(tmp_path, emulator_server, redis_server):
    server = _bucket_emulator(emulator_server)
    results = _two_runs_at_once(tmp_path, server, ["--rate-store", redis_server.url])
    for code, output in results:
        assert code == 0, output
        assert "shared through the rate store" in output
    assert len(server.jobs()) == 24
    assert _rate_limited(server) == 0
    assert server.store.stats()["max_requests_per_minute"] <= RATE
    settings = json.loads((tmp_path / "cron" / "summary.json").read_text())["settings"]
    assert settings["rate_store"] == redis_server.url


def test_without_the_store_the_same_two_runs_meet_429s(tmp_path, emulator_server):
    server = _bucket_emulator(emulator_server)
    results = _two_runs_at_once(tmp_path, server, [])
    for code, output in results:
        assert code == 0, output  # they recover, but the account saw more than its rate
    assert len(server.jobs()) == 24
    assert _rate_limited(server) > 0


def test_shards_on_a_store_take_the_whole_rate_together(tmp_path, emulator_server, redis_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 6)
    result = run_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(tmp_path / "root"),
            "--shard",
            "0/2",
            "--rate-store",
            redis_server.url,
            *_flags(600),
        ],
        server.env(),
    )
    assert result.exit_code == 0, result.output
    assert "--rate 600 is shared with every process on the rate store" in result.output
    assert "1/2 of --rate" not in result.output


def test_a_store_that_does_not_answer_stops_the_run_before_it_starts(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 3)
    store = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(tmp_path / "r"), "--rate-store", store, *_flags()],
        server.env(),
    )
    assert result.exit_code == 75, result.output  # try again later: nothing was sent
    assert "the rate store redis://" in result.output and "does not answer" in result.output
    assert "hunter2-secret" not in result.output
    assert not (tmp_path / "r").exists()  # nothing was created: no run, no job
    assert server.jobs() == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://127.0.0.1:6379", "must name a Redis"),
        ("valkey://127.0.0.1:6379/0", "must name a Redis"),
        ("redis+unix:///tmp/redis.sock", "must name a Redis"),
        ("redis://127.0.0.1:6379/0?socket_timeout=abc", "takes no ?options"),
        ("redis://127.0.0.1:6379/zero", "the database after the host is a number"),
        ("redis://127.0.0.1:99999/0", "not a valid URL"),
    ],
)
def test_a_bad_store_url_is_a_usage_error_naming_the_fix(tmp_path, value, message):
    # `run` (validate takes no --rate-store: it sends no batch); the URL is refused before any request.
    result = run_cli(["run", str(url_manifest(tmp_path, 1)), "--rate-store", value])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_a_store_lost_mid_run_is_said_and_the_run_goes_on_once_it_is_back(
    tmp_path, emulator_server, redis_server: RedisServer
):
    """The store dies while the run sends: the run says so and how it goes on (alone, after the others
    could notice); stopped there and resumed once the store is back, it finishes every row once."""
    import signal

    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 10)
    run_dir = tmp_path / "r"
    process = spawn_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--rate-store", redis_server.url, *_flags(120)],
        server.env(),
    )
    # Kill the store once the run has sent its first creates (a server event, not a clock).
    deadline = time.monotonic() + 60
    while len(server.jobs()) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(server.jobs()) < 10, "the run ended before the store could be lost: slow it down"
    redis_server.stop()
    assert process.stderr is not None
    said = ""
    for line in process.stderr:  # until it says what it does about it
        said += line
        if "stopped answering" in line:
            break
    assert "going on alone at 120 requests per minute" in said, said
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 130
    redis_server.start()
    resumed = run_cli(["resume", str(run_dir), "--rate-store", redis_server.url, *_flags(120)], server.env())
    assert resumed.exit_code == 0, resumed.output
    assert len(server.jobs()) == 10 and server.store.stats()["duplicate_ref_ids"] == {}


def test_look_ups_do_not_need_the_store(tmp_path, emulator_server):
    """validate, jobs and profiles pace themselves: a store that is down does not stop them."""
    server = emulator_server(EmulatorConfig(**FAST))
    dead = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["validate", str(url_manifest(tmp_path, 2))], ["jobs"], ["profiles"]):
        # Set for every command through the environment (or the config file), as cron has it; these
        # commands do not even offer the flag.
        result = run_cli(args, {**server.env(), "SMARTSTREAM_RATE_STORE": dead})
        assert result.exit_code == 0, (args, result.output)
        assert run_cli([*args, "--rate-store", dead], server.env()).exit_code == 2


def test_a_resume_without_the_store_a_run_shared_says_so(
    tmp_path, emulator_server, redis_server: RedisServer
):
    server = emulator_server(EmulatorConfig(**FAST))
    store = redis_server.url.replace("redis://", "redis://:pw-secret@")
    redis_server.command("CONFIG", "SET", "requirepass", "pw-secret")
    run_dir = tmp_path / "r"
    first = run_cli(
        [
            "run",
            str(url_manifest(tmp_path, 3)),
            "--report-dir",
            str(run_dir),
            "--no-wait",
            "--rate-store",
            store,
            *_flags(),
        ],
        server.env(),
    )
    assert first.exit_code == 0, first.output
    for path in run_dir.rglob("*"):  # summary, journal (SQLite), reports, plan: nowhere
        assert not path.is_file() or b"pw-secret" not in path.read_bytes(), path
    assert "pw-secret" not in first.output
    resumed = run_cli(["resume", str(run_dir), *_flags()], server.env())
    assert resumed.exit_code == 0, resumed.output
    assert "this run shared --rate through a rate store, and none is set now" in resumed.output
