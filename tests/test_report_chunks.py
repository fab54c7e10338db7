"""The report is written a chunk of rows at a time: the files are the same as one build of the whole,
whatever the chunk size, and the facts the summary needs add up."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from batch_ingest.journal import JobUpdate, Journal
from batch_ingest.plan import plan_manifest
from batch_ingest.report import build_report, write_report_in_chunks
from batch_ingest.vocabulary import RowState


@pytest.fixture
def journal_and_plan(tmp_path: Path):
    manifest = tmp_path / "m.csv"
    lines = ["source,profile,ref_id,note"]
    for i in range(23):
        source = f"ftp://bad.example.com/{i}.mp4" if i % 7 == 3 else f"https://cdn.example.com/{i}.mp4"
        lines.append(f"{source},100,{'' if i % 4 == 0 else f'r{i}'},=note {i}")
    manifest.write_text("\n".join(lines) + "\n")
    plan = plan_manifest(manifest)
    journal = Journal.create(tmp_path / "journal.sqlite", plan.frame, {"run_id": "t"})
    journal.mark_submitted(
        2,
        job_id="j2",
        media_id=None,
        job_profile_id=100,
        encode_status=1,
        created_at=None,
        updated_at=None,
        now=1.0,
    )
    journal.record_progress([JobUpdate(2, 2, None, RowState.SUCCEEDED, 2.0)])
    journal.mark_error(5, http_status=400, code="BAD", message="refused", now=3.0)
    yield journal, plan
    journal.close()


@pytest.mark.parametrize("chunk_rows", [1, 4, 23, 1000])
def test_chunked_report_equals_one_build_of_the_whole(tmp_path, journal_and_plan, chunk_rows):
    journal, plan = journal_and_plan
    whole = build_report(plan.frame, journal.to_frame(), plan.extras)
    out = tmp_path / f"out{chunk_rows}"
    out.mkdir()
    facts = write_report_in_chunks(plan.frame, journal, plan.extras, out, chunk_rows=chunk_rows)
    written = pl.read_parquet(out / "report.parquet")
    assert written.equals(whole)
    csv = (out / "report.csv").read_text()
    assert (
        csv.count("\n") == 24 and csv.startswith("row,ref_id,") and csv.count("row,ref_id,") == 1
    )  # one header
    assert "'=note 3" in csv  # formula escaping applies in every chunk
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.parquet"]  # no parts left behind
    assert facts.rows == 23
    assert (
        facts.outcomes["succeeded"] == 1 and facts.outcomes["error"] == 1 and facts.outcomes["rejected"] == 3
    )
    assert facts.outcomes["interrupted"] == 18
    assert facts.failures == 22 and facts.exit_code == 1
    assert [f["row"] for f in facts.first_failures] == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    no_ref = whole.filter(pl.col("ref_id").is_null() & (pl.col("outcome") != "rejected"))["row"].to_list()
    assert facts.without_ref_id == len(no_ref) and facts.without_ref_id_first == no_ref[:20]


def test_journal_knows_a_job_before_its_write_is_committed(tmp_path, journal_and_plan):
    journal, _ = journal_and_plan
    assert journal.knows_job("j2") and not journal.knows_job("j9")
    journal.mark_submitted(
        7,
        job_id="j7",
        media_id=None,
        job_profile_id=100,
        encode_status=0,
        created_at=None,
        updated_at=None,
        now=4.0,
    )
    assert journal.knows_job("j7")  # deferred, not yet committed: still known
    journal.flush()
    assert journal.knows_job("j7")
    journal.add_known_jobs(["other-run-job"], "a retried run's")
    assert journal.knows_job("other-run-job")


def test_rows_by_outcome_in_sql_agree_with_the_report(journal_and_plan):
    """retry picks its rows from the journal alone; the report's outcomes are the reference."""
    journal, plan = journal_and_plan
    report = build_report(plan.frame, journal.to_frame(), plan.extras)
    for only in (
        ("failed",),
        ("error",),
        ("interrupted",),
        ("rejected", "error"),
        ("succeeded", "interrupted"),
    ):
        expected = report.filter(pl.col("outcome").is_in(list(only)))["row"].to_list()
        assert journal.rows_with_outcomes(only) == expected, only
    assert journal.rows_with_outcomes(()) == []
