"""`batch-ingest emulator` as a real process: the printed settings, the vendor page's curl, big uploads."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

PEAK_RSS_LIMIT_MB = 150


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_emulator_prints_exports_and_answers_the_vendor_curl(emulator_process, tmp_path):
    emulator = emulator_process("--rate-limit", "0")
    port = emulator.port
    assert emulator.proc is not None and emulator.proc.stdout is not None
    exports = {}
    for _ in range(4):
        line = emulator.proc.stdout.readline().strip()
        name, _, value = line.removeprefix("export ").partition("=")
        exports[name] = value
    assert exports == {
        "SMARTSTREAM_API_URL": f"http://127.0.0.1:{port}",
        "SMARTSTREAM_MERCHANT_ID": "demo",
        "SMARTSTREAM_API_KEY": "emulator-api-key",
        "SMARTSTREAM_TOKEN": "emulator-token",
    }
    video = tmp_path / "smartstream.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"x" * 1000)
    base = f"{exports['SMARTSTREAM_API_URL']}/v1/merchants/demo"
    # The page's example, word for word: curl -H ... -H ... -H 'Profile-Id: ...' -XPOST .../jobs -F source_file=@...
    result = subprocess.run(
        [
            "curl",
            "-s",
            "-H",
            "X-Streaks-Api-Key:emulator-api-key",
            "-H",
            "Authorization:Bearer emulator-token",
            "-H",
            "Profile-Id: 101",
            "-XPOST",
            f"{base}/jobs",
            "-F",
            f"source_file=@{video}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode == 127 or (result.returncode != 0 and "not found" in result.stderr):
        pytest.skip("curl is not installed")
    job = json.loads(result.stdout)
    assert (
        job["job_profile_id"] == "101"
        and job["source_url"] == "smartstream.mp4"
        and job["encode_status"] == 0
    )
    headers = {"X-Streaks-Api-Key": "emulator-api-key", "Authorization": "Bearer emulator-token"}
    got = httpx.get(f"{base}/jobs/{job['id']}", headers=headers, trust_env=False).json()
    assert got == job
    assert httpx.get(f"{base}/jobs/nope", headers=headers, trust_env=False).json() == {
        "code": "JOB_NOT_FOUND",
        "message": "The specified job does not exist",
    }


def test_emulator_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "batch_ingest", "emulator", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert "--port" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("measures")  # measures time or memory: never beside another such test
def test_sparse_1gb_upload_keeps_both_sides_small(emulator_process, tmp_path):
    size = 1 << 30
    video = tmp_path / "big.mp4"
    with open(video, "wb") as f:
        f.truncate(size)  # sparse: no disk used
    emulator = emulator_process("--rate-limit", "0")
    port = emulator.port
    script = textwrap.dedent(
        f"""
        import asyncio, json
        from batch_ingest.api import Auth, SmartStreamClient
        from batch_ingest.settings import Secret
        async def main():
            auth = Auth(Secret("emulator-api-key"), token=Secret("emulator-token"))
            async with SmartStreamClient(base_url="http://127.0.0.1:{port}", merchant_id="demo", auth=auth,
                                         read_timeout=300) as c:
                sent = []
                job = await c.upload_job({str(video)!r}, on_progress=sent.append)
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would count the
            # test process's own size at the fork (a test before this one may have grown it).
            hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
            print(json.dumps({{"id": job.id, "sent": sum(sent), "peak_mb": int(hwm.split()[1]) / 1024}}))
        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    client = json.loads(out.stdout)
    emulator_peak = _peak_rss_mb(emulator.pid)
    jobs = httpx.get(f"http://127.0.0.1:{port}/_emulator/jobs", trust_env=False).json()["jobs"]
    expected = hashlib.sha256()
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        expected.update(zeros)
    assert client["sent"] == size
    assert jobs[0]["upload_size"] == size and jobs[0]["upload_sha256"] == expected.hexdigest()
    assert client["peak_mb"] < PEAK_RSS_LIMIT_MB, client
    assert emulator_peak < PEAK_RSS_LIMIT_MB, emulator_peak
    assert os.stat(video).st_blocks == 0  # the test itself stayed sparse


def test_bound_socket_says_tcp_so_answers_are_not_held_by_nagle():
    """asyncio turns TCP_NODELAY on for accepted sockets only when the listening socket's protocol is TCP."""
    from batch_ingest.emulator.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_storage_missing_for_answers_only_the_sources_named(emulator_process):
    """The standalone emulator can fail the sample manifest's row 7 the way `run --emulator` does."""
    emulator = emulator_process("--rate-limit", "0", "--storage-missing-for", "no-storage")
    base = f"{emulator.url}/v1/merchants/demo/jobs"
    headers = {"X-Streaks-Api-Key": "emulator-api-key", "Authorization": "Bearer emulator-token"}
    missing = httpx.post(
        base,
        json={"source_url": "https://media.example.com/no-storage/a.mp4", "job_profile_id": 100},
        headers=headers,
        trust_env=False,
    )
    assert missing.status_code == 404 and missing.json()["code"] == "STORAGE_NOT_FOUND"
    fine = httpx.post(
        base,
        json={"source_url": "https://media.example.com/library/a.mp4", "job_profile_id": 100},
        headers=headers,
        trust_env=False,
    )
    assert fine.status_code == 201, fine.text
