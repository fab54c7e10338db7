"""`batch-ingest prune`: old run folders go, runs in use or unfinished stay, links are not followed."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from batch_ingest import prune as prune_module
from batch_ingest.emulator import EmulatorConfig
from batch_ingest.errors import UsageError
from batch_ingest.journal import Journal
from batch_ingest.prune import DAY_S, TRASH_PREFIX, PruneResult, Verdict, prune
from batch_ingest.runfiles import JOURNAL_FILE, SUMMARY_JSON
from batch_ingest.runlock import RunLock
from batch_ingest.shard import ROOT_RECORD
from batch_ingest.status import probe_lock

from .helpers import FAST, FLAGS, PLAN_SCHEMA, run_cli, url_manifest

NOW = 1_800_000_000.0


def make_run(folder: Path, days_ago: float, *, unfinished: bool = False, now: float = NOW) -> Path:
    """A run folder that finished `days_ago` days before `now` (summary.json and the journal agree);
    `unfinished`: its rows are still pending and it has no summary (its age is the folder's mtime)."""
    folder.mkdir(parents=True)
    finished = now - days_ago * DAY_S
    plan = pl.DataFrame(
        [
            {
                "row": r,
                "key": f"k{r}",
                "source": f"https://cdn.example.com/{r}.mp4",
                "source_type": "url",
                "status": "ready" if unfinished else "rejected",
            }
            for r in (1, 2, 3)
        ],
        schema=PLAN_SCHEMA,
    )
    meta: dict[str, Any] = {"run_id": folder.name} | ({} if unfinished else {"finished_at": finished})
    Journal.create(folder / JOURNAL_FILE, plan, meta).close()
    if not unfinished:
        (folder / "report.parquet").write_bytes(b"PAR1" + bytes(1000))
        (folder / SUMMARY_JSON).write_text(
            json.dumps({"finished_at": datetime.fromtimestamp(finished, UTC).isoformat()})
        )
    RunLock(folder).acquire().release()  # its lock file, as a run leaves it
    os.utime(folder, (finished, finished))
    return folder


def names(result: PruneResult, verdict: Verdict) -> list[str]:
    return sorted(e.path.name for e in result.having(verdict))


def size_of(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    """Runs that finished 1, 5, 10 and 20 days ago, a folder that is no run and a file."""
    root = tmp_path / "reports"
    for days in (1, 5, 10, 20):
        make_run(root / f"d{days:02d}", days)
    (root / "notes").mkdir()
    (root / "notes" / "a.txt").write_text("keep me")
    (root / "README").write_text("keep me too")
    return root


def test_runs_older_than_keep_days_go_and_a_second_prune_finds_nothing_more(reports):
    sizes = {p.name: size_of(p) for p in reports.iterdir() if p.is_dir()}
    result = prune(reports, keep_days=7, now=NOW)
    assert names(result, Verdict.DELETE) == ["d10", "d20"]
    assert names(result, Verdict.KEEP) == ["d01", "d05"]
    assert result.bytes_freed == sizes["d10"] + sizes["d20"] and result.exit_code == 0
    assert sorted(p.name for p in reports.iterdir()) == ["README", "d01", "d05", "notes"]
    [entry] = [e for e in result.entries if e.path.name == "d20"]
    assert entry.time == NOW - 20 * DAY_S and entry.time_from == "summary.json"

    again = prune(reports, keep_days=7, now=NOW)
    assert names(again, Verdict.DELETE) == [] and again.bytes_freed == 0
    assert sorted(p.name for p in reports.iterdir()) == ["README", "d01", "d05", "notes"]


@pytest.mark.parametrize(
    ("policy", "gone"),
    [
        ({"keep": 2}, ["d10", "d20"]),
        ({"keep": 0}, ["d01", "d05", "d10", "d20"]),
        ({"keep_days": 7, "keep": 3}, ["d20"]),  # a run goes only when both let it go
        ({"keep_days": 0.5, "keep": 1}, ["d05", "d10", "d20"]),
        ({"keep_days": 30}, []),
    ],
)
def test_keep_newest_n_and_both_rules(reports, policy, gone):
    result = prune(reports, now=NOW, **policy)
    assert names(result, Verdict.DELETE) == gone
    assert all(not (reports / name).exists() for name in gone)


def test_unfinished_runs_stay_unless_asked_and_their_age_is_the_folders_mtime(tmp_path):
    root = tmp_path / "reports"
    make_run(root / "old", 30, unfinished=True)
    make_run(root / "young", 1, unfinished=True)
    result = prune(root, keep_days=7, now=NOW)
    [kept] = result.having(Verdict.UNFINISHED)
    assert kept.path.name == "old" and kept.time_from == "folder mtime"
    assert "3 of 3 rows unfinished" in kept.reason and f"batch-ingest resume {root / 'old'}" in kept.reason
    assert names(result, Verdict.KEEP) == ["young"]
    assert os.stat(root / "old").st_mtime == NOW - 30 * DAY_S  # looking changed nothing

    result = prune(root, keep_days=7, include_unfinished=True, now=NOW)
    assert names(result, Verdict.DELETE) == ["old"] and names(result, Verdict.KEEP) == ["young"]
    assert not (root / "old").exists() and (root / "young").exists()


def test_a_locked_run_is_never_deleted(tmp_path):
    root = tmp_path / "reports"
    make_run(root / "busy", 30)
    make_run(root / "busy-unfinished", 30, unfinished=True)
    locks = [RunLock(root / name).acquire() for name in ("busy", "busy-unfinished")]
    for lock in locks:
        lock.write_pid()
    try:
        for dry_run in (True, False):
            result = prune(root, keep_days=1, include_unfinished=True, dry_run=dry_run, now=NOW)
            assert names(result, Verdict.IN_USE) == ["busy", "busy-unfinished"]
            assert all(f"in use by process {os.getpid()}" in e.reason for e in result.having(Verdict.IN_USE))
            assert (root / "busy").is_dir() and (root / "busy-unfinished").is_dir()
    finally:
        for lock in locks:
            lock.release()
    result = prune(root, keep_days=1, now=NOW)
    assert names(result, Verdict.DELETE) == ["busy"] and names(result, Verdict.UNFINISHED) == [
        "busy-unfinished"
    ]


def test_it_deletes_under_the_runs_lock(reports, monkeypatch):
    renamed: list[tuple[str, bool]] = []
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        renamed.append((Path(src).name, probe_lock(Path(src)).held))
        real_rename(src, dst)

    monkeypatch.setattr(prune_module.os, "rename", rename)
    prune(reports, keep_days=7, now=NOW)
    assert renamed == [("d10", True), ("d20", True)]  # newest first, each while prune held its lock
    assert not any(p.name.startswith(TRASH_PREFIX) for p in reports.iterdir())


def test_dry_run_deletes_nothing_and_says_what_would_go(reports):
    before = sorted((str(p), p.lstat().st_mtime_ns) for p in reports.rglob("*"))
    dry = prune(reports, keep_days=7, dry_run=True, now=NOW)
    assert names(dry, Verdict.DELETE) == ["d10", "d20"] and dry.bytes_freed > 0
    assert (
        sorted((str(p), p.lstat().st_mtime_ns) for p in reports.rglob("*")) == before
    )  # not even a lock file
    real = prune(reports, keep_days=7, now=NOW)
    assert names(real, Verdict.DELETE) == names(dry, Verdict.DELETE) and real.bytes_freed == dry.bytes_freed


def test_symbolic_links_are_not_followed(tmp_path):
    root, outside = tmp_path / "reports", tmp_path / "elsewhere"
    make_run(outside / "precious-run", 30)
    (outside / "precious.mp4").write_bytes(bytes(50_000))
    root.mkdir()
    (root / "linked").symlink_to(outside / "precious-run")
    run = make_run(root / "old", 30)
    (run / "media").symlink_to(outside / "precious.mp4")
    result = prune(root, keep_days=7, now=NOW)
    [link] = result.having(Verdict.SYMLINK)
    assert link.path == root / "linked" and "not followed" in link.reason
    assert names(result, Verdict.DELETE) == ["old"]
    assert result.bytes_freed < 50_000  # the link, not what it points at
    assert (outside / "precious-run" / JOURNAL_FILE).is_file() and (
        outside / "precious.mp4"
    ).stat().st_size == 50_000
    assert (root / "linked").is_symlink()


def test_a_run_root_of_shards_goes_whole_or_not_at_all(tmp_path):
    root = tmp_path / "reports"
    shards = root / "migration"
    shards.mkdir(parents=True)
    (shards / ROOT_RECORD).write_text(json.dumps({"count": 2}))
    make_run(shards / "shard-0-of-2", 20)
    make_run(shards / "shard-1-of-2", 20, unfinished=True)
    result = prune(root, keep_days=7, now=NOW)
    [kept] = result.having(Verdict.UNFINISHED)
    assert kept.path == shards and "shard-1-of-2" in kept.reason
    assert (shards / "shard-0-of-2" / JOURNAL_FILE).is_file()  # not the finished shard alone either

    lock = RunLock(shards / "shard-1-of-2").acquire()
    try:
        result = prune(root, keep_days=7, include_unfinished=True, now=NOW)
        assert names(result, Verdict.IN_USE) == ["migration"] and "shard-1-of-2" in result.entries[0].reason
    finally:
        lock.release()

    (shards / ROOT_RECORD).write_text(json.dumps({"count": 3}))  # a shard that never started
    import shutil

    shutil.rmtree(shards / "shard-1-of-2")
    make_run(shards / "shard-1-of-2", 15)
    result = prune(root, keep_days=7, now=NOW)
    assert "shard-2-of-3 has no run yet" in result.having(Verdict.UNFINISHED)[0].reason

    (shards / ROOT_RECORD).write_text(json.dumps({"count": 2}))
    result = prune(root, keep_days=7, now=NOW)
    [gone] = result.having(Verdict.DELETE)
    assert gone.path == shards and gone.time == NOW - 15 * DAY_S  # the newest shard's finish
    assert list(root.iterdir()) == []


def test_what_an_interrupted_prune_left_is_removed(reports):
    leftover = reports / f"{TRASH_PREFIX}d30.1234abcd"
    (leftover / "deep").mkdir(parents=True)
    (leftover / "deep" / "report.csv").write_bytes(bytes(300))
    result = prune(reports, keep_days=30, now=NOW)
    [entry] = result.having(Verdict.DELETE)
    assert entry.path == leftover and "earlier prune" in entry.reason and entry.bytes == 300
    assert not leftover.exists()


def test_a_real_run_is_pruned_by_its_finish_time(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = url_manifest(tmp_path, 4)
    root = tmp_path / "reports"
    result = run_cli(["run", str(manifest), "--report-dir", str(root / "nightly"), *FLAGS], server.env())
    assert result.exit_code == 0, result.output
    finished = datetime.fromisoformat(
        json.loads((root / "nightly" / SUMMARY_JSON).read_text())["finished_at"]
    )
    assert names(prune(root, keep_days=7, now=finished.timestamp() + 6 * DAY_S), Verdict.DELETE) == []
    assert names(prune(root, keep_days=7, now=finished.timestamp() + 8 * DAY_S), Verdict.DELETE) == [
        "nightly"
    ]
    assert not (root / "nightly").exists()


# -- the command ------------------------------------------------------------------------------------


def test_the_command_prints_a_line_per_folder_and_the_total(tmp_path):
    root = tmp_path / "reports"
    now = time.time()
    make_run(root / "old", 30, now=now)
    make_run(root / "stuck", 30, unfinished=True, now=now)
    make_run(root / "new", 0.1, now=now)
    (root / "latest").symlink_to(root / "new")
    size = size_of(root / "old")

    dry = run_cli(["prune", str(root), "--keep-days", "7", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would delete {root / 'old'} (finished " in dry.output and "30.0 days ago" in dry.output
    assert (
        f"kept {root / 'stuck'}: unfinished:" in dry.output
        and "--include-unfinished deletes it" in dry.output
    )
    assert f"skipped {root / 'latest'}: a symbolic link: not followed" in dry.output
    assert dry.output.splitlines()[-1].startswith("would delete 1 folder(s), freeing")
    assert "--dry-run: nothing was deleted" in dry.output and (root / "old").is_dir()

    lock = RunLock(root / "stuck").acquire()
    lock.write_pid()
    try:
        done = run_cli(["prune", str(root), "--keep-days", "7", "--keep", "0"])
    finally:
        lock.release()
    assert done.exit_code == 0, done.output
    assert f"deleted {root / 'old'} (" in done.output
    assert f"kept {root / 'stuck'}: in use by process {os.getpid()}" in done.output
    assert done.output.splitlines()[-1] == (
        f"deleted 1 folder(s), {size / 1024:.1f} KiB ({size:,} bytes) freed; kept 2 run(s): "
        "1 by --keep-days/--keep, 1 in use"
    )
    data = json.loads(run_cli(["prune", str(root), "--keep", "5", "--json"]).output)
    assert data["deleted"] == 0 and {e["verdict"] for e in data["entries"]} == {"keep", "symlink"}


def test_bad_usage_exits_2_naming_the_fix(tmp_path):
    root = tmp_path / "reports"
    make_run(root / "run", 30)
    (root / "file").write_text("x")
    shards = tmp_path / "shards"
    make_run(shards / "shard-0-of-1", 30)
    for args, says in (
        ([str(root)], "--keep-days D"),
        ([str(tmp_path / "nowhere"), "--keep", "1"], "does not exist"),
        ([str(root / "file"), "--keep", "1"], "is not a folder"),
        ([str(root / "run"), "--keep", "1"], "is a run folder, not a folder of runs"),
        ([str(shards), "--keep", "1"], "is a run root of shards"),
        ([str(root), "--keep", "-1"], "-1"),
    ):
        result = run_cli(["prune", *args])
        assert result.exit_code == 2, (args, result.output)
        assert says in result.output and "Traceback" not in result.output, result.output
    with pytest.raises(UsageError):
        prune(root, keep_days=-1)
    assert (root / "run").is_dir()


def test_quiet_prints_nothing_when_all_went_well_for_cron(tmp_path):
    root = tmp_path / "reports"
    now = time.time()
    make_run(root / "old", 30, now=now)
    make_run(root / "stuck", 30, unfinished=True, now=now)
    done = run_cli(["prune", str(root), "--keep-days", "7", "-q"])
    assert done.exit_code == 0 and done.output == ""
    assert not (root / "old").exists() and (root / "stuck").is_dir()
