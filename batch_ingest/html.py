"""A self-contained HTML report: totals, charts as inline SVG, a filterable table of failures.

Nothing is fetched from the network: styles, script and charts are all inside the file.
Every value from a manifest or the API is escaped.
"""

from __future__ import annotations

import html
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from .errors import UsageError
from .redact import redact_text
from .report import REPORT_COLUMNS, flat_for_csv, write_atomically
from .vocabulary import OUTCOMES, Outcome, did_not_succeed

COLORS: dict[str, str] = {
    Outcome.SUCCEEDED: "#2e7d32",
    Outcome.FAILED: "#c62828",
    Outcome.REJECTED: "#6d4c41",
    Outcome.ERROR: "#ef6c00",
    Outcome.TIMED_OUT: "#8e24aa",
    Outcome.INTERRUPTED: "#546e7a",
    Outcome.SKIPPED: "#1565c0",
    Outcome.HELD: "#9e9d24",
    Outcome.SUBMITTED: "#00838f",
}
MAX_TABLE_ROWS = 5000
# The report's columns the failure table shows, before the manifest's own.
FAILURE_COLUMNS = (
    "row",
    "ref_id",
    "source",
    "job_id",
    "outcome",
    "error_code",
    "http_status",
    "error_message",
)
MAX_EXTRA_COLUMNS = 20  # of the manifest's own columns in the failure table (a manifest may have thousands)
MAX_CELL_CHARS = 500

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#666}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:90px}
.card b{display:block;font-size:22px}.charts{display:flex;flex-wrap:wrap;gap:24px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #eee;padding:4px 6px;
text-align:left;vertical-align:top}th{background:#fafafa;position:sticky;top:0}
input{font-size:14px;padding:6px;width:320px;margin-bottom:8px}code{font-size:12px}
.abort{border:2px solid #c62828;background:#fdecea;border-radius:6px;padding:10px 14px 10px 30px;margin:16px 0}
"""

_SCRIPT = """
(function () {
  var input = document.getElementById('filter');
  var rows = Array.prototype.slice.call(document.querySelectorAll('#failures tbody tr'));
  var count = document.getElementById('shown');
  function apply() {
    var q = input.value.trim().toLowerCase();
    var shown = 0;
    rows.forEach(function (tr) {
      var hit = !q || tr.textContent.toLowerCase().indexOf(q) !== -1;
      tr.style.display = hit ? '' : 'none';
      if (hit) { shown += 1; }
    });
    count.textContent = String(shown);
    document.body.setAttribute('data-shown', String(shown));
  }
  input.addEventListener('input', apply);
  var m = /[#&]filter=([^&]*)/.exec(window.location.hash);
  if (m) { input.value = decodeURIComponent(m[1]); }
  apply();
  document.body.setAttribute('data-ready', 'yes');
})();
"""


def _esc(value: Any) -> str:
    return "" if value is None else html.escape(str(value), quote=True)


def _bar_chart(counts: dict[str, int]) -> str:
    items = [(k, v) for k, v in counts.items() if v]
    if not items:
        return "<p class=muted>no rows</p>"
    width, bar_h, gap, label_w = 420, 22, 6, 90
    top = max(v for _, v in items)
    height = len(items) * (bar_h + gap)
    parts = [
        f'<svg role="img" aria-label="outcomes" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
    ]
    for i, (name, n) in enumerate(items):
        y = i * (bar_h + gap)
        w = max(2, (width - label_w - 60) * n / top)
        parts.append(
            f'<text x="0" y="{y + 16}" font-size="12">{_esc(name)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{COLORS.get(name, "#999")}"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 16}" font-size="12">{n}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _number(value: float) -> str:
    """A duration for a label: three significant figures below 10, one decimal above."""
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _histogram(values: list[float], title: str, unit: str = "s", bins: int = 20) -> str:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return f"<p class=muted>no {_esc(title)}</p>"
    width, height, pad = 420, 160, 24
    lo, hi = min(values), max(values)
    parts = [f'<svg role="img" aria-label="{_esc(title)}" width="{width}" height="{height + 20}">']
    if lo == hi:
        # One value (one row, or every row alike): one bar, labelled with the value itself.
        n = len(values)
        bw = (width - pad) / 4
        x = pad + (width - pad - bw) / 2
        parts.append(
            f'<rect x="{x:.1f}" y="{pad}" width="{bw:.1f}" height="{height - pad}" fill="#1565c0">'
            f"<title>{_number(lo)} {unit}: {n}</title></rect>"
            f'<text x="{x + bw / 2:.1f}" y="{height + 14}" font-size="11" text-anchor="middle">'
            f"{_number(lo)} {unit}</text>"
            f'<text x="0" y="12" font-size="11">{n}</text></svg>'
        )
        return "".join(parts)
    span = hi - lo
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / span * bins))] += 1
    top = max(counts)
    bw = (width - pad) / bins
    for i, c in enumerate(counts):
        h = (height - pad) * c / top
        parts.append(
            f'<rect x="{pad + i * bw:.1f}" y="{height - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" fill="#1565c0">'
            f"<title>{_number(lo + i * span / bins)}–{_number(lo + (i + 1) * span / bins)} {unit}: {c}</title></rect>"
        )
    parts.append(
        f'<text x="{pad}" y="{height + 14}" font-size="11">{_number(lo)} {unit}</text>'
        f'<text x="{width}" y="{height + 14}" font-size="11" text-anchor="end">{_number(hi)} {unit}</text>'
        f'<text x="0" y="12" font-size="11">{top}</text></svg>'
    )
    return "".join(parts)


def _timeline(submitted: list[float], finished: list[float]) -> str:
    if not submitted:
        return "<p class=muted>nothing was submitted</p>"
    start = min(submitted)
    end = max(submitted + finished)
    span = (end - start) or 1.0
    total = max(len(submitted), 1)
    width, height, pad = 840, 180, 30

    def path(times: list[float]) -> str:
        pts = [f"{pad},{height}"]
        for i, t in enumerate(sorted(times), 1):
            x = pad + (width - pad) * (t - start) / span
            y = height - (height - 10) * i / total
            pts.append(f"{x:.1f},{y:.1f}")
        return " ".join(pts)

    return (
        f'<svg role="img" aria-label="timeline" width="{width}" height="{height + 24}">'
        f'<polyline fill="none" stroke="#1565c0" stroke-width="2" points="{path(submitted)}"/>'
        f'<polyline fill="none" stroke="#2e7d32" stroke-width="2" points="{path(finished)}"/>'
        f'<text x="{pad}" y="{height + 16}" font-size="11">0 s</text>'
        f'<text x="{width - 60}" y="{height + 16}" font-size="11">{span:.0f} s</text>'
        f'<text x="{pad + 10}" y="14" font-size="12" fill="#1565c0">submitted</text>'
        f'<text x="{pad + 90}" y="14" font-size="12" fill="#2e7d32">finished</text>'
        f'<text x="0" y="14" font-size="11">{total}</text></svg>'
    )


def _epochs(frame: pl.DataFrame, column: str) -> list[float]:
    if column not in frame.columns:
        return []
    series = frame[column].drop_nulls()
    if series.dtype == pl.String:
        series = series.str.to_datetime(strict=False).drop_nulls()
    return [v.timestamp() for v in series.to_list() if isinstance(v, datetime)]


def _extra_columns(frame: pl.DataFrame) -> list[str]:
    """The manifest's own columns the report carries (after the report's), the first MAX_EXTRA_COLUMNS
    that hold a value in `frame`."""
    extras = [c for c in frame.columns if c not in REPORT_COLUMNS and not c.startswith("_")]
    filled = [c for c in extras if frame[c].null_count() < frame.height]
    return filled[:MAX_EXTRA_COLUMNS]


def _cell(value: Any) -> str:
    """A table cell: text with any URL in it redacted (an extra column may hold a signed URL), cut short."""
    if value is None:
        return ""
    text = redact_text(str(value))
    return _esc(text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…")


def _failure_table(failures: pl.DataFrame) -> tuple[list[str], str, str]:
    """The failure table's columns, its body rows, and a note on extra columns left out."""
    cols = [c for c in FAILURE_COLUMNS if c in failures.columns]
    extras = _extra_columns(failures)
    left_out = len([c for c in failures.columns if c not in REPORT_COLUMNS and not c.startswith("_")])
    left_out -= len(extras)
    shown = flat_for_csv(failures.select(cols + extras))  # list and struct cells as JSON text
    body = "\n".join(
        "<tr>" + "".join(f"<td>{_cell(rec[c])}</td>" for c in cols + extras) + "</tr>"
        for rec in shown.iter_rows(named=True)
    )
    note = (
        f'<p class="muted">{left_out} more manifest column(s) not shown (empty in these rows, or past the first '
        f"{MAX_EXTRA_COLUMNS}): the report files have them all</p>"
        if left_out
        else ""
    )
    return cols + extras, body, note


def _aborted(info: dict[str, Any]) -> str:
    items = "".join(
        f"<li><b>Aborted:</b> {_esc(a['abort_reason'])} <span class=muted>({_esc(a['run'])})</span></li>"
        for a in info.get("aborted") or []
    )
    return f'<ul class="abort" role="alert">{items}</ul>' if items else ""


def render_html(merged: pl.DataFrame, info: dict[str, Any]) -> str:
    """The report as one HTML document."""
    failures = merged.filter(did_not_succeed()).head(MAX_TABLE_ROWS)
    cols, body_rows, extras_note = _failure_table(failures)
    encode = merged["encode_s"].drop_nulls().to_list() if "encode_s" in merged.columns else []
    # Only with --probe: how long the videos are (minutes), and how much video there is in all.
    media = (
        [m / 60 for m in merged["media_duration_s"].drop_nulls().to_list()]
        if "media_duration_s" in merged.columns
        else []
    )
    media_chart = (
        f"<div><h2>Video durations, minutes ({len(media)} probed, {sum(media):,.1f} min in all)</h2>"
        f"{_histogram(media, 'video durations in minutes', unit='min')}</div>"
        if media
        else ""
    )
    cards = "".join(
        f'<div class="card" style="border-color:{COLORS[o]}"><span>{o}</span><b>{info["outcomes"][o]}</b></div>'
        for o in OUTCOMES
        if info["outcomes"][o]
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sources = ", ".join(_esc(r) for r in info["reports"])
    steps = (
        "".join(f"<li><code>{_esc(s)}</code></li>" for s in info["next_steps"])
        + "".join(f"<li><b>Fix first:</b> {_esc(f['message'])}</li>" for f in info.get("fix_first") or [])
    ) or "<li>nothing to do</li>"
    data = _esc(json.dumps({"rows": info["rows"], "outcomes": info["outcomes"]}))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>batch-ingest report</title><style>{_CSS}</style></head>
<body data-summary="{data}">
<h1>batch-ingest report</h1>
<div class="muted">{info["rows"]} rows from {sources}; generated {generated}</div>
{_aborted(info)}
<div class="cards"><div class="card"><span>rows</span><b>{info["rows"]}</b></div>{cards}</div>
<div class="charts">
<div><h2>Outcomes</h2>{_bar_chart(info["outcomes"])}</div>
<div><h2>Encode durations</h2>{_histogram(encode, "encode durations")}</div>
{media_chart}
</div>
<h2>Timeline</h2>{_timeline(_epochs(merged, "submitted_at"), _epochs(merged, "finished_at"))}
<h2>Rows that did not succeed (<span id="shown">{failures.height}</span> shown)</h2>
<input id="filter" type="search" placeholder="filter: error code, source, message..." aria-label="filter">
<table id="failures"><thead><tr>{"".join(f"<th>{_esc(c)}</th>" for c in cols)}</tr></thead>
<tbody>
{body_rows}
</tbody></table>
{extras_note}
<h2>Next</h2><ul>{steps}</ul>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_html(merged: pl.DataFrame, info: dict[str, Any], out: Path) -> None:
    """Write the HTML report to `out`."""
    data = render_html(merged, info).encode("utf-8")
    try:
        write_atomically(out, lambda f: f.write(data))
    except OSError as exc:
        raise UsageError(f"--html {out}: cannot write: {exc.strerror}") from None
