"""Bad manifests: each ends in exit 2 with a message naming the problem, or in rejected rows with a reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from batch_ingest.plan import plan_manifest

from .helpers import run_cli


def validate(path: Path, *extra: str):
    result = run_cli(["validate", str(path), "--json", *extra])
    assert "Traceback" not in result.output
    return result


def rejected(result) -> dict[int, str]:
    info = json.loads(result.output)
    return {r["row"]: r["reason"] for r in info["rejected_rows"]}


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


GOOD = "https://cdn.example.com/a.mp4"


def test_bom_and_crlf_and_case_and_spaces_are_fine(tmp_path):
    path = write(tmp_path, "m.csv", b"\xef\xbb\xbf Source ,PROFILE\r\n" + f"{GOOD},100\r\n".encode())
    result = validate(path)
    assert result.exit_code == 0
    assert json.loads(result.output)["to_submit"] == 1


def test_quoted_fields_with_commas_and_newlines(tmp_path):
    path = write(tmp_path, "m.csv", f'source,profile,description\n{GOOD},100,"one, two\nthree"\n')
    plan = plan_manifest(path)
    assert plan.frame["description"].to_list() == ["one, two\nthree"]


@pytest.mark.parametrize(
    ("name", "data", "needle"),
    [
        ("missing-column.csv", "url,profile\nhttps://a/x,1\n", "no source column"),
        ("empty.csv", "", "empty"),
        ("only-bom.csv", b"\xef\xbb\xbf\r\n", "empty"),
        ("latin1.csv", b"source,profile\nhttps://a.example/caf\xe9.mp4,100\n", "line 2 is not UTF-8"),
        ("header-only.csv", "source,profile\n", "no rows"),
        ("same-column-twice.csv", "source,Source \nhttps://a/x,https://a/y\n", "same column"),
        ("notes.xlsx", "source\nhttps://a/x\n", "--format"),
        ("broken.parquet", b"PAR1 this is not parquet", "not a readable parquet"),
        ("broken.ndjson", '{"source": "https://a/x", \n', "not a readable ndjson"),
    ],
)
def test_structural_problems_exit_2_naming_file_and_fix(tmp_path, name, data, needle):
    path = write(tmp_path, name, data)
    result = validate(path)
    assert result.exit_code == 2, result.output
    assert needle in result.output and name in result.output


def test_missing_manifest_and_folder_as_manifest(tmp_path):
    for path, needle in ((tmp_path / "nope.csv", "no such file"), (tmp_path, "folder")):
        result = validate(path)
        assert result.exit_code == 2 and needle in result.output


def test_parquet_with_wrong_column_types(tmp_path):
    path = tmp_path / "typed.parquet"
    pl.DataFrame({"source": [1, 2], "profile": [100, 100]}).write_parquet(path)
    result = validate(path)
    assert result.exit_code == 2 and "'source' holds Int64" in result.output
    nested = tmp_path / "nested.parquet"
    pl.DataFrame({"source": [GOOD], "profile": [[1, 2]]}).write_parquet(nested)
    result = validate(nested)
    assert result.exit_code == 2 and "'profile' holds List" in result.output


def test_parquet_numeric_profile_and_extra_columns_are_fine(tmp_path):
    path = tmp_path / "ok.parquet"
    pl.DataFrame({"source": [GOOD], "profile": [100], "size": [1.5], "tags": [["a"]]}).write_parquet(path)
    plan = plan_manifest(path)
    assert plan.ready.height == 1 and plan.extras == ["size", "tags"]


def test_row_level_problems_reject_rows_and_keep_the_good_ones(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"x" * 10)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "folder.mp4").mkdir()
    os.mkfifo(tmp_path / "pipe.mp4")
    rows = [
        "source,source_url,profile,ref_id",
        f"{GOOD},,100,ok-1",  # 1 good
        "file:///etc/passwd,,100,",  # 2
        "javascript:alert(1),,100,",  # 3
        "folder.mp4,,100,",  # 4
        "empty.mp4,,100,",  # 5
        "missing.mp4,,100,",  # 6
        "pipe.mp4,,100,",  # 7
        f"{GOOD},{GOOD},100,",  # 8 two sources
        ",,100,",  # 9 empty source
        "https://cdn.example.com/b.mp4,,hd,",  # 10 malformed profile
        "https://cdn.example.com/c.mp4,,,",  # 11 URL without profile
        f"{GOOD},,100,ok-1",  # 12 duplicate ref_id
        "https://cdn.example.com/has space.mp4,,100,",  # 13
        "https://,,100,",  # 14 no host
        "clip.mp4,,,clip",  # 15 good: file without profile uses the platform default
        "clip.mp4,,,clip-again",  # 16 good: a different key
        "https://cdn.example.com/d.mp4,,100,,extra",  # 17 ragged
    ]
    path = write(tmp_path, "m.csv", "\n".join(rows) + "\n")
    result = validate(path)
    assert result.exit_code == 1
    reasons = rejected(result)
    assert set(reasons) == set(range(2, 15)) | {17}
    expect = {
        2: "unsupported source scheme 'file:'",
        3: "unsupported source scheme 'javascript:'",
        4: "is a folder",
        5: "is empty",
        6: "file not found",
        7: "not a regular file",
        8: "more than one source",
        9: "empty source",
        10: "malformed profile 'hd'",
        11: "needs a job profile",
        12: "duplicate of row 1 (same ref_id)",
        13: "white space",
        14: "needs a host",
        17: "5 fields but the header has 4",
    }
    for row, needle in expect.items():
        assert needle in reasons[row], (row, reasons[row])
    info = json.loads(result.output)
    assert info["to_submit"] == 3 and info["rows"] == 17


def test_unreadable_file_is_rejected(tmp_path, monkeypatch):
    secret = tmp_path / "locked.mp4"
    secret.write_bytes(b"x" * 10)
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if str(file) == str(secret):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded_open)
    plan = plan_manifest(write(tmp_path, "m.csv", "source\nlocked.mp4\n"))
    assert plan.rejected["reason"].to_list() == [f"cannot read {secret}: Permission denied"]


def test_blank_lines_are_not_rows_and_are_counted(tmp_path):
    path = write(tmp_path, "m.csv", f"source,profile\n\n{GOOD},100\n,\n\nhttps://cdn.example.com/z.mp4,100\n")
    plan = plan_manifest(path)
    assert plan.frame["row"].to_list() == [1, 2]
    assert plan.blank_rows == 3 and "3 blank line(s) skipped" in plan.notes[0]


def test_default_profile_fills_empty_cells(tmp_path):
    path = write(tmp_path, "m.csv", f"source,profile\n{GOOD},\nhttps://cdn.example.com/y.mp4,ref:hd\n")
    plan = plan_manifest(path, default_profile="101")
    assert plan.frame["profile"].to_list() == ["101", "ref:hd"]
    assert plan.rejected.is_empty()


def test_derived_keys_are_deterministic(tmp_path):
    path = write(tmp_path, "m.csv", f"source,profile\n{GOOD},100\n{GOOD},101\n")
    first, second = plan_manifest(path), plan_manifest(path)
    assert first.frame["key"].to_list() == second.frame["key"].to_list()
    assert first.frame["key"].n_unique() == 2


def test_bad_manifest_in_run_exits_2_before_anything_is_sent(tmp_path, emulator_server):
    server = emulator_server()
    path = write(tmp_path, "m.csv", "url\nhttps://a/x\n")
    result = run_cli(["run", str(path), "-q"], server.env())
    assert result.exit_code == 2 and "no source column" in result.output
    assert server.stats()["requests_total"] == 0
