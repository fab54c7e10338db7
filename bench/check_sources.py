"""`validate --check-sources` against a loopback server that answers every GET after 50 ms.

    uv run python bench/check_sources.py               # 10,000 URLs, each configuration twice
    uv run python bench/check_sources.py --rows 2000 --runs 3

The target (from the issue): 10,000 URLs checked within 1.25 times 10,000 × 50 ms ÷ concurrency.
The whole CLI (`python -m batch_ingest validate MANIFEST --check-sources --json`, no API settings,
so no profile check) is timed as a subprocess, its CPU time taken from wait4; the fixed cost is the
same `validate` without --check-sources, so each ratio is given with it and without it. The server
(`--serve`, a minimal HTTP/1.1 keep-alive server on asyncio) runs in a process of its own, a fresh
one per measurement, bound to 127.0.0.1 (and 127.0.0.2 … 127.0.0.N on the same port for the
configurations with several hosts; never 0.0.0.0); it answers `Range: bytes=0-0` with 206,
`Content-Range: bytes 0-0/12345` and `Content-Type: video/mp4`, and counts what it served (requests,
connections, its own latency per request, its CPU), which the table shows beside each figure.

Results go to bench/results/check_sources.md (the table and the median figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
LATENCY_S = 0.05
SIZE = 12345


# -- the server (its own process) ----------------------------------------------------------------


class Served:
    """What the server did: requests answered (not counting /_stats), connections, its latencies."""

    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0  # connections that asked for at least one source (not only /_stats)
        self.open = 0
        self.most_open = 0
        self.latencies: list[float] = []

    def to_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies) or [0.0]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "requests": self.requests,
            "connections": self.connections,
            "most_open_connections": self.most_open,
            "latency_ms_p50": round(lat[len(lat) // 2] * 1000, 2),
            "latency_ms_p99": round(lat[int(len(lat) * 0.99)] * 1000, 2),
            "latency_ms_max": round(lat[-1] * 1000, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        }


async def serve(hosts: int, latency: float) -> None:
    served = Served()
    answer_206 = (
        "HTTP/1.1 206 Partial Content\r\nContent-Type: video/mp4\r\n"
        f"Content-Range: bytes 0-0/{SIZE}\r\nContent-Length: 1\r\n"
    ).encode()
    answer_200 = f"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {SIZE}\r\n".encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.open += 1
        served.most_open = max(served.most_open, served.open)
        counted = False
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                started = time.monotonic()
                lines = head.split(b"\r\n")
                target = lines[0].split(b" ")[1]
                fields = {}
                for line in lines[1:]:
                    if b":" in line:
                        name, _, value = line.partition(b":")
                        fields[name.strip().lower()] = value.strip()
                if int(fields.get(b"content-length", b"0")):
                    await reader.readexactly(int(fields[b"content-length"]))
                close = fields.get(b"connection", b"").lower() == b"close"
                end = b"Connection: close\r\n\r\n" if close else b"\r\n"
                if target == b"/_stats":
                    body = json.dumps(served.to_dict()).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\n".encode()
                        + end
                        + body
                    )
                else:
                    if not counted:
                        served.connections += 1
                        counted = True
                    await asyncio.sleep(latency)
                    if fields.get(b"range") == b"bytes=0-0":
                        writer.write(answer_206 + end + b"\0")
                    else:
                        writer.write(answer_200 + end + bytes(SIZE))
                    served.requests += 1
                    served.latencies.append(time.monotonic() - started)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:  # the server is stopping with the connection still open
            pass
        finally:
            served.open -= 1
            writer.close()

    first = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    port = first.sockets[0].getsockname()[1]
    # 127.0.0.0/8 is all loopback on Linux: one socket per address, all on the same port.
    servers = [first] + [
        await asyncio.start_server(handle, f"127.0.0.{i}", port, backlog=4096) for i in range(2, hosts + 1)
    ]
    print(json.dumps({"port": port}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


class Server:
    """The server in its own process, on a free port of 127.0.0.1 … 127.0.0.`hosts`."""

    def __init__(self, hosts: int, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--hosts", str(hosts), "--latency", str(latency)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = json.loads(self.proc.stdout.readline())["port"]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stats", timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


# -- the clients: the CLI, and a bare asyncio client for reference ------------------------------


@dataclass
class Config:
    key: str  # what --only names
    name: str
    concurrency: int
    per_host: int
    hosts: int = 1
    order: str = "interleaved"  # with several hosts: row i on host i % hosts, or in blocks by host
    kind: str = "check"  # "check": validate --check-sources; "fixed": validate alone; "bare": reference

    @property
    def effective(self) -> int:
        """Checks in flight when the order of the rows does not get in the way."""
        return min(self.concurrency, self.per_host * self.hosts)


def write_manifest(path: Path, rows: int, port: int, hosts: int, order: str) -> None:
    block = -(-rows // hosts)
    with path.open("w") as f:
        f.write("source,profile\n")
        for i in range(rows):
            host = i % hosts if order == "interleaved" else i // block
            f.write(f"http://127.0.0.{host + 1}:{port}/v/{i}.mp4,100\n")


def run_child(cmd: list[str], cwd: Path) -> dict[str, Any]:
    """A command in a process of its own: wall seconds, its own CPU seconds (wait4), its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMARTSTREAM_", "AWS_"))}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[1:4]} exited {proc.returncode}:\n{stderr[-3000:]}\n{stdout[-2000:]}")
    return {
        "s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "stdout": stdout,
    }


def command(config: Config, manifest: Path) -> list[str]:
    if config.kind == "bare":
        return [
            sys.executable,
            __file__,
            "--bare-client",
            str(manifest),
            "--bare-concurrency",
            str(config.concurrency),
        ]
    cmd = [sys.executable, "-m", "batch_ingest", "validate", str(manifest), "--json"]
    if config.kind == "check":
        cmd += ["--check-sources", "--check-concurrency", str(config.concurrency)]
        cmd += ["--check-per-host", str(config.per_host)]
    return cmd


async def bare_client(manifest: Path, concurrency: int) -> None:
    """The reference: `concurrency` keep-alive connections of plain asyncio streams, each sending the
    manifest's GETs with `Range: bytes=0-0` one after another and reading the answer; no httpx."""
    urls = [line.split(",")[0] for line in manifest.read_text().splitlines()[1:]]
    urls.reverse()
    bad = 0

    async def worker() -> None:
        nonlocal bad
        streams: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        while urls:
            url = urls.pop()
            netloc, _, path = url.removeprefix("http://").partition("/")
            if netloc not in streams:
                host, _, port = netloc.partition(":")
                streams[netloc] = await asyncio.open_connection(host, int(port))
            reader, writer = streams[netloc]
            writer.write(f"GET /{path} HTTP/1.1\r\nHost: {netloc}\r\nRange: bytes=0-0\r\n\r\n".encode())
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            bad += not head.startswith(b"http/1.1 206") or b"content-range: bytes 0-0/" not in head
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        for _, writer in streams.values():
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    assert not bad, f"{bad} unexpected answers"


def measure(config: Config, rows: int, latency: float, folder: Path) -> dict[str, Any]:
    server = Server(config.hosts, latency)
    try:
        manifest = folder / f"m-{config.hosts}-{config.order}.csv"
        write_manifest(manifest, rows, server.port, config.hosts, config.order)
        got = run_child(command(config, manifest), folder)
        served = server.stats()
    finally:
        server.stop()
    if config.kind != "fixed":
        assert served["requests"] == rows, (served, rows)
    if config.kind == "check":
        plan = json.loads(got["stdout"])
        note = next((n for n in plan.get("notes", []) if n.startswith("sources checked")), "")
        assert note.startswith(f"sources checked: {rows} remote source(s), {rows} fine"), note
    del got["stdout"]
    return {**got, "served": served}


# -- the table --------------------------------------------------------------------------------


def configurations() -> list[Config]:
    from batch_ingest.settings import Settings  # the CLI's own defaults, not a copy of them

    c, p = Settings().check_concurrency, Settings().check_per_host
    return [
        Config("fixed", "fixed cost: validate without --check-sources", c, p, kind="fixed"),
        Config("ref", "reference: bare asyncio client, no httpx, 32 connections", 32, 32, kind="bare"),
        Config("a", "(a) one host, 32/32", 32, 32),
        Config("b", f"(b) one host, defaults {c}/{p}", c, p),
        Config("c", f"(c) 8 hosts, defaults {c}/{p}, rows interleaved", c, p, hosts=8),
        Config("c", f"(c') 8 hosts, defaults {c}/{p}, rows in blocks by host", c, p, hosts=8, order="blocks"),
        Config("d", "(d) one host, 64/64", 64, 64),
        Config("d", "(d) one host, 128/128", 128, 128),
    ]


def machine() -> str:
    from run import machine as facts  # bench/run.py, beside this script: one description of the machine

    m = facts()
    return f"{m['cores']} cores, {m['cpu']}, Python {m['python']}, {m['platform']}"


def table(results: list[dict[str, Any]], rows: int, latency: float) -> str:
    fixed = next(r for r in results if r["kind"] == "fixed")["s"]
    lines = [
        "| configuration | C / per host / hosts | elapsed s, median (runs) | ideal s | ratio | ratio less "
        "fixed cost | client CPU s (user+sys) | CPU ÷ elapsed | CPU ms per URL | server: connections; "
        "latency p50 / p99 ms; CPU s | target ≤ 1.25 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        runs = ", ".join(f"{s:.2f}" for s in r["runs_s"])
        cpu = f"{r['cpu_s']:.2f} ({r['user_s']:.2f}+{r['sys_s']:.2f}) | {r['cpu_s'] / r['s']:.0%}"
        if r["kind"] == "fixed":
            lines.append(f"| {r['name']} | — | {r['s']:.2f} ({runs}) | — | — | — | {cpu} | — | — | — |")
            continue
        sv = r["served"]
        server = f"{sv['connections']:,}; {sv['latency_ms_p50']} / {sv['latency_ms_p99']}; {sv['cpu_s']}"
        ideal = rows * latency / r["effective"]
        ratio = r["s"] / ideal
        less = (r["s"] - fixed) / ideal if r["kind"] == "check" else ratio
        per_url = (r["cpu_s"] - (fixed_cpu(results) if r["kind"] == "check" else 0)) / rows * 1000
        met = ("yes" if ratio <= 1.25 else "no") if r["kind"] == "check" else "—"
        lines.append(
            f"| {r['name']} | {r['concurrency']} / {r['per_host']} / {r['hosts']} | {r['s']:.2f} ({runs}) "
            f"| {ideal:.2f} | {ratio:.2f} | {less:.2f} | {cpu} | {per_url:.2f} | {server} | {met} |"
        )
    return "\n".join(lines) + "\n"


def fixed_cpu(results: list[dict[str, Any]]) -> float:
    return next(r for r in results if r["kind"] == "fixed")["cpu_s"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000, help="URLs in the manifest (default 10,000)")
    parser.add_argument("--runs", type=int, default=2, help="runs of each configuration; the median is shown")
    parser.add_argument("--latency", type=float, default=LATENCY_S, help="the server's answer time, seconds")
    parser.add_argument(
        "--only", help="comma-separated configurations: ref, a, b, c, d (the fixed cost always runs)"
    )
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hosts", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--bare-client", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bare-concurrency", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.hosts, args.latency))
        return 0
    if args.bare_client:
        asyncio.run(bare_client(args.bare_client, args.bare_concurrency))
        return 0
    only = args.only.split(",") if args.only else None
    chosen = [c for c in configurations() if c.kind == "fixed" or only is None or c.key in only]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        for config in chosen:
            runs = []
            for i in range(args.runs):
                got = measure(config, args.rows, args.latency, Path(tmp))
                runs.append(got)
                print(
                    f"{config.name}, run {i + 1}: {got['s']:.2f} s, CPU {got['cpu_s']:.2f} s; "
                    f"served {got['served']}",
                    flush=True,
                )
            middle = sorted(runs, key=lambda g: g["s"])[(len(runs) - 1) // 2]  # a real run's server figures
            results.append(
                {
                    **config.__dict__,
                    "effective": config.effective,
                    "runs_s": [g["s"] for g in runs],
                    **{k: statistics.median(g[k] for g in runs) for k in ("s", "cpu_s", "user_s", "sys_s")},
                    "served": middle["served"],
                }
            )
    out = (
        f"`validate --check-sources` of {args.rows:,} URLs against a loopback server answering in "
        f"{args.latency * 1000:g} ms; median of {args.runs} run(s); {machine()}; measured "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Written by `bench/check_sources.py`.\n\n"
        "ideal = rows × latency ÷ min(C, per host × hosts). ratio = elapsed ÷ ideal; less fixed cost = "
        "(elapsed − the fixed cost's elapsed) ÷ ideal. Client CPU is the measured process's own (wait4); CPU "
        "per URL leaves out the fixed cost's CPU. Server connections are those that asked for a source (one "
        "per check means no keep-alive); its latency is its own, from the request's head to the answer "
        "written; server figures are those of the median run.\n\n" + table(results, args.rows, args.latency)
    )
    print()
    print(out)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "check_sources.md").write_text(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
