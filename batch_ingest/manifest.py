"""Reading a manifest (CSV, Parquet or NDJSON) into a polars frame of text columns.

Everything structural is checked here and raised as `ManifestError` (exit 2) naming the
file, the problem and the columns found. Row-level problems are left to `plan.py`.

A CSV is read as it comes out of a spreadsheet: UTF-8 unless a byte order mark says UTF-16 or
`--encoding` names another code page (transcoded to UTF-8, which the polars reader needs), with
commas unless `--delimiter` says otherwise or the header, read with commas, has no source column and
a semicolon, tab or pipe makes a consistent table of it (`.tsv` means tab).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import re
from pathlib import Path

import polars as pl

from .errors import ManifestError, UsageError

FORMATS = ("csv", "parquet", "ndjson")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",  # Excel's "Unicode text": UTF-16, tab-separated
    ".parquet": "parquet",
    ".pq": "parquet",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}
SOURCE_COLUMNS = ("source", "source_url", "source_file")
KNOWN_COLUMNS = (*SOURCE_COLUMNS, "profile", "ref_id", "name", "description")
DELIMITER_WORDS = {"comma": ",", "semicolon": ";", "tab": "\t", "pipe": "|"}
_DELIMITER_WORD = {c: w for w, c in DELIMITER_WORDS.items()}
_DELIMITER_SHOWN = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
_DELIMITER_HELP = "one character such as ';' or '|', or tab, comma, semicolon, pipe"
_ENCODING_EXAMPLES = "utf-8, cp1252, latin-1, shift_jis, cp932 (Windows Japanese) or utf-16"
_UTF8 = ("utf-8", "utf-8-sig")
# A byte order mark names its encoding (UTF-32 LE first: its mark starts like UTF-16 LE's). A UTF-8
# file never starts with FF or FE, so reading the others by their mark changes no file that read before.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32", ("utf-32", "utf-32-le")),
    (codecs.BOM_UTF32_BE, "utf-32", ("utf-32", "utf-32-be")),
    (codecs.BOM_UTF8, "utf-8", _UTF8),
    (codecs.BOM_UTF16_LE, "utf-16", ("utf-16", "utf-16-le")),
    (codecs.BOM_UTF16_BE, "utf-16", ("utf-16", "utf-16-be")),
)
_STEP = 1 << 20  # bytes decoded at a time: never a second whole copy of a large manifest as text
_SNIFF_LINES, _SNIFF_BYTES = 20, 1 << 16  # the start of a CSV whose delimiter is guessed
# What an undecodable byte decodes to while looking for the first one: strict codecs never yield
# a lone surrogate, so the first one found is where the text stops being valid.
_BAD = "\udfff"


def _mark_undecodable(exc: UnicodeError) -> tuple[str, int]:
    if isinstance(exc, UnicodeDecodeError):
        return _BAD, exc.end
    raise exc


codecs.register_error("batch_ingest.mark_undecodable", _mark_undecodable)


def parse_delimiter(text: str) -> str:
    """The CSV delimiter `--delimiter` names: one character, or tab, comma, semicolon, pipe, or \\t."""
    word = text if len(text) == 1 else text.strip()
    found = DELIMITER_WORDS.get(word.lower(), "\t" if word == "\\t" else word)
    # polars splits on one byte; a quote, a line break or a letter cannot separate cells
    if len(found) == 1 and found.isascii() and not found.isalnum() and found not in '"\r\n':
        return found
    raise UsageError(f"--delimiter {text!r} is not a delimiter: use {_DELIMITER_HELP}")


def parse_encoding(text: str) -> str:
    """The Python codec `--encoding` names, by its canonical name (`latin-1` is `iso8859-1`)."""
    try:
        name = codecs.lookup(text.strip()).name
        # a codec of bytes to bytes (base64) or of text to text (rot13) is found but reads no text
        b"x".decode(name, "ignore")
    except (LookupError, ValueError):
        raise UsageError(
            f"--encoding {text!r} is not a text encoding Python knows: use e.g. {_ENCODING_EXAMPLES}"
        ) from None
    return name


def detect_format(path: Path, fmt: str | None) -> str:
    """The manifest format: `fmt` when given, else from the file's extension."""
    if fmt:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise ManifestError(f"{path}: unknown format {fmt!r}: use --format csv, parquet or ndjson")
        return fmt
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise ManifestError(
            f"{path}: cannot tell the format from the extension {path.suffix or '(none)'!r}: "
            "name it .csv, .tsv, .parquet or .ndjson, or pass --format"
        )
    return found


def _normalise(name: str) -> str:
    return name.strip().lower()


def _delimiter_hint(names: list[str], delimiter: str | None) -> str:
    """For a header read as one column: the delimiter it seems to hold instead, and how to say so."""
    if delimiter is None or len(names) != 1:
        return ""
    counts = {d: names[0].count(d) for d in (";", "\t", "|", ",") if d != delimiter}
    best = max(counts, key=lambda d: counts[d])
    if not counts[best]:
        return ""
    return f"; the header looks {_DELIMITER_WORD[best]}-separated: pass --delimiter {_DELIMITER_SHOWN[best]}"


def _check_header(path: Path, names: list[str], delimiter: str | None = None) -> list[str]:
    normalised = [_normalise(n) for n in names]
    seen: dict[str, str] = {}
    for raw, norm in zip(names, normalised, strict=True):
        if norm == "":
            raise ManifestError(f"{path}: the header has an empty column name; columns found: {names}")
        if norm in seen:
            raise ManifestError(
                f"{path}: columns {seen[norm]!r} and {raw!r} are the same column once case and spaces are ignored: "
                "rename or remove one"
            )
        seen[norm] = raw
    if not any(n in SOURCE_COLUMNS for n in normalised):
        raise ManifestError(
            f"{path}: no source column: add a column named source (or source_url / source_file); "
            f"columns found: {', '.join(names) or '(none)'}{_delimiter_hint(names, delimiter)}"
        )
    return normalised


def _encoding_of(path: Path, data: bytes, encoding: str | None) -> tuple[str, int]:
    """The codec to read `data` with and the length of a UTF-8 byte order mark to drop first."""
    for bom, family, agrees in _BOMS:
        if data.startswith(bom):
            if encoding is not None and encoding not in agrees:
                raise UsageError(
                    f"{path}: the file starts with a {family.upper()} byte order mark, but --encoding "
                    f"{encoding} was given: leave --encoding out"
                )
            # A UTF-16/32 codec reads its own mark (a leading U+FEFF left by -le/-be is dropped later).
            return (encoding or family, len(bom) if family == "utf-8" else 0)
    return encoding or "utf-8", 0


_C1 = re.compile("[\x80-\x9f]")  # C1 control characters: what cp1252 text looks like read as Latin-1


def _decode(path: Path, data: bytes, encoding: str, out: io.BytesIO | None) -> None:
    """Check that `data` is text in `encoding`, a megabyte at a time, writing it as UTF-8 to `out`.

    Raises ManifestError at the first byte that is not, naming its line and column (in characters)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="batch_ingest.mark_undecodable")
    line, column = 1, 0  # where the text decoded so far ends
    started = False
    with memoryview(data) as view:
        for start in range(0, len(data), _STEP):
            text = decoder.decode(view[start : start + _STEP], final=start + _STEP >= len(data))
            if not started and text:
                started, text = True, text.removeprefix("\ufeff")
            bad = text.find(_BAD)
            c1 = _C1.search(text) if codecs.lookup(encoding).name == "iso8859-1" else None
            windows = c1 is not None and (bad < 0 or c1.start() < bad)
            if c1 is not None and windows:
                bad = c1.start()
            if bad >= 0:
                text = text[:bad]
            newlines = text.count("\n")
            line += newlines
            column = len(text) - text.rfind("\n") - 1 if newlines else column + len(text)
            if windows:
                # Latin-1 reads every byte, but 0x80-0x9F are control characters there and letters
                # (é, €, “) in Windows' cp1252: such a file would be sent garbled.
                raise ManifestError(
                    f"{path}: line {line}, column {column + 1} reads as a control character in {encoding}: "
                    "the file is most likely cp1252 (Windows, Excel): pass --encoding cp1252"
                )
            if bad >= 0:
                lo = data.rfind(b"\n", max(0, start - _STEP), start) + 1 or start
                raise ManifestError(
                    f"{path}: line {line}, column {column + 1} is not "
                    f"{'UTF-8' if encoding in _UTF8 else encoding} text: "
                    f"{_encoding_advice(data[lo : start + _STEP], encoding)}"
                )
            if out is not None:
                out.write(text.encode("utf-8"))


def _encoding_advice(sample: bytes, encoding: str) -> str:
    """How to read a file that is not `encoding`: the likeliest encoding of `sample` (from the line
    of the first bad byte to a megabyte on), else examples."""
    if "\n".encode(encoding, "ignore") != b"\n":  # UTF-16 or 32: no code page fits better
        return f"the file is damaged or not {encoding}: pass its encoding with --encoding, e.g. {_ENCODING_EXAMPLES}"
    if b"\x00" in sample:
        return "it holds NUL bytes, as UTF-16 text does: pass --encoding utf-16-le (or utf-16-be)"
    texts: dict[str, str] = {}
    for candidate in ("utf-8", "shift_jis", "cp932", "cp1252"):
        if candidate != encoding:
            with contextlib.suppress(UnicodeDecodeError):  # final=False: the sample may end mid-character
                texts[candidate] = codecs.getincrementaldecoder(candidate)().decode(sample, final=False)
    # Japanese is full of kana, which Western text read as Shift-JIS seldom shows; Western text read
    # as cp1252 has mostly accented letters, Japanese read as cp1252 mostly punctuation and symbols.
    japanese = [c for c in ("shift_jis", "cp932") if c in texts and re.search("[\u3040-\u30ff]", texts[c])]
    latin = ["cp1252"] if "cp1252" in texts and _mostly_letters(texts["cp1252"]) else []
    guess = next(
        (c for c in ("utf-8", *japanese, *latin, "shift_jis", "cp932", "cp1252") if c in texts), None
    )
    if guess == "utf-8":
        return "it reads as UTF-8: leave --encoding out"
    if guess is None:
        return f"pass its encoding with --encoding, e.g. {_ENCODING_EXAMPLES}, or save the manifest as UTF-8"
    what = {"cp932": " (Shift-JIS as Windows writes it)", "cp1252": " (Windows Western European)"}
    return f"it reads as {guess}{what.get(guess, '')}: pass --encoding {guess}, or save the manifest as UTF-8"


def _mostly_letters(text: str) -> bool:
    accented = len(re.findall("[\u00c0-\u00ff]", text))
    return accented * 2 >= len(re.findall("[^\x00-\x7f]", text))


def _sniff(data: bytes) -> str | None:
    """The delimiter among ; tab | that makes the first lines a table whose header (more than one field)
    has a source column and whose rows mostly have the header's width (a ragged row is the planner's to
    reject, not a reason to misread the file); None when none does."""
    end = 0
    for _ in range(_SNIFF_LINES):
        newline = data.find(b"\n", end)
        end = len(data) if newline < 0 else newline + 1
        if newline < 0 or end > _SNIFF_BYTES:
            break
    sample = data[:end].decode("utf-8")  # whole lines: valid UTF-8 by now
    for delimiter in (";", "\t", "|"):
        try:
            rows = [r for r in csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter) if r]
        except csv.Error:
            continue
        if end < len(data) and len(rows) > 1:
            rows.pop()  # it may be cut short inside a quoted cell
        header = rows[0] if rows else []
        if (
            len(header) > 1
            and any(_normalise(n) in SOURCE_COLUMNS for n in header)
            and sum(len(r) == len(header) for r in rows[1:]) >= 0.8 * (len(rows) - 1)
        ):
            return delimiter
    return None


def _header(data: bytes, delimiter: str) -> list[str]:
    end = data.find(b"\n")
    first_line = (data if end < 0 else data[:end]).decode("utf-8")  # the header alone, not a copy of the file
    return next(csv.reader(io.StringIO(first_line), delimiter=delimiter), [])


def _read_csv(path: Path, delimiter: str | None, encoding: str | None) -> pl.DataFrame:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from None
    encoding, skip = _encoding_of(path, data, encoding)
    if encoding in _UTF8:
        data = data[skip:] if skip else data
        _decode(path, data, "utf-8", None)  # polars reads it as it is
    else:
        out = io.BytesIO()
        _decode(path, data, encoding, out)
        data = out.getvalue()  # the buffer itself, not a copy; the file's bytes go now
        del out
    if not data or data.isspace():
        raise ManifestError(f"{path}: the file is empty: a manifest needs a header row (source,profile,...)")
    header = _header(data, delimiter or ("\t" if path.suffix.lower() == ".tsv" else ","))
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        if delimiter == "," and not any(_normalise(n) in SOURCE_COLUMNS for n in header):
            delimiter = _sniff(data) or delimiter
            header = _header(data, delimiter)
    if "\x00" in "".join(header):
        raise ManifestError(
            f"{path}: the header holds NUL characters: the file looks like UTF-16 without a byte order mark: "
            "pass --encoding utf-16-le (or utf-16-be)"
        )
    names = _check_header(path, header, delimiter)
    try:
        frame = pl.read_csv(data, infer_schema=False, separator=delimiter, raise_if_empty=False)
    except pl.exceptions.PolarsError:
        # Ragged rows or odd quoting: parse with the csv module, which tells us which rows are odd.
        frame = _read_csv_slowly(path, data, delimiter, len(header))
    # The slow path adds the RAGGED column after the header's: it keeps its name.
    return frame.rename(dict(zip(frame.columns, names, strict=False)))


RAGGED = "__ragged__"


def _read_csv_slowly(path: Path, data: bytes, delimiter: str, width: int) -> pl.DataFrame:
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=delimiter)
    next(reader, None)
    columns: list[list[str | None]] = [[] for _ in range(width)]
    ragged: list[str | None] = []
    try:
        for record in reader:
            if not record:
                continue  # a blank line
            if len(record) > width:
                ragged.append(f"the row has {len(record)} fields but the header has {width}")
            else:
                ragged.append(None)
            padded: list[str | None] = [*record, *[None] * width][:width]
            for col, value in zip(columns, padded, strict=True):
                col.append(value if value != "" else None)
    except csv.Error as exc:
        raise ManifestError(f"{path}: line {reader.line_num}: cannot parse the CSV: {exc}") from None
    frame = pl.DataFrame(
        {f"column_{i}": col for i, col in enumerate(columns)},
        schema={f"column_{i}": pl.String for i in range(width)},
    )
    return frame.with_columns(pl.Series(RAGGED, ragged, dtype=pl.String))


def _read_typed(path: Path, fmt: str) -> pl.DataFrame:
    try:
        if fmt == "parquet":
            frame = pl.read_parquet(path, glob=False)  # a path, never a pattern: names may hold [ ] * ?
        else:
            if path.stat().st_size == 0:
                raise ManifestError(
                    f"{path}: the file is empty: an NDJSON manifest needs one object per line"
                )
            frame = pl.read_ndjson(path)
    except ManifestError:
        raise
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from None
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ManifestError(f"{path}: not a readable {fmt} file: {first}") from None
    names = _check_header(path, frame.columns)
    frame = frame.rename(dict(zip(frame.columns, names, strict=True)))
    casts = {}
    for name, dtype in frame.schema.items():
        if dtype == pl.String:
            continue
        if name in SOURCE_COLUMNS and dtype != pl.Null:
            raise ManifestError(
                f"{path}: column {name!r} holds {dtype}, not text: write URLs and paths as strings"
            )
        if dtype.is_nested() or dtype == pl.Binary:
            if name in KNOWN_COLUMNS:
                raise ManifestError(f"{path}: column {name!r} holds {dtype}: it must hold text or numbers")
            continue  # an extra column: carried into the report as it is
        casts[name] = pl.String
    if casts:
        frame = frame.with_columns([pl.col(n).cast(pl.String) for n in casts if n in KNOWN_COLUMNS])
    return frame


def read_manifest(
    path: str | Path,
    fmt: str | None = None,
    *,
    delimiter: str | None = None,
    encoding: str | None = None,
) -> pl.DataFrame:
    """The manifest as a frame: lower-cased, trimmed column names; known columns as text.

    CSV cells are all text. A CSV row with more fields than the header carries its problem
    in the `__ragged__` column, for the planner to reject. `delimiter` and `encoding` (CSV only)
    take what `--delimiter` and `--encoding` do; left out, they are found (see the module's
    docstring). Raises ManifestError, or UsageError for an option that cannot apply.
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: no such file: check the manifest path")
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder, not a manifest file")
    kind = detect_format(path, fmt)
    if kind != "csv":
        for option, value in (("--delimiter", delimiter), ("--encoding", encoding)):
            if value is not None:
                raise UsageError(
                    f"{option} applies to CSV manifests only, and {path} is {kind}: leave it out"
                )
        return _read_typed(path, kind)
    return _read_csv(
        path,
        None if delimiter is None else parse_delimiter(delimiter),
        None if encoding is None else parse_encoding(encoding),
    )
