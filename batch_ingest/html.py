"""A self-contained HTML report: totals, charts as inline SVG, a filterable table of failures.

Nothing is fetched from the network: styles, script and charts are all inside the file.
Every value from a manifest or the API is escaped.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from .errors import UsageError
from .report import write_atomically
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

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#666}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:90px}
.card b{display:block;font-size:22px}.charts{display:flex;flex-wrap:wrap;gap:24px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #eee;padding:4px 6px;
text-align:left;vertical-align:top}th{background:#fafafa;position:sticky;top:0}
input{font-size:14px;padding:6px;width:320px;margin-bottom:8px}code{font-size:12px}
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


def _histogram(values: list[float], title: str, bins: int = 20) -> str:
    if not values:
        return f"<p class=muted>no {title}</p>"
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / span * bins))] += 1
    width, height, pad = 420, 160, 24
    top = max(counts)
    bw = (width - pad) / bins
    parts = [f'<svg role="img" aria-label="{_esc(title)}" width="{width}" height="{height + 20}">']
    for i, c in enumerate(counts):
        h = (height - pad) * c / top
        parts.append(
            f'<rect x="{pad + i * bw:.1f}" y="{height - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" fill="#1565c0">'
            f"<title>{lo + i * span / bins:.1f}–{lo + (i + 1) * span / bins:.1f} s: {c}</title></rect>"
        )
    parts.append(
        f'<text x="{pad}" y="{height + 14}" font-size="11">{lo:.1f} s</text>'
        f'<text x="{width - 50}" y="{height + 14}" font-size="11">{hi:.1f} s</text>'
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


def render_html(merged: pl.DataFrame, info: dict[str, Any]) -> str:
    """The report as one HTML document."""
    failures = merged.filter(did_not_succeed()).head(MAX_TABLE_ROWS)
    cols = [
        c
        for c in ("row", "ref_id", "source", "outcome", "error_code", "http_status", "error_message")
        if c in failures.columns
    ]
    body_rows = "\n".join(
        "<tr>" + "".join(f"<td>{_esc(rec[c])}</td>" for c in cols) + "</tr>"
        for rec in failures.select(cols).iter_rows(named=True)
    )
    encode = merged["encode_s"].drop_nulls().to_list() if "encode_s" in merged.columns else []
    # Only with --probe: how long the videos are (minutes), and how much video there is in all.
    media = (
        [m / 60 for m in merged["media_duration_s"].drop_nulls().to_list()]
        if "media_duration_s" in merged.columns
        else []
    )
    media_chart = (
        f"<div><h2>Video durations, minutes ({len(media)} probed, {sum(media):,.1f} min in all)</h2>"
        f"{_histogram(media, 'video durations in minutes')}</div>"
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
        "".join(f"<li><code>{_esc(s)}</code></li>" for s in info["next_steps"]) or "<li>nothing to do</li>"
    )
    data = _esc(json.dumps({"rows": info["rows"], "outcomes": info["outcomes"]}))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>batch-ingest report</title><style>{_CSS}</style></head>
<body data-summary="{data}">
<h1>batch-ingest report</h1>
<div class="muted">{info["rows"]} rows from {sources}; generated {generated}</div>
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
