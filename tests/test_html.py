"""The HTML report, rendered by a real headless Chromium: no console errors, the failure table filters."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

import polars as pl
import pytest
from batch_ingest.emulator import EmulatorConfig
from batch_ingest.html import MAX_EXTRA_COLUMNS, render_html
from batch_ingest.report import Summary
from batch_ingest.review import LoadedRun, merge_runs, summarize

from .helpers import FAST, FLAGS, mixed_manifest, run_cli

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("Chromium is not installed here (CI installs it)")
    return found


def render(tmp_path, url: str) -> tuple[str, str]:
    profile = tmp_path / "chromium-profile"
    result = subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, result.stderr


def test_html_report_in_headless_chromium(tmp_path, emulator_server):
    server = emulator_server(
        EmulatorConfig(**FAST, failure_rate=0.3, seed=3, storage_missing_for=("v/5.mp4",))
    )
    manifest = mixed_manifest(tmp_path, 40)
    with open(manifest, "a", encoding="utf-8") as f:
        f.write("ftp://cdn.example.com/<script>alert(1)</script>.mp4,100,,b0\n")  # escaped, never run
    run_dir = tmp_path / "run"
    page = tmp_path / "report.html"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--html", str(page), *FLAGS], server.env()
    )
    assert result.exit_code == 1, result.output
    report = pl.read_parquet(run_dir / "report.parquet")
    failures = report.filter(~pl.col("outcome").is_in(["succeeded", "skipped"]))
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing fetched from the network
    assert "@import" not in text and "url(" not in text
    assert "<script>alert(1)</script>" not in text

    dom, log = render(tmp_path, page.as_uri())
    assert ":CONSOLE" not in log, [line for line in log.splitlines() if ":CONSOLE" in line]
    assert 'data-ready="yes"' in dom
    rows = re.findall(r"<tr>(?:(?!</tr>).)*</tr>", dom.split("<tbody>")[1], re.S)
    assert len(rows) == failures.height
    for row_number in failures["row"].to_list():
        assert f"<td>{row_number}</td>" in dom
    assert "<th>job_id</th>" in dom and "<th>batch</th>" in dom  # the manifest's own column, too

    dom, log = render(tmp_path, page.as_uri() + "#filter=ENCODE_FAILED")
    expected = failures.filter(pl.col("error_code") == "ENCODE_FAILED").height
    assert expected > 0
    assert f'data-shown="{expected}"' in dom
    visible = [
        r for r in re.findall(r"<tr(?: style=\"[^\"]*\")?>", dom.split("<tbody>")[1]) if "none" not in r
    ]
    assert len(visible) == expected


# -- what the page shows, without a browser --------------------------------------------------------


def page(rows: list[dict[str, Any]], **summary: Any) -> str:
    """The HTML of a report of `rows` (row numbers added; the first columns filled in as a run does)."""
    frame = pl.DataFrame(
        [
            {
                "row": i,
                "ref_id": f"r{i}",
                "source": f"https://cdn.example.com/{i}.mp4",
                "job_id": None,
                "outcome": "succeeded",
                "error_code": None,
                "error_message": None,
                **r,
            }
            for i, r in enumerate(rows, 1)
        ],
        schema_overrides={"job_id": pl.String, "error_code": pl.String, "error_message": pl.String},
        infer_schema_length=None,
    )
    runs = [LoadedRun(Path("/runs/r1"), frame, cast(Summary, {"run_dir": "/runs/r1", **summary}))]
    merged = merge_runs(runs)
    return render_html(merged, summarize(merged, runs))


def svg(text: str, label: str) -> str:
    found = re.search(rf'<svg role="img" aria-label="{label}".*?</svg>', text, re.S)
    assert found, text
    return found.group()


def test_html_shows_the_abort_reason_escaped_and_prominent():
    reason = 'the rate store <redis://cache:6379> stopped answering & "nothing" was sent'
    text = page([{"outcome": "interrupted"}], abort_reason=reason)
    banner = re.search(r'<ul class="abort" role="alert">(.*?)</ul>', text, re.S)
    assert banner, text
    assert html.escape(reason, quote=True) in banner.group(1)
    assert "<redis://" not in text
    assert 'class="abort"' not in page([{}])  # no banner for a run that was not aborted


def test_html_failure_table_has_job_ids_and_the_manifests_own_columns():
    signed = "https://cdn.example.com/t.jpg?X-Amz-Signature=s3cr3t&X-Amz-Credential=AKIAX"
    text = page(
        [
            {},
            {
                "outcome": "failed",
                "job_id": "job-<7>",
                "error_code": "ENCODE_FAILED",
                "collection": "<b>night</b> & day",
                "thumbnail": signed,
                "never_filled": None,
            },
        ]
    )
    table = text.split('<table id="failures">')[1].split("</table>")[0]
    header = re.findall(r"<th>(.*?)</th>", table)
    # The report's columns, then the manifest's own that hold a value in these rows.
    assert header == [
        "row",
        "ref_id",
        "source",
        "job_id",
        "outcome",
        "error_code",
        "error_message",
        "collection",
        "thumbnail",
    ]
    assert "never_filled" not in header  # empty in every failed row
    assert "<td>job-&lt;7&gt;</td>" in table
    assert "<td>&lt;b&gt;night&lt;/b&gt; &amp; day</td>" in table
    assert "s3cr3t" not in text and "AKIAX" not in text and "REDACTED" in table  # a signed URL stays a secret
    assert "1 more manifest column(s) not shown" in text


def test_html_failure_table_shows_at_most_max_extra_columns():
    text = page([{"outcome": "error", **{f"x{i:02d}": f"v{i}" for i in range(MAX_EXTRA_COLUMNS + 5)}}])
    header = re.findall(r"<th>(.*?)</th>", text)
    assert [h for h in header if h.startswith("x")] == [f"x{i:02d}" for i in range(MAX_EXTRA_COLUMNS)]
    assert "5 more manifest column(s) not shown" in text


def test_histogram_of_equal_durations_is_one_bar_labelled_with_the_value():
    for durations in ([2.5, 2.5, 2.5], [4.0]):
        chart = svg(page([{"encode_s": d} for d in durations]), "encode durations")
        assert chart.count("<rect") == 1, chart
        assert f"<title>{durations[0]:g} s: {len(durations)}</title>" in chart
        assert f">{durations[0]:g} s</text>" in chart
    assert "<p class=muted>no encode durations</p>" in page([{"encode_s": None}])
    spread = svg(page([{"encode_s": d} for d in (1.0, 2.0, 3.0)]), "encode durations")
    assert spread.count("<rect") == 20 and ">1 s</text>" in spread and ">3 s</text>" in spread
