"""`batch-ingest report`: merging runs, the summary, --failed, --json, --out."""

from __future__ import annotations

import json

import polars as pl
from batch_ingest.emulator import EmulatorConfig

from .helpers import FAST, FLAGS, mixed_manifest, run_cli


def test_report_merges_a_run_and_its_retry(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, failure_rate=0.4, seed=8))
    manifest = mixed_manifest(tmp_path, 50)
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    assert run_cli(["run", str(manifest), "--report-dir", str(first), *FLAGS], server.env()).exit_code == 1
    before = pl.read_parquet(first / "report.parquet")
    failed_rows = before.filter(pl.col("outcome") == "failed")["row"].to_list()
    assert failed_rows
    server.store.config = server.store.config.with_changes(failure_rate=1.0)  # the retry fails again
    retry = run_cli(["retry", str(first), "--report-dir", str(second), *FLAGS], server.env())
    assert retry.exit_code == 1, retry.output
    retried = pl.read_parquet(second / "report.parquet")
    assert retried["row"].to_list() == failed_rows and (retried["outcome"] == "failed").all()

    result = run_cli(["report", str(first), str(second), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["rows"] == 50  # one row per manifest row, the latest attempt winning
    expected_failed = len(failed_rows)
    assert info["outcomes"]["failed"] == expected_failed
    assert info["outcomes"]["succeeded"] == 50 - expected_failed
    codes = {g["error_code"]: g["count"] for g in info["failures_by_code"]}
    assert codes.get("ENCODE_FAILED", 0) == expected_failed
    assert set(info["per_source_type"]) == {"url", "file"}
    assert info["durations_s"]["encode"]["p50"] > 0
    assert info["next_steps"] == [f"batch-ingest retry {second} --only failed"]
    assert info["fix_first"] == []  # ENCODE_FAILED: the platform gives no reason, a retry may cure it
    # Counted per profile the rows resolved to: `101` and `ref:hd` are one profile, one entry.
    assert '101 "HD 1080p" (ref:hd)' in info["per_profile"]  # with the name the platform gave it
    assert not [p for p in info["per_profile"] if p.startswith("ref:") or p == "101"]
    assert sum(n for counts in info["per_profile"].values() for n in counts.values()) == 50

    out = tmp_path / "merged.csv"
    result = run_cli(["report", str(first), str(second), "--failed", "--out", str(out)])
    assert result.exit_code == 0
    merged = pl.read_csv(out)
    assert merged.height == expected_failed
    assert len([line for line in result.stdout.splitlines() if line.strip()]) == expected_failed
    assert f"wrote {out}" in result.stderr

    text = run_cli(["report", str(second / "report.parquet")]).output
    assert "rows from 1 report(s)" in text

    # A second retry on a platform that recovered: nothing left to do, and the report suggests nothing.
    server.store.config = server.store.config.with_changes(failure_rate=0.0)
    assert run_cli(["retry", str(second), "--report-dir", str(third), *FLAGS], server.env()).exit_code == 0
    info = json.loads(run_cli(["report", str(first), str(second), str(third), "--json"]).output)
    assert info["outcomes"]["succeeded"] == 50 and info["outcomes"]["failed"] == 0
    assert info["next_steps"] == []


def test_report_on_missing_or_wrong_paths_exits_2(tmp_path):
    result = run_cli(["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    result = run_cli(["report", str(tmp_path / "x.csv")])
    assert result.exit_code == 2 and "not a batch-ingest report" in result.output
    result = run_cli(["report", str(tmp_path)])
    assert result.exit_code == 2 and "no report.parquet" in result.output
