"""Shards: one manifest split between N processes (`run --shard I/N`), on any engine.

Row r belongs to shard `hash(key) mod N`, or with `--shard-by COLUMN` to `hash(value) mod N` (so that
"the files on host X" stay together). The hash is SHA-256, so the split is the same on every
machine, in every run and in every Python; every manifest row (rejected ones too) lands in exactly
one shard, and keeps its manifest row number there. `auto/N` takes I from the engine:
`JOB_COMPLETION_INDEX` (Kubernetes Indexed Job, 0-based), `AWS_BATCH_JOB_ARRAY_INDEX` (AWS Batch
array job, 0-based) or `PARALLEL_SEQ` (GNU parallel's job sequence number, 1-based: its job slot
`PARALLEL_JOBSLOT` is reused by later jobs, the sequence number is not).

Shard I of N keeps its run in `ROOT/shard-I-of-N/` (ROOT is `--report-dir`): starting it again (a
retried pod or array child) resumes that run; a ROOT that holds shards of another N is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .errors import UsageError

# Where `auto` looks for the index, in this order: (variable, what it is, offset to 0-based).
ENGINES = (
    ("JOB_COMPLETION_INDEX", "Kubernetes Indexed Job", 0),
    ("AWS_BATCH_JOB_ARRAY_INDEX", "AWS Batch array job", 0),
    ("PARALLEL_SEQ", "GNU parallel", -1),
)
_SPEC = re.compile(r"^\s*(auto|\d+)\s*/\s*(\d+)\s*$")
_FOLDER = re.compile(r"^shard-(\d+)-of-(\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int
    by: str | None = None  # a column's value instead of the row's key
    origin: str = "--shard"  # where the index came from

    @property
    def folder(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def describe(self) -> str:
        what = f"by column {self.by!r}" if self.by else "by row key"
        return f"shard {self.index} of {self.count} (0-based, {what}; index from {self.origin})"

    def record(self) -> dict[str, object]:
        return {"index": self.index, "count": self.count, "by": self.by, "origin": self.origin}


def parse_shard(text: str, *, by: str | None = None, env: Mapping[str, str] | None = None) -> Shard:
    """`I/N` or `auto/N`; UsageError naming the fix otherwise."""
    match = _SPEC.match(text)
    if match is None:
        raise UsageError(f"--shard {text!r}: give I/N (0 <= I < N, e.g. 0/8) or auto/N")
    count = int(match.group(2))
    if count < 1:
        raise UsageError(f"--shard {text!r}: N must be at least 1")
    if match.group(1) != "auto":
        index, origin = int(match.group(1)), "--shard"
    else:
        env = os.environ if env is None else env
        for name, engine, offset in ENGINES:
            raw = env.get(name, "").strip()
            if raw:
                if not (raw.isascii() and raw.isdigit()):
                    raise UsageError(f"--shard auto/{count}: {name}={raw!r} is not a whole number ({engine})")
                index, origin = int(raw) + offset, f"{name} ({engine})"
                break
        else:
            names = ", ".join(name for name, _, _ in ENGINES)
            raise UsageError(
                f"--shard auto/{count}: none of {names} is set: give the index as --shard I/{count}"
            )
    if not 0 <= index < count:
        raise UsageError(f"--shard: index {index} (from {origin}) is not in 0..{count - 1} for N = {count}")
    return Shard(index, count, by, origin)


def shard_of(values: pl.Series, count: int) -> pl.Series:
    """Each value's shard: the first 8 bytes of its SHA-256, mod `count` (null counts as empty; a
    value that is not text, as its text)."""
    return pl.Series(
        [
            int.from_bytes(hashlib.sha256(("" if v is None else str(v)).encode()).digest()[:8], "big") % count
            for v in values.to_list()
        ],
        dtype=pl.Int64,
    )


# Columns a shard may be chosen by: the manifest's own (and the key), never a column the checks write.
SHARD_BY = ("key", "source", "profile", "ref_id", "name", "description")


def select(frame: pl.DataFrame, shard: Shard, extras: list[str] | tuple[str, ...] = ()) -> pl.DataFrame:
    """The plan's rows of this shard (the plan's row numbers and keys stay those of the whole manifest).

    Called on the plan as the manifest alone makes it, before profiles are looked up or sources
    checked: a row's shard never depends on what one process saw of the network."""
    column = shard.by or "key"
    allowed = [c for c in (*SHARD_BY, *extras) if c in frame.columns]
    if column not in allowed:
        raise UsageError(
            f"--shard-by {column!r}: not a column of the manifest; choose one of: {', '.join(allowed)}"
        )
    # Rejected rows are keyed by their row number, so they spread over the shards like the others.
    return frame.filter(shard_of(frame[column], shard.count) == shard.index)


ROOT_RECORD = "shards.json"


def check_root(root: Path, shard: Shard, manifest: Path) -> Path:
    """The shard's run folder under `root`, after checking (or, for the first shard, writing) the
    root's record: N, --shard-by and the manifest's SHA-256 must be those of every shard, or rows
    would land in no shard or in two. UsageError naming the fix otherwise."""
    if (root / "journal.sqlite").exists():
        raise UsageError(f"{root} holds a run of its own: give the shards a new --report-dir")
    others = sorted(
        {int(m.group(2)) for p in root.iterdir() if (m := _FOLDER.match(p.name)) and p.is_dir()}
        if root.is_dir()
        else set()
    )
    if any(n != shard.count for n in others):
        raise UsageError(
            f"{root} holds shards of N = {', '.join(map(str, others))}, not {shard.count}: keep N for a run "
            "root (a different N would send rows twice), or give another --report-dir"
        )
    mine = {
        "count": shard.count,
        "by": shard.by,
        "manifest_sha256": file_sha256(manifest),
        "manifest": str(manifest),
    }
    record = root / ROOT_RECORD
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        with open(record, "x", encoding="utf-8") as f:  # the first shard of the root writes it
            json.dump(mine, f, indent=2)
        os.chmod(record, 0o600)
    except FileExistsError:
        try:
            theirs = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            theirs = {}
        for key, what in (("count", "N"), ("by", "--shard-by"), ("manifest_sha256", "manifest")):
            if theirs.get(key) != mine[key]:
                raise UsageError(
                    f"{root} holds shards of another {what} ({record} says {theirs.get(key if key != 'manifest_sha256' else 'manifest')!r}): "
                    "every shard of a root runs the same manifest with the same --shard N and --shard-by; "
                    "give a new --report-dir for another"
                ) from None
    return root / shard.folder


def expected(path: Path) -> int | None:
    """N of a run root (from its record), or None when `path` is not one."""
    try:
        return int(json.loads((path / ROOT_RECORD).read_text(encoding="utf-8"))["count"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def shard_folders(path: Path) -> list[Path]:
    """The shard run folders in a run root, in index order (empty when `path` is not a run root)."""
    if not path.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in path.iterdir() if (m := _FOLDER.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]
