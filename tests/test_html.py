"""The HTML report, rendered by a real headless Chromium: no console errors, the failure table filters."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import polars as pl
import pytest
from batch_ingest.emulator import EmulatorConfig

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

    dom, log = render(tmp_path, page.as_uri() + "#filter=ENCODE_FAILED")
    expected = failures.filter(pl.col("error_code") == "ENCODE_FAILED").height
    assert expected > 0
    assert f'data-shown="{expected}"' in dom
    visible = [
        r for r in re.findall(r"<tr(?: style=\"[^\"]*\")?>", dom.split("<tbody>")[1]) if "none" not in r
    ]
    assert len(visible) == expected
