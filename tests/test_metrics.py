"""--metrics-file: the Prometheus text format (checked by a strict parser of the format: prometheus_client is
not a dependency), every outcome present, the last success kept across failed runs, the atomic 0644
write, and the error an unwritable path gives."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from batch_ingest.errors import BatchIngestError, ConfigError
from batch_ingest.metrics import (
    LAST_SUCCESS,
    MetricsWriteError,
    check_metrics_path,
    escape_label,
    merge_summaries,
    read_last_success,
    render_metrics,
    write_metrics,
)
from batch_ingest.vocabulary import OUTCOMES

FINISHED = "2026-01-01T02:00:00+00:00"
FINISHED_TS = datetime(2026, 1, 1, 2, tzinfo=UTC).timestamp()

# The text exposition format 0.0.4, strictly: https://prometheus.io/docs/instrumenting/exposition_formats/
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(
    rf"^(?P<name>{_NAME})(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)?\}})? (?P<value>\S+)(?: (?P<ts>-?\d+))?$"
)
_HELP = re.compile(rf"^# HELP ({_NAME}) ((?:[^\\\n]|\\[\\n])*)$")
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")

Series = tuple[str, frozenset[tuple[str, str]]]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_exposition(text: str) -> tuple[dict[Series, float], dict[str, str]]:
    """(value of each series, type of each family), or AssertionError naming the first line that breaks the
    format: every family once, HELP and TYPE before its samples, no series twice, a newline at the end."""
    assert text.endswith("\n") and not text.endswith("\n\n"), "the text must end with one newline"
    values: dict[Series, float] = {}
    types: dict[str, str] = {}
    helped: set[str] = set()
    family: str | None = None
    for number, line in enumerate(text[:-1].split("\n"), 1):
        if m := _HELP.match(line):
            assert m.group(1) not in helped, f"line {number}: second HELP for {m.group(1)}"
            helped.add(m.group(1))
            family = m.group(1)
        elif m := _TYPE.match(line):
            name = m.group(1)
            assert name not in types and name == family, f"line {number}: TYPE out of place"
            types[name] = m.group(2)
        elif line.startswith("#"):
            continue  # a comment
        elif m := _SAMPLE.match(line):
            name = m["name"]
            assert name == family and name in types, f"line {number}: sample outside its family: {line!r}"
            pairs = re.findall(_LABEL, m["labels"] or "")
            labels = frozenset((k, _unescape(v)) for k, v in pairs)
            assert len({k for k, _ in pairs}) == len(pairs), f"line {number}: a label twice"
            assert (name, labels) not in values, f"line {number}: series twice"
            values[(name, labels)] = float(m["value"])  # Go's ParseFloat forms: 1, 1.5, 1e9, NaN, +Inf
        else:
            raise AssertionError(f"line {number} is not in the exposition format: {line!r}")
    return values, types


def value(values: dict[Series, float], name: str, **labels: str) -> float:
    return values[(f"batch_ingest_{name}", frozenset(labels.items()))]


def summary(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "run_id": "r1",
        "started_at": "2026-01-01T01:00:00+00:00",
        "finished_at": FINISHED,
        "elapsed_s": 3599.5,
        "api_requests": 1050,
        "rate_limited": 3,
        "rows": 1000,
        "outcomes": {"succeeded": 990, "failed": 7, "rejected": 3},
    }
    return {**base, **changes}


@pytest.fixture
def umask_077() -> Iterator[None]:
    """The CLI's umask: files are their user's alone unless made otherwise."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_the_output_parses_and_holds_every_outcome_zeros_included() -> None:
    values, types = parse_exposition(render_metrics(summary(), 1))
    assert set(types.values()) == {"gauge"}
    for outcome in OUTCOMES:
        expected = {"succeeded": 990, "failed": 7, "rejected": 3}.get(outcome.value, 0)
        assert value(values, "rows", outcome=outcome.value) == expected
    assert value(values, "api_requests") == 1050 and value(values, "rate_limited") == 3
    assert value(values, "run_duration_seconds") == 3599.5
    assert value(values, "exit_code") == 1
    assert value(values, "last_run_timestamp_seconds") == FINISHED_TS
    assert value(values, "last_success_timestamp_seconds") == 0  # never succeeded yet
    assert not [n for n in types if n.endswith("_total")]  # per-run gauges are not counters


def test_the_parser_is_strict() -> None:
    """The check above proves something only if the parser refuses what the format does not allow."""
    good = "# HELP m x\n# TYPE m gauge\nm 1\n"
    parse_exposition(good)
    for bad in (
        "# HELP m x\n# TYPE m gauge\nm 1",  # no final newline
        '# HELP m x\n# TYPE m gauge\nm{a="1"} 1\nm{a="1"} 2\n',  # a series twice
        '# HELP m x\n# TYPE m gauge\nm{a="x\ny"} 1\n',  # a raw newline in a label
        '# HELP m x\n# TYPE m gauge\nm{a="\\t"} 1\n',  # an escape the format does not have
        "# HELP m x\n# TYPE m gauge\nm one\n",  # not a number
        "# TYPE m gauge\nm 1\n",  # no HELP
        "# HELP m x\n# TYPE m gauge\nn 1\n",  # another family's sample
    ):
        with pytest.raises((AssertionError, ValueError)):
            parse_exposition(bad)


def test_a_batch_label_is_escaped_and_reads_back() -> None:
    name = 'night"ly\\ \nrun'
    text = render_metrics(summary(), 0, batch=name)
    assert escape_label(name) == 'night\\"ly\\\\ \\nrun'
    values, _ = parse_exposition(text)
    assert value(values, "rows", batch=name, outcome="succeeded") == 990
    assert value(values, "exit_code", batch=name) == 0
    assert all(dict(labels).get("batch") == name for _, labels in values)
    assert "run_id" not in text and "r1" not in text  # no per-run label: one series per job, not per night


def test_without_a_summary_every_count_is_zero() -> None:
    values, _ = parse_exposition(render_metrics(None, 2, now=1_800_000_000.5))
    assert value(values, "exit_code") == 2 and value(values, "rows", outcome="succeeded") == 0
    assert value(values, "last_run_timestamp_seconds") == 1_800_000_000.5


def test_the_last_success_is_kept_when_a_run_fails(tmp_path: Path) -> None:
    path = tmp_path / "batch_ingest.prom"
    write_metrics(path, summary(), 0)
    assert read_last_success(path) == FINISHED_TS
    later = summary(finished_at="2026-01-02T02:00:00+00:00")
    write_metrics(path, later, 1)
    values, _ = parse_exposition(path.read_text())
    assert value(values, "last_success_timestamp_seconds") == FINISHED_TS
    assert value(values, "last_run_timestamp_seconds") == FINISHED_TS + 86400
    write_metrics(path, later, 3)  # a second failure keeps it too
    assert read_last_success(path) == FINISHED_TS
    write_metrics(path, summary(finished_at="2026-01-03T02:00:00+00:00"), 0)
    assert read_last_success(path) == FINISHED_TS + 2 * 86400


def test_the_kept_success_is_the_same_batchs(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    write_metrics(path, summary(), 0, batch="nightly")
    assert read_last_success(path, batch="nightly") == FINISHED_TS
    assert read_last_success(path) is None and read_last_success(path, batch="other") is None
    write_metrics(path, summary(), 1, batch="other")
    values, _ = parse_exposition(path.read_text())
    assert value(values, "last_success_timestamp_seconds", batch="other") == 0


@pytest.mark.parametrize(
    "old",
    [
        "garbage\n",
        f"{LAST_SUCCESS} NaN\n",
        f"{LAST_SUCCESS} -5\n",
        f"{LAST_SUCCESS} x\n",
        "\udcff",
    ],
)
def test_an_unreadable_old_file_is_no_last_success(tmp_path: Path, old: str) -> None:
    path = tmp_path / "m.prom"
    path.write_bytes(old.encode("utf-8", "surrogateescape"))
    write_metrics(path, summary(), 1)
    values, _ = parse_exposition(path.read_text())
    assert value(values, "last_success_timestamp_seconds") == 0


def test_a_foreign_line_with_a_timestamp_is_read(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    path.write_text(f'{LAST_SUCCESS}{{batch="a"}} 1700000000.5 1700000000000\n')
    assert read_last_success(path, batch="a") == 1_700_000_000.5


def test_the_file_is_written_atomically_readable_by_the_collector(tmp_path: Path, umask_077: None) -> None:
    path = tmp_path / "batch_ingest.prom"
    path.write_text("old\n")
    os.chmod(path, 0o600)
    assert write_metrics(path, summary(), 0) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["batch_ingest.prom"]  # no temporary file left
    parse_exposition(path.read_text())


def test_the_temporary_file_is_not_one_the_collector_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """node_exporter reads *.prom: the file being written must not be one, or it could read it half-written."""
    names: list[str] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        names.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_metrics(tmp_path / "x.prom", summary(), 0)
    (name,) = names
    assert name.startswith(".x.prom.") and not name.endswith(".prom")


@pytest.mark.parametrize("case", ["no folder", "a file as folder", "a folder as file", "read-only folder"])
def test_an_unwritable_path_is_a_metrics_write_error(tmp_path: Path, case: str) -> None:
    (tmp_path / "file").write_text("x")
    path = {
        "no folder": tmp_path / "missing" / "m.prom",
        "a file as folder": tmp_path / "file" / "m.prom",
        "a folder as file": tmp_path,
        "read-only folder": tmp_path / "ro" / "m.prom",
    }[case]
    if case == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes in a read-only folder")
        path.parent.mkdir()
        path.parent.chmod(0o500)
    try:
        with pytest.raises(MetricsWriteError) as caught:
            write_metrics(path, summary(), 0)
    finally:
        if case == "read-only folder":
            path.parent.chmod(0o700)
    message = str(caught.value)
    assert str(path) in message and "--metrics-file" in message and "unchanged" in message
    assert isinstance(caught.value, BatchIngestError)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_check_metrics_path_before_the_run(tmp_path: Path) -> None:
    assert check_metrics_path(tmp_path / "m.prom") == tmp_path / "m.prom"
    with pytest.raises(ConfigError, match=r"--metrics-file .* is a folder"):
        check_metrics_path(tmp_path)
    with pytest.raises(ConfigError, match="does not exist: create it"):
        check_metrics_path(tmp_path / "nope" / "m.prom")


def test_merge_summaries_for_collect() -> None:
    a = summary(run_id="a", run_dir="/r/a", elapsed_s=10.0, started_at="2026-01-01T00:00:00+00:00")
    b = summary(
        run_id="b",
        run_dir="/r/b",
        elapsed_s=30.0,
        finished_at="2026-01-01T03:00:00+00:00",
        outcomes={"succeeded": 5, "timed_out": 1},
        abort_reason="too many errors",
    )
    merged = merge_summaries([a, b], exit_code=3)
    assert merged["outcomes"] == {"succeeded": 995, "failed": 7, "rejected": 3, "timed_out": 1}
    assert merged["api_requests"] == 2100 and merged["rate_limited"] == 6 and merged["rows"] == 2000
    assert merged["started_at"] == "2026-01-01T00:00:00+00:00"
    assert merged["finished_at"] == "2026-01-01T03:00:00+00:00"
    assert merged["elapsed_s"] == 30.0 and merged["run_ids"] == ["a", "b"]
    assert merged["abort_reasons"] == ["too many errors"] and merged["exit_code"] == 3
    values, _ = parse_exposition(render_metrics(merged, 3))
    assert value(values, "rows", outcome="timed_out") == 1
