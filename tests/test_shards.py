"""`run --shard I/N`: one manifest split between N processes, every row in exactly one shard, a
restarted shard resuming its own run, and `report ROOT` merging them."""

from __future__ import annotations

import polars as pl
import pytest
from batch_ingest.emulator import EmulatorConfig
from batch_ingest.errors import UsageError
from batch_ingest.shard import Shard, parse_shard, select, shard_of

from .helpers import FAST, FLAGS, mixed_manifest, report_of, run_cli, summary_of


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_row_lands_in_exactly_one_shard_the_same_everywhere(count):
    frame = pl.DataFrame({"row": range(1, 501), "key": [f"k{i}" for i in range(500)]})
    parts = [select(frame, Shard(i, count))["row"].to_list() for i in range(count)]
    assert sorted(r for part in parts for r in part) == list(range(1, 501))
    # SHA-256, not Python's hash(): the same split in every process (PYTHONHASHSEED aside).
    assert shard_of(pl.Series(["k0", "k1"]), 1000).to_list() == [
        int.from_bytes(__import__("hashlib").sha256(b"k0").digest()[:8], "big") % 1000,
        int.from_bytes(__import__("hashlib").sha256(b"k1").digest()[:8], "big") % 1000,
    ]
    if count > 1:
        assert all(parts), "a shard of 500 rows came out empty"


def test_shard_by_a_column_keeps_its_values_together():
    frame = pl.DataFrame(
        {"row": range(1, 61), "key": [f"k{i}" for i in range(60)], "host": ["a", "b", "c"] * 20}
    )
    for i in range(4):
        hosts = select(frame, Shard(i, 4, by="host"), ["host"])["host"].unique().to_list()
        for host in hosts:  # a host's rows are all in this shard
            assert select(frame, Shard(i, 4, by="host"), ["host"]).filter(pl.col("host") == host).height == 20
    # Only the manifest's columns: never one the checks write (a row's shard would move with them).
    with pytest.raises(UsageError, match=r"--shard-by 'row'.*choose one of: key, host"):
        select(frame, Shard(0, 2, by="row"), ["host"])


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("2/8", {}, (2, 8, "--shard")),
        ("auto/8", {"JOB_COMPLETION_INDEX": "5"}, (5, 8, "JOB_COMPLETION_INDEX (Kubernetes Indexed Job)")),
        (
            "auto/4",
            {"AWS_BATCH_JOB_ARRAY_INDEX": "3"},
            (3, 4, "AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch array job)"),
        ),
        ("auto/4", {"PARALLEL_SEQ": "1"}, (0, 4, "PARALLEL_SEQ (GNU parallel)")),
    ],
)
def test_the_index_comes_from_the_flag_or_the_engine(text, env, expected):
    shard = parse_shard(text, env=env)
    assert (shard.index, shard.count, shard.origin) == expected


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("8/8", {}, "not in 0..7"),
        ("1/0", {}, "at least 1"),
        ("one/8", {}, "give I/N"),
        ("auto/8", {}, "none of JOB_COMPLETION_INDEX, AWS_BATCH_JOB_ARRAY_INDEX, PARALLEL_SEQ is set"),
        ("auto/8", {"JOB_COMPLETION_INDEX": "x"}, "not a whole number"),
        ("auto/2", {"PARALLEL_SEQ": "3"}, "index 2 .* not in 0..1"),
    ],
)
def test_a_bad_shard_is_a_usage_error_naming_the_fix(text, env, message):
    with pytest.raises(UsageError, match=message):
        parse_shard(text, env=env)


def test_three_shards_cover_the_manifest_once_and_a_restarted_shard_resumes(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 30)
    root = tmp_path / "root"
    for i in range(3):
        result = run_cli(
            [
                "run",
                str(manifest),
                "--report-dir",
                str(root),
                "--shard",
                f"{i}/3",
                "--send-without-ref-id",
                *FLAGS,
            ],
            server.env(),
        )
        assert result.exit_code == 0, result.output
        assert summary_of(root / f"shard-{i}-of-3")["shard"]["count"] == 3
    sent = len(server.jobs())
    assert sent == 30  # every row once, no row twice
    # Shard 1's pod is retried: it finds its run and resumes it, sending nothing again.
    again = run_cli(
        ["run", str(manifest), "--report-dir", str(root), "--shard", "1/3", "--send-without-ref-id", *FLAGS],
        server.env(),
    )
    assert again.exit_code == 0, again.output
    assert len(server.jobs()) == sent
    # The root stands for its shards: one merged report of the whole manifest, by manifest row.
    merged = run_cli(["report", str(root), "--json"])
    assert merged.exit_code == 0, merged.output
    assert '"rows": 30' in merged.output
    rows = sorted(r for i in range(3) for r in report_of(root / f"shard-{i}-of-3")["row"].to_list())
    assert rows == list(range(1, 31))
    # Another N on the same root would split the rows otherwise: refused.
    other = run_cli(
        ["run", str(manifest), "--report-dir", str(root), "--shard", "0/4", "--send-without-ref-id", *FLAGS],
        server.env(),
    )
    assert other.exit_code == 2 and "holds shards of N = 3, not 4" in other.output


def test_a_shard_needs_a_root_and_takes_its_share_of_the_rate(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 6)
    lonely = run_cli(["run", str(manifest), "--shard", "0/2", "--send-without-ref-id", *FLAGS], server.env())
    assert lonely.exit_code == 2 and "--shard needs --report-dir ROOT" in lonely.output
    flags = [f for f in FLAGS if f != "-q"]
    shared = run_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(tmp_path / "r"),
            "--shard",
            "0/2",
            "--send-without-ref-id",
            *flags[:-2],
            "--rate",
            "600",
        ],
        server.env(),
    )
    assert shared.exit_code == 0, shared.output
    assert "300 requests per minute, 1/2 of --rate" in shared.output
    assert summary_of(tmp_path / "r" / "shard-0-of-2")["settings"]["rate"] == 300


def test_a_rows_shard_does_not_depend_on_what_one_shard_saw_of_its_sources(tmp_path, emulator_server):
    """Shard 0 checks sources that cannot be reached (all rejected there), shard 1 does not check:
    still every row in exactly one shard, none sent twice (the split comes before any check)."""
    from batch_ingest.emulator.server import free_port

    server = emulator_server(EmulatorConfig(**FAST))
    dead = f"http://127.0.0.1:{free_port()}"
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,profile\n" + "".join(f"{dead}/v{i}.mp4,100\n" for i in range(20)))
    root = tmp_path / "root"
    first = run_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(root),
            "--shard",
            "0/2",
            "--send-without-ref-id",
            "--check-sources",
            *FLAGS,
        ],
        server.env(),
    )
    assert first.exit_code == 1, first.output  # its rows are rejected
    second = run_cli(
        ["run", str(manifest), "--report-dir", str(root), "--shard", "1/2", "--send-without-ref-id", *FLAGS],
        server.env(),
    )
    assert second.exit_code == 0, second.output
    rows = [report_of(root / f"shard-{i}-of-2")["row"].to_list() for i in range(2)]
    assert sorted(rows[0] + rows[1]) == list(range(1, 21)) and not set(rows[0]) & set(rows[1])
    assert len(server.jobs()) == len(rows[1])


def test_a_root_keeps_one_manifest_one_n_and_one_shard_by(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 10)
    root = tmp_path / "root"
    ok = run_cli(
        ["run", str(manifest), "--report-dir", str(root), "--shard", "0/2", "--send-without-ref-id", *FLAGS],
        server.env(),
    )
    assert ok.exit_code == 0, ok.output
    by = run_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(root),
            "--shard",
            "1/2",
            "--send-without-ref-id",
            "--shard-by",
            "source",
            *FLAGS,
        ],
        server.env(),
    )
    assert by.exit_code == 2 and "another --shard-by" in by.output
    other = tmp_path / "other.csv"
    other.write_text(manifest.read_text() + "https://cdn.example.com/extra.mp4,100,,x\n")
    changed = run_cli(
        ["run", str(other), "--report-dir", str(root), "--shard", "1/2", "--send-without-ref-id", *FLAGS],
        server.env(),
    )
    assert changed.exit_code == 2 and "another manifest" in changed.output
    half = run_cli(["report", str(root)])
    assert "shard-1-of-2 holds no run yet: its rows are `interrupted` here" in half.output
    (root / "shard-1-of-2").mkdir()  # started, no report yet: named as well, the rest still reported
    (root / "shard-1-of-2" / "plan.parquet").write_bytes(b"x")
    running = run_cli(["report", str(root)])
    assert running.exit_code == 0 and "no report yet from shard-1-of-2" in running.output


def test_a_shard_killed_while_creating_its_run_starts_again(tmp_path, emulator_server):
    """What a kill -9 leaves before the journal is in place (the plan, a journal being built): the
    restarted shard takes the folder, since nothing was sent yet."""
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 8)
    folder = tmp_path / "root" / "shard-0-of-2"
    folder.mkdir(parents=True)
    (folder / "plan.parquet").write_bytes(b"half a plan")
    (folder / "journal.sqlite.new").write_bytes(b"half a journal")
    result = run_cli(
        [
            "run",
            str(manifest),
            "--report-dir",
            str(tmp_path / "root"),
            "--shard",
            "0/2",
            "--send-without-ref-id",
            *FLAGS,
        ],
        server.env(),
    )
    assert result.exit_code == 0, result.output
    assert not (folder / "journal.sqlite.new").exists()
    assert len(server.jobs()) == report_of(folder).filter(pl.col("outcome") == "succeeded").height


def test_a_shard_resumed_on_its_own_takes_its_share_of_the_accounts_rate(tmp_path, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = mixed_manifest(tmp_path, 8)
    root = tmp_path / "root"
    flags = ["--poll-min-interval", "0.05", "--poll-max-interval", "0.2"]
    base = ["--report-dir", str(root), "--shard", "0/2", "--send-without-ref-id", *flags]
    canary = run_cli(["run", str(manifest), *base, "--rate", "600", "--limit", "1"], server.env())
    assert canary.exit_code == 0, canary.output
    folder = root / "shard-0-of-2"
    # The account's --rate given again to the shard's own folder: its 1/2, not all of it.
    resumed = run_cli(["resume", str(folder), "--all", "--rate", "600", *flags], server.env())
    assert resumed.exit_code == 0, resumed.output
    assert "this shard of 2 paces itself at 300 requests per minute" in resumed.output
