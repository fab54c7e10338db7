"""The poller on a fake clock: how often it polls while rows are still being submitted."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from batch_ingest.api.models import EncodeStatusMap, Job
from batch_ingest.journal import Journal
from batch_ingest.plan import plan_manifest
from batch_ingest.poll import Poller
from batch_ingest.progress import Progress

pytestmark = pytest.mark.anyio
STAMP = "2027-01-15T08:00:00.000Z"


class ListingStub:
    """GET jobs answering one page with our job still encoding; notes when each poll came; stops after `polls`."""

    def __init__(self, clock, stop: asyncio.Event, polls: int) -> None:
        self.clock, self.stop, self.polls = clock, stop, polls
        self.times: list[float] = []

    async def list_jobs_raw(self, **_):
        self.times.append(self.clock())
        if len(self.times) >= self.polls:
            self.stop.set()
        return [{"id": "job-1", "encode_status": 1, "updated_at": STAMP, "created_at": STAMP}], 1


@pytest.mark.parametrize(("slack", "expected"), [(1.0, [2.0] * 5), (0.0, [3.0, 4.5, 6.75, 10.125, 15.188])])
async def test_polls_come_quickly_while_submitting_only_when_the_budget_has_room(
    tmp_path, fake_clock, slack, expected
):
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,profile\nhttps://cdn.example.com/a.mp4,100\n")
    journal = Journal.create(tmp_path / "journal.sqlite", plan_manifest(manifest).frame, {})
    stop, submitting_done = asyncio.Event(), asyncio.Event()  # submission goes on the whole time
    stub = ListingStub(fake_clock, stop, polls=6)
    poller = Poller(
        stub,  # type: ignore[arg-type]  # a stub with the one method the poller calls
        journal,
        EncodeStatusMap(),
        Progress(),
        job_timeout=3600,
        min_interval=2.0,
        max_interval=30.0,
        rate_per_minute=120,
        slack=lambda: slack,
        clock=fake_clock,
        sleep=fake_clock.sleep,
    )
    job = Job.from_api({"id": "job-1", "encode_status": 1, "updated_at": STAMP, "created_at": STAMP})
    poller.track(1, job, fake_clock())
    await asyncio.wait_for(poller.run(submitting_done, stop), timeout=10)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(stub.times)]
    assert gaps == expected  # roomy: the tail interval; tight: the interval grows as nothing changes
    journal.close()
