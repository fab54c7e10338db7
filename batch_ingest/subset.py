"""Canary runs: which of a manifest's ready rows a run takes now, and which it holds back.

`run --limit 10` sends the first 10 ready rows; `--rows 100-200` the ready rows numbered 100
to 200 (the report's `row`: data rows counted from 1); `--sample 50` a seeded random sample
(`--seed`, recorded, reproduces it). The other ready rows are kept in the journal as `held`,
never sent, and reported as such; `resume RUN_DIR --all` (or another `--limit`, `--rows`,
`--sample`) takes more of them into the same run, so no row is ever sent by two runs.
Rejected rows are reported as rejected whatever the subset: the plan already knows why.
"""

from __future__ import annotations

import random
import re
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from .errors import UsageError
from .plan import Plan
from .vocabulary import PlanStatus

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_rows(text: str) -> tuple[tuple[int, int], ...]:
    """`--rows 100-200,250,300-310` as inclusive (first, last) pairs; UsageError naming the fix."""
    ranges = []
    for part in text.split(","):
        match = _RANGE.match(part)
        if not match:
            raise UsageError(
                f"--rows {text!r}: {part.strip()!r} is not a row or a range: write row numbers as in the report, "
                "e.g. --rows 100-200 or --rows 1-10,50"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        if first < 1 or last < first:
            raise UsageError(
                f"--rows {text!r}: {part.strip()!r} is empty: rows count from 1 and a range goes up, e.g. 100-200"
            )
        ranges.append((first, last))
    return tuple(ranges)


@dataclass(frozen=True)
class Subset:
    """Which rows to take: `rows` narrows the candidates; then `limit` takes the first N of them or
    `sample` N at random (seeded); `take_all` every candidate (resume --all)."""

    limit: int | None = None
    rows: tuple[tuple[int, int], ...] = ()
    sample: int | None = None
    seed: int | None = None
    take_all: bool = False

    @classmethod
    def from_options(
        cls,
        *,
        limit: int | None = None,
        rows: str | None = None,
        sample: int | None = None,
        seed: int | None = None,
        take_all: bool = False,
    ) -> Subset | None:
        """The subset the options ask for, or None when they ask for none; UsageError for a bad mix."""
        for name, value in (("--limit", limit), ("--sample", sample)):
            if value is not None and value < 1:
                raise UsageError(f"{name} {value}: give a number of rows, 1 or more")
        if limit is not None and sample is not None:
            raise UsageError("--limit and --sample both choose how many rows: give one of them")
        if seed is not None and sample is None:
            raise UsageError("--seed chooses a --sample: give --sample N with it")
        if take_all and (limit is not None or sample is not None or rows is not None):
            raise UsageError(
                "--all takes every held row: leave out --limit, --rows and --sample, or leave out --all"
            )
        if limit is None and sample is None and rows is None and not take_all:
            return None
        if sample is not None and seed is None:
            seed = secrets.randbelow(2**31)  # recorded with the run: `--seed` reproduces the sample
        return cls(
            limit=limit,
            rows=parse_rows(rows) if rows is not None else (),
            sample=sample,
            seed=seed,
            take_all=take_all,
        )

    def choose(self, candidates: list[int]) -> list[int]:
        """The rows taken among `candidates` (row numbers), in row order."""
        rows = sorted(candidates)
        if self.rows:
            rows = [r for r in rows if any(first <= r <= last for first, last in self.rows)]
        if self.limit is not None:
            rows = rows[: self.limit]
        if self.sample is not None and self.sample < len(rows):
            rows = sorted(random.Random(self.seed).sample(rows, self.sample))
        return rows

    def describe(self) -> str:
        """The options that choose this subset, as a user would type them."""
        parts = []
        if self.take_all:
            parts.append("--all")
        if self.rows:
            parts.append("--rows " + ",".join(f"{a}-{b}" if a != b else str(a) for a, b in self.rows))
        if self.limit is not None:
            parts.append(f"--limit {self.limit}")
        if self.sample is not None:
            parts.append(f"--sample {self.sample} --seed {self.seed}")
        return " ".join(parts)


@dataclass(frozen=True)
class Taken:
    """A subset's choice: the ready rows taken now and those held back."""

    taken: list[int]
    held: list[int]


def choose_subset(plan: Plan, subset: Subset | None) -> Taken | None:
    """The rows a canary run takes (None: every row); UsageError when the subset takes none."""
    if subset is None:
        return None
    ready = plan.ready["row"].to_list()
    taken = subset.choose(ready)
    if not taken:
        raise UsageError(
            f"{subset.describe()} takes none of the manifest's {len(ready)} ready rows"
            + (f" (rows {ready[0]} to {ready[-1]})" if ready else "")
            + ": choose rows the manifest has"
        )
    chosen = set(taken)
    return Taken(taken, [r for r in ready if r not in chosen])


def canary_plan(plan: Plan, subset: Subset) -> Plan:
    """The plan as a canary would work it (validate, --dry-run): ready rows outside the subset are
    marked held, so the plan's counts and the estimate cover only the rows it takes."""
    taken = choose_subset(plan, subset)
    assert taken is not None
    not_taken = (pl.col("status") == PlanStatus.READY) & ~pl.col("row").is_in(taken.taken)
    frame = plan.frame.with_columns(
        pl.when(not_taken).then(pl.lit(PlanStatus.HELD.value)).otherwise(pl.col("status")).alias("status")
    )
    note = (
        f"canary ({subset.describe()}): the plan and estimate cover the rows it takes; "
        f"{len(taken.held)} ready rows would be held back"
    )
    return replace(plan, frame=frame, notes=[*plan.notes, note])


def held_message(run_dir: Path, subset: Subset) -> str:
    """What the report says of a held row."""
    return f"held back by a canary run ({subset.describe()}): `batch-ingest resume {run_dir} --all` sends it"


def subset_record(kind: str, subset: Subset, taken: int) -> dict[str, Any]:
    """A subset as the run's meta records it: which command took how many rows, chosen how."""
    return {"kind": kind, "selection": subset.describe(), "taken": taken, "at": time.time()}
