"""Around the batch: profiles, jobs, config, the config file's precedence, the event log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from batch_ingest.emulator import EmulatorConfig
from batch_ingest.errors import ConfigError
from batch_ingest.settings import load_config_file, resolve_settings

from .helpers import FAST, FLAGS, mixed_manifest, process_env, run_cli


def test_profiles_and_jobs(emulator_server, tmp_path):
    server = emulator_server(EmulatorConfig(**FAST))
    result = run_cli(["profiles", "--json"], server.env())
    assert result.exit_code == 0
    profiles = [json.loads(line) for line in result.output.splitlines()]
    assert [(p["id"], p["ref_id"]) for p in profiles] == [
        ("100", "default"),
        ("101", "hd"),
        ("102", "sd"),
        ("103", "audio"),
    ]

    manifest = mixed_manifest(tmp_path, 5)
    assert run_cli(["run", str(manifest), *FLAGS], server.env()).exit_code == 0
    newest = json.loads(run_cli(["jobs", "--limit", "3", "--json"], server.env()).output)
    assert len(newest) == 3
    one = json.loads(run_cli(["jobs", "ref:ref-0", "--json"], server.env()).output)
    assert one["ref_id"] == "ref-0" and one["encode_status"] == 2
    text = run_cli(["jobs", one["id"]], server.env()).output
    assert f"id: {one['id']}" in text
    listing = run_cli(["jobs", "--limit", "1"], server.env()).output
    assert "status 2 (succeeded)" in listing
    missing = run_cli(["jobs", "ref:nope"], server.env())  # a look-up that finds nothing: not an abort
    assert missing.exit_code == 1 and "no job ref:nope on the platform" in missing.output


def test_precedence_flag_env_file_default(tmp_path, monkeypatch):
    (tmp_path / "batch-ingest.toml").write_text(
        'merchant_id = "from-file"\nrate = 10\nconcurrency = 3\nencode_status_map = { succeeded = [7], failed = [8] }\n'
    )
    config, path = load_config_file(None)
    assert path == Path("batch-ingest.toml")
    env = {"SMARTSTREAM_RATE": "20", "SMARTSTREAM_MERCHANT_ID": "from-env"}
    s = resolve_settings({"merchant_id": "from-flag"}, env=env, config=config)
    assert s.merchant_id == "from-flag"  # flag beats environment
    assert s.rate == 20  # environment beats file
    assert s.concurrency == 3  # file beats default
    assert s.retries == 5  # default
    assert s.encode_status_map.classify(7) == "succeeded" and s.encode_status_map.classify(2) == "in_progress"


def test_config_command_masks_secrets_and_warns_about_them(tmp_path):
    cfg = tmp_path / "bi.toml"
    cfg.write_text('merchant_id = "m"\napi_key = "very-secret-key"\n')
    os.chmod(cfg, 0o644)
    result = run_cli(["config", "--config", str(cfg), "--token", "tok-secret"])
    assert result.exit_code == 0
    assert "very-secret-key" not in result.output and "tok-secret" not in result.output
    assert "api_key = ********" in result.stdout and "merchant_id = m" in result.stdout
    assert "readable by other users: chmod 600" in result.stderr
    os.chmod(cfg, 0o600)
    result = run_cli(["config", "--config", str(cfg)])
    assert "holds api_key" in result.stderr and "readable by other" not in result.stderr


def test_bad_config_file_and_values_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("rate = [\n")
    result = run_cli(["config", "--config", str(bad)])
    assert result.exit_code == 2 and "cannot read config file" in result.output
    bad.write_text("speed = 3\n")
    result = run_cli(["config", "--config", str(bad)])
    assert result.exit_code == 2 and "unknown setting(s) speed" in result.output
    result = run_cli(["config", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = run_cli(["config"], {"SMARTSTREAM_CONCURRENCY": "many"})
    assert result.exit_code == 2 and "SMARTSTREAM_CONCURRENCY must be a whole number" in result.output
    with pytest.raises(ConfigError, match="write it like"):
        resolve_settings({"encode_status_map": "ok=2"}, env={})


def test_json_event_log_for_cron(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, failure_rate=0.5, seed=1))
    manifest = mixed_manifest(tmp_path, 12)
    log = tmp_path / "logs" / "run.jsonl"
    result = run_cli(
        ["run", str(manifest), "--log-file", str(log), "--log-format", "json", *FLAGS], env=server.env()
    )
    assert result.exit_code == 1
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_ended"
    assert kinds.count("submitted") == 12 and kinds.count("finished") == 12
    failed = [e for e in events if e.get("outcome") == "failed"]
    assert failed and all(e["level"] == "warning" and e["job_id"] for e in failed)
    assert server.config.token not in log.read_text() and server.config.api_key not in log.read_text()


def test_an_event_log_that_cannot_be_written_is_said_once_and_the_run_goes_on(capsys):
    """A full disk under --log-file (here /dev/full: every write fails with ENOSPC) never stops a run."""
    from batch_ingest.progress import EventLog

    log = EventLog(Path("/dev/full"))
    log.start(rows=2, to_submit=2, upload_bytes=0, run_id="r")
    log.row_finished("succeeded", row=1)
    log.message("more")
    log.close()
    err = capsys.readouterr().err
    assert err.count("cannot write the event log /dev/full") == 1, err
    assert "the run goes on without it" in err


def _cli_with_a_gone_reader(
    args: list[str], broken: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`batch-ingest ARGS` with `broken` ("stdout" or "stderr") a pipe whose reader closed before the
    first write, as `| head` leaves it; the other stream is captured."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    streams: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, broken: write_end}
    try:
        return subprocess.run(
            [sys.executable, "-m", "batch_ingest", *args],
            env=process_env(env),
            text=True,
            timeout=timeout,
            **streams,
        )
    finally:
        os.close(write_end)


def test_a_reader_that_goes_away_ends_the_command_quietly_with_141(tmp_path):
    """`batch-ingest config | head -1`: the reader closes the pipe; no internal error, no error log."""
    proc = _cli_with_a_gone_reader(["config"], "stdout", {"TMPDIR": str(tmp_path)}, timeout=60)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""
    assert not list(tmp_path.glob("batch-ingest-error-*"))


@pytest.mark.parametrize("broken", ["stdout", "stderr"])
def test_a_run_whose_reader_goes_away_still_ends_with_its_report_and_its_own_code(
    tmp_path, emulator_server, broken
):
    """`run ... | head` (stdout) or `run ... 2>&1 | head` (stderr): the run goes on to its report and
    exits with its own code, not 141 and not an internal error."""
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 6)
    run_dir = tmp_path / "run"
    args = ["run", str(manifest), "--report-dir", str(run_dir), *FLAGS[:-1]]
    proc = _cli_with_a_gone_reader(args, broken, {**server.env(), "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert json.loads((run_dir / "summary.json").read_text())["exit_code"] == 0
    assert (run_dir / "report.parquet").exists()
    assert not list(tmp_path.glob("batch-ingest-error-*")) and not (run_dir / "error.log").exists()
