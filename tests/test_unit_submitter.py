"""The submitter on a fake clock against a scripted API (httpx.MockTransport): creates in doubt and the
look-up that adopts their job (or not), and --max-failures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from batch_ingest.api import Auth, Job, SmartStreamClient
from batch_ingest.api.models import format_api_date
from batch_ingest.journal import Journal
from batch_ingest.progress import Progress
from batch_ingest.settings import Secret
from batch_ingest.submit import SubmitPolicy, Submitter

from .helpers import PLAN_SCHEMA, FakeClock

pytestmark = pytest.mark.anyio
T0 = 1_800_000_000.0
PREFIX = "/v1/merchants/demo/jobs"


def source(row: int) -> str:
    return f"https://cdn.example.com/{row}.mp4"


class Platform:
    """The create, get-by-ref and newest-jobs endpoints of a fake API; `creates` scripts each create.

    A create answers as scripted, in order, then "ok": "ok" (201), "drop" (the job is created, then the
    connection drops), "500-created" (created, then a 500), "500" and "400" (nothing created),
    "connect" (the connection never opens). Jobs are stamped in the platform's clock: ours + `skew`.
    """

    def __init__(self, clock: FakeClock, skew: float = 0.0) -> None:
        self.clock, self.skew = clock, skew
        self.jobs: list[dict[str, Any]] = []  # in creation order
        self.creates: list[str] = []
        self.requests: list[str] = []  # "POST", "GET ref:ref-1", "GET list 1"
        self.lookup_status: int | None = None  # answer every get-by-ref with this status
        self.after_create: Callable[[], None] = lambda: None  # runs after each create made its job
        self._next = 0

    def add(self, *, src: str, ref_id: str | None = None, profile: str = "100", created: float) -> str:
        """A job already on the platform, created at platform time `created`."""
        self._next += 1
        job_id = f"job-{self._next}"
        stamp = format_api_date(created)
        self.jobs.append(
            {"id": job_id, "ref_id": ref_id, "job_profile_id": profile, "source_url": src}
            | {"source_type": "url", "encode_status": 0, "created_at": stamp, "updated_at": stamp}
        )
        return job_id

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST":
            self.requests.append("POST")
            fault = self.creates.pop(0) if self.creates else "ok"
            if fault == "connect":
                raise httpx.ConnectError("refused", request=request)
            if fault in ("500", "400"):
                return httpx.Response(int(fault), json={"code": "NOPE", "message": f"fault {fault}"})
            body = json.loads(request.content)
            self.add(
                src=body["source_url"],
                ref_id=body.get("ref_id"),
                profile=str(body["job_profile_id"]),
                created=self.clock() + self.skew,
            )
            self.after_create()
            if fault == "drop":
                raise httpx.ReadError("connection dropped", request=request)
            if fault == "500-created":
                return httpx.Response(500, json={"code": "SERVER_ERROR", "message": "oops"})
            return httpx.Response(201, json=self.jobs[-1])
        name = path.rsplit("/", 1)[1]
        if path == PREFIX:
            page = int(request.url.params["page"])
            self.requests.append(f"GET list {page}")
            newest = self.jobs[::-1][(page - 1) * 100 : page * 100]
            return httpx.Response(200, json={"jobs": newest, "count": len(self.jobs)})
        self.requests.append(f"GET {name}")
        if self.lookup_status is not None:
            return httpx.Response(self.lookup_status, json={"code": "DENIED", "message": "not allowed"})
        found = [j for j in self.jobs if name.startswith("ref:") and j["ref_id"] == name[4:]]
        if not found:
            return httpx.Response(404, json={"code": "NOT_FOUND", "message": "no such job"})
        return httpx.Response(200, json=found[-1])

    def posts(self) -> int:
        return self.requests.count("POST")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def platform(clock: FakeClock) -> Platform:
    return Platform(clock)


def make_journal(journal_dir: Path, rows: int, *, with_ref: bool = True) -> Journal:
    frame = pl.DataFrame(
        [
            {"row": r, "key": f"k{r}", "ref_id": f"ref-{r}" if with_ref else None, "source": source(r)}
            | {"source_type": "url", "job_profile_id": 100, "status": "ready"}
            for r in range(1, rows + 1)
        ],
        schema=PLAN_SCHEMA,
    )
    return Journal.create(journal_dir / "journal.sqlite", frame, {})


@pytest.fixture
def journal(journal_dir: Path) -> Iterator[Journal]:
    j = make_journal(journal_dir, 1)
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
        clock=platform.clock,
    )
    async with client:
        yield client


class Recorder(Progress):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


async def submit(
    client: SmartStreamClient, journal: Journal, clock: FakeClock, **kw: Any
) -> tuple[Submitter, list[tuple[int, str]]]:
    """Run a submitter over the journal to its end; return it and the (row, job id) handed to the poller."""
    handed: list[tuple[int, str]] = []

    def on_submitted(row: int, job: Job, now: float, task: Any) -> None:
        handed.append((row, job.id))

    options: dict[str, Any] = dict(concurrency=2, upload_concurrency=1, retries=2, in_doubt_delay=2.0) | kw
    progress, secret_sources = options.pop("progress", Progress()), options.pop("secret_sources", None)
    submitter = Submitter(
        client,
        journal,
        SubmitPolicy(**options),
        progress=progress,
        stop=asyncio.Event(),
        secret_sources=secret_sources,
        sleep=clock.sleep,
        clock=clock,
    )
    submitter.on_submitted = on_submitted
    await asyncio.wait_for(submitter.run(), timeout=10)
    return submitter, handed


def rows(journal: Journal, *columns: str) -> dict[int, tuple[Any, ...]]:
    """row -> the journal's columns for it."""
    return {r[0]: tuple(r[1:]) for r in journal.to_frame().select("row", *columns).rows()}


async def test_each_pending_row_is_created_once_and_handed_to_the_poller(journal_dir, platform, clock):
    """The happy path: one create per row, recorded `submitted` with its job, handed over in the record."""
    journal = make_journal(journal_dir, 3)
    async with api(platform) as client:
        submitter, handed = await submit(client, journal, clock)
    assert platform.requests == ["POST"] * 3
    by_row = {j["ref_id"]: (j["id"], j["source_url"]) for j in platform.jobs}
    assert sorted(handed) == [(r, by_row[f"ref-{r}"][0]) for r in (1, 2, 3)]
    assert rows(journal, "state", "job_id", "attempts") == {
        r: ("submitted", by_row[f"ref-{r}"][0], 1) for r in (1, 2, 3)
    }
    assert {by_row[f"ref-{r}"][1] for r in (1, 2, 3)} == {source(1), source(2), source(3)}
    assert (submitter.stats.created, submitter.stats.adopted, submitter.stats.in_doubt) == (3, 0, 0)
    journal.close()


@pytest.mark.parametrize("fault", ["drop", "500-created"])
async def test_a_create_in_doubt_is_adopted_by_ref_id_not_sent_again(journal, platform, clock, fault):
    """No answer (or a 5xx) to a create that did create: after the in-doubt pause, the ref look-up adopts it."""
    platform.creates = [fault]
    async with api(platform) as client:
        submitter, handed = await submit(client, journal, clock)
    assert platform.requests == ["POST", "GET ref:ref-1"]
    assert [j["id"] for j in platform.jobs] == ["job-1"]  # never a duplicate
    assert handed == [(1, "job-1")]
    assert rows(journal, "state", "job_id", "attempts") == {1: ("submitted", "job-1", 1)}
    assert (submitter.stats.created, submitter.stats.adopted, submitter.stats.in_doubt) == (0, 1, 1)
    assert clock() == T0 + 2.0  # the in-doubt pause, on the fake clock


async def test_an_in_doubt_row_without_ref_id_is_matched_among_the_newest_jobs(journal_dir, platform, clock):
    """Without ref_id the newest jobs are searched by source and profile; the earliest match is adopted."""
    journal = make_journal(journal_dir, 1, with_ref=False)
    platform.add(src=source(1), created=T0 - 3600)  # this source, but long before the send: not ours
    platform.creates = ["drop"]

    def later_jobs() -> None:  # stamped after ours: from the same source, another, or another profile
        platform.after_create = lambda: None
        platform.add(src=source(1), created=T0 + 1)
        platform.add(src=source(2), created=T0 + 1)
        platform.add(src=source(1), profile="200", created=T0 + 1)

    platform.after_create = later_jobs
    async with api(platform) as client:
        submitter, handed = await submit(client, journal, clock)
    assert platform.requests == ["POST", "GET list 1"]
    assert handed == [(1, "job-2")]  # job-1 predates the send; job-3 came later; job-4, -5 do not match
    assert rows(journal, "state", "job_id") == {1: ("submitted", "job-2")}
    assert submitter.stats.adopted == 1
    journal.close()


async def test_when_the_look_up_finds_nothing_the_row_is_sent_again_once(journal, platform, clock):
    """A 5xx that created nothing: the look-up finds no job, the row goes back to pending and is resent."""
    platform.creates = ["500"]
    async with api(platform) as client:
        submitter, handed = await submit(client, journal, clock)
    assert platform.requests == ["POST", "GET ref:ref-1", "POST"]
    assert handed == [(1, "job-1")]
    assert rows(journal, "state", "job_id", "attempts") == {1: ("submitted", "job-1", 2)}
    assert (submitter.stats.created, submitter.stats.adopted, submitter.stats.in_doubt) == (1, 0, 1)


@pytest.mark.parametrize(
    ("job", "adopted"),
    [
        (dict(created=T0 + 5), True),  # made by the interrupted attempt
        (dict(created=T0 - 100), True),  # platform clock unknown: up to 5 minutes of skew are allowed
        (dict(created=T0 - 301), False),  # stamped before the attempt could have made it
        (dict(created=T0 + 5, known=True), False),  # a job the run must never adopt (known_jobs)
        (dict(created=T0 + 5, src=source(9)), False),  # another source
        (dict(created=T0 + 5, profile="200"), False),  # another profile
        (dict(created=T0 + 5, ref_id="ref-other"), None),  # the look-up by ref-1 does not find it at all
    ],
)
async def test_adoption_rules_for_a_row_found_in_doubt_after_a_crash(journal, platform, clock, job, adopted):
    """A row left `sending` is looked up before it is ever sent; only a job this attempt could have made is adopted."""
    journal.mark_sending([1], T0)  # the crashed attempt's send time
    clock.now = T0 + 60  # the resume
    job_id = platform.add(
        src=job.get("src", source(1)),
        ref_id=job.get("ref_id", "ref-1"),
        profile=job.get("profile", "100"),
        created=job["created"],
    )
    if job.get("known"):
        journal.add_known_jobs([job_id], "a job of the retried run")
    async with api(platform) as client:
        submitter, handed = await submit(client, journal, clock)
    assert handed == [(1, job_id if adopted else "job-2")]
    if adopted:
        assert platform.requests == ["GET ref:ref-1"]
        assert rows(journal, "state", "job_id", "attempts") == {1: ("submitted", job_id, 1)}
        assert submitter.stats.adopted == 1
    else:
        assert platform.requests == ["GET ref:ref-1", "POST"]
        assert rows(journal, "state", "job_id", "attempts") == {1: ("submitted", "job-2", 2)}
        assert (submitter.stats.adopted, submitter.stats.created) == (0, 1)


@pytest.mark.parametrize(("stamped", "adopted"), [(-0.5, True), (-1.5, False)])
async def test_once_the_platform_clock_is_learnt_only_a_second_of_margin_is_allowed(
    journal, platform, clock, stamped, adopted
):
    """After a create taught the platform's offset (+30 s here), a job stamped >1 s before the send is not adopted."""
    platform.skew = 30.0
    async with api(platform) as client:
        await client.create_job(source(7), 100)  # job-1, stamped T0 + 30: the offset is learnt
        journal.mark_sending([1], T0 + 10)  # an attempt in doubt, sent at T0 + 10 (platform: T0 + 40)
        job_id = platform.add(src=source(1), ref_id="ref-1", created=T0 + 40 + stamped)
        clock.now = T0 + 20
        submitter, handed = await submit(client, journal, clock)
    expected = job_id if adopted else "job-3"
    assert handed == [(1, expected)]
    assert rows(journal, "state", "job_id") == {1: ("submitted", expected)}
    assert submitter.stats.adopted == (1 if adopted else 0)
    assert platform.posts() == (1 if adopted else 2)


async def test_a_refused_look_up_leaves_the_row_in_doubt_never_sent_again(journal, platform, clock):
    """A look-up answered 403: the row stays `sending` (a later resume looks again), not `error`, not resent."""
    journal.mark_sending([1], T0)
    platform.lookup_status = 403
    recorder = Recorder()
    async with api(platform) as client:
        submitter, handed = await submit(client, journal, clock, progress=recorder)
    assert platform.requests == ["GET ref:ref-1"]
    assert handed == []
    assert rows(journal, "state", "http_status", "error_code", "attempts") == {
        1: ("sending", 403, "DENIED", 1)
    }
    assert submitter.stats.failures == 0
    assert any("in doubt and the look-up failed" in m for m in recorder.messages)


async def test_a_create_that_never_connected_is_not_looked_up_and_an_unreachable_api_aborts(
    journal, platform, clock
):
    """A connect error surely created nothing: no look-up; after every retry the run aborts, the row pending."""
    platform.creates = ["connect"] * 3
    async with api(platform) as client:
        submitter, handed = await submit(client, journal, clock, retries=2)
    assert platform.requests == ["POST"] * 3
    assert handed == []
    assert rows(journal, "state", "attempts") == {1: ("pending", 3)}
    assert (
        submitter.stats.abort_reason is not None
        and "unreachable through 2 retries" in submitter.stats.abort_reason
    )
    assert submitter.stop.is_set()


async def test_max_failures_aborts_after_one_failure_too_many(journal_dir, platform, clock):
    """--max-failures 2: the third failed row aborts the run; rows not yet sent stay pending."""
    journal = make_journal(journal_dir, 5)
    platform.creates = ["400"] * 5
    async with api(platform) as client:
        submitter, handed = await submit(client, journal, clock, concurrency=1, max_failures=2)
    assert platform.requests == ["POST"] * 3
    assert handed == []
    assert submitter.stats.abort_reason == "more than --max-failures 2 rows failed"
    assert submitter.stats.failures == 3
    assert rows(journal, "state", "http_status", "error_code") == {
        1: ("error", 400, "NOPE"),
        2: ("error", 400, "NOPE"),
        3: ("error", 400, "NOPE"),
        4: ("pending", None, None),
        5: ("pending", None, None),
    }
    journal.close()


async def test_max_failures_is_not_tripped_at_the_limit(journal_dir, platform, clock):
    """Exactly --max-failures failed rows is allowed: every other row is still sent."""
    journal = make_journal(journal_dir, 4)
    platform.creates = ["400", "400"]
    async with api(platform) as client:
        submitter, handed = await submit(client, journal, clock, concurrency=1, max_failures=2)
    assert submitter.stats.abort_reason is None
    assert platform.posts() == 4
    assert [row for row, _ in handed] == [3, 4]
    assert journal.counts() == {"error": 2, "submitted": 2}
    journal.close()


async def test_until_closes_the_window_between_two_creates(journal_dir, platform, clock):
    """--until on the submitter's clock: rows sent before it go, the rest stay pending for a resume."""
    journal = make_journal(journal_dir, 5)
    until = clock() + 25
    platform.after_create = lambda: setattr(clock, "now", clock.now + 10)  # each create takes 10 s
    try:
        async with api(platform) as client:
            submitter, handed = await submit(client, journal, clock, concurrency=1, until=until)
        assert [row for row, _ in handed] == [1, 2, 3]  # at 0, 10 and 20 s; the 4th would leave at 30 s
        assert submitter.stats.window_closed == "--until reached" and submitter.stats.submissions == 3
        assert journal.counts() == {"submitted": 3, "pending": 2}
    finally:
        journal.close()


async def test_max_submissions_counts_creates_not_rows_settled_otherwise(journal_dir, platform, clock):
    journal = make_journal(journal_dir, 4)
    platform.creates = ["400"]  # the first create is refused: an error, but it was a submission
    try:
        async with api(platform) as client:
            submitter, handed = await submit(client, journal, clock, concurrency=1, max_submissions=2)
        assert [row for row, _ in handed] == [2]
        assert submitter.stats.window_closed == "--max-submissions 2 reached"
        assert journal.counts() == {"error": 1, "submitted": 1, "pending": 2}
        assert platform.requests.count("POST") == 2
    finally:
        journal.close()


async def test_rows_adopted_after_a_crash_do_not_use_up_the_nights_cap(journal_dir, platform, clock):
    """Two rows left in doubt by a crash are found on the platform (no create): --max-submissions 2
    still lets two creates go, for the next two rows."""
    journal = make_journal(journal_dir, 5)
    journal.mark_sending([1, 2], T0)
    clock.now = T0 + 60
    for row in (1, 2):
        platform.add(src=source(row), ref_id=f"ref-{row}", created=T0 + 5)
    try:
        async with api(platform) as client:
            submitter, handed = await submit(client, journal, clock, concurrency=4, max_submissions=2)
        assert platform.requests.count("POST") == 2 and submitter.stats.submissions == 2
        assert sorted(row for row, _ in handed) == [1, 2, 3, 4]
        assert submitter.stats.window_closed == "--max-submissions 2 reached"
        assert journal.counts() == {"submitted": 4, "pending": 1}
    finally:
        journal.close()


def test_error_codes_name_rows_that_ended_not_rows_whose_look_up_was_refused(journal_dir):
    journal = make_journal(journal_dir, 3)
    try:
        journal.note_error(
            1, http_status=403, code="DENIED", message="the look-up was refused"
        )  # still pending
        journal.mark_error(2, http_status=404, code="STORAGE_NOT_FOUND", message="no storage", now=T0)
        assert journal.error_codes([1, 2, 3]) == {("STORAGE_NOT_FOUND", 404): [2]}
    finally:
        journal.close()
