"""How long a run will take, before it starts: what `validate` prints under the plan.

The rate limit bounds a run: every job costs a create plus its share of the polls (about 1.05
requests per job, scenario 1 of the benchmark), every distinct profile one look-up, and with
--skip-existing every row with a ref_id at most one more look-up. Uploads add their bytes over
an upload rate, which only the user (--upload-rate) or a probe can know: without one the
estimate says it leaves uploads out. Encode time on the platform comes on top of the last job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plan import PlanInfo

REQUESTS_PER_JOB = 1.05  # measured: bench scenario 1 (creates, plus polls shared by every job in flight)


@dataclass(frozen=True)
class Estimate:
    """The run's duration from its request count and upload volume."""

    jobs: int
    requests: int
    rate_per_minute: float
    request_s: float | None  # None: no rate limit, so latency and concurrency bound the run instead
    upload_bytes: int
    upload_rate: float  # bytes per second; 0: unknown
    upload_s: float | None  # None: unknown (no upload rate given), or nothing to upload

    @property
    def total_s(self) -> float | None:
        """Requests and uploads overlap; the longer of the two bounds the run."""
        parts = [s for s in (self.request_s, self.upload_s) if s is not None]
        return max(parts) if parts else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_s": self.total_s}


def estimate_run(
    info: PlanInfo, *, rate_per_minute: float, upload_rate: float = 0.0, skip_existing: bool = False
) -> Estimate:
    """The estimate for a plan as `describe_plan` gives it."""
    jobs = info.to_submit
    requests = round(jobs * REQUESTS_PER_JOB) + len(info.per_profile)
    if skip_existing:
        requests += info.with_ref_id
    request_s = requests / rate_per_minute * 60 if rate_per_minute > 0 else None
    upload_bytes = info.upload_bytes
    upload_s = upload_bytes / upload_rate if upload_rate > 0 and upload_bytes else None
    return Estimate(jobs, requests, rate_per_minute, request_s, upload_bytes, upload_rate, upload_s)


def format_duration(seconds: float) -> str:
    """`35 h 0 min`, `12 min`, `40 s`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes / 1440:.1f} days ({minutes // 60} h)"


def format_size(n: float) -> str:
    """`600.0 MiB`, `512 B`."""
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"


def format_estimate(est: Estimate) -> str:
    """The estimate as lines for a person."""
    if est.jobs == 0:
        return "estimate: nothing to send"
    lines = []
    if est.request_s is not None:
        lines.append(
            f"estimate: about {format_duration(est.request_s)} for {est.requests:,} API requests at {est.rate_per_minute:g} "
            f"per minute (--rate), {REQUESTS_PER_JOB} per job; the last encodes come on top"
        )
    else:
        lines.append(
            f"estimate: {est.requests:,} API requests; no rate limit is set (--rate 0), so the API's latency and "
            "--concurrency bound the run, not a figure known in advance"
        )
    if est.upload_bytes:
        if est.upload_s is not None:
            lines.append(
                f"uploads: {format_size(est.upload_bytes)} at {format_size(est.upload_rate)}/s: about "
                f"{format_duration(est.upload_s)} (overlapping the requests)"
            )
        else:
            lines.append(
                f"uploads: {format_size(est.upload_bytes)}, not in the estimate: pass --upload-rate (e.g. 50M, "
                "your measured upload bandwidth) to include them"
            )
    return "\n".join(lines)
