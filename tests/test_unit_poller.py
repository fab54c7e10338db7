"""The poller on a fake clock against a scripted jobs list (httpx.MockTransport): which pages each poll
reads (watermark and overlap), how its interval adapts, the per-job fallback reads, and deadlines."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from batch_ingest.api import Auth, Job, SmartStreamClient
from batch_ingest.api.models import format_api_date
from batch_ingest.errors import EndlessListing
from batch_ingest.journal import Journal
from batch_ingest.poll import Poller, PollPolicy
from batch_ingest.progress import Progress
from batch_ingest.settings import Secret

from .helpers import PLAN_SCHEMA, FakeClock

pytestmark = pytest.mark.anyio
T0 = 1_800_000_000.0  # the fake clock's start, and the platform's "now" in these tests
PREFIX = "/v1/merchants/demo/jobs"
QUEUED, ENCODING, DONE, FAILED = 0, 1, 2, 3


class Platform:
    """The jobs list (newest change first) and GET jobs/:id of a fake API; notes every request."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []  # "list 1" (page 1), "get job-a"
        self.list_errors = 0  # the next n list requests answer 500
        self.hidden: set[str] = set()  # jobs the list does not show (GET jobs/:id does)
        self.only_page_1 = False  # every page number gets page 1: a list that never ends
        self.on_request: Callable[[], Any] | None = None  # awaited (if a coroutine) before answering

    def put(self, job_id: str, status: int, updated: float) -> None:
        """A job as the platform holds it, changed (or created) at platform time `updated`."""
        self.jobs[job_id] = {
            "id": job_id,
            "encode_status": status,
            "created_at": format_api_date(T0 - 10_000),
            "updated_at": format_api_date(updated),
        }

    def others(self, n: int, newest: float, step: float = 1.0, prefix: str = "other") -> None:
        """`n` jobs of other users, changed at `newest`, `newest - step`, ..."""
        for i in range(n):
            self.put(f"{prefix}-{i}", ENCODING, newest - i * step)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == PREFIX:
            page, limit = int(request.url.params["page"]), int(request.url.params["limit"])
            self.requests.append(f"list {page}")
        else:
            self.requests.append(f"get {path.rsplit('/', 1)[1]}")
        if self.on_request is not None and (waiting := self.on_request()) is not None:
            await waiting
        if path == PREFIX:
            if self.list_errors:
                self.list_errors -= 1
                return httpx.Response(500, json={"code": "SERVER_ERROR", "message": "boom"})
            shown = [j for j in self.jobs.values() if j["id"] not in self.hidden]
            ordered = sorted(shown, key=lambda j: j["updated_at"], reverse=True)
            page = 1 if self.only_page_1 else page
            return httpx.Response(
                200, json={"jobs": ordered[(page - 1) * limit : page * limit], "count": len(ordered)}
            )
        job = self.jobs.get(path.rsplit("/", 1)[1])
        if job is None:
            return httpx.Response(404, json={"code": "NOT_FOUND", "message": "no such job"})
        return httpx.Response(200, json=job)

    def lists(self) -> int:
        return sum(1 for r in self.requests if r.startswith("list"))


class Recorder(Progress):
    """Notes the messages a poller gives."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


@pytest.fixture
def platform() -> Platform:
    return Platform()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def journal(journal_dir: Path) -> Iterator[Journal]:
    """A journal of 200 ready URL rows."""
    rows = [
        {"row": r, "key": f"k{r}", "source": f"https://cdn.example.com/{r}.mp4", "source_type": "url"}
        | {"job_profile_id": 100, "status": "ready"}
        for r in range(1, 201)
    ]
    j = Journal.create(journal_dir / "journal.sqlite", pl.DataFrame(rows, schema=PLAN_SCHEMA), {})
    yield j
    j.close()


@asynccontextmanager
async def api(platform: Platform) -> AsyncIterator[SmartStreamClient]:
    client = SmartStreamClient(
        base_url="http://api.test",
        merchant_id="demo",
        auth=Auth(Secret("key"), token=Secret("token")),
        transport=httpx.MockTransport(platform.handle),
        get_retries=0,
    )
    async with client:
        yield client


def poller(client: SmartStreamClient, journal: Journal, clock: FakeClock, **kw: Any) -> Poller:
    options: dict[str, Any] = dict(job_timeout=3600, min_interval=2.0, max_interval=30.0) | kw
    progress, slack = options.pop("progress", Progress()), options.pop("slack", lambda: 0.0)
    hooks = {
        name: options.pop(name) for name in ("on_final", "on_resend", "on_follow_end") if name in options
    }
    p = Poller(
        client, journal, PollPolicy(**options), progress=progress, slack=slack, clock=clock, sleep=clock.sleep
    )
    for name, hook in hooks.items():
        setattr(p, name, hook)
    return p


def follow(
    p: Poller, journal: Journal, platform: Platform, row: int, status: int, updated: float, **kw: Any
) -> str:
    """Submit row `row` with job `job-<row>` (as the platform shows it) and have the poller track it."""
    job_id = f"job-{row}"
    platform.put(job_id, status, updated)
    job = Job.from_api(platform.jobs[job_id])
    journal.mark_submitted(
        row, job_id=job_id, media_id=None, job_profile_id=100, encode_status=status,
        created_at=job.created_at, updated_at=job.updated_at, now=p._clock(), follow=kw.get("follow"),
    )  # fmt: skip
    p.track(row, job, p._clock(), **kw)
    return job_id


def states(journal: Journal, *rows: int) -> dict[int, tuple[Any, ...]]:
    """row -> (state, encode_status, error_code) as the journal holds it."""
    frame = journal.to_frame().filter(pl.col("row").is_in(list(rows)))
    return {r: (s, e, c) for r, s, e, c in frame.select("row", "state", "encode_status", "error_code").rows()}


# -- watermark and overlap ----------------------------------------------------------------------


async def test_a_poll_with_nothing_new_reads_one_page_however_long_the_list(platform, clock, journal):
    """Cost does not grow with the account: with no change since the watermark, one page a poll."""
    platform.others(1000, newest=T0 - 100)
    async with api(platform) as client:
        p = poller(client, journal, clock)
        for row in (1, 2, 3):
            follow(p, journal, platform, row, ENCODING, T0 - 10)
        await p.poll_once()
        await p.poll_once()
    assert platform.requests == ["list 1", "list 1"]
    assert p.polls == 2
    assert states(journal, 1, 2, 3) == dict.fromkeys((1, 2, 3), ("submitted", ENCODING, None))


async def test_changes_since_the_watermark_are_read_page_by_page_down_to_it(platform, clock, journal):
    """Every change newer than the watermark is read, however many pages of others' changes sit on top."""
    platform.others(300, newest=T0 - 100, prefix="old")
    async with api(platform) as client:
        p = poller(client, journal, clock)
        follow(p, journal, platform, 1, ENCODING, T0 - 10)
        follow(p, journal, platform, 2, ENCODING, T0 - 10)
        await p.poll_once()  # the watermark is now T0 - 10
        platform.others(250, newest=T0 + 250, prefix="new")  # pages 1-3 hold others' newer changes
        platform.put("job-1", DONE, T0 + 0.5)  # ...and ours, on page 3
        platform.requests.clear()
        await p.poll_once()
    assert platform.requests == ["list 1", "list 2", "list 3"]
    assert states(journal, 1, 2) == {1: ("succeeded", DONE, None), 2: ("submitted", ENCODING, None)}
    assert p.in_flight == 1


async def test_a_late_commit_inside_the_overlap_is_read_while_pages_bring_news(platform, clock, journal):
    """A change stamped before the watermark (commit lag) is read through the overlap, and no further."""
    platform.others(300, newest=T0 - 20, step=0.01, prefix="old")  # T0 - 20 and older: past the overlap
    async with api(platform) as client:
        p = poller(client, journal, clock)
        follow(p, journal, platform, 1, ENCODING, T0 - 10)
        follow(p, journal, platform, 2, ENCODING, T0 - 10)
        await p.poll_once()  # watermark: T0 - 10
        platform.others(99, newest=T0 + 99, prefix="new")
        platform.put("job-1", DONE, T0 - 10.5)  # page 1's last item, committed late: news on page 1
        platform.put("job-2", FAILED, T0 - 11.5)  # page 2's first item, inside the 2 s overlap
        platform.requests.clear()
        await p.poll_once()
    # Page 2 also brought news, but its last item lies past the overlap: page 3 is not read.
    assert platform.requests == ["list 1", "list 2"]
    assert states(journal, 1, 2) == {1: ("succeeded", DONE, None), 2: ("failed", FAILED, "ENCODE_FAILED")}


async def test_a_page_without_news_below_the_watermark_ends_the_poll(platform, clock, journal):
    """Past the watermark, a page of changes all seen before ends the walk even inside the overlap; a
    first poll has seen nothing yet, so it reads the whole overlap once."""
    async with api(platform) as client:
        p = poller(client, journal, clock)
        follow(p, journal, platform, 1, ENCODING, T0 - 10)
        follow(p, journal, platform, 2, ENCODING, T0 - 10)
        platform.others(300, newest=T0 - 10.001, step=0.001, prefix="old")  # all inside the overlap
        await p.poll_once()
        assert platform.requests == ["list 1", "list 2", "list 3", "list 4"]
        platform.requests.clear()
        await p.poll_once()
    assert platform.requests == ["list 1"]


async def test_a_late_final_state_behind_a_page_of_others_late_commits_is_read_within_the_overlap(
    platform, clock, journal
):
    """A change of ours stamped inside the overlap is read even when others' late commits fill the page above it."""
    async with api(platform) as client:
        p = poller(client, journal, clock)
        follow(p, journal, platform, 1, ENCODING, T0 - 10)
        follow(p, journal, platform, 2, ENCODING, T0 - 10)
        await p.poll_once()  # watermark: T0 - 10
        platform.others(100, newest=T0 - 10.01, step=0.01, prefix="late")  # others' late commits
        platform.put("job-1", DONE, T0 - 11.5)  # ours, as late, on page 2: 1.5 s inside the overlap
        await p.poll_once()
        await p.poll_once()
    assert states(journal, 1) == {1: ("succeeded", DONE, None)}


async def test_a_listing_that_repeats_its_page_is_refused(platform, clock, journal):
    """A list that serves the same full page for every page number raises EndlessListing, never loops."""
    platform.others(100, newest=T0 + 100)
    platform.only_page_1 = True
    async with api(platform) as client:
        p = poller(client, journal, clock)
        follow(p, journal, platform, 1, ENCODING, T0 - 10)
        with pytest.raises(EndlessListing, match="repeats page 1"):
            await p.poll_once()
    assert platform.requests == ["list 1", "list 2"]


# -- interval adaptation ------------------------------------------------------------------------


async def test_the_interval_grows_by_half_while_nothing_changes_up_to_the_maximum(platform, clock, journal):
    """No change in a poll: the next interval is 1.5 times longer, capped at max_interval."""
    async with api(platform) as client:
        p = poller(client, journal, clock, min_interval=2.0, max_interval=10.0)
        follow(p, journal, platform, 1, ENCODING, T0 - 10)
        intervals = []
        for _ in range(5):
            await p.poll_once()
            intervals.append(p.interval)
    assert intervals == [3.0, 4.5, 6.75, 10.0, 10.0]


@pytest.mark.parametrize(
    ("before", "changes", "after"),
    [
        (10.0, 150, 20.0),  # 15 changes/s: 300 changes (three pages) take 20 s
        (10.0, 30, 30.0),  # 3/s would take 100 s: capped at max_interval
        (2.0, 150, 5.0),  # 75/s would take 4 s: raised to min_interval
    ],
)
async def test_the_interval_aims_at_three_pages_of_changes_per_poll(
    platform, clock, journal, before, changes, after
):
    """After changes, interval = 300 / (changes per second of the last interval), within [min, max]."""
    async with api(platform) as client:
        p = poller(client, journal, clock, min_interval=5.0, max_interval=30.0)
        for row in range(1, changes + 1):
            follow(p, journal, platform, row, QUEUED, T0 - 10)
        await p.poll_once()
        for row in range(1, changes + 1):
            platform.put(f"job-{row}", ENCODING, T0 + row)
        p.interval = before
        await p.poll_once()
    assert p.interval == after
    assert states(journal, changes)[changes] == ("submitted", ENCODING, None)


async def test_a_failed_poll_doubles_the_interval_and_changes_nothing(platform, clock, journal):
    """A transient list error is reported, doubles the interval (up to the maximum), and is not fatal."""
    recorder = Recorder()
    platform.list_errors = 3
    async with api(platform) as client:
        p = poller(client, journal, clock, min_interval=3.0, max_interval=20.0, progress=recorder)
        follow(p, journal, platform, 1, ENCODING, T0 - 10)
        intervals = []
        for _ in range(3):
            await p.poll_once()
            intervals.append(p.interval)
        platform.put("job-1", DONE, T0)
        await p.poll_once()
    assert intervals == [6.0, 12.0, 20.0]
    assert len(recorder.messages) == 3 and "polling failed this time" in recorder.messages[0]
    assert states(journal, 1) == {1: ("succeeded", DONE, None)}


@pytest.mark.parametrize(
    ("min_interval", "max_interval", "rate", "tail"),
    [(2.0, 30.0, 120, 2.0), (0.5, 1.0, 0, 1.0), (2.0, 30.0, 30, 4.0), (5.0, 30.0, 120, 5.0)],
)
def test_the_tail_interval_is_two_seconds_within_the_bounds_and_half_the_budget(
    clock, journal, min_interval, max_interval, rate, tail
):
    """tail = max(min_interval, min(2 s, max_interval), 120 / rate): at most half the rate budget."""
    p = Poller(
        None,  # type: ignore[arg-type]  # never asked: nothing is polled
        journal,
        PollPolicy(
            job_timeout=60, min_interval=min_interval, max_interval=max_interval, rate_per_minute=rate
        ),
        progress=Progress(),
        clock=clock,
        sleep=clock.sleep,
    )
    assert p.tail_interval == tail


@pytest.mark.parametrize(
    ("slack", "done", "expected"),
    [
        (1.0, False, [2.0] * 5),  # submitting, but half the budget unused: the tail interval
        (0.0, False, [3.0, 4.5, 6.75, 10.125, 15.188]),  # submitting, budget tight: the interval grows
        (0.0, True, [2.0] * 5),  # submission over: the tail interval whatever the slack
    ],
)
async def test_polls_come_quickly_only_when_the_budget_has_room_or_submission_is_over(
    platform, clock, journal, slack, done, expected
):
    """While submitting, polls wait the adapted interval unless the limiter has slack; afterwards, the tail."""
    stop, submitting_done = asyncio.Event(), asyncio.Event()
    if done:
        submitting_done.set()
    times: list[float] = []

    def note() -> None:
        times.append(clock())
        if len(times) >= 6:
            stop.set()

    platform.on_request = note
    async with api(platform) as client:
        p = poller(client, journal, clock, rate_per_minute=120, slack=lambda: slack)
        follow(p, journal, platform, 1, ENCODING, T0)
        await asyncio.wait_for(p.run(submitting_done, stop), timeout=10)
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == expected


# -- fallback reads -----------------------------------------------------------------------------


async def test_a_job_the_list_stopped_showing_is_read_on_its_own_oldest_first_two_a_poll(
    platform, clock, journal
):
    """After fallback_after without news, a job is read by id: the longest unseen first, at most two a poll."""
    async with api(platform) as client:
        p = poller(client, journal, clock, fallback_after=600.0)
        for row in (1, 2, 3):
            follow(p, journal, platform, row, ENCODING, T0 - 5000)
            await clock.sleep(1)
        platform.hidden = {"job-1", "job-2", "job-3"}
        platform.others(50, newest=T0 - 100)
        clock.now = T0 + 599  # row 1 unseen for 599 s: not yet
        await p.poll_once()
        assert platform.requests == ["list 1"]
        platform.put("job-2", DONE, T0 - 5000)  # a change the list will never show us
        clock.now = T0 + 602  # all three unseen for 600 s or more
        await p.poll_once()
        await p.poll_once()
    assert platform.requests == ["list 1", "list 1", "get job-1", "get job-2", "list 1", "get job-3"]
    assert states(journal, 1, 2, 3) == {
        1: ("submitted", ENCODING, None),
        2: ("succeeded", DONE, None),
        3: ("submitted", ENCODING, None),
    }


async def test_a_vanished_job_waits_for_its_timeout_unless_the_row_follows_it(platform, clock, journal):
    """A 404 on the fallback read: the run's own job is kept until its timeout; a followed one is sent again."""
    resent: list[int] = []
    async with api(platform) as client:
        p = poller(client, journal, clock, fallback_after=600.0, on_resend=resent.append)
        follow(p, journal, platform, 1, ENCODING, T0 - 5000)
        follow(p, journal, platform, 2, ENCODING, T0 - 5000, follow="existing")
        assert p.following == 1
        del platform.jobs["job-1"], platform.jobs["job-2"]
        clock.now = T0 + 600
        await p.poll_once()
    assert platform.requests == ["list 1", "get job-1", "get job-2"]
    assert resent == [2]
    assert (p.in_flight, p.following) == (1, 0)
    assert states(journal, 1, 2) == {1: ("submitted", ENCODING, None), 2: ("pending", None, None)}
    assert journal.knows_job("job-2")  # never adopted again for that row


# -- deadlines and jobs that end --------------------------------------------------------------


async def test_a_job_past_its_timeout_ends_timed_out_without_a_request(platform, clock, journal):
    """The deadline (submitted_at + job_timeout) ends a job at the first loop turn past it, unpolled."""
    async with api(platform) as client:
        p = poller(client, journal, clock, job_timeout=9.0)
        follow(p, journal, platform, 1, ENCODING, T0)
        done = asyncio.Event()
        done.set()
        await asyncio.wait_for(p.run(done, asyncio.Event()), timeout=10)
    assert platform.requests == ["list 1"] * 4  # at T0 + 2, 4, 6, 8; at T0 + 10 the job is over
    assert states(journal, 1) == {1: ("timed_out", ENCODING, "JOB_TIMEOUT")}
    assert journal.to_frame()["finished_at"][0] == T0 + 10


async def test_a_deadline_that_passes_while_a_poll_hangs_ends_the_job_on_time(platform, clock, journal):
    """A list request that never answers does not hold a job past its deadline: the poll is abandoned."""

    async def hang() -> None:
        clock.now += 5  # platform time passes while the request waits...
        await asyncio.Event().wait()  # ...forever

    platform.on_request = hang
    async with api(platform) as client:
        p = poller(client, journal, clock, job_timeout=2.001)
        follow(p, journal, platform, 1, ENCODING, T0)
        done = asyncio.Event()
        done.set()
        await asyncio.wait_for(p.run(done, asyncio.Event()), timeout=5)
    assert platform.requests == ["list 1"]
    assert states(journal, 1) == {1: ("timed_out", ENCODING, "JOB_TIMEOUT")}
    assert journal.to_frame()["finished_at"][0] == T0 + 7


async def test_a_job_final_in_its_create_answer_is_recorded_without_a_request(platform, clock, journal):
    """A job that is already done when tracked ends at the next loop turn; no poll is made for it."""
    finals: list[str] = []
    async with api(platform) as client:
        p = poller(client, journal, clock, on_final=finals.append)
        follow(p, journal, platform, 1, DONE, T0)
        follow(p, journal, platform, 2, FAILED, T0)
        done = asyncio.Event()
        done.set()
        await asyncio.wait_for(p.run(done, asyncio.Event()), timeout=10)
    assert platform.requests == []
    assert sorted(finals) == ["failed", "succeeded"]
    assert states(journal, 1, 2) == {1: ("succeeded", DONE, None), 2: ("failed", FAILED, "ENCODE_FAILED")}


@pytest.mark.parametrize(
    ("follows", "status", "state", "resent"),
    [
        ("existing", DONE, "skipped", []),  # the platform's own job succeeded: this run sent nothing
        ("recheck", DONE, "succeeded", []),  # a timed-out job re-checked by retry did finish
        ("existing", FAILED, "pending", [1]),  # a followed job that failed: the row is sent again
        ("recheck", FAILED, "pending", [1]),
        ("existing-any", FAILED, "failed", []),  # --skip-existing=any reports the failure instead
    ],
)
async def test_how_a_followed_job_ends_its_row(platform, clock, journal, follows, status, state, resent):
    """A followed job (not created by this attempt) ends its row skipped, succeeded, failed or pending."""
    sent_again: list[int] = []
    async with api(platform) as client:
        p = poller(client, journal, clock, on_resend=sent_again.append)
        follow(p, journal, platform, 1, ENCODING, T0 - 10, follow=follows)
        platform.put("job-1", status, T0)
        await p.poll_once()
    assert sent_again == resent
    assert states(journal, 1)[1][0] == state
    assert (p.in_flight, p.following) == (0, 0)


async def test_a_jobs_end_is_stamped_when_the_answer_came_not_when_the_poll_asked(platform, clock, journal):
    """A list request that waited (on the rate limiter, a slow API) still records the job's end at the
    time of the answer: finished_at is never before the row's own submission."""
    async with api(platform) as client:
        p = poller(client, journal, clock)
        follow(p, journal, platform, 1, ENCODING, T0 - 10)
        platform.put("job-1", DONE, T0 - 5)
        asked_at = clock()

        def slow_answer() -> None:
            clock.now += 7.0  # the request waited 7 s for its answer

        platform.on_request = slow_answer
        await p.poll_once()
    finished = journal.to_frame().filter(pl.col("row") == 1)["finished_at"].item()
    assert finished == asked_at + 7.0


async def test_a_fallback_read_stamps_the_jobs_end_when_its_answer_came(platform, clock, journal):
    """A job read on its own (the list stopped showing it) ends at the time of that read's answer."""
    async with api(platform) as client:
        p = poller(client, journal, clock, fallback_after=600.0)
        follow(p, journal, platform, 1, ENCODING, T0 - 5000)
        platform.hidden = {"job-1"}
        platform.put("job-1", DONE, T0 - 5000)
        clock.now = T0 + 700
        platform.on_request = lambda: setattr(clock, "now", clock.now + 3.0)  # each answer takes 3 s
        await p.poll_once()  # the list (3 s), then the job on its own (3 s more)
    assert platform.requests == ["list 1", "get job-1"]
    finished = journal.to_frame().filter(pl.col("row") == 1)["finished_at"].item()
    assert finished == T0 + 706.0


async def test_an_object_job_resumed_after_a_crash_still_tells_an_expired_signature(
    platform, clock, journal_dir
):
    """A job of an object source, submitted before a crash, failing after its URL's signature ended:
    the poller of the resume (which never saw the create) says SIGNATURE_EXPIRED; a URL row's job
    failing alike is an ENCODE_FAILED."""
    rows = [
        {
            "row": r,
            "key": f"k{r}",
            "source": source,
            "source_type": kind,
            "job_profile_id": 100,
            "status": "ready",
        }
        for r, source, kind in (
            (1, "s3://videos/a.mp4", "object"),
            (2, "https://cdn.example.com/b.mp4", "url"),
        )
    ]
    journal = Journal.create(journal_dir / "journal.sqlite", pl.DataFrame(rows, schema=PLAN_SCHEMA), {})
    try:
        async with api(platform) as client:
            before = poller(client, journal, clock, presign_ttl=60.0)
            for row in (1, 2):
                follow(before, journal, platform, row, QUEUED, T0 - 10_000)
            # The process dies; the resume's poller knows the jobs from the journal only.
            after = poller(client, journal, clock, presign_ttl=60.0)
            after.resume_in_flight()
            for row in (1, 2):
                platform.put(f"job-{row}", FAILED, T0 - 10_000 + 120)  # 120 s after the create
            await after.poll_once()
        found = states(journal, 1, 2)
        assert found[1][2] == "SIGNATURE_EXPIRED" and found[2][2] == "ENCODE_FAILED", found
    finally:
        journal.close()


@pytest.mark.parametrize(("left_queue_after", "code"), [(100, "SIGNATURE_EXPIRED"), (30, "ENCODE_FAILED")])
async def test_an_object_job_is_blamed_on_its_signature_only_when_it_left_the_queue_after_its_end(
    platform, clock, journal_dir, left_queue_after, code
):
    """Signed for 60 s: a job that started encoding 100 s after its create met a dead signature; one
    that started after 30 s had fetched its source, and its later failure is the encode's."""
    rows = [
        {"row": 1, "key": "k1", "source": "s3://videos/a.mp4", "source_type": "object"} | {"status": "ready"}
    ]
    journal = Journal.create(journal_dir / "journal.sqlite", pl.DataFrame(rows, schema=PLAN_SCHEMA), {})
    created = T0 - 10_000
    try:
        async with api(platform) as client:
            p = poller(client, journal, clock, presign_ttl=60.0)
            follow(p, journal, platform, 1, QUEUED, created, task=journal.task(1))
            platform.put("job-1", ENCODING, created + left_queue_after)
            await p.poll_once()
            platform.put("job-1", FAILED, created + 200)
            await p.poll_once()
        assert states(journal, 1)[1][2] == code
    finally:
        journal.close()
