"""Counts per profile (per profile resolved, not per spelling) and the "next" advice of `report` (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from batch_ingest import plan as plan_module
from batch_ingest import probe, sources
from batch_ingest.emulator import EmulatorConfig
from batch_ingest.errors import SourceUnreadable
from batch_ingest.plan import describe_plan, format_plan, plan_manifest
from batch_ingest.review import format_review, load_run, merge_runs, summarize
from batch_ingest.vocabulary import FIX_FIRST, TRANSIENT_CODES, needs_fix_first

from .helpers import FAST, FLAGS, run_cli, write_manifest

# The emulator's profiles: 100 `default`, 101 `hd`, 102 `sd`, 103 `audio`.
TWO_SPELLINGS = (
    "source,profile,ref_id\n"
    "https://cdn.example.com/a.mp4,101,a\n"
    "https://cdn.example.com/b.mp4,ref:hd,b\n"
    "https://cdn.example.com/c.mp4,ref:hd,c\n"
    "https://cdn.example.com/d.mp4,ref:sd,d\n"
    "https://cdn.example.com/e.mp4,ref:nope,e\n"  # no such profile: rejected
)


# -- validate ---------------------------------------------------------------------------------------


def test_validate_counts_one_profile_under_two_spellings_once(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = write_manifest(tmp_path, TWO_SPELLINGS)
    result = run_cli(["validate", str(manifest), "--json"], server.env())
    assert result.exit_code == 1, result.output  # the unknown profile's row is rejected
    info = json.loads(result.output)
    # With the name the platform gives each profile (the emulator's 101 is "HD 1080p").
    assert info["per_profile"] == {'101 "HD 1080p" (ref:hd)': 3, '102 "SD 480p" (ref:sd)': 1}
    assert info["rejected_by_code"] == {"JOB_PROFILE_NOT_FOUND": 1}
    text = run_cli(["validate", str(manifest)], server.env()).output
    assert 'per profile: 101 "HD 1080p" (ref:hd): 3; 102 "SD 480p" (ref:sd): 1\n' in text


def test_validate_without_the_api_counts_spellings_as_unresolved(tmp_path):
    manifest = write_manifest(tmp_path, TWO_SPELLINGS + "clip.mp4,,f\n")
    (tmp_path / "clip.mp4").write_bytes(b"v" * 100)
    info = describe_plan(plan_manifest(manifest))
    assert info.per_profile == {
        "(platform default)": 1,
        "101 (unresolved)": 1,
        "ref:hd (unresolved)": 2,
        "ref:nope (unresolved)": 1,
        "ref:sd (unresolved)": 1,
    }
    assert "per profile: (platform default): 1; 101 (unresolved): 1; ref:hd (unresolved): 2;" in format_plan(
        info
    )


# -- the run and `report` ------------------------------------------------------------------------


def test_run_and_report_count_one_profile_under_two_spellings_once(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = write_manifest(tmp_path, TWO_SPELLINGS)
    run_dir = tmp_path / "run"
    result = run_cli(["run", str(manifest), "--report-dir", str(run_dir), *FLAGS], server.env())
    assert result.exit_code == 1, result.output
    # The run summary counts outcomes, not profiles: nothing there can count a profile twice.
    assert "per_profile" not in json.loads((run_dir / "summary.json").read_text())

    info = json.loads(run_cli(["report", str(run_dir), "--json"]).output)
    assert info["per_profile"] == {
        '101 "HD 1080p" (ref:hd)': {"succeeded": 3},
        '102 "SD 480p" (ref:sd)': {"succeeded": 1},
        "ref:nope (unresolved)": {"rejected": 1},
    }
    text = run_cli(["report", str(run_dir)]).output
    assert '  101 "HD 1080p" (ref:hd): succeeded 3\n' in text
    assert "  ref:nope (unresolved): rejected 1\n" in text
    assert "ref:hd:" not in text and "  101:" not in text


# -- next steps: what a retry cannot fix ---------------------------------------------------------


def fake_run(folder: Path, rows: list[dict[str, Any]], **summary: Any) -> Path:
    """A run folder with a report of `rows` (row numbers added), a summary and a journal file."""
    folder.mkdir()
    frame = pl.DataFrame(
        [
            {
                "row": i,
                "ref_id": f"r{i}",
                "source": f"https://cdn.example.com/{i}.mp4",
                "profile": "100",
                "job_profile_id": 100,
                "job_id": None,
                "outcome": "succeeded",
                "error_code": None,
                "http_status": None,
                "error_message": None,
                **r,
            }
            for i, r in enumerate(rows, 1)
        ],
        schema_overrides={"job_id": pl.String, "error_code": pl.String, "http_status": pl.Int64},
    )
    frame.write_parquet(folder / "report.parquet")
    (folder / "summary.json").write_text(json.dumps({"run_dir": str(folder), **summary}))
    (folder / "journal.sqlite").write_bytes(b"")  # a run folder, so the advice names it
    return folder


def review(*folders: Path) -> dict[str, Any]:
    runs = [load_run(f) for f in folders]
    return summarize(merge_runs(runs), runs)


def test_a_failure_only_a_fix_can_cure_gets_no_plain_retry(tmp_path):
    invalid = {"outcome": "error", "error_code": "MEDIA_INVALID", "http_status": 400}
    run = fake_run(tmp_path / "run", [{}, invalid, invalid])
    info = review(run)
    assert info["next_steps"] == []  # nothing a retry would cure
    [fix] = info["fix_first"]
    assert fix["error_code"] == "MEDIA_INVALID" and fix["count"] == 2 and fix["rows"] == [2, 3]
    assert fix["sent_by_retry"] is False and fix["fix"] == FIX_FIRST["MEDIA_INVALID"]
    assert "fail the same way" in fix["message"]
    assert f"batch-ingest retry {run} --only error" in fix["message"]  # what to run once it is fixed
    text = format_review(info)
    assert f"  fix first: 2 error rows with MEDIA_INVALID (rows 2, 3): {FIX_FIRST['MEDIA_INVALID']}" in text
    assert not any(line.strip().startswith("batch-ingest retry") for line in text.splitlines())


def test_a_retry_that_also_resends_rows_needing_a_fix_says_so(tmp_path):
    run = fake_run(
        tmp_path / "run",
        [
            {"outcome": "error", "error_code": "SERVER_ERROR", "http_status": 503},
            {"outcome": "error", "error_code": "STORAGE_NOT_FOUND", "http_status": 404},
            {"outcome": "failed", "error_code": "ENCODE_FAILED"},
            {
                "outcome": "error",
                "error_code": None,
                "http_status": 422,
            },  # a 4xx the vocabulary does not name
            {"outcome": "rejected", "error_code": "INVALID_ROW", "job_profile_id": None},
        ],
    )
    info = review(run)
    step = f"batch-ingest retry {run} --only failed,error"
    assert info["next_steps"] == [step]
    fixes = {(f["outcome"], f["error_code"], f["http_status"]): f for f in info["fix_first"]}
    assert set(fixes) == {
        ("error", "STORAGE_NOT_FOUND", 404),
        ("error", None, 422),
        ("rejected", "INVALID_ROW", None),
    }
    for key in (("error", "STORAGE_NOT_FOUND", 404), ("error", None, 422)):
        assert fixes[key]["sent_by_retry"] is True
        assert f"`{step}` sends this row again" in fixes[key]["message"]
        assert "fail the same way" in fixes[key]["message"]
    assert "HTTP 422" in fixes[("error", None, 422)]["message"]
    rejected = fixes[("rejected", "INVALID_ROW", None)]
    assert rejected["sent_by_retry"] is False and "`retry` does not take rejected rows" in rejected["message"]
    text = format_review(info)
    assert f"next:\n  {step}\n  fix first: 1 error row with STORAGE_NOT_FOUND (row 2)" in text


def test_transient_failures_get_a_plain_retry_and_nothing_to_fix(tmp_path):
    run = fake_run(
        tmp_path / "run",
        [
            {"outcome": "error", "error_code": "TOO_MANY_REQUESTS", "http_status": 429},
            {"outcome": "error", "error_code": None, "http_status": None},  # no answer at all
            {"outcome": "timed_out", "error_code": "JOB_TIMEOUT"},
            {"outcome": "failed", "error_code": "SIGNATURE_EXPIRED"},
        ],
        settings={"presign_ttl": 60},
    )
    info = review(run)
    assert info["next_steps"] == [f"batch-ingest retry {run} --only failed,error,timed_out --presign-ttl 240"]
    assert info["fix_first"] == []


def test_the_latest_attempt_decides_what_is_left_to_fix(tmp_path):
    first = fake_run(
        tmp_path / "first",
        [{"outcome": "error", "error_code": "SOURCE_SIGN_FAILED"}],
        manifest="m.csv",
        started_at="2025-01-01T00:00:00+00:00",
    )
    second = fake_run(tmp_path / "second", [{}], manifest="m.csv", started_at="2025-01-02T00:00:00+00:00")
    info = review(first, second)
    assert info["next_steps"] == [] and info["fix_first"] == []


def test_the_classification_covers_the_codes_batch_ingest_writes():
    written_here = {
        plan_module.INVALID_ROW,
        plan_module.DUPLICATE_KEY,
        plan_module.PROFILE_NOT_FOUND,
        probe.MEDIA_INVALID,
        sources.SOURCE_NOT_FOUND,
        sources.SOURCE_FORBIDDEN,
        sources.SOURCE_NOT_VIDEO,
        SourceUnreadable.code,
        "SOURCE_SIGN_FAILED",
    }
    assert written_here <= set(FIX_FIRST)
    assert sources.SOURCE_UNREACHABLE in TRANSIENT_CODES
    assert not TRANSIENT_CODES & set(FIX_FIRST)
    assert needs_fix_first(None, 400) and needs_fix_first("SOMETHING_NEW", 403)
    assert not needs_fix_first(None, None) and not needs_fix_first(None, 503)
    assert not needs_fix_first("SOMETHING_NEW", 429) and not needs_fix_first(None, 408)
    assert not needs_fix_first("ENCODE_FAILED") and not needs_fix_first("SIGNATURE_EXPIRED")


def test_report_names_why_a_run_aborted(tmp_path):
    run = fake_run(
        tmp_path / "run", [{"outcome": "interrupted"}], abort_reason="the API refused the token (401)"
    )
    info = review(run)
    assert info["aborted"] == [{"run": str(run), "abort_reason": "the API refused the token (401)"}]
    assert f"aborted: the API refused the token (401) ({run})" in format_review(info)
    assert info["next_steps"] == [f"batch-ingest resume {run}"]
