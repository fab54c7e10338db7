"""Reading a manifest (CSV, Parquet or NDJSON) into a polars frame of text columns.

Everything structural is checked here and raised as `ManifestError` (exit 2) naming the
file, the problem and the columns found. Row-level problems are left to `plan.py`.
"""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

import polars as pl

from .errors import ManifestError

FORMATS = ("csv", "parquet", "ndjson")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}
SOURCE_COLUMNS = ("source", "source_url", "source_file")
KNOWN_COLUMNS = (*SOURCE_COLUMNS, "profile", "ref_id", "name", "description")


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
            "name it .csv, .parquet or .ndjson, or pass --format"
        )
    return found


def _normalise(name: str) -> str:
    return name.strip().lower()


def _check_header(path: Path, names: list[str]) -> list[str]:
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
            f"columns found: {', '.join(names) or '(none)'}"
        )
    return normalised


def _utf8_error(path: Path, data: bytes) -> ManifestError | None:
    """The first byte that is not UTF-8, as an error naming its line; checked a megabyte at a time
    (decoding a whole large manifest at once would hold a second copy of it)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    step = 1 << 20
    for start in range(0, len(data), step):
        pending = len(decoder.getstate()[0])  # the bytes of a sequence the chunk before cut in two
        try:
            decoder.decode(view[start : start + step], final=start + step >= len(data))
        except UnicodeDecodeError as exc:
            at = start - pending + exc.start
            line = data.count(b"\n", 0, at) + 1
            return ManifestError(
                f"{path}: line {line} is not UTF-8 text (byte {at}): save the manifest as UTF-8"
            )
    return None


def _read_csv(path: Path) -> pl.DataFrame:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise ManifestError(f"{path}: the file is empty: a manifest needs a header row (source,profile,...)")
    bad = _utf8_error(path, data)
    if bad:
        raise bad
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    end = data.find(b"\n")
    first_line = (data if end < 0 else data[:end]).decode("utf-8")  # the header alone, not a copy of the file
    header = next(csv.reader(io.StringIO(first_line), delimiter=delimiter), [])
    names = _check_header(path, header)
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


def read_manifest(path: str | Path, fmt: str | None = None) -> pl.DataFrame:
    """The manifest as a frame: lower-cased, trimmed column names; known columns as text.

    CSV cells are all text. A CSV row with more fields than the header carries its problem
    in the `__ragged__` column, for the planner to reject. Raises ManifestError.
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: no such file: check the manifest path")
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder, not a manifest file")
    kind = detect_format(path, fmt)
    return _read_csv(path) if kind == "csv" else _read_typed(path, kind)
