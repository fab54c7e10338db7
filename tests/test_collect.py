"""`run --no-wait` then `collect`: shards only submit, one poller follows every job of them all."""

from __future__ import annotations

import polars as pl
import pytest
from batch_ingest.emulator import EmulatorConfig

from .helpers import FAST, FLAGS, report_of, run_cli, summary_of, url_manifest


def _shard(manifest, root, i, n, env, *extra):
    return run_cli(
        ["run", str(manifest), "--report-dir", str(root), "--shard", f"{i}/{n}", "--no-wait", *FLAGS, *extra],
        env,
    )


def test_shards_submit_without_waiting_and_one_collector_finishes_them_all(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**{**FAST, "encode_seconds": 0.5}))
    manifest = url_manifest(tmp_path, 24)
    root = tmp_path / "root"
    for i in range(3):
        result = _shard(manifest, root, i, 3, server.env())
        assert result.exit_code == 0, result.output
        report = report_of(root / f"shard-{i}-of-3")
        assert set(report["outcome"].to_list()) <= {"submitted", "succeeded"}
        assert summary_of(root / f"shard-{i}-of-3")["exit_code"] == 0
    stats = server.store.stats()
    assert stats["jobs_created"] == 24
    # One listing per shard: the implied --adopt-existing look-up of a fresh shard (an empty account
    # answers it in one page). No shard polls.
    assert stats["requests"]["GET jobs"] == {"200": 3}, stats["requests"]
    # A shard's pod retried after it submitted everything: nothing is sent again, still no poll.
    again = _shard(manifest, root, 1, 3, server.env())
    assert again.exit_code == 0, again.output
    assert server.store.stats()["jobs_created"] == 24

    collected = run_cli(["collect", str(root), *FLAGS[:-1]], server.env())
    assert collected.exit_code == 0, collected.output
    merged = pl.read_parquet(root / "report.parquet")
    assert sorted(merged["row"].to_list()) == list(range(1, 25))
    assert set(merged["outcome"].to_list()) == {"succeeded"}
    assert (root / "report.csv").exists()
    for i in range(3):
        assert set(report_of(root / f"shard-{i}-of-3")["outcome"].to_list()) == {"succeeded"}
        assert [s["kind"] for s in summary_of(root / f"shard-{i}-of-3")["segments"]][-1] == "collect"
    requests = server.store.stats()["requests"]
    # Shards: one create per row (and a profile look-up each); the collector: a few listings for all.
    assert requests["POST jobs"] == {"201": 24} and requests["GET job_profiles/:id"] == {"200": 3}
    assert 3 + 1 <= sum(requests["GET jobs"].values()) <= 3 + 10, requests
    # A second collect of finished runs sends nothing and changes nothing.
    before = server.store.stats()["requests_total"]
    twice = run_cli(["collect", str(root), *FLAGS[:-1]], server.env())
    assert twice.exit_code == 0, twice.output
    assert server.store.stats()["requests_total"] == before


def test_collect_names_a_shard_with_no_run_and_reports_its_rows_unsent(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 10)
    root = tmp_path / "root"
    assert _shard(manifest, root, 0, 2, server.env()).exit_code == 0
    collected = run_cli(["collect", str(root), *FLAGS[:-1]], server.env())
    assert collected.exit_code == 1, collected.output  # rows no shard has sent
    assert "shard-1-of-2 holds no run yet" in collected.output
    merged = pl.read_parquet(root / "report.parquet")
    assert merged["row"].to_list() == list(range(1, 11))  # every manifest row, once
    sent = set(report_of(root / "shard-0-of-2")["row"].to_list())
    unsent = merged.filter(~pl.col("row").is_in(sent))
    assert unsent.height == 10 - len(sent) > 0
    assert set(unsent["outcome"].to_list()) == {"interrupted"} and set(unsent["error_code"].to_list()) == {
        "SHARD_NOT_RUN"
    }
    # `report ROOT` has them too: the same rows as the collector's merged report.
    reported = run_cli(["report", str(root), "--json"])
    assert reported.exit_code == 0, reported.output
    assert '"rows": 10' in reported.output and "shard-1-of-2 holds no run yet" in reported.output
    # The manifest edited since the shards split it: its rows would not be the shards' rows.
    manifest.write_text(manifest.read_text().replace("v/0.mp4", "v/zero.mp4"))
    again = run_cli(["collect", str(root), *FLAGS[:-1]], server.env())
    assert again.exit_code == 1, again.output
    assert "are not in the merged report: the manifest" in again.output
    assert sorted(pl.read_parquet(root / "report.parquet")["row"].to_list()) == sorted(sent)
    # Without the root's record, N still comes from the folders' names (not from their number).
    (root / "shards.json").unlink()
    named = run_cli(["collect", str(root), *FLAGS[:-1]], server.env())
    assert named.exit_code == 1 and "shard-1-of-2 holds no run yet" in named.output


def test_collect_refuses_a_run_still_in_use_and_a_folder_that_is_no_run(tmp_path, emulator_server):
    from batch_ingest.runlock import RunLock

    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 4)
    run_dir = tmp_path / "one"
    assert (
        run_cli(
            ["run", str(manifest), "--report-dir", str(run_dir), "--no-wait", *FLAGS], server.env()
        ).exit_code
        == 0
    )
    lock = RunLock(run_dir).acquire()
    try:
        busy = run_cli(["collect", str(run_dir)], server.env())
        assert busy.exit_code == 75 and "is in use by" in busy.output
    finally:
        lock.release()
    nothing = run_cli(["collect", str(tmp_path / "media-less")], server.env())
    assert nothing.exit_code == 2 and "neither a run folder" in nothing.output
    # Given a run folder (not a root), collect writes its report; no merged file unless --out.
    done = run_cli(["collect", str(run_dir), "--out", str(tmp_path / "all.csv"), *FLAGS[:-1]], server.env())
    assert done.exit_code == 0, done.output
    assert pl.read_csv(tmp_path / "all.csv").height == 4


def test_no_wait_refuses_max_in_flight(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    result = run_cli(
        ["run", str(url_manifest(tmp_path, 2)), "--no-wait", "--max-in-flight", "5", *FLAGS], server.env()
    )
    assert result.exit_code == 2 and "--no-wait cannot keep --max-in-flight" in result.output


def test_a_shard_that_lost_its_disk_adopts_its_jobs_instead_of_sending_them_again(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**{**FAST, "encode_seconds": 0.5}))
    manifest = url_manifest(tmp_path, 12)  # every row has a ref_id
    root = tmp_path / "root"
    first = _shard(manifest, root, 0, 1, server.env())
    assert first.exit_code == 0, first.output
    sent = server.store.stats()["jobs_created"]
    assert sent > 0
    # The pod is evicted and its volume with it: the shard starts again on an empty root.
    import shutil

    shutil.rmtree(root)
    again = _shard(manifest, root, 0, 1, server.env())
    assert again.exit_code == 0, again.output
    assert server.store.stats()["jobs_created"] == sent  # nothing sent twice
    assert server.store.stats()["duplicate_ref_ids"] == {}
    collected = run_cli(["collect", str(root), *FLAGS[:-1]], server.env())
    assert collected.exit_code == 0, collected.output
    report = report_of(root / "shard-0-of-1")
    assert set(report["outcome"].to_list()) == {"succeeded"}  # adopted jobs are the run's own
    assert all("adopted" in m for m in report["error_message"].to_list())
    # A third start after the collector: the run is found, finished; still nothing sent.
    third = _shard(manifest, root, 0, 1, server.env())
    assert third.exit_code == 0, third.output
    assert server.store.stats()["jobs_created"] == sent


def test_rows_without_ref_id_are_sent_on_a_fresh_shard_only_when_asked(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 6, refs=False)
    held = run_cli(
        ["run", str(manifest), "--report-dir", str(tmp_path / "a"), "--shard", "0/1", *FLAGS], server.env()
    )
    assert held.exit_code == 1, held.output
    report = report_of(tmp_path / "a" / "shard-0-of-1")
    assert set(report["error_code"].to_list()) == {"NO_REF_ID"}
    assert server.jobs() == []
    # `retry` sends them: the user has seen why they were held and chooses to.
    retried = run_cli(["retry", str(tmp_path / "a" / "shard-0-of-1"), *FLAGS], server.env())
    assert retried.exit_code == 0, retried.output
    assert len(server.jobs()) == 6
    sent = run_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(tmp_path / "b"),
            "--shard",
            "0/1",
            "--send-without-ref-id",
            *FLAGS,
        ],
        server.env(),
    )
    assert sent.exit_code == 0, sent.output
    assert len(server.jobs()) == 12


def test_adopt_existing_on_a_plain_run_adopts_finished_and_running_jobs(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 5)
    first = run_cli(["run", str(manifest), "--report-dir", str(tmp_path / "a"), *FLAGS], server.env())
    assert first.exit_code == 0, first.output
    again = run_cli(
        ["run", str(manifest), "--report-dir", str(tmp_path / "b"), "--adopt-existing", *FLAGS], server.env()
    )
    assert again.exit_code == 0, again.output
    assert len(server.jobs()) == 5
    assert set(report_of(tmp_path / "b")["outcome"].to_list()) == {"succeeded"}
    both = run_cli(["run", str(manifest), "--adopt-existing", "--skip-existing", *FLAGS], server.env())
    assert both.exit_code == 2 and "choose one" in both.output


def test_a_collector_that_dies_before_the_reports_are_written_is_not_believed_later(
    tmp_path, emulator_server, monkeypatch
):
    """Every encode fails; the collector learns it (journal) and dies writing the reports: the next
    collect, resume and report must say failed, not the `submitted` of the --no-wait report."""
    import batch_ingest.rundir

    server = emulator_server(EmulatorConfig(**{**FAST, "failure_rate": 1.0}))
    manifest = url_manifest(tmp_path, 4)
    root = tmp_path / "root"
    assert _shard(manifest, root, 0, 1, server.env()).exit_code == 0
    real = batch_ingest.rundir.write_report_in_chunks

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # the process ends here: nothing after it runs

    monkeypatch.setattr(batch_ingest.rundir, "write_report_in_chunks", dies)
    died = run_cli(["collect", str(root), *FLAGS], server.env())
    assert died.exit_code == 130, died.output  # stopped while writing the first report
    monkeypatch.setattr(batch_ingest.rundir, "write_report_in_chunks", real)
    folder = root / "shard-0-of-1"
    resumed = run_cli(["resume", str(folder), *FLAGS], server.env())
    assert resumed.exit_code == 1, resumed.output
    assert set(report_of(folder)["outcome"].to_list()) == {"failed"}
    again = run_cli(["collect", str(root), *FLAGS], server.env())
    assert again.exit_code == 1, again.output


def test_a_new_batch_reusing_ref_ids_for_other_videos_is_sent_not_adopted(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    first = url_manifest(tmp_path, 4, name="night1.csv")
    assert _shard(first, tmp_path / "night1", 0, 1, server.env()).exit_code == 0
    # Tomorrow's batch: the CMS ids are stable, the videos are new.
    second = tmp_path / "night2.csv"
    second.write_text(
        "source,profile,ref_id\n"
        + "".join(f"https://cdn.example.com/v/new-{i}.mp4,100,r-{i}\n" for i in range(4))
    )
    result = _shard(second, tmp_path / "night2", 0, 1, server.env())
    assert result.exit_code == 0, result.output
    assert len(server.jobs()) == 8  # every new video sent, none taken for yesterday's job


def test_a_collector_stopped_by_sigterm_writes_what_it_knows_and_exits_130(tmp_path, emulator_server):
    import signal

    from .helpers import spawn_cli

    server = emulator_server(EmulatorConfig(**{**FAST, "encode_seconds": 600}))  # nothing ends meanwhile
    manifest = url_manifest(tmp_path, 3)
    root = tmp_path / "root"
    assert _shard(manifest, root, 0, 1, server.env()).exit_code == 0
    collector = spawn_cli(["collect", str(root), *FLAGS[:-1]], server.env())
    assert collector.stderr is not None
    for line in collector.stderr:  # the poller is at work once it says so
        if "with one poller" in line:
            break
    collector.send_signal(signal.SIGTERM)
    out, err = collector.communicate(timeout=60)
    assert collector.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert set(report_of(root / "shard-0-of-1")["outcome"].to_list()) == {"interrupted"}


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("https://media.example.com/v/1.mp4", "HTTPS://Media.Example.COM:443/v/1.mp4", True),
        ("http://h/x", "http://h:80/x", True),
        ("https://h/x", "https://h:8443/x", False),
        ("https://h/X.mp4", "https://h/x.mp4", False),  # a server may tell the path's case apart
        ("https://h/x?a=1", "https://h/x?a=2", False),
        ("https://h:99999/x", "https://h/x", False),
    ],
)
def test_spellings_of_one_url_are_one_url(a, b, same):
    from batch_ingest.submit import same_url

    assert same_url(a, b) is same and same_url(b, a) is same


def test_a_lost_shard_adopts_its_job_whatever_the_spelling_of_the_url(tmp_path, emulator_server):
    """Yesterday's manifest wrote the host in capitals and the default port: the platform's echo of it
    is the same video, adopted, not sent again."""
    import shutil

    server = emulator_server(EmulatorConfig(**FAST))
    first = tmp_path / "a.csv"
    first.write_text("source,profile,ref_id\nhttps://media.example.com/v/n1.mp4,100,n1\n")
    root = tmp_path / "root"
    assert _shard(first, root, 0, 1, server.env()).exit_code == 0
    shutil.rmtree(root)
    again = tmp_path / "b.csv"
    again.write_text("source,profile,ref_id\nHTTPS://Media.Example.com:443/v/n1.mp4,100,n1\n")
    assert _shard(again, root, 0, 1, server.env()).exit_code == 0
    assert len(server.jobs()) == 1


def test_retry_of_a_no_wait_run_leaves_its_submitted_rows_to_the_collector(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**{**FAST, "encode_seconds": 600}))  # still encoding
    run_dir = tmp_path / "r"
    sent = run_cli(
        ["run", str(url_manifest(tmp_path, 3)), "--report-dir", str(run_dir), "--no-wait", *FLAGS],
        server.env(),
    )
    assert sent.exit_code == 0, sent.output
    retried = run_cli(["retry", str(run_dir), *FLAGS], server.env())
    assert retried.exit_code == 0, retried.output  # nothing to retry: `submitted` is not a failure
    assert len(server.jobs()) == 3
