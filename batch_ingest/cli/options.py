"""The option sets the batch commands share: sources checks and probes, reading a manifest, canary
subsets, and what every command that submits takes (failure budget, windows, outputs, API settings)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .common import api_options, log_options

if TYPE_CHECKING:
    from ..options import ProbeOptions

check_sources_option = click.option(
    "--check-sources",
    type=click.Choice(["reject", "warn"]),
    is_flag=False,
    flag_value="reject",
    default=None,
    help="Fetch the first byte of every URL source (a ranged GET) and look up every s3://, gs://, az:// "
    "object in its store, before any create and never through the SmartSTREAM API; reject rows whose "
    "source is missing, forbidden, unreachable or not a video; =warn only reports them.",
)


def probe_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--probe`, `--max-size` and `--max-duration`, given to the command as one `probe` (None: off)."""

    for option in reversed(
        [
            click.option(
                "--probe",
                type=click.Choice(["files", "all"]),
                is_flag=False,
                flag_value="files",
                default=None,
                help="Open every local file as media before sending (PyAV): the container opens, a video "
                "stream decodes, the duration is above zero; reject the others as MEDIA_INVALID. =all "
                "also reads URLs and objects (ranged GETs).",
            ),
            click.option(
                "--max-size",
                metavar="SIZE",
                help="With --probe (implied): reject a video over this size (10G, 500M).",
            ),
            click.option(
                "--max-duration",
                type=click.FloatRange(min=0, min_open=True),
                metavar="SECONDS",
                help="With --probe (implied): reject a video longer than this.",
            ),
        ]
    ):
        command = option(command)
    return command


def probe_choice(probe: str | None, max_size: str | None, max_duration: float | None) -> ProbeOptions | None:
    """The probe options from the flags; a limit alone implies --probe (files)."""
    from ..options import ProbeOptions

    if probe is None and max_size is None and max_duration is None:
        return None
    size = None
    if max_size is not None:
        from ..api.ratelimit import parse_bandwidth

        try:
            size = int(parse_bandwidth(max_size))
        except (ValueError, IndexError):
            size = 0
        if size < 1:
            raise click.BadParameter(
                f"{max_size!r}: give a size such as 10G, 500M or 2000000 (bytes), at least 1 byte",
                param_hint="--max-size",
            )
    if max_duration is not None and not math.isfinite(max_duration):
        raise click.BadParameter(
            f"{max_duration}: give a number of seconds such as 7200", param_hint="--max-duration"
        )
    return ProbeOptions(remote=probe == "all", max_size=size, max_duration=max_duration)


def reading_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--delimiter and --encoding: how a CSV manifest exported from a spreadsheet is read."""
    command = click.option(
        "--encoding",
        metavar="NAME",
        help="The CSV manifest's text encoding when it is not UTF-8: cp1252 (Excel, Western Europe), "
        "shift_jis or cp932 (Excel, Japan), latin-1, utf-16 [default: UTF-8, or what a byte-order mark says].",
    )(command)
    return click.option(
        "--delimiter",
        metavar="CHAR",
        help="The CSV manifest's field separator: one character, or tab, comma, semicolon, pipe "
        "[default: detected: comma, else ; tab or | when the header holds a source column that way].",
    )(command)


def reading_choice(delimiter: str | None, encoding: str | None) -> dict[str, Any]:
    """--delimiter and --encoding checked now (exit 2 naming the option), as RunOptions fields."""
    from ..manifest import parse_delimiter, parse_encoding

    if delimiter is not None:
        parse_delimiter(delimiter)
    if encoding is not None:
        parse_encoding(encoding)
    return {"delimiter": delimiter, "encoding": encoding}


extra_columns_option = click.option(
    "--extra-columns",
    metavar="COL[,COL...]",
    default="",
    help="Manifest columns to carry into the report as they are although their names look like a known "
    "column's (e.g. 'profle' next to 'profile'): without this such a column stops the run (exit 2).",
)


def subset_options(among: str):
    """The canary options: which rows a command takes (subset.py); `among` names them in the help
    ("ready rows" for run, "held rows" for resume)."""

    def decorate(fn):
        for option in (
            click.option(
                "--seed", type=int, help="Seed of --sample (default: a random one, printed and recorded)."
            ),
            click.option(
                "--sample",
                type=int,
                metavar="N",
                help=f"Take N {among} at random (seeded: see --seed); hold the rest.",
            ),
            click.option(
                "--rows",
                "rows_range",
                metavar="RANGES",
                help=f"Take the {among} with these numbers (as in the report), e.g. 100-200 or 1-10,50; hold the rest.",
            ),
            click.option("--limit", type=int, metavar="N", help=f"Take the first N {among}; hold the rest."),
        ):
            fn = option(fn)
        return fn

    return decorate


def subset_choice(
    limit: int | None, rows_range: str | None, sample: int | None, seed: int | None, take_all: bool = False
):
    from ..subset import Subset

    return Subset.from_options(limit=limit, rows=rows_range, sample=sample, seed=seed, take_all=take_all)


def column_list(text: str) -> tuple[str, ...]:
    return tuple(c.strip().lower() for c in text.split(",") if c.strip())


def submit_options(fn):
    """The options of every command that submits: failure budget, cron skipping, output, API."""
    for option in (
        api_options,
        log_options,
        click.option("-q", "--quiet", is_flag=True, help="Print only errors and the report path."),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            help="Print the run's summary as JSON on stdout (as summary.json holds it), for scripts.",
        ),
        click.option(
            "--metrics-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write the run's figures in Prometheus' text format to this file when it ends (for "
            "node_exporter's textfile collector: counts per outcome, requests, 429s, duration, exit code).",
        ),
        click.option(
            "--max-submissions",
            type=click.IntRange(min=1),
            metavar="N",
            help="Send at most N creates in this process and follow their jobs to the end; the rows left "
            "wait for `resume RUN_DIR` (exit 0 when nothing failed). One night's share of a long migration.",
        ),
        click.option(
            "--until",
            metavar="HH:MM|ISO",
            help="Stop at this local time (the next HH:MM) or ISO timestamp as a graceful stop does: no new "
            "creates, requests on the wire finish, the rest waits for `resume RUN_DIR` (exit 0 when nothing "
            "failed).",
        ),
        click.option(
            "--skip-existing",
            type=click.Choice(["not-failed", "any"]),
            is_flag=False,
            flag_value="not-failed",
            default=None,
            help="Don't send a row whose ref_id already has a job on the platform that succeeded or is still "
            "encoding (followed to its end); a row whose job failed is sent again. "
            "--skip-existing=any never sends such a row and reports the failed job (cron).",
        ),
        click.option(
            "--max-failures",
            metavar="N|P%",
            help="Abort (exit 3) once more than N rows have failed, or more than P% of the last 100 rows "
            "to end (P%/W: of the last W; judged after 20). A refused create counts at once, an encode "
            "failure or timeout when the platform reports it: jobs still encoding cannot count yet, so "
            "more rows may have been sent by then (--max-in-flight bounds how many).",
        ),
    ):
        fn = option(fn)
    return fn
