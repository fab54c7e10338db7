"""`--probe`: every local file opened as media before anything is sent; what it found in the plan, the
report, the summary and the HTML; a resume that never probes again; the emulator's own probe of uploads.

The videos are real (made with PyAV by tests/media.py), as are the broken ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from batch_ingest.emulator import EmulatorConfig
from batch_ingest.report import format_summary

from .helpers import FAST, FLAGS, report_of, run_cli, summary_of
from .media import make_audio_only, make_moov_at_end, make_mp4, make_text_as_mp4, make_truncated


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A manifest of five local files: good, moov at the end, truncated, audio only, text named .mp4."""
    media = tmp_path / "media"
    media.mkdir()
    make_mp4(media / "good.mp4", seconds=2.0)
    make_moov_at_end(media / "late-moov.mp4")
    make_truncated(media / "cut.mp4")
    make_audio_only(media / "sound.mp4")
    make_text_as_mp4(media / "notes.mp4")
    names = ["good", "late-moov", "cut", "sound", "notes"]
    manifest = tmp_path / "manifest.csv"
    pl.DataFrame({"source": [f"media/{n}.mp4" for n in names], "ref_id": names}).write_csv(manifest)
    return manifest


def test_validate_probe_rejects_what_is_not_a_video_and_totals_the_minutes(library):
    result = run_cli(["validate", str(library), "--probe", "--json"])
    assert result.exit_code == 1, result.output
    plan = json.loads(result.output)
    assert plan["to_submit"] == 2 and plan["rejected"] == 3
    assert plan["rejected_by_code"] == {"MEDIA_INVALID": 3}
    reasons = {r["row"]: r["reason"] for r in plan["rejected_rows"]}
    assert set(reasons) == {3, 4, 5}
    assert "no video stream" in reasons[4]
    assert all(reason and ":" in reason for reason in reasons.values())  # what is wrong: what to do
    notes = " | ".join(plan["notes"])
    assert "media probed: 5 source(s), 2 fine" in notes and "minutes of video" in notes
    assert "moov" in notes and "rows 2" in notes  # a warning, not a rejection


def test_probe_limits_reject_long_or_large_videos_and_a_bad_limit_is_a_usage_error(library):
    long = run_cli(["validate", str(library), "--max-duration", "1.5", "--json"])  # implies --probe
    reasons = {r["row"]: r["reason"] for r in json.loads(long.output)["rejected_rows"]}
    assert "--max-duration" in reasons[1] and 2 not in reasons  # good.mp4 is 2 s, late-moov 1 s
    big = run_cli(["validate", str(library), "--max-size", "1K", "--json"])
    assert json.loads(big.output)["to_submit"] == 0
    bad = run_cli(["validate", str(library), "--max-size", "lots"])
    assert bad.exit_code == 2 and "--max-size" in bad.output and "10G" in bad.output


def test_run_probe_reports_the_media_sends_only_videos_and_resume_never_probes_again(
    tmp_path, library, emulator_server
):
    server = emulator_server(EmulatorConfig(**FAST))
    run_dir = tmp_path / "run"
    html = tmp_path / "report.html"
    # A canary of one row: the other good one is held, already probed.
    first = run_cli(
        [
            "run",
            str(library),
            "--report-dir",
            str(run_dir),
            "--probe",
            "--limit",
            "1",
            "--html",
            str(html),
            *FLAGS,
        ],
        server.env(),
    )
    assert first.exit_code == 1, first.output  # three rows rejected
    report = report_of(run_dir).sort("row")
    assert report["outcome"].to_list() == ["succeeded", "held", "rejected", "rejected", "rejected"]
    good = report.row(0, named=True)
    assert (good["width"], good["height"], good["media_duration_s"]) == (64, 48, pytest.approx(2.0, abs=0.2))
    assert good["video_codec"] and good["media_format"] and good["audio_codec"]
    assert report["error_code"].to_list()[2:] == ["MEDIA_INVALID"] * 3
    assert "Video durations" in html.read_text()
    # The held file is spoiled after the probe: resume sends it as the plan found it (no second probe).
    held = tmp_path / "media" / "late-moov.mp4"
    held.write_bytes(b"\0" * held.stat().st_size)  # the same size: a changed size stops an upload
    rest = run_cli(["resume", str(run_dir), "--all", *FLAGS], server.env())
    assert rest.exit_code == 1, rest.output
    report = report_of(run_dir).sort("row")
    assert report["outcome"].to_list()[:2] == ["succeeded", "succeeded"]
    assert report["media_duration_s"][1] == pytest.approx(1.0, abs=0.2)
    assert len(server.jobs()) == 2  # never a create for a rejected row
    media = summary_of(run_dir)["media"]
    assert media["rows"] == 2 and media["minutes"] == pytest.approx(3.0 / 60, abs=0.01)
    assert "video probed: 2 rows, 0.1 minutes to ingest" in format_summary(summary_of(run_dir))  # type: ignore[arg-type]


def test_a_corrupt_upload_fails_on_a_fetching_emulator_because_it_is_corrupt(tmp_path, emulator_server):
    """Without --probe the broken file is sent; the emulator in --fetch-sources mode probes uploads."""
    server = emulator_server(EmulatorConfig(**FAST, fetch_sources=True))
    make_mp4(tmp_path / "fine.mp4")
    make_truncated(tmp_path / "fine-looking.mp4")
    manifest = tmp_path / "manifest.csv"
    pl.DataFrame({"source": ["fine.mp4", "fine-looking.mp4"]}).write_csv(manifest)
    run_dir = tmp_path / "run"
    result = run_cli(["run", str(manifest), "--report-dir", str(run_dir), *FLAGS], server.env())
    assert result.exit_code == 1, result.output
    report = report_of(run_dir).sort("row")
    assert report["outcome"].to_list() == ["succeeded", "failed"]
    assert report["media_duration_s"].null_count() == 2  # not probed by the client
