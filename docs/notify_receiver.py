"""An example receiver for `batch-ingest run ... --notify URL`: copy it to your server and adapt.

Python 3.11+, standard library only::

    export SMARTSTREAM_NOTIFY_SECRET=...      # the same secret batch-ingest signs with
    python notify_receiver.py --host 0.0.0.0 --port 8181

It checks every POST's signature (the header ``X-Batch-Ingest-Signature: t=<unix seconds>,v1=<hex>``,
where hex is HMAC-SHA256 of ``"<t>.<raw body>"`` with the secret), refuses a timestamp more than
five minutes from its clock (a replayed request), drops a delivery it has seen already (the
``X-Batch-Ingest-Delivery`` id, the same on every retry), prints the run's outcome and answers
204. A missing or malformed signature or body is answered 400, a wrong signature 401.

Verify the raw bytes received, before parsing them: the JSON read and written again is not the
text that was signed. Put it behind TLS (a reverse proxy) when it listens beyond this machine.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SIGNATURE_HEADER = "X-Batch-Ingest-Signature"
DELIVERY_HEADER = "X-Batch-Ingest-Delivery"
TOLERANCE_S = 300
MAX_BODY = 1 << 20  # a summary is a few kilobytes
REMEMBERED = 1000  # delivery ids kept to drop retries of a delivery already handled


def verify_signature(
    secret: str, header: str | None, body: bytes, *, tolerance_s: float = TOLERANCE_S
) -> bool:
    """Whether `header` signs `body` with `secret`, made within `tolerance_s` seconds of now."""
    if not header:
        return False
    timestamp, candidates = None, []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(time.time() - timestamp) > tolerance_s:
        return False
    signed = f"{timestamp}.".encode() + body
    expected = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest().encode("ascii")
    return any(hmac.compare_digest(expected, c.encode("utf-8", "replace")) for c in candidates)


def describe(payload: dict[str, Any]) -> str:
    """One line for the log: which run, how it ended."""
    counts = ", ".join(f"{k} {v}" for k, v in (payload.get("outcomes") or {}).items() if v)
    line = f"run {payload.get('run_id', '?')} ({payload.get('command') or 'run'}): exit {payload.get('exit_code')}"
    line += f": {counts or 'no rows'}"
    if payload.get("abort_reason"):
        line += f"; aborted: {payload['abort_reason']}"
    if payload.get("error"):
        line += f"; error: {payload['error']}"
    return line


def make_server(
    host: str,
    port: int,
    secret: str,
    *,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> ThreadingHTTPServer:
    """A server on (host, port) (0: any free port) that hands each new, verified payload to `on_event`
    (by default: prints its outcome). Call `serve_forever()` on it."""
    seen: OrderedDict[str, None] = OrderedDict()
    seen_lock = threading.Lock()  # the server answers each request in a thread of its own
    handling: set[str] = set()  # deliveries being handled now: a retry arriving meanwhile is not taken
    handle = on_event or (lambda payload: print(describe(payload), flush=True))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._answer(400, "a Content-Length is required")
            if not 0 <= length <= MAX_BODY:
                return self._answer(413 if length > MAX_BODY else 400, "bad Content-Length")
            body = self.rfile.read(length)
            header = self.headers.get(SIGNATURE_HEADER)
            if not header or "t=" not in header or "v1=" not in header:
                return self._answer(400, f"missing or malformed {SIGNATURE_HEADER}")
            if not verify_signature(secret, header, body, tolerance_s=tolerance_s):
                return self._answer(401, "bad signature")
            try:
                payload = json.loads(body)
            except ValueError:
                return self._answer(400, "the body is not JSON")
            if not isinstance(payload, dict):
                return self._answer(400, "the body is not a JSON object")
            delivery = self.headers.get(DELIVERY_HEADER) or str(payload.get("delivery") or "")
            with seen_lock:
                if delivery and (delivery in seen or delivery in handling):
                    return self._answer(204)  # a retry of a delivery handled, or being handled, already
                handling.add(delivery)
            try:
                handle(payload)  # if it raises, the delivery is not marked seen: the sender's retry is taken
            finally:
                with seen_lock:
                    handling.discard(delivery)
            if delivery:
                with seen_lock:
                    seen[delivery] = None
                    while len(seen) > REMEMBERED:
                        seen.popitem(last=False)
            return self._answer(204)

        def _answer(self, status: int, message: str = "") -> None:
            data = message.encode("utf-8")
            self.send_response(status)
            if status != 204:
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if status != 204:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            # The method and status only: the request line holds the URL's path, often its token.
            status = args[1] if len(args) > 1 else ""
            sys.stderr.write(f"{self.address_string()} {self.command} {status}\n")

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    return Server((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Receive batch-ingest's signed run notifications.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8181, help="port (default: 8181; 0: any free port)")
    args = parser.parse_args(argv)
    secret = os.environ.get("SMARTSTREAM_NOTIFY_SECRET", "")
    if not secret:
        print(
            "SMARTSTREAM_NOTIFY_SECRET is not set: export the secret batch-ingest signs with",
            file=sys.stderr,
        )
        return 2
    server = make_server(args.host, args.port, secret)
    port = server.server_address[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"listening on http://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
