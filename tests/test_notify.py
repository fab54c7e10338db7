"""--notify: the payload, the signature, the retry policy on a fake clock (httpx.MockTransport), and the
documented receiver (docs/notify_receiver.py) for real on a loopback port, in a thread and as a script."""

from __future__ import annotations

import importlib.util
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from batch_ingest import __version__
from batch_ingest.api.secret import Secret
from batch_ingest.errors import ConfigError
from batch_ingest.notify import (
    ATTEMPTS,
    DELIVERY_HEADER,
    EVENT_FINISHED,
    EVENT_HEADER,
    SCHEMA,
    SIGNATURE_HEADER,
    NotifyResult,
    build_payload,
    check_notify_url,
    display_url,
    send_notification,
    send_notification_async,
    sign,
    verify_signature,
)

from .helpers import FakeClock

pytestmark = pytest.mark.anyio
SECRET = "whsec-test-0123456789"
RECEIVER = Path(__file__).resolve().parent.parent / "docs" / "notify_receiver.py"
URL = "https://alice:pa55word@monitor.example.com/hooks/T0/B0/tok3n?key=k3y"


def summary(**changes: Any) -> dict[str, Any]:
    """A summary as `RunDir.finish` writes it (the keys a monitor reads)."""
    base: dict[str, Any] = {
        "run_id": "20260101-010101-abcd",
        "manifest": "/data/videos.csv",
        "run_dir": "/data/reports/20260101-010101-abcd",
        "started_at": "2026-01-01T01:01:01+00:00",
        "finished_at": "2026-01-01T02:01:01+00:00",
        "elapsed_s": 3600.0,
        "api_requests": 1050,
        "rate_limited": 2,
        "rows": 1000,
        "outcomes": {"succeeded": 990, "failed": 10},
        "abort_reason": None,
        "exit_code": 1,
        "first_failures": [
            {
                "row": 7,
                "outcome": "failed",
                "source": "https://cdn.example.com/v.mp4?X-Amz-Signature=abc123&x=1",
                "error_message": "fetch of https://bob:hunter2@nas.example.com/v.mp4 failed",
            }
        ],
        "settings": {"api_key": "********", "notify_url": URL},
    }
    return {**base, **changes}


def recording(answers: list[Any], seen: list[httpx.Request]) -> httpx.MockTransport:
    """A transport that answers each request with the next of `answers` (a status, a Response, or an
    exception to raise), recording the requests."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer if isinstance(answer, httpx.Response) else httpx.Response(answer)

    return httpx.MockTransport(handler)


# -- URL, payload, signature ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["not a url", "ftp://example.com/x", "http://", "https://example.com:99999/", "file:///tmp/x", ""]
)
def test_an_invalid_url_is_a_config_error_naming_the_option(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_notify_url(bad)
    assert "--notify" in str(caught.value) and "http(s)" in str(caught.value)
    assert caught.value.exit_code == 2


def test_valid_urls_pass_plain_http_included() -> None:
    for url in ("http://10.0.0.5:8080/hook", "https://monitor.example.com/x?token=1", "http://[::1]:9/"):
        assert check_notify_url(f" {url} ") == url


def test_display_url_keeps_only_scheme_host_and_port() -> None:
    assert display_url(URL) == "https://monitor.example.com/…"
    assert display_url("http://[::1]:8080") == "http://[::1]:8080"
    assert display_url("nonsense") == "(an invalid URL)"


def test_payload_is_the_summary_with_schema_event_and_exit_code_and_no_credential() -> None:
    payload = build_payload(summary(), 3, command="run", delivery="d-1", hide=(URL,))
    assert payload["schema"] == SCHEMA and payload["event"] == EVENT_FINISHED
    assert payload["delivery"] == "d-1" and payload["command"] == "run"
    assert payload["exit_code"] == 3  # the process's, over the summary's own
    assert payload["outcomes"] == {"succeeded": 990, "failed": 10} and payload["rate_limited"] == 2
    text = json.dumps(payload)
    for secret in ("abc123", "hunter2", "pa55word", "tok3n", "k3y"):
        assert secret not in text
    assert payload["settings"]["notify_url"] == "https://monitor.example.com/…"
    failure = payload["first_failures"][0]
    assert failure["source"] == "https://cdn.example.com/v.mp4?X-Amz-Signature=REDACTED&x=1"


def test_payload_without_a_summary_says_what_stopped_the_command() -> None:
    payload = build_payload(None, 75, command="resume", error="the run folder is in use by PID 12")
    assert payload["exit_code"] == 75 and payload["error"].startswith("the run folder")
    assert len(payload["delivery"]) == 36


def test_signature_round_trip_and_what_it_refuses() -> None:
    body = b'{"run_id":"r"}'
    header = sign(SECRET, body, 1_800_000_000)
    assert header.startswith("t=1800000000,v1=") and len(header.split("v1=")[1]) == 64
    now = 1_800_000_100.0
    assert verify_signature(SECRET, header, body, now=now)
    assert verify_signature(Secret(SECRET), header, body.decode(), now=now)
    assert not verify_signature(SECRET, header, body + b" ", now=now)  # tampered body
    assert not verify_signature("another", header, body, now=now)  # wrong secret
    assert not verify_signature(SECRET, header, body, now=1_800_000_000 + 301)  # a replay, too late
    assert not verify_signature(SECRET, header, body, now=1_800_000_000 - 301)  # from the future
    assert verify_signature(SECRET, header, body, tolerance_s=None, now=0)
    rotated = f"{header},v1={'0' * 64}"
    assert verify_signature(SECRET, rotated, body, now=now)
    assert verify_signature(SECRET, f"v1={'0' * 64}, {header.replace(',', ', ')}", body, now=now)
    for bad in (
        None,
        "",
        "t=1800000000",
        "v1=abc",
        "t=x,v1=abc",
        "t=-5,v1=abc",
        "garbage",
        "t=1800000000,v1=é",
    ):
        assert not verify_signature(SECRET, bad, body, now=now)


# -- delivery and retries, on a fake clock ----------------------------------------------------------


async def test_a_delivery_is_signed_and_carries_its_headers(fake_clock: FakeClock) -> None:
    seen: list[httpx.Request] = []
    result = await send_notification_async(
        "https://monitor.example.com/hook",
        summary(),
        1,
        secret=Secret(SECRET),
        command="run",
        transport=recording([204], seen),
        sleep=fake_clock.sleep,
        clock=fake_clock,
    )
    assert result.ok and result.status == 204 and result.attempts == 1 and result.warning is None
    assert "delivered" in result.describe()
    (request,) = seen
    assert request.method == "POST" and request.headers["Content-Type"] == "application/json"
    assert request.headers[EVENT_HEADER] == EVENT_FINISHED
    assert request.headers[DELIVERY_HEADER] == result.delivery
    assert request.headers["User-Agent"] == f"batch-ingest/{__version__}"
    signature = request.headers[SIGNATURE_HEADER]
    assert signature.startswith(f"t={int(fake_clock.now)},")
    assert verify_signature(SECRET, signature, request.content, now=fake_clock.now)
    body = json.loads(request.content)
    assert body["run_id"] == "20260101-010101-abcd" and body["exit_code"] == 1
    assert SECRET not in request.content.decode() and SECRET not in repr(result)


async def test_without_a_secret_nothing_is_signed(fake_clock: FakeClock) -> None:
    seen: list[httpx.Request] = []
    result = await send_notification_async(
        "http://10.1.2.3/hook", summary(), 0, transport=recording([200], seen), clock=fake_clock
    )
    assert result.ok and SIGNATURE_HEADER not in seen[0].headers


async def test_5xx_and_no_answer_are_retried_with_backoff_as_one_delivery(fake_clock: FakeClock) -> None:
    seen: list[httpx.Request] = []
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await fake_clock.sleep(seconds)

    answers: list[Any] = [httpx.ConnectError("refused"), 502, 204]
    result = await send_notification_async(
        "https://monitor.example.com/hook",
        summary(),
        1,
        secret=SECRET,
        transport=recording(answers, seen),
        sleep=sleep,
        clock=fake_clock,
    )
    assert result.ok and result.attempts == 3 and sleeps == [1.0, 4.0]
    assert len({r.headers[DELIVERY_HEADER] for r in seen}) == 1
    assert len({r.content for r in seen}) == 1  # the same body...
    stamps = [r.headers[SIGNATURE_HEADER].split(",")[0] for r in seen]
    assert len(set(stamps)) == 3  # ...signed again at each try
    for request in seen:
        assert verify_signature(
            SECRET, request.headers[SIGNATURE_HEADER], request.content, now=fake_clock.now
        )


async def test_429_honors_retry_after_capped(fake_clock: FakeClock) -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await fake_clock.sleep(seconds)

    later = formatdate(fake_clock.now + 10 + 7, usegmt=True)  # 7 s after the first wait
    answers: list[Any] = [
        httpx.Response(429, headers={"Retry-After": "3600"}),
        httpx.Response(503, headers={"Retry-After": later}),
        204,
    ]
    result = await send_notification_async(
        "https://m.example.com/",
        summary(),
        0,
        transport=recording(answers, []),
        sleep=sleep,
        clock=fake_clock,
    )
    assert result.ok and sleeps[0] == 10.0 and 6.0 <= sleeps[1] <= 7.0


@pytest.mark.parametrize("status", [400, 401, 404, 410, 301])
async def test_other_4xx_and_redirects_are_not_retried(fake_clock: FakeClock, status: int) -> None:
    seen: list[httpx.Request] = []
    answer = httpx.Response(status, headers={"Location": "https://elsewhere.example.com/"})
    result = await send_notification_async(
        URL, summary(), 1, secret=SECRET, transport=recording([answer], seen), clock=fake_clock
    )
    assert not result.ok and result.attempts == 1 and result.status == status and len(seen) == 1
    warning = result.warning or ""
    assert warning.startswith("warning: --notify https://monitor.example.com/…:")
    assert f"HTTP {status}" in warning and "exit code" in warning
    for secret in ("pa55word", "tok3n", "k3y", SECRET):
        assert secret not in warning


async def test_giving_up_after_the_attempts_names_the_last_error(fake_clock: FakeClock) -> None:
    seen: list[httpx.Request] = []
    failing = [httpx.ReadTimeout("slow"), httpx.ConnectError("[Errno 111] Connection refused")]
    result = await send_notification_async(
        URL, summary(), 1, transport=recording(failing, seen), sleep=fake_clock.sleep, clock=fake_clock
    )
    assert not result.ok and result.attempts == ATTEMPTS == len(seen) and result.status is None
    warning = result.warning or ""
    assert "after 3 attempts" in warning and "ConnectError" in warning and "Connection refused" in warning
    assert "pa55word" not in warning and "tok3n" not in warning


async def test_the_whole_delivery_stays_within_its_deadline(fake_clock: FakeClock) -> None:
    """Each answer takes 8 s and asks for 10 s more: the third try would end past 30 s, so it is not made."""
    seen: list[httpx.Request] = []

    def slow(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        fake_clock.now += 8
        return httpx.Response(503, headers={"Retry-After": "10"})

    started = fake_clock.now
    result = await send_notification_async(
        "https://m.example.com/",
        summary(),
        1,
        transport=httpx.MockTransport(slow),
        sleep=fake_clock.sleep,
        clock=fake_clock,
    )
    assert not result.ok and len(seen) == 2 and "30 s limit" in (result.error or "")
    assert fake_clock.now - started <= 30


async def test_a_server_that_never_answers_is_abandoned(fake_clock: FakeClock) -> None:
    import asyncio

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    result = await send_notification_async(
        "https://m.example.com/",
        summary(),
        1,
        transport=httpx.MockTransport(hang),
        sleep=fake_clock.sleep,
        clock=fake_clock,
        attempt_timeout_s=0,  # expires at the first wait: no real time passes
    )
    assert not result.ok and result.attempts == 3 and "no answer within" in (result.error or "")


async def test_nothing_raises_into_the_run(fake_clock: FakeClock) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"a bug, with the URL {request.url}")

    result = await send_notification_async(
        URL, summary(), 0, transport=httpx.MockTransport(broken), clock=fake_clock
    )
    assert not result.ok and "RuntimeError" in (result.error or "") and "tok3n" not in (result.warning or "")
    invalid = await send_notification_async("ftp://x/", summary(), 0)
    assert not invalid.ok and invalid.attempts == 0 and "--notify" in (invalid.error or "")


def test_the_sync_wrapper() -> None:
    seen: list[httpx.Request] = []
    result = send_notification("https://m.example.com/", summary(), 0, transport=recording([202], seen))
    assert isinstance(result, NotifyResult) and result.ok and result.status == 202 and len(seen) == 1


# -- the documented receiver, for real ------------------------------------------------------------


def load_receiver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("notify_receiver", RECEIVER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """docs/notify_receiver.py serving on 127.0.0.1 (a free port) in a thread: (its URL, what it accepted)."""
    events: list[dict[str, Any]] = []
    server = load_receiver().make_server("127.0.0.1", 0, SECRET, on_event=events.append)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", events
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_the_example_receiver_accepts_our_signature(receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, events = receiver
    result = await send_notification_async(url, summary(), 1, secret=SECRET, command="run")
    assert result.ok and result.status == 204 and result.attempts == 1
    (event,) = events
    assert event["run_id"] == "20260101-010101-abcd" and event["exit_code"] == 1
    assert event["delivery"] == result.delivery
    assert (
        load_receiver().describe(event) == "run 20260101-010101-abcd (run): exit 1: succeeded 990, failed 10"
    )


async def test_the_example_receiver_refuses_a_tampered_or_unsigned_body(
    receiver: tuple[str, list[dict[str, Any]]],
) -> None:
    url, events = receiver
    body = json.dumps(build_payload(summary(), 0)).encode()
    good = sign(SECRET, body, int(time.time()))
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(trust_env=False) as client:
        tampered = body.replace(b'"exit_code": 0', b'"exit_code": 9')
        assert tampered != body
        answer = await client.post(url, content=tampered, headers={**headers, SIGNATURE_HEADER: good})
        assert answer.status_code == 401
        stale = sign(SECRET, body, int(time.time()) - 3600)
        answer = await client.post(url, content=body, headers={**headers, SIGNATURE_HEADER: stale})
        assert answer.status_code == 401
        answer = await client.post(url, content=body, headers=headers)
        assert answer.status_code == 400
        answer = await client.post(url, content=body, headers={**headers, SIGNATURE_HEADER: "nonsense"})
        assert answer.status_code == 400
        assert events == []
        # The same delivery twice (a retry whose first answer was lost): handled once.
        delivery = {DELIVERY_HEADER: "d-42"}
        for _ in range(2):
            answer = await client.post(
                url, content=body, headers={**headers, SIGNATURE_HEADER: good, **delivery}
            )
            assert answer.status_code == 204
    assert len(events) == 1
    # Our sender with the wrong secret: refused, and a 401 is not retried.
    result = await send_notification_async(url, summary(), 1, secret="not-the-secret")
    assert not result.ok and result.status == 401 and result.attempts == 1 and len(events) == 1


def read_line(process: subprocess.Popen[str], timeout_s: float = 20.0) -> str:
    """The process's next stdout line, waiting at most `timeout_s` for it (it prints once it is ready)."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise AssertionError(f"no output from the receiver within {timeout_s} s")
    return process.stdout.readline().strip()


async def test_the_example_receiver_runs_as_a_script(tmp_path: Path) -> None:
    env = {**os.environ, "SMARTSTREAM_NOTIFY_SECRET": SECRET}
    command = [sys.executable, str(RECEIVER), "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = read_line(process)
        assert first.startswith("listening on http://127.0.0.1:")
        url = first.removeprefix("listening on ")
        result = await send_notification_async(
            url, summary(abort_reason="too many failures"), 3, secret=SECRET
        )
        assert result.ok
        assert read_line(process) == (
            "run 20260101-010101-abcd (run): exit 3: succeeded 990, failed 10; aborted: too many failures"
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
    unset = subprocess.run(
        [sys.executable, str(RECEIVER)],
        env={k: v for k, v in env.items() if k != "SMARTSTREAM_NOTIFY_SECRET"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert unset.returncode == 2 and "SMARTSTREAM_NOTIFY_SECRET" in unset.stderr


def test_receiver_signature_check_matches_ours() -> None:
    """The example's copy of the algorithm agrees with the library's on good and bad signatures."""
    module = load_receiver()
    verify: Callable[..., bool] = module.verify_signature
    body = b'{"a":1}'
    now = int(time.time())
    assert verify(SECRET, sign(SECRET, body, now), body)
    assert not verify(SECRET, sign(SECRET, body, now), body + b"x")
    assert not verify(SECRET, sign("other", body, now), body)
    assert not verify(SECRET, sign(SECRET, body, now - 1000), body)


async def test_three_slow_failures_fit_the_deadline(fake_clock: FakeClock) -> None:
    """The worst case of the policy: three tries that each time out after 8 s, with 1 s and 4 s between."""
    seen: list[httpx.Request] = []

    def times_out(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        fake_clock.now += 8
        raise httpx.ReadTimeout("slow")

    started = fake_clock.now
    result = await send_notification_async(
        "https://m.example.com/",
        summary(),
        1,
        transport=httpx.MockTransport(times_out),
        sleep=fake_clock.sleep,
        clock=fake_clock,
    )
    assert not result.ok and len(seen) == 3 and fake_clock.now - started == 8 + 1 + 8 + 4 + 8
