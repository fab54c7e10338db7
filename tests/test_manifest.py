"""Bad manifests: each ends in exit 2 with a message naming the problem, or in rejected rows with a reason."""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

import polars as pl
import pytest
from batch_ingest import manifest as manifest_module
from batch_ingest.errors import ManifestError, UsageError
from batch_ingest.manifest import RAGGED, parse_delimiter, parse_encoding, read_manifest
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
        (
            "latin1.csv",
            b"source,profile\nhttps://a.example/caf\xe9.mp4,100\n",
            "line 2, column 22 is not UTF-8",
        ),
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


# Manifests from spreadsheets: delimiters and encodings (issue 15).


def cells(frame: pl.DataFrame) -> dict[str, list]:
    return {name: frame[name].to_list() for name in frame.columns}


def test_semicolon_csv_with_a_comma_in_a_quoted_cell_is_sniffed(tmp_path):
    path = write(tmp_path, "m.csv", f'source;profile;description\r\n{GOOD};100;"one, two; three"\r\n')
    assert cells(read_manifest(path)) == {
        "source": [GOOD],
        "profile": ["100"],
        "description": ["one, two; three"],
    }
    result = validate(path)  # the whole way: the plan takes it too
    assert result.exit_code == 0 and json.loads(result.output)["to_submit"] == 1


def test_comma_csv_with_semicolons_in_quoted_cells_stays_comma(tmp_path):
    # Two semicolons on every line, one comma: counting characters would take the semicolon.
    data = f'source,"a;b;c"\n{GOOD},"x;y;z"\nhttps://cdn.example.com/b.mp4,"1;2;3"\n'
    frame = read_manifest(write(tmp_path, "m.csv", data))
    assert cells(frame) == {"source": [GOOD, "https://cdn.example.com/b.mp4"], "a;b;c": ["x;y;z", "1;2;3"]}


@pytest.mark.parametrize(("name", "sep"), [("m.csv", "\t"), ("m.txt", "\t"), ("m.csv", "|"), ("m.tsv", "\t")])
def test_tab_and_pipe_are_sniffed(tmp_path, name, sep):
    path = write(tmp_path, name, f"source{sep}name\n{GOOD}{sep}a, b; c\n")
    assert cells(read_manifest(path)) == {"source": [GOOD], "name": ["a, b; c"]}


def test_tsv_means_tab_without_sniffing(tmp_path):
    path = write(tmp_path, "m.tsv", f"source;profile\n{GOOD};100\n")
    with pytest.raises(ManifestError, match=r"semicolon-separated: pass --delimiter ';'"):
        read_manifest(path)
    assert read_manifest(path, delimiter=";").columns == ["source", "profile"]


def test_sniffing_needs_rows_as_wide_as_the_header(tmp_path):
    """Rows of other widths in the first lines: not taken as semicolon-separated, but the error says so."""
    path = write(tmp_path, "m.csv", f"source;profile\n{GOOD};100;extra\n")
    with pytest.raises(ManifestError, match=r"no source column.*semicolon-separated: pass --delimiter ';'"):
        read_manifest(path)
    assert read_manifest(path, delimiter="semicolon").columns == ["source", "profile", RAGGED]


def test_explicit_delimiter_overrides_the_sniff(tmp_path):
    # Read with ';' (sniffed first) and with '|' the header has a source column.
    path = write(tmp_path, "m.csv", f"source|ref_id;source_url\n{GOOD}|r1;x\n")
    assert read_manifest(path).columns == ["source|ref_id", "source_url"]
    assert cells(read_manifest(path, delimiter="pipe")) == {"source": [GOOD], "ref_id;source_url": ["r1;x"]}
    # A delimiter given is the delimiter: no sniffing behind its back.
    semicolons = write(tmp_path, "s.csv", f"source;profile\n{GOOD};100\n")
    with pytest.raises(ManifestError, match=r"looks semicolon-separated: pass --delimiter ';'"):
        read_manifest(semicolons, delimiter=",")


@pytest.mark.parametrize(
    ("header", "hint"),
    [
        ("url;profile", "semicolon-separated: pass --delimiter ';'"),
        ("url\tprofile", "tab-separated: pass --delimiter tab"),
        ("url|profile", "pipe-separated: pass --delimiter '|'"),
    ],
)
def test_one_column_header_names_the_delimiter_it_holds(tmp_path, header, hint):
    path = write(tmp_path, "m.csv", f"{header}\nhttps://a/x\n")
    result = validate(path)
    assert result.exit_code == 2 and "no source column" in result.output and hint in result.output


def test_one_column_header_without_a_delimiter_has_no_hint(tmp_path):
    with pytest.raises(ManifestError) as caught:
        read_manifest(write(tmp_path, "m.csv", "url\nhttps://a/x\n"))
    assert "--delimiter" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (";", ";"),
        ("\t", "\t"),
        ("\\t", "\t"),
        ("tab", "\t"),
        (" TAB ", "\t"),
        ("comma", ","),
        ("Semicolon", ";"),
        ("pipe", "|"),
        ("|", "|"),
        (" ; ", ";"),
    ],
)
def test_parse_delimiter_accepts_a_character_or_its_name(text, expected):
    assert parse_delimiter(text) == expected


@pytest.mark.parametrize("text", ["", "tabs", ";;", '"', "a", "7", "\n", "\uff1b", "\\n"])
def test_parse_delimiter_refuses_the_rest_naming_the_option(text):
    with pytest.raises(UsageError, match=r"--delimiter .*tab, comma, semicolon, pipe"):
        parse_delimiter(text)


def test_read_manifest_checks_the_delimiter_and_encoding_it_is_given(tmp_path):
    path = write(tmp_path, "m.csv", f"source\n{GOOD}\n")
    with pytest.raises(UsageError, match="--delimiter 'colon'"):
        read_manifest(path, delimiter="colon")
    with pytest.raises(UsageError, match="--encoding 'klingon'"):
        read_manifest(path, encoding="klingon")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("latin-1", "iso8859-1"),
        ("Shift-JIS", "shift_jis"),
        ("sjis", "shift_jis"),
        ("windows-1252", "cp1252"),
        ("UTF8", "utf-8"),
    ],
)
def test_parse_encoding_gives_the_codec_name(text, expected):
    assert parse_encoding(text) == expected


@pytest.mark.parametrize("text", ["klingon", "", "base64", "rot13"])
def test_parse_encoding_refuses_what_reads_no_text(text):
    with pytest.raises(UsageError, match=r"--encoding .*e\.g\. .*shift_jis"):
        parse_encoding(text)


def test_cp1252_semicolon_export_reads_with_its_encoding(tmp_path):
    """The French Excel export: semicolons and cp1252."""
    path = write(tmp_path, "m.csv", f"source;name\r\n{GOOD};Café crème – été\r\n".encode("cp1252"))
    with pytest.raises(
        ManifestError, match=rf"line 2, column {len(GOOD) + 5} is not UTF-8 text.*--encoding cp1252"
    ):
        read_manifest(path)
    assert cells(read_manifest(path, encoding="cp1252")) == {"source": [GOOD], "name": ["Café crème – été"]}


JAPANESE = "東京タワーの夜景（第１話）"


def test_shift_jis_export_reads_with_its_encoding(tmp_path):
    path = write(tmp_path, "m.csv", f"source,name,ref_id\r\n{GOOD},{JAPANESE},夜景-1\r\n".encode("shift_jis"))
    with pytest.raises(
        ManifestError, match=rf"line 2, column {len(GOOD) + 2} is not UTF-8 text.*--encoding shift_jis"
    ):
        read_manifest(path)
    frame = read_manifest(path, encoding="shift_jis")
    assert cells(frame) == {"source": [GOOD], "name": [JAPANESE], "ref_id": ["夜景-1"]}


def test_windows_japanese_beyond_shift_jis_is_told_to_use_cp932(tmp_path):
    name = "ドラマ①"  # a circled digit: in cp932, which Excel writes, and not in Shift-JIS proper
    path = write(tmp_path, "m.csv", f"source,name\n{GOOD},{name}\n".encode("cp932"))
    with pytest.raises(
        ManifestError, match=rf"column {len(GOOD) + 5} is not shift_jis text.*--encoding cp932"
    ):
        read_manifest(path, encoding="shift_jis")
    assert read_manifest(path, encoding="cp932")["name"].to_list() == [name]


@pytest.mark.parametrize("step", [1, 3, 1 << 20])
def test_transcoding_is_the_same_at_any_chunk_size(tmp_path, monkeypatch, step):
    monkeypatch.setattr(manifest_module, "_STEP", step)
    text = f"source,name\n{GOOD},{JAPANESE}\nhttps://cdn.example.com/b.mp4,ｶﾀｶﾅ・かな\n"
    for encoding in ("shift_jis", "utf-16"):
        path = write(tmp_path, f"{encoding}.csv", text.encode(encoding))
        frame = read_manifest(path, encoding=encoding)
        assert frame["name"].to_list() == [JAPANESE, "ｶﾀｶﾅ・かな"], (encoding, step)
    bad = write(tmp_path, "bad.csv", f"source\n{GOOD}\nhttps://x/ñandú".encode() + b"\xff.mp4\n")
    with pytest.raises(ManifestError, match=r"line 3, column 16 is not UTF-8 text"):
        read_manifest(bad)


def test_decode_error_counts_characters_not_bytes(tmp_path):
    # Two-byte characters before the bad byte: column 16 in characters, byte 17 of the line.
    data = f"source\n{GOOD}\nhttps://x/ñandú".encode() + b"\xff.mp4\n"
    with pytest.raises(ManifestError, match=r"line 3, column 16 is not UTF-8 text") as caught:
        read_manifest(write(tmp_path, "m.csv", data))
    assert "byte" not in str(caught.value)


def test_utf16_with_a_byte_order_mark_needs_no_option(tmp_path):
    """Excel's "Unicode text": UTF-16 LE with its mark, tab-separated, CRLF, named .txt."""
    text = f"source\tname\tprofile\r\n{GOOD}\t{JAPANESE}\t100\r\n"
    little = write(tmp_path, "m.txt", codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    big = write(tmp_path, "big.csv", codecs.BOM_UTF16_BE + text.encode("utf-16-be"))
    for path in (little, big):
        assert cells(read_manifest(path)) == {"source": [GOOD], "name": [JAPANESE], "profile": ["100"]}
        # naming the encoding with its byte order, the mark is not read as part of the header
        assert read_manifest(path, encoding="utf-16").columns == ["source", "name", "profile"]
    assert read_manifest(little, encoding="utf-16-le").columns == ["source", "name", "profile"]
    result = validate(little)
    assert result.exit_code == 0 and json.loads(result.output)["to_submit"] == 1


def test_a_byte_order_mark_that_contradicts_the_encoding_given(tmp_path):
    path = write(tmp_path, "m.csv", codecs.BOM_UTF16_LE + f"source\n{GOOD}\n".encode("utf-16-le"))
    with pytest.raises(UsageError, match="UTF-16 byte order mark, but --encoding cp1252"):
        read_manifest(path, encoding="cp1252")
    utf8 = write(tmp_path, "u.csv", codecs.BOM_UTF8 + f"source\n{GOOD}\n".encode())
    assert read_manifest(utf8, encoding="utf-8").columns == ["source"]


def test_utf16_without_a_byte_order_mark_is_named(tmp_path):
    path = write(tmp_path, "m.csv", f"source,name\n{GOOD},x\n".encode("utf-16-le"))
    with pytest.raises(ManifestError, match="--encoding utf-16-le"):
        read_manifest(path)
    assert read_manifest(path, encoding="utf-16-le").columns == ["source", "name"]
    accented = write(tmp_path, "a.csv", f"source,name\n{GOOD},é\n".encode("utf-16-le"))
    with pytest.raises(ManifestError, match="--encoding utf-16-le"):
        read_manifest(accented)


def test_empty_after_decoding_is_empty(tmp_path):
    path = write(tmp_path, "m.csv", codecs.BOM_UTF16_LE + "\r\n".encode("utf-16-le"))
    with pytest.raises(ManifestError, match="the file is empty"):
        read_manifest(path)


@pytest.mark.parametrize("option", ["delimiter", "encoding"])
def test_delimiter_and_encoding_apply_to_csv_only(tmp_path, option):
    parquet = tmp_path / "m.parquet"
    pl.DataFrame({"source": [GOOD]}).write_parquet(parquet)
    ndjson = write(tmp_path, "m.ndjson", json.dumps({"source": GOOD}) + "\n")
    value = {"delimiter": ";", "encoding": "cp1252"}[option]
    for path, kind in ((parquet, "parquet"), (ndjson, "ndjson")):
        with pytest.raises(UsageError, match=rf"--{option} applies to CSV manifests only.*{kind}"):
            read_manifest(path, **{option: value})
        assert read_manifest(path).columns == ["source"]


@pytest.mark.parametrize(
    ("name", "encoding"),
    [
        ("みんな", "shift_jis"),  # reads as cp1252 too, half of it letters: the kana tell
        ("東京", "shift_jis"),  # reads as cp1252 too, but as punctuation
        ("Élève", "cp1252"),  # reads as Shift-JIS too, but without kana
        ("“Quoted” – naïve", "cp1252"),  # punctuation, but not Shift-JIS
    ],
)
def test_a_file_that_is_not_utf8_is_told_its_likeliest_encoding(tmp_path, name, encoding):
    path = write(tmp_path, "m.csv", f"source,name\n{GOOD},{name}\n".encode(encoding))
    with pytest.raises(
        ManifestError, match=rf"it reads as {encoding}\b.*: pass --encoding {encoding}, or save"
    ):
        read_manifest(path)
    assert read_manifest(path, encoding=encoding)["name"].to_list() == [name]


def test_damaged_utf16_is_not_told_it_looks_like_utf16(tmp_path):
    path = write(
        tmp_path, "m.csv", codecs.BOM_UTF16_LE + f"source\n{GOOD}\n".encode("utf-16-le") + b"\x00\xd8"
    )
    with pytest.raises(
        ManifestError, match=r"line 3, column 1 is not utf-16 text: the file is damaged or not utf-16"
    ):
        read_manifest(path)


def test_utf8_read_with_another_encoding_is_told_to_leave_it_out(tmp_path):
    path = write(tmp_path, "m.csv", f"source,name\n{GOOD},日本語の名前\n".encode())
    with pytest.raises(
        ManifestError, match=r"is not shift_jis text: it reads as UTF-8: leave --encoding out"
    ):
        read_manifest(path, encoding="sjis")


def test_one_ragged_row_does_not_stop_the_separator_being_detected(tmp_path):
    path = tmp_path / "m.csv"
    rows = [f"https://cdn.example.com/{i}.mp4;100" for i in range(9)]
    rows.insert(3, "https://cdn.example.com/x.mp4;100;extra")  # one row too wide: the planner rejects it
    path.write_text("source;profile\n" + "\n".join(rows) + "\n", encoding="utf-8")
    frame = read_manifest(path)
    assert frame.height == 10 and frame["profile"].to_list()[:3] == ["100"] * 3
    assert frame["__ragged__"][3] is not None


def test_a_cp1252_file_read_as_latin_1_is_named_not_sent_garbled(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(
        "source,profile,name\nhttps://cdn.example.com/a.mp4,100,L\u2019\u0153uvre \u20ac5\n".encode("cp1252")
    )
    with pytest.raises(
        ManifestError, match=r"line 2, column 36 reads as a control character.*--encoding cp1252"
    ):
        read_manifest(path, encoding="latin-1")
    assert read_manifest(path, encoding="cp1252")["name"].to_list() == ["L\u2019\u0153uvre \u20ac5"]
