"""The bare baseline of benchmark 5: one streamed multipart upload with httpx, nothing else.

    python bench/bare_upload.py API_URL FILE

Prints {"status": ..., "s": seconds} as JSON. Runs in a process of its own, as the runner does.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator

import httpx
from batch_ingest.emulator import EmulatorConfig

CFG = EmulatorConfig()
HEAD = b'--x\r\nContent-Disposition: form-data; name="source_file"; filename="big.mp4"\r\n\r\n'
TAIL = b"\r\n--x--\r\n"


async def body(path: str) -> AsyncIterator[bytes]:
    yield HEAD
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk
    yield TAIL


async def main(url: str, path: str) -> None:
    headers = {
        "X-Streaks-Api-Key": CFG.api_key,
        "Authorization": f"Bearer {CFG.token}",
        "Content-Type": "multipart/form-data; boundary=x",
        "Content-Length": str(len(HEAD) + os.path.getsize(path) + len(TAIL)),
    }
    async with httpx.AsyncClient(timeout=600, trust_env=False) as client:
        started = time.perf_counter()
        r = await client.post(
            f"{url}/v1/merchants/{CFG.merchant_id}/jobs", content=body(path), headers=headers
        )
        print(json.dumps({"status": r.status_code, "s": time.perf_counter() - started}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
