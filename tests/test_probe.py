"""The media prober: real little files made by tests/media.py, probed from disk, from memory and over
HTTP from a Range-capable server on the loopback interface."""

from __future__ import annotations

import io
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
from batch_ingest import probe
from batch_ingest.probe import (
    MEDIA_INVALID,
    HttpRangeReader,
    MediaInfo,
    MediaInvalid,
    moov_at_end,
    probe_file,
    probe_stream,
    probe_url,
)

from .media import (
    HEIGHT,
    WIDTH,
    make_audio_only,
    make_moov_at_end,
    make_mp4,
    make_raw_video,
    make_text_as_mp4,
    make_truncated,
    make_zero_bytes,
)

MP4_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"
SECRET_QUERY = "X-Amz-Signature=secret-signature-value&X-Amz-Credential=AKIDEXAMPLE"


def invalid(call: Callable[[], object]) -> str:
    """The reason of the MediaInvalid that `call` raises (the test fails if it returns)."""
    with pytest.raises(MediaInvalid) as caught:
        call()
    reason = caught.value.reason
    assert str(caught.value) == reason and "\n" not in reason
    return reason


def box(kind: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def boxes_of(data: bytes) -> list[tuple[bytes, int, int | None]]:
    return [(b.type, b.offset, b.size) for b in probe._iter_boxes(io.BytesIO(data))]


# --- Files ----------------------------------------------------------------------------------------------


def test_good_mp4(tmp_path: Path) -> None:
    path = make_mp4(tmp_path / "good.mp4")
    info = probe_file(path)
    assert info == MediaInfo(
        duration_s=1.0,
        format=MP4_FORMAT,
        video_codec="mpeg4",
        width=WIDTH,
        height=HEIGHT,
        audio_codec="aac",
        size=path.stat().st_size,
        warnings=(),
    )
    assert not moov_at_end(io.BytesIO(path.read_bytes()))


def test_mp4_without_audio_and_longer(tmp_path: Path) -> None:
    info = probe_file(make_mp4(tmp_path / "silent.mp4", seconds=3.0, audio=False))
    assert (info.duration_s, info.audio_codec, info.video_codec, info.warnings) == (3.0, None, "mpeg4", ())


def test_moov_at_end_is_valid_with_a_warning(tmp_path: Path) -> None:
    path = make_moov_at_end(tmp_path / "slow.mp4")
    assert moov_at_end(io.BytesIO(path.read_bytes()))
    info = probe_file(path)
    assert (info.width, info.height, info.duration_s) == (WIDTH, HEIGHT, 1.0)
    [warning] = info.warnings
    assert "moov atom is at the end" in warning and "faststart" in warning


@pytest.mark.parametrize("faststart", [True, False], ids=["moov-first", "moov-at-end"])
def test_truncated(tmp_path: Path, faststart: bool) -> None:
    path = make_truncated(tmp_path / "cut.mp4", faststart=faststart)
    reason = invalid(lambda: probe_file(path))
    assert reason.startswith("the file is truncated: its 'mdat' box runs to byte ")
    assert "upload it again" in reason


def test_truncated_faststart_file_fools_ffmpeg_alone(tmp_path: Path) -> None:
    """Why the probe checks box sizes: FFmpeg opens a cut fast-start MP4 and decodes its first frame."""
    import av

    path = make_truncated(tmp_path / "cut.mp4", faststart=True)
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).width == WIDTH


def test_moov_never_written(tmp_path: Path) -> None:
    data = make_moov_at_end(tmp_path / "full.mp4").read_bytes()
    moov = next(offset for kind, offset, _ in boxes_of(data) if kind == b"moov")
    path = tmp_path / "interrupted.mp4"
    path.write_bytes(data[:moov])  # every box complete, the moov atom never written
    assert invalid(lambda: probe_file(path)).startswith("the file has no moov atom")


def zeroed_frames(tmp_path: Path) -> Path:
    """A good fast-start MP4 whose frames are all zero bytes: it opens, its frames do not decode."""
    data = make_mp4(tmp_path / "good.mp4").read_bytes()
    kind, offset, size = boxes_of(data)[-1]
    assert kind == b"mdat" and size is not None
    path = tmp_path / "zeroed.mp4"
    path.write_bytes(data[: offset + 8] + bytes(size - 8))
    return path


def test_first_frame_does_not_decode(tmp_path: Path) -> None:
    reason = invalid(lambda: probe_file(zeroed_frames(tmp_path)))
    assert reason.startswith("the first video frame does not decode (") and "upload the file again" in reason


def test_decoding_gives_up_after_max_packets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "MAX_PACKETS", 3)
    reason = invalid(lambda: probe_file(zeroed_frames(tmp_path)))
    assert "no frame in the first 3 packets" in reason


def test_audio_only(tmp_path: Path) -> None:
    path = make_audio_only(tmp_path / "song.m4a")
    assert invalid(lambda: probe_file(path)) == "no video stream (audio only?): give a video file"


def test_text_renamed_mp4(tmp_path: Path) -> None:
    reason = invalid(lambda: probe_file(make_text_as_mp4(tmp_path / "notes.mp4")))
    assert reason.startswith("the container cannot be opened (") and reason.endswith("re-export it")


def test_zero_bytes(tmp_path: Path) -> None:
    assert "empty (0 bytes)" in invalid(lambda: probe_file(make_zero_bytes(tmp_path / "empty.mp4")))


def test_mp4_whose_moov_holds_nothing(tmp_path: Path) -> None:
    data = make_mp4(tmp_path / "good.mp4").read_bytes()
    _, moov, _ = boxes_of(data)[1]
    empty_moov = data[:moov] + box(b"moov", bytes(8))
    reason = invalid(lambda: probe_stream(io.BytesIO(empty_moov)))
    assert reason == "no streams at all (a damaged or empty container?): re-export the video"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert "No such file" in invalid(lambda: probe_file(tmp_path / "nowhere.mp4"))
    assert invalid(lambda: probe_file(tmp_path)).startswith("the file cannot be read")


def test_max_size(tmp_path: Path) -> None:
    path = make_mp4(tmp_path / "v.mp4")
    size = path.stat().st_size
    assert probe_file(path, max_size=size).size == size
    reason = invalid(lambda: probe_file(path, max_size=1000))
    assert reason.startswith(f"size {size:,} bytes is over --max-size 1,000: ")


def test_max_duration(tmp_path: Path) -> None:
    path = make_mp4(tmp_path / "v.mp4", seconds=3.0, audio=False)
    assert probe_file(path, max_duration=3).duration_s == 3.0
    assert invalid(lambda: probe_file(path, max_duration=2.5)).startswith(
        "duration 3 s is over --max-duration 2.5 s: "
    )
    assert probe._seconds(3600.0) == "3,600" and probe._seconds(0.25) == "0.25"


def test_raw_stream_has_no_duration(tmp_path: Path) -> None:
    path = make_raw_video(tmp_path / "raw.m4v")
    info = probe_file(path, max_duration=600)
    assert (info.format, info.video_codec, info.width, info.duration_s) == ("m4v", "mpeg4", WIDTH, None)
    [warning] = info.warnings
    assert warning.startswith("duration unknown (--max-duration 600 s not checked): ")
    [warning] = probe_stream(io.BytesIO(path.read_bytes())).warnings
    assert warning.startswith("duration unknown: ") and "re-export it as MP4" in warning


def test_nothing_reaches_the_terminal(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """FFmpeg's complaints ("moov atom not found", decode errors) and PyAV's about dropped exceptions
    are written straight to file descriptor 2 when not silenced."""
    data = make_mp4(tmp_path / "good.mp4").read_bytes()
    moov = next(offset for kind, offset, _ in boxes_of(data) if kind == b"moov")
    cases: list[Callable[[], object]] = [
        lambda: probe_file(make_text_as_mp4(tmp_path / "text.mp4")),
        lambda: probe_file(zeroed_frames(tmp_path)),
        lambda: probe_stream(io.BytesIO(data[:moov] + box(b"moov", bytes(8)))),  # an empty moov
        lambda: probe_stream(FailingStream(data, 3000)),
    ]
    for case in cases:
        invalid(case)
    assert capfd.readouterr() == ("", "")


def test_threads_probe_at_once(tmp_path: Path) -> None:
    good = [make_mp4(tmp_path / f"good{i}.mp4") for i in range(4)]
    bad = [make_text_as_mp4(tmp_path / f"bad{i}.mp4") for i in range(4)]

    def outcome(path: Path) -> str:
        try:
            return probe_file(path).video_codec or ""
        except MediaInvalid:
            return MEDIA_INVALID

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(outcome, good + bad)) == ["mpeg4"] * 4 + [MEDIA_INVALID] * 4


def test_importing_the_module_does_not_load_av() -> None:
    code = "import sys, batch_ingest.probe\nprint('av' in sys.modules, 'httpx' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False"], done.stderr


# --- Streams --------------------------------------------------------------------------------------------


def test_probe_stream_on_bytesio(tmp_path: Path) -> None:
    path = make_mp4(tmp_path / "v.mp4")
    stream = io.BytesIO(path.read_bytes())
    stream.seek(5)
    assert probe_stream(stream) == probe_file(path)
    assert stream.tell() == 5  # position restored
    [warning] = probe_stream(io.BytesIO(make_moov_at_end(path).read_bytes())).warnings
    assert "moov atom is at the end" in warning
    cut, song = make_truncated(path).read_bytes(), make_audio_only(tmp_path / "song.m4a").read_bytes()
    assert "truncated" in invalid(lambda: probe_stream(io.BytesIO(cut)))
    assert "no video stream" in invalid(lambda: probe_stream(io.BytesIO(song)))
    assert "empty" in invalid(lambda: probe_stream(io.BytesIO()))


def test_probe_stream_limits_use_the_given_size(tmp_path: Path) -> None:
    stream = io.BytesIO(make_mp4(tmp_path / "v.mp4").read_bytes())
    assert "over --max-size 100" in invalid(lambda: probe_stream(stream, size=10**9, max_size=100))
    assert "--max-duration 0.5 s" in invalid(lambda: probe_stream(stream, max_duration=0.5))


class FailingStream(io.BytesIO):
    """Reads fail with OSError once `fail_after` bytes have been read."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        super().__init__(data)
        self.left = fail_after

    def read(self, size: int | None = -1) -> bytes:
        if self.left <= 0:
            raise OSError(5, "Input/output error")
        chunk = super().read(size if size is not None and 0 <= size <= self.left else self.left)
        self.left -= len(chunk)
        return chunk


@pytest.mark.parametrize("fail_after", [0, 100, 3000])
def test_probe_stream_read_error(tmp_path: Path, fail_after: int) -> None:
    """A read error in the box scan or under FFmpeg is a MediaInvalid naming it (not an OSError raised
    by PyAV later, not a message printed by it)."""
    data = make_mp4(tmp_path / "v.mp4").read_bytes()
    reason = invalid(lambda: probe_stream(FailingStream(data, fail_after)))
    assert reason == "the file cannot be read (Input/output error): check the file, or upload it again"


def test_guarded_reader_keeps_the_first_error() -> None:
    guard = probe._GuardedReader(FailingStream(b"abc", 2))
    assert guard.read(10) == b"ab" and guard.read(10) == b"" and guard.seek(0) == -1
    assert isinstance(guard.error, OSError) and guard.tell() == 2


# --- moov_at_end ----------------------------------------------------------------------------------------


FTYP = box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2mp41")


class SparseStream(io.RawIOBase):
    """A huge seekable stream that is zeros except for `pieces` (offset -> bytes); counts bytes read."""

    def __init__(self, size: int, pieces: dict[int, bytes]) -> None:
        super().__init__()
        self.size, self.pieces, self.position, self.bytes_read = size, pieces, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence] + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.size - self.position))
        chunk = bytearray(n)
        for start, piece in self.pieces.items():
            lo, hi = max(start, self.position), min(start + len(piece), self.position + n)
            if lo < hi:
                chunk[lo - self.position : hi - self.position] = piece[lo - start : hi - start]
        buffer[:n] = chunk
        self.position += n
        self.bytes_read += n
        return n


def test_moov_at_end_synthetic_boxes() -> None:
    moov = box(b"moov", box(b"mvhd", bytes(100)))
    mdat = box(b"mdat", bytes(50))
    assert not moov_at_end(io.BytesIO(FTYP + moov + mdat))
    assert moov_at_end(io.BytesIO(FTYP + box(b"free") + mdat + moov))
    assert not moov_at_end(io.BytesIO(FTYP + mdat))  # no moov at all: not "at the end"
    to_the_end = struct.pack(">I4s", 0, b"mdat") + bytes(50)  # size 0: the box runs to the end
    assert not moov_at_end(io.BytesIO(FTYP + to_the_end))
    assert moov_at_end(io.BytesIO(mdat + moov))  # old QuickTime: no ftyp
    # 64-bit size: size field 1, then the size including the 16-byte header
    large = struct.pack(">I4sQ", 1, b"mdat", 16 + 50) + bytes(50)
    assert moov_at_end(io.BytesIO(FTYP + large + moov))
    assert not moov_at_end(io.BytesIO(FTYP + struct.pack(">I4sQ", 1, b"mdat", 8) + moov))  # invalid size


def test_moov_at_end_non_mp4() -> None:
    text = b"hello world, this is text\n" * 4
    for data in [b"", b"\x00\x00", text, box(b"abcd") + box(b"moov"), bytes(64)]:
        assert not moov_at_end(io.BytesIO(data))
    # a header cut short, and a box smaller than its own header
    assert not moov_at_end(io.BytesIO(FTYP + struct.pack(">I4s", 1, b"mdat") + b"\x00\x00"))
    assert not moov_at_end(io.BytesIO(FTYP + struct.pack(">I4s", 4, b"mdat") + box(b"moov")))


def test_moov_at_end_seeks_over_bodies_and_restores_the_position() -> None:
    """A 6 GiB file: a 64-bit mdat of 6 GiB, then moov; only the box headers are read."""
    mdat_size = 6 << 30
    moov_offset = len(FTYP) + mdat_size
    moov = box(b"moov", bytes(20))
    stream = SparseStream(
        moov_offset + len(moov),
        {0: FTYP + struct.pack(">I4sQ", 1, b"mdat", mdat_size), moov_offset: moov},
    )
    stream.seek(12345)
    assert moov_at_end(stream)
    assert stream.tell() == 12345 and stream.bytes_read <= 8 * 4
    assert [b.type for b in probe._iter_boxes(stream)] == [b"ftyp", b"mdat", b"moov"]


# --- HTTP -----------------------------------------------------------------------------------------------


class MediaServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes], *, ranges: bool) -> None:
        super().__init__(("127.0.0.1", 0), MediaHandler)
        self.files, self.ranges = files, ranges
        self.requests: list[tuple[str, str | None]] = []  # (path and query, Range header)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that stopped reading: fine
            super().handle_error(request, client_address)

    def url(self, path: str, query: str = "") -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}{path}" + (f"?{query}" if query else "")


class MediaHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = cast(MediaServer, self.server)
        range_header = self.headers.get("Range")
        server.requests.append((self.path, range_header))
        path = urlsplit(self.path).path
        if path == "/moved.mp4":
            return self.answer(302, b"", {"Location": "/good.mp4"})
        body = server.files.get(path)
        if body is None:
            return self.answer(404, b"not found\n")
        if not server.ranges or range_header is None:
            return self.answer(200, body)
        first, _, last = range_header.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last), len(body) - 1)
        if start >= len(body):
            return self.answer(416, b"", {"Content-Range": f"bytes */{len(body)}"})
        self.answer(206, body[start : end + 1], {"Content-Range": f"bytes {start}-{end}/{len(body)}"})

    def answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def media_server(tmp_path: Path) -> Iterator[Callable[..., MediaServer]]:
    """Factory: a server on a free loopback port holding /good.mp4, /slow.mp4 (moov at the end),
    /cut.mp4, /song.m4a, /notes.mp4 and /empty.mp4; `ranges=False` ignores Range (200, whole body)."""
    files = {
        "/good.mp4": make_mp4(tmp_path / "good.mp4").read_bytes(),
        "/slow.mp4": make_moov_at_end(tmp_path / "slow.mp4").read_bytes(),
        "/cut.mp4": make_truncated(tmp_path / "cut.mp4").read_bytes(),
        "/song.m4a": make_audio_only(tmp_path / "song.m4a").read_bytes(),
        "/notes.mp4": make_text_as_mp4(tmp_path / "notes.mp4").read_bytes(),
        "/empty.mp4": b"",
    }
    servers: list[MediaServer] = []

    def start(*, ranges: bool = True) -> MediaServer:
        server = MediaServer(files, ranges=ranges)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_probe_url(media_server: Callable[..., MediaServer], tmp_path: Path) -> None:
    server = media_server()
    info = probe_url(server.url("/good.mp4", SECRET_QUERY))
    assert info == probe_file(tmp_path / "good.mp4")
    assert server.requests == [(f"/good.mp4?{SECRET_QUERY}", "bytes=0-1048575")]  # one block: the file
    assert probe_url(server.url("/moved.mp4")) == info  # redirects are followed
    assert "moov atom is at the end" in probe_url(server.url("/slow.mp4")).warnings[0]


def test_probe_url_invalid_media(media_server: Callable[..., MediaServer]) -> None:
    server = media_server()
    assert "truncated" in invalid(lambda: probe_url(server.url("/cut.mp4")))
    assert "no video stream" in invalid(lambda: probe_url(server.url("/song.m4a")))
    assert "cannot be opened" in invalid(lambda: probe_url(server.url("/notes.mp4")))
    assert "empty (0 bytes)" in invalid(lambda: probe_url(server.url("/empty.mp4")))
    assert "over --max-size 100" in invalid(lambda: probe_url(server.url("/good.mp4"), max_size=100))


def test_probe_url_404_names_the_host_not_the_query(media_server: Callable[..., MediaServer]) -> None:
    server = media_server()
    url = server.url("/gone.mp4", SECRET_QUERY)
    reason = invalid(lambda: probe_url(url))
    host = urlsplit(url).netloc
    assert reason == (
        f"the file cannot be read (HTTP 404 Not Found from {host}): check the URL "
        "(a presigned one may have expired)"
    )
    assert "secret" not in reason and "Amz" not in reason and "gone" not in reason


def test_server_ignoring_range(
    media_server: Callable[..., MediaServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = media_server(ranges=False)
    info = probe_url(server.url("/slow.mp4", SECRET_QUERY))
    assert info.width == WIDTH and info.warnings
    assert len(server.requests) == 1  # the whole body, kept: no second request
    monkeypatch.setattr(HttpRangeReader, "whole_body_limit", 1000)
    reason = invalid(lambda: probe_url(server.url("/good.mp4", SECRET_QUERY)))
    assert "ignores Range requests" in reason and "secret" not in reason


def test_connection_refused_and_timeout_name_the_host_only() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reason = invalid(lambda: probe_url(f"http://user:pw@127.0.0.1:{port}/v.mp4?{SECRET_QUERY}"))
    assert reason.startswith("the file cannot be read (") and f"127.0.0.1:{port}" in reason
    assert "secret" not in reason and "pw" not in reason and "user" not in reason
    with socket.socket() as sock:  # listens, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        reason = invalid(lambda: probe_url(f"http://127.0.0.1:{port}/v.mp4?{SECRET_QUERY}", timeout_s=0.2))
    assert f"timed out reading from 127.0.0.1:{port}" in reason and "secret" not in reason
    assert "cannot be read" in invalid(lambda: probe_url(f"ftp://example.com/v.mp4?{SECRET_QUERY}"))


def test_http_range_reader(media_server: Callable[..., MediaServer], tmp_path: Path) -> None:
    server = media_server()
    data = (tmp_path / "slow.mp4").read_bytes()
    with httpx.Client(trust_env=False, timeout=5) as client:
        reader = HttpRangeReader(client, server.url("/slow.mp4"), block_size=4096)
        assert reader.size == len(data) and reader.readable() and reader.seekable()
        assert reader.read() == data  # reads across blocks, to the end
        assert reader.read(10) == b""
        assert reader.seek(-100, io.SEEK_END) == len(data) - 100 and reader.read(1000) == data[-100:]
        assert reader.seek(10) == 10 and reader.seek(5, io.SEEK_CUR) == 15 and reader.read(5) == data[15:20]
        with pytest.raises(ValueError):
            reader.seek(-1)
        assert len(server.requests) == len(data) // 4096 + 1  # each block fetched once
        small = HttpRangeReader(client, server.url("/slow.mp4"), block_size=4096)
        small.cache_blocks = 2
        server.requests.clear()
        assert small.read(3 * 4096) == data[:4096]  # a raw read stops at the end of a block
        assert small.read(8192) + small.read(8192) == data[4096 : 3 * 4096]
        assert len(server.requests) == 2  # blocks 1 and 2; block 0 came with the size
        small.seek(0)
        assert small.read(100) == data[:100] and len(server.requests) == 3  # block 0 had left the cache
        assert small.read(100) == data[100:200] and len(server.requests) == 3  # and is cached again
        reader.close()
        with pytest.raises(ValueError):
            reader.read(1)
        with pytest.raises(OSError, match="HTTP 404"):
            HttpRangeReader(client, server.url("/gone.mp4"))
        assert HttpRangeReader(client, server.url("/empty.mp4")).size == 0


def test_probing_over_http_fetches_only_the_blocks_it_needs(
    media_server: Callable[..., MediaServer], tmp_path: Path
) -> None:
    data = make_mp4(tmp_path / "six.mp4", seconds=6.0, faststart=False, audio=False).read_bytes()
    server = media_server()
    server.files["/six.mp4"] = data
    blocks = -(-len(data) // 4096)
    with httpx.Client(trust_env=False, timeout=5) as client:
        info = probe_stream(HttpRangeReader(client, server.url("/six.mp4"), block_size=4096))
    assert info.duration_s == 6.0 and info.warnings
    fetched = [int(rng.split("=")[1].split("-")[0]) // 4096 for _, rng in server.requests if rng]
    assert len(set(fetched)) == len(fetched)  # none twice
    # the moov atom in the last block, the first frames in the first ones: not the rest
    assert blocks - 1 in fetched and len(fetched) < blocks / 2, (fetched, blocks)


def test_probe_url_with_a_transport() -> None:
    """probe_url takes an httpx transport (here a MockTransport: no server at all)."""
    data = b"text, not a video\n" * 10

    def handler(request: httpx.Request) -> httpx.Response:
        start, _, end = request.headers["Range"].removeprefix("bytes=").partition("-")
        last = min(int(end), len(data) - 1)
        headers = {"Content-Range": f"bytes {start}-{last}/{len(data)}"}
        return httpx.Response(206, content=data[int(start) : last + 1], headers=headers)

    reason = invalid(
        lambda: probe_url("https://bucket.example/v.mp4", transport=httpx.MockTransport(handler))
    )
    assert reason.startswith("the container cannot be opened")
    bad = httpx.MockTransport(
        lambda request: httpx.Response(206, content=b"x", headers={"Content-Range": "bytes 5-5/9"})
    )
    assert "unusable Content-Range" in invalid(
        lambda: probe_url("https://bucket.example/v.mp4", transport=bad)
    )
