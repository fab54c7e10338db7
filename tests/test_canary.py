"""Canary runs: --limit, --rows and --sample take some ready rows; the rest are held, never lost,
and a later `resume --all` (or a full run with --skip-existing) sends them without sending any row twice."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest
from batch_ingest.emulator import EmulatorConfig
from batch_ingest.errors import UsageError
from batch_ingest.subset import Subset, parse_rows

from .helpers import FAST, FLAGS, check_consistent, mixed_manifest, report_of, run_cli, summary_of


def rows_with(report: pl.DataFrame, outcome: str) -> list[int]:
    return report.filter(pl.col("outcome") == outcome)["row"].to_list()


# -- choosing rows ------------------------------------------------------------------------------


def test_rows_ranges_parse_and_bad_ones_name_the_option():
    assert parse_rows("100-200") == ((100, 200),)
    assert parse_rows(" 1-3, 7 ,9-9") == ((1, 3), (7, 7), (9, 9))
    for bad in ("abc", "5-2", "0-3", "1-", "", "1,,2"):
        with pytest.raises(UsageError, match="--rows"):
            parse_rows(bad)


def test_subset_choices():
    rows = list(range(1, 101))
    assert Subset(limit=3).choose(rows) == [1, 2, 3]
    assert Subset(rows=((10, 12), (50, 50))).choose(rows) == [10, 11, 12, 50]
    assert Subset(rows=((10, 20),), limit=2).choose(rows) == [10, 11]
    sample = Subset(sample=10, seed=7).choose(rows)
    assert sample == sorted(sample) and len(set(sample)) == 10
    assert Subset(sample=10, seed=7).choose(rows) == sample  # seeded: the same rows every time
    assert Subset(sample=10, seed=8).choose(rows) != sample
    assert Subset(sample=500, seed=1).choose(rows) == rows  # more than there are: all of them
    assert Subset(take_all=True).choose([5, 3]) == [3, 5]


def test_subset_options_refuse_what_makes_no_sense():
    assert Subset.from_options() is None
    cases: tuple[tuple[dict[str, Any], str], ...] = (
        ({"limit": 0}, "--limit 0"),
        ({"sample": -1}, "--sample -1"),
        ({"limit": 3, "sample": 3}, "give one of them"),
        ({"seed": 3}, "--seed"),
        ({"take_all": True, "limit": 3}, "--all"),
    )
    for kwargs, fragment in cases:
        with pytest.raises(UsageError, match=fragment):
            Subset.from_options(**kwargs)
    drawn = Subset.from_options(sample=5)
    assert drawn is not None and drawn.seed is not None  # a seed is drawn, and shown so it can be reused
    assert f"--seed {drawn.seed}" in drawn.describe()


# -- end to end ---------------------------------------------------------------------------------


def test_limit_then_resume_all_sends_every_row_exactly_once(tmp_path, emulator_server):
    """Uploads, URLs, rows with and without ref_id: the canary sends 5, resume --all the other 35,
    a plain resume in between and a second resume --all after send nothing."""
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 40)
    run_dir = tmp_path / "run"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--limit", "5", *FLAGS], server.env()
    )
    assert result.exit_code == 0, result.output  # held rows are not failures
    report = report_of(run_dir)
    assert report.height == 40  # every manifest row has its row in the report
    assert rows_with(report, "succeeded") == [1, 2, 3, 4, 5]
    assert rows_with(report, "held") == list(range(6, 41))
    held = report.filter(pl.col("outcome") == "held")
    assert held["job_id"].is_null().all() and held["attempts"].eq(0).all()
    assert held["error_message"].str.contains(f"resume {run_dir} --all", literal=True).all()
    assert server.stats()["jobs_created"] == 5
    summary = summary_of(run_dir)
    assert summary["outcomes"]["held"] == 35 and summary["not_succeeded"] == 0
    assert summary["subsets"] == [{"kind": "run", "selection": "--limit 5", "taken": 5}]

    # A plain resume leaves held rows held and sends nothing.
    again = run_cli(["resume", str(run_dir), *FLAGS], server.env())
    assert again.exit_code == 0, again.output
    assert server.stats()["jobs_created"] == 5
    assert rows_with(report_of(run_dir), "held") == list(range(6, 41))

    # `report` names the command that sends the rest.
    review = run_cli(["report", str(run_dir)])
    assert f"batch-ingest resume {run_dir} --all" in review.output

    wide = run_cli(["resume", str(run_dir), "--all", *FLAGS], server.env())
    assert wide.exit_code == 0, wide.output
    report = check_consistent(run_dir, server, 40)
    assert (report["outcome"] == "succeeded").all()
    assert server.stats()["jobs_created"] == 40
    assert [s["taken"] for s in summary_of(run_dir)["subsets"]] == [5, 35]

    # The same command again (a cron re-run): nothing held, nothing sent, nothing changed.
    before = (run_dir / "report.parquet").read_bytes()
    last = run_cli(["resume", str(run_dir), "--all", *FLAGS], server.env())
    assert last.exit_code == 0, last.output
    assert server.stats()["jobs_created"] == 40
    assert (run_dir / "report.parquet").read_bytes() == before


def test_widening_a_run_folder_another_process_holds_is_refused_and_takes_nothing(tmp_path, emulator_server):
    import os

    from batch_ingest.runlock import RunLock

    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 12)
    run_dir = tmp_path / "run"
    assert (
        run_cli(
            ["run", str(manifest), "--report-dir", str(run_dir), "--limit", "3", *FLAGS], server.env()
        ).exit_code
        == 0
    )
    lock = RunLock(run_dir).acquire()
    lock.write_pid()
    try:
        busy = run_cli(["resume", str(run_dir), "--all", *FLAGS], server.env())
        assert busy.exit_code == 75 and f"in use by process {os.getpid()}" in busy.output, busy.output
    finally:
        lock.release()
    from batch_ingest.journal import Journal

    journal = Journal.open(run_dir / "journal.sqlite", migrate=False)
    try:
        assert journal.held_rows() == list(range(4, 13))  # the journal, not only the report: nothing taken
    finally:
        journal.close()
    assert run_cli(["resume", str(run_dir), "--all", *FLAGS], server.env()).exit_code == 0
    assert server.stats()["jobs_created"] == 12


def test_rows_then_widening_step_by_step(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 30)
    run_dir = tmp_path / "run"
    first = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--rows", "10-12,20", *FLAGS], server.env()
    )
    assert first.exit_code == 0, first.output
    assert rows_with(report_of(run_dir), "succeeded") == [10, 11, 12, 20]

    # --limit on resume takes the first held rows; --sample a seeded sample of the held ones.
    assert run_cli(["resume", str(run_dir), "--limit", "3", *FLAGS], server.env()).exit_code == 0
    assert rows_with(report_of(run_dir), "succeeded") == [1, 2, 3, 10, 11, 12, 20]
    assert (
        run_cli(["resume", str(run_dir), "--sample", "4", "--seed", "11", *FLAGS], server.env()).exit_code
        == 0
    )
    after_sample = rows_with(report_of(run_dir), "succeeded")
    held_before = [r for r in range(1, 31) if r not in (1, 2, 3, 10, 11, 12, 20)]
    expected = sorted(Subset(sample=4, seed=11).choose(held_before))
    assert after_sample == sorted([1, 2, 3, 10, 11, 12, 20, *expected])
    assert server.stats()["jobs_created"] == 11

    # Rows outside what is held: refused with the rows it does hold, nothing changes.
    refused = run_cli(["resume", str(run_dir), "--rows", "10-12", *FLAGS], server.env())
    assert refused.exit_code == 2 and "takes none of the" in refused.output
    assert server.stats()["jobs_created"] == 11

    assert run_cli(["resume", str(run_dir), "--all", *FLAGS], server.env()).exit_code == 0
    report = check_consistent(run_dir, server, 30)
    assert (report["outcome"] == "succeeded").all() and server.stats()["jobs_created"] == 30
    selections = [s["selection"] for s in summary_of(run_dir)["subsets"]]
    assert selections == ["--rows 10-12,20", "--limit 3", "--sample 4 --seed 11", "--all"]


def test_a_sample_is_reproducible_from_its_recorded_seed(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 50)
    first, second = tmp_path / "first", tmp_path / "second"
    assert (
        run_cli(
            ["run", str(manifest), "--report-dir", str(first), "--sample", "6", *FLAGS], server.env()
        ).exit_code
        == 0
    )
    selection = summary_of(first)["subsets"][0]["selection"]
    seed = int(selection.rsplit(" ", 1)[1])
    taken = rows_with(report_of(first), "succeeded")
    assert len(taken) == 6
    # The recorded seed on another emulator (the same videos may go to another account) takes the same rows.
    other = emulator_server(EmulatorConfig(**FAST))
    args = ["run", str(manifest), "--report-dir", str(second), "--sample", "6", "--seed", str(seed), *FLAGS]
    assert run_cli(args, other.env()).exit_code == 0
    assert rows_with(report_of(second), "succeeded") == taken


def test_a_full_run_with_skip_existing_after_a_canary_sends_only_the_rest(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "source,profile,ref_id\n" + "".join(f"https://cdn.example.com/{i}.mp4,100,v{i}\n" for i in range(20))
    )
    canary, full = tmp_path / "canary", tmp_path / "full"
    assert (
        run_cli(
            ["run", str(manifest), "--report-dir", str(canary), "--limit", "4", *FLAGS], server.env()
        ).exit_code
        == 0
    )
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(full), "--skip-existing", *FLAGS], server.env()
    )
    assert result.exit_code == 0, result.output
    report = report_of(full)
    assert rows_with(report, "skipped") == [1, 2, 3, 4]
    assert rows_with(report, "succeeded") == list(range(5, 21))
    assert server.stats()["jobs_created"] == 20 and server.stats()["duplicate_ref_ids"] == {}


def test_bad_subsets_stop_before_anything_is_created(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 10)
    for args, fragment in (
        (["--limit", "0"], "--limit 0"),
        (["--rows", "a-b"], "--rows"),
        (["--rows", "50-60"], "takes none of the manifest's 10 ready rows"),
        (["--limit", "2", "--sample", "2"], "give one of them"),
        (["--seed", "4"], "--seed"),
        (["--rows", ""], "--rows ''"),  # an empty variable in a script must not mean "every row"
    ):
        run_dir = tmp_path / f"r{args[1] or 'empty'}"
        result = run_cli(["run", str(manifest), "--report-dir", str(run_dir), *args, *FLAGS], server.env())
        assert result.exit_code == 2, (args, result.output)
        assert fragment in result.output, (args, result.output)
        assert not (run_dir / "journal.sqlite").exists()
    assert server.stats()["jobs_created"] == 0


def test_held_rows_are_not_retried_and_rejected_rows_are_reported_whatever_the_subset(
    tmp_path, emulator_server
):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "source,profile,ref_id\n"
        + "".join(f"https://cdn.example.com/{i}.mp4,100,v{i}\n" for i in range(6))
        + "ftp://old.example.com/x.mp4,100,bad\n"
    )
    run_dir = tmp_path / "run"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--limit", "2", *FLAGS], server.env()
    )
    assert result.exit_code == 1  # the rejected row is a failure, canary or not
    report = report_of(run_dir)
    assert rows_with(report, "succeeded") == [1, 2]
    assert rows_with(report, "held") == [3, 4, 5, 6]
    assert rows_with(report, "rejected") == [7]
    retried = run_cli(["retry", str(run_dir), "--only", "held", *FLAGS], server.env())
    assert retried.exit_code == 2 and f"resume {run_dir} --all" in retried.output
    nothing = run_cli(["retry", str(run_dir), *FLAGS], server.env())
    assert nothing.exit_code == 0 and "nothing to retry" in nothing.output  # held rows are not failures
    assert server.stats()["jobs_created"] == 2


# -- honest estimates ---------------------------------------------------------------------------


def test_validate_estimates_a_100000_row_manifest_at_the_default_rate(tmp_path):
    manifest = tmp_path / "big.csv"
    manifest.write_text(
        "source,profile\n" + "".join(f"https://cdn.example.com/{i}.mp4,100\n" for i in range(100_000))
    )
    result = run_cli(["validate", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "estimate: about 35 h 0 min for 105,001 API requests at 50 per minute" in result.output
    as_json = json.loads(run_cli(["validate", str(manifest), "--json", "--rate", "120"]).output)
    assert round(as_json["estimate"]["request_s"]) == round(105_001 / 120 * 60)


def test_validate_estimates_uploads_only_with_a_rate_and_says_so_otherwise(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    for i in range(3):
        with open(media / f"{i}.mp4", "wb") as f:
            f.truncate(200 * 2**20)  # sparse: 600 MiB to upload in all
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,ref_id\n" + "".join(f"media/{i}.mp4,v{i}\n" for i in range(3)))
    without = run_cli(["validate", str(manifest)])
    assert "uploads: 600.0 MiB, not in the estimate: pass --upload-rate" in without.output
    with_rate = run_cli(["validate", str(manifest), "--upload-rate", "10M"])
    assert "uploads: 600.0 MiB at 10.0 MiB/s: about 1 min" in with_rate.output
    assert (
        json.loads(run_cli(["validate", str(manifest), "--json", "--upload-rate", "10M"]).output)["estimate"][
            "total_s"
        ]
        == 60
    )
    for nonsense in ("fast", "0", "off", "1e-320"):
        bad = run_cli(["validate", str(manifest), "--upload-rate", nonsense])
        assert bad.exit_code == 2 and "--upload-rate" in bad.output, (nonsense, bad.output)


def test_validate_and_dry_run_plan_a_canary(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "source,profile\n"
        + "".join(f"https://cdn.example.com/{i}.mp4,100\n" for i in range(1000))
        + "ftp://x/y,100\n"
    )
    for command in (["validate"], ["run", "--dry-run"]):
        result = run_cli(
            [*command, str(manifest), "--limit", "10", "--json"]
            if command == ["validate"]
            else [*command, str(manifest), "--limit", "10"]
        )
        assert result.exit_code == 1, result.output  # the rejected ftp row
        if command == ["validate"]:
            info = json.loads(result.output)
            assert info["rows"] == 1001 and info["to_submit"] == 10 and info["rejected"] == 1
            assert info["estimate"]["jobs"] == 10
        else:
            assert (
                "1001 rows, 10 to submit" in result.output
                and "990 ready rows would be held back" in result.output
            )


def test_a_run_folder_whose_name_looks_like_a_pattern(tmp_path, emulator_server):
    """Folder names are paths, never glob patterns: [ ] in --report-dir must not break the report."""
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 6)
    run_dir = tmp_path / "batch[1]*?"
    assert (
        run_cli(
            ["run", str(manifest), "--report-dir", str(run_dir), "--limit", "2", *FLAGS], server.env()
        ).exit_code
        == 0
    )
    assert rows_with(report_of(run_dir), "held") == [3, 4, 5, 6]
    assert run_cli(["resume", str(run_dir), "--all", *FLAGS], server.env()).exit_code == 0
    assert (report_of(run_dir)["outcome"] == "succeeded").all() and server.stats()["jobs_created"] == 6
    review = run_cli(["report", str(run_dir)])
    assert review.exit_code == 0 and "6 rows" in review.output


def test_log_progress_shows_the_measured_rate_and_eta():
    import io

    from batch_ingest.progress import LogProgress

    now = [0.0]
    out = io.StringIO()
    progress = LogProgress(out, every_s=60, clock=lambda: now[0])
    progress.start(rows=100, to_submit=100, upload_bytes=0)
    for i in range(20):
        now[0] = 6.0 * (i + 1)  # a job every 6 s: 10 per minute
        progress.row_submitted()
        progress.row_finished("succeeded")
    # The line comes at the 60 s mark after the 20th submission: 19 finished in 120 s, 81 to go.
    line = out.getvalue().strip().splitlines()[-1]
    assert line.endswith("submitted 20/100; succeeded 19; 9.5 jobs/min, ETA 9 min")
