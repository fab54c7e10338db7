"""Checking that a file is a video the platform can ingest, before it is submitted.

A file passes when its container opens, it has a video stream (cover art does not count), its duration
is above zero and its first video frame decodes: this catches files that are not videos at all,
audio-only files, truncated uploads and MP4 files whose `moov` atom was never written. Optional limits
on size and duration give the same one-line reasons. An MP4/MOV whose `moov` atom comes after `mdat`
passes with a warning (the platform must read to the end before it can start).

    info = probe_file("talk.mp4", max_duration=3600)     # MediaInfo, or raises MediaInvalid
    info = probe_url("https://bucket.s3.amazonaws.com/talk.mp4?X-Amz-Signature=...")

Everything is synchronous and blocking (callers run it in threads) and thread-safe; nothing hangs (the
HTTP reader has timeouts, decoding stops at the first frame or after a bounded number of packets).
Every failure with the media is a `MediaInvalid` whose reason says what is wrong and what to do; a
reason never carries a URL's query string (a presigned URL's is a credential), only its host. PyAV is
imported on first use (the command line starts without it), httpx only by the HTTP functions.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import threading
import time
import typing
from collections import OrderedDict
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

# What the probe reads: an open binary file, io.BytesIO, an HttpRangeReader (a raw, unbuffered stream).
_Stream: typing.TypeAlias = typing.IO[bytes] | io.RawIOBase

if typing.TYPE_CHECKING:
    import ssl

    import httpx
    from av.container import InputContainer
    from av.packet import Packet
    from av.stream import Stream
    from av.video.stream import VideoStream

__all__ = [
    "MEDIA_INVALID",
    "HttpRangeReader",
    "MediaInfo",
    "MediaInvalid",
    "moov_at_end",
    "probe_file",
    "probe_stream",
    "probe_url",
]

MEDIA_INVALID = "MEDIA_INVALID"

# Decoding the first frame gives up after this many demuxed packets (all streams counted).
MAX_PACKETS = 500
# Top-level ISO-BMFF boxes looked at by the probe's truncation check (a fragmented MP4 has thousands).
_MAX_BOXES = 64
# Box types an ISO-BMFF / QuickTime file can start with; anything else is not an MP4 for moov_at_end.
_FIRST_BOXES = frozenset(
    {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"junk", b"uuid", b"sidx"}
)


@dataclass(frozen=True)
class MediaInfo:
    """What the probe found in a video the platform can ingest."""

    duration_s: float | None  # seconds, rounded to 3 decimals; None when the container does not say
    format: str | None  # FFmpeg's container name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    video_codec: str | None  # e.g. "h264", "mpeg4"
    width: int | None
    height: int | None
    audio_codec: str | None  # None when there is no audio stream
    size: int | None  # bytes, when known
    warnings: tuple[str, ...] = ()  # each names what to do


class MediaInvalid(Exception):
    """The media is not a video the platform can ingest; str(exc) / exc.reason is a one-line reason that
    says what is wrong and what to do (e.g. 're-export the file' / 'upload it again'). Never includes a
    URL's query string."""

    code = MEDIA_INVALID

    def __init__(self, reason: str) -> None:
        reason = " ".join(reason.split())  # one line, whatever FFmpeg's message held
        super().__init__(reason)
        self.reason = reason


# --- PyAV, loaded on first use ------------------------------------------------------------------------

_av_lock = threading.Lock()
_av_ready = False


def _load_av() -> None:
    """Import PyAV and silence FFmpeg's own logging (nothing of it reaches the terminal)."""
    global _av_ready
    if _av_ready:
        return
    with _av_lock:
        if not _av_ready:
            import av.logging

            av.logging.set_level(None)  # PyAV's default, made sure: FFmpeg's log callback does nothing
            _av_ready = True


# --- ISO-BMFF top-level boxes -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Box:
    type: bytes
    offset: int
    size: int | None  # None: the box runs to the end of the file (size field 0)

    @property
    def end(self) -> int | None:
        return None if self.size is None else self.offset + self.size


def _read_exactly(stream: _Stream, n: int) -> bytes:
    """Up to n bytes (fewer only at the end of the stream), whatever short reads the stream does."""
    chunks = []
    while n > 0:
        chunk = stream.read(n)  # a raw stream may answer None (no data yet): taken as the end
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _iter_boxes(stream: _Stream) -> Iterator[_Box]:
    """The top-level boxes from offset 0, reading only their headers (8 bytes, 16 with a 64-bit size)
    and seeking over their bodies. Stops at the end of the data, at a box that runs to the end, or at
    anything that is not a box header; yields nothing for data that does not start like an MP4/MOV."""
    offset = 0
    first = True
    while True:
        stream.seek(offset)
        header = _read_exactly(stream, 8)
        if len(header) < 8:
            return
        size, kind = struct.unpack(">I4s", header)
        if not all(0x20 <= c < 0x7F for c in kind) or (first and kind not in _FIRST_BOXES):
            return
        if size == 1:
            large = _read_exactly(stream, 8)
            if len(large) < 8:
                return
            (size,) = struct.unpack(">Q", large)
            if size < 16:
                return
        elif size == 0:
            yield _Box(kind, offset, None)
            return
        elif size < 8:
            return
        yield _Box(kind, offset, size)
        offset += size
        first = False


def moov_at_end(stream: typing.IO[bytes] | io.RawIOBase) -> bool:
    """Whether the `moov` atom of an MP4/MOV comes after its `mdat` (the platform must then read the
    whole file before it can start); False for data that is not an MP4/MOV, and when there is no moov.
    Only box headers are read; the stream's position is restored."""
    position = stream.tell()
    try:
        seen_mdat = False
        for box in _iter_boxes(stream):
            if box.type == b"moov":
                return seen_mdat
            if box.type == b"mdat":
                seen_mdat = True
        return False
    finally:
        stream.seek(position)


# --- Probing ------------------------------------------------------------------------------------------


def probe_file(
    path: str | os.PathLike[str], *, max_size: int | None = None, max_duration: float | None = None
) -> MediaInfo:
    """Probe a local file (see the module's docstring); raises MediaInvalid."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            # FFmpeg reads the file itself (knowing its size lets it estimate MPEG-TS durations); the
            # "file:" prefix keeps a name like "http:x.mp4" from being taken for a protocol.
            return _probe(file, size, max_size, max_duration, av_source="file:" + os.path.abspath(path))
    except OSError as exc:
        raise MediaInvalid(f"the file cannot be read ({_os_message(exc)}): check the path") from None


def probe_stream(
    stream: typing.IO[bytes] | io.RawIOBase,
    *,
    size: int | None = None,
    max_size: int | None = None,
    max_duration: float | None = None,
) -> MediaInfo:
    """Probe a readable, seekable binary file object holding the whole file from offset 0 (an open
    file, io.BytesIO, an HttpRangeReader); raises MediaInvalid. The stream's position is restored and
    the stream is not closed. `size` is found by seeking to the end when not given."""
    try:
        position = stream.tell()
    except (OSError, ValueError) as exc:
        raise MediaInvalid(_read_failure(exc)) from None
    try:
        if size is None:
            size = stream.seek(0, io.SEEK_END)
        return _probe(stream, size, max_size, max_duration, av_source=None)
    except (OSError, ValueError) as exc:
        raise MediaInvalid(_read_failure(exc)) from None
    finally:
        try:
            stream.seek(position)
        except (OSError, ValueError):
            pass


def _probe(
    stream: _Stream,
    size: int,
    max_size: int | None,
    max_duration: float | None,
    *,
    av_source: str | None,
) -> MediaInfo:
    """The checks in order, cheapest first. FFmpeg reads `av_source` (a "file:" name) when given, else
    `stream` through a guard that keeps read errors away from FFmpeg and PyAV."""
    warnings: list[str] = []
    if max_size is not None and size > max_size:
        raise MediaInvalid(
            f"size {size:,} bytes is over --max-size {max_size:,}: compress or split the video, "
            "or raise --max-size"
        )
    if size == 0:
        raise MediaInvalid("the file is empty (0 bytes): upload it again, or re-export it")

    boxes = list(_first_boxes(stream))
    seen = [box.type for box in boxes]
    for box in boxes:
        if box.end is not None and box.end > size:
            raise MediaInvalid(
                f"the file is truncated: its '{box.type.decode()}' box runs to byte {box.end:,} but "
                f"the file ends at byte {size:,}; upload it again (or re-export it)"
            )
    if b"mdat" in seen and b"moov" in seen and seen.index(b"mdat") < seen.index(b"moov"):
        warnings.append(
            "the moov atom is at the end of the file (the platform must read it all before it can "
            "start): re-export with 'fast start' (ffmpeg -movflags +faststart) for a quicker ingest"
        )
    no_moov = b"mdat" in seen and b"moov" not in seen and len(boxes) < _MAX_BOXES

    _load_av()
    import av

    guard = None
    if av_source is None:
        stream.seek(0)  # FFmpeg reads from the current position
        guard = _GuardedReader(stream)
    try:
        container = av.open(av_source if guard is None else guard, mode="r")
    except av.FFmpegError as exc:
        _raise_read_failure(guard)
        if no_moov:
            raise MediaInvalid(
                "the file has no moov atom (the recording or export never finished?): re-export it, "
                "or upload the complete file again"
            ) from None
        raise MediaInvalid(
            f"the container cannot be opened ({_ffmpeg_message(exc)}): the file is not a video or is "
            "damaged; re-export it"
        ) from None
    except (OSError, EOFError, ValueError, RuntimeError, MemoryError) as exc:
        _raise_read_failure(guard)
        raise MediaInvalid(
            f"the container cannot be opened ({exc}): the file is not a video or is damaged; re-export it"
        ) from None
    with container:
        _raise_read_failure(guard)  # FFmpeg took a read error for the end of the file
        info = _inspect(container, size, max_duration, warnings)
        _decode_first_frame(container, guard)
    return info


def _first_boxes(stream: _Stream) -> Iterator[_Box]:
    boxes = _iter_boxes(stream)
    for _ in range(_MAX_BOXES):
        box = next(boxes, None)
        if box is None:
            return
        yield box


def _inspect(
    container: InputContainer, size: int, max_duration: float | None, warnings: list[str]
) -> MediaInfo:
    """MediaInfo from the opened container: a video stream, a duration above zero and within limits."""
    video = _video_stream(container)
    if video is None:
        if container.streams.audio:
            raise MediaInvalid("no video stream (audio only?): give a video file")
        if not len(container.streams):
            raise MediaInvalid("no streams at all (a damaged or empty container?): re-export the video")
        raise MediaInvalid("no video stream: give a video file (this one holds no video)")
    if video.codec_context is None:
        raise MediaInvalid(
            "the video codec has no decoder here (FFmpeg does not know it): re-export as H.264"
        )
    duration = _duration(container, video)
    if duration is not None and duration <= 0:
        raise MediaInvalid("duration 0: the video has no frames to play; re-export it")
    if duration is None:  # a raw stream (.h264, .m4v): FFmpeg cannot tell without reading it all
        unchecked = (
            "" if max_duration is None else f" (--max-duration {_seconds(max_duration)} s not checked)"
        )
        warnings.append(
            f"duration unknown{unchecked}: the file does not record it (a raw stream?); re-export it as "
            "MP4 so the platform knows it"
        )
    elif max_duration is not None and duration > max_duration:
        raise MediaInvalid(
            f"duration {_seconds(duration)} s is over --max-duration {_seconds(max_duration)} s: "
            "trim or split the video, or raise --max-duration"
        )
    audio = container.streams.audio[0] if container.streams.audio else None
    return MediaInfo(
        duration_s=duration,
        format=container.format.name,
        video_codec=_codec_name(video),
        width=video.codec_context.width or None,
        height=video.codec_context.height or None,
        audio_codec=None if audio is None else _codec_name(audio),
        size=size,
        warnings=tuple(warnings),
    )


def _codec_name(stream: Stream) -> str:
    """The codec's own name ("h264", "av1"), not its decoder's ("libdav1d"); "unknown" without one."""
    context = stream.codec_context
    return "unknown" if context is None else context.codec.canonical_name


def _video_stream(container: InputContainer) -> VideoStream | None:
    """The main video stream: cover art (an attached picture) does not count; the default one first."""
    from av.stream import Disposition

    candidates = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    for stream in candidates:
        if stream.disposition & Disposition.default:
            return stream
    return candidates[0] if candidates else None


def _duration(container: InputContainer, video: VideoStream) -> float | None:
    """Seconds, rounded to 3 decimals: the container's (AV_TIME_BASE, µs), else the video stream's."""
    if container.duration is not None:
        return round(container.duration / 1_000_000, 3)
    if video.duration is not None and video.time_base is not None:
        return round(float(video.duration * video.time_base), 3)
    return None


def _decode_first_frame(container: InputContainer, guard: _GuardedReader | None) -> None:
    """Demux until the video stream gives one decoded frame; at most MAX_PACKETS packets are read."""
    import av

    video = _video_stream(container)
    assert video is not None and video.codec_context is not None
    video.codec_context.thread_count = 1  # one frame is wanted: no frame-threading delay, no threads
    failure: str | None = None
    packets = typing.cast("Generator[Packet[Stream], None, None]", container.demux())
    try:
        for count, packet in enumerate(packets, 1):
            if count > MAX_PACKETS:
                failure = f"no frame in the first {MAX_PACKETS} packets"
                break
            if packet.stream.index != video.index:
                continue
            try:
                frames = video.decode(packet)
            except av.FFmpegError as exc:  # a damaged packet: the next one may still decode
                failure = _ffmpeg_message(exc)
                continue
            if frames:
                if not frames[0].is_corrupt:
                    return
                failure = "the frame is corrupt"
    except av.FFmpegError as exc:
        failure = _ffmpeg_message(exc)
    except (OSError, EOFError, ValueError, RuntimeError, MemoryError) as exc:
        failure = str(exc)
    finally:
        packets.close()
    _raise_read_failure(guard)
    detail = f"{failure}; " if failure else ""
    raise MediaInvalid(
        f"the first video frame does not decode ({detail}truncated, or its moov atom was never "
        "written?): upload the file again, or re-export it"
    )


# --- Reading errors -----------------------------------------------------------------------------------


class _FetchError(OSError):
    """An HTTP read failed; the message names the host only."""


class _GuardedReader:
    """What FFmpeg reads through: a stream's read/seek/tell, with the first exception kept here and
    FFmpeg told end-of-file (read) or an error code (seek) instead. PyAV would otherwise stash the
    exception, re-raise it from a later, unrelated call, or print it when a second one came."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        if self.error is None:
            try:
                return self._stream.read(n) or b""
            except Exception as exc:  # noqa: BLE001 - kept and reported by the probe as MediaInvalid
                self.error = exc
        return b""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.error is None:
            try:
                return self._stream.seek(offset, whence)
            except Exception as exc:  # noqa: BLE001 - kept and reported by the probe as MediaInvalid
                self.error = exc
        return -1

    def tell(self) -> int:
        return self._stream.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def _raise_read_failure(guard: _GuardedReader | None) -> None:
    if guard is not None and guard.error is not None:
        raise MediaInvalid(_read_failure(guard.error))


def _read_failure(exc: BaseException) -> str:
    if isinstance(exc, _FetchError):
        return f"the file cannot be read ({exc}): check the URL (a presigned one may have expired)"
    if isinstance(exc, OSError):
        return f"the file cannot be read ({_os_message(exc)}): check the file, or upload it again"
    return f"the file cannot be read ({type(exc).__name__}: {exc}): check the file, or upload it again"


def _os_message(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _ffmpeg_message(exc: Exception) -> str:
    """FFmpeg's message without PyAV's "[Errno n]" and file name."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _seconds(value: float) -> str:
    """3600.0 -> '3,600', 1.25 -> '1.25'."""
    return f"{value:,.3f}".rstrip("0").rstrip(".")


# --- HTTP ---------------------------------------------------------------------------------------------


def _host(url: str) -> str:
    """The URL's host[:port], without user:password@ (or "the server" when there is none)."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return "the server"
    return netloc.rsplit("@", 1)[-1] or "the server"


def _scrub(text: str, url: str) -> str:
    """`text` (an httpx message) without the URL, its query string or its user info."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return text.replace(url, "the URL")
    text = text.replace(url, _host(url))
    for secret in (parts.query, parts.netloc.rpartition("@")[0], parts.fragment):
        if secret:
            text = text.replace(secret, "…")
    return text


class HttpRangeReader(io.RawIOBase):
    """A readable, seekable file object over HTTP Range requests on the caller's `httpx.Client`.

    The size comes from the first answer's Content-Range (the first block is fetched on creation).
    Reads are whole blocks (`block_size`), the last few kept in a small cache. A server that ignores
    Range and answers 200 is read whole, up to `whole_body_limit` bytes. A non-2xx answer, a transport
    failure or a request slower than `request_time_limit()` raises OSError naming the host only.
    Use one reader per thread (a lock keeps its cache consistent all the same); closing it does not
    close the client."""

    cache_blocks = 8
    whole_body_limit = 64 << 20

    def __init__(self, client: httpx.Client, url: str, *, block_size: int = 1 << 20) -> None:
        super().__init__()
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self._client = client
        self._url = url
        self._host = _host(url)
        self._block_size = block_size
        self._position = 0
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._whole: bytes | None = None  # the body, when the server ignored Range
        self._lock = threading.Lock()
        self._size_seen = 0  # the total of the last Content-Range
        self.size: int = self._fetch_first()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position

    def readinto(self, buffer: typing.Any) -> int:
        self._check_open()
        with self._lock:
            view = memoryview(buffer).cast("B")
            if self._position >= self.size or not len(view):
                return 0
            index, offset = divmod(self._position, self._block_size)
            block = self._block(index)
            n = min(len(view), len(block) - offset)
            if n <= 0:  # the server sent less than it said the file holds
                raise _FetchError(f"short answer from {self._host} (did the file change?)")
            view[:n] = block[offset : offset + n]
            self._position += n
            return n

    def close(self) -> None:
        self._cache.clear()
        self._whole = None
        super().close()

    def request_time_limit(self) -> float:
        """Seconds one block's request may take in all (httpx's timeouts bound each wait only)."""
        timeout = self._client.timeout
        return max(30.0, 3 * (timeout.read or timeout.connect or 10.0))

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _block(self, index: int) -> bytes:
        start = index * self._block_size
        if self._whole is not None:
            return self._whole[start : start + self._block_size]
        block = self._cache.get(index)
        if block is None:
            end = min(start + self._block_size, self.size) - 1
            block = self._fetch(start, end)
            if self._whole is not None:  # the server ignored Range this time
                return self._whole[start : start + self._block_size]
            self._cache[index] = block
            while len(self._cache) > self.cache_blocks:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        return block

    def _fetch_first(self) -> int:
        block = self._fetch(0, self._block_size - 1, first=True)
        if self._whole is not None:
            return len(self._whole)
        self._cache[0] = block
        return self._size_seen

    def _fetch(self, start: int, end: int, *, first: bool = False) -> bytes:
        """Bytes start..end (inclusive) by a Range request; on a 200 answer, the whole body is kept in
        self._whole instead (b"" returned). Sets self._size_seen from Content-Range."""
        import httpx

        headers = {"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"}
        deadline = time.monotonic() + self.request_time_limit()
        try:
            with self._client.stream("GET", self._url, headers=headers) as response:
                status = response.status_code
                if status == 416 and first:  # an empty file: "bytes */0"
                    total = _content_range_total(response.headers.get("content-range", ""))
                    if total == 0:
                        self._size_seen = 0
                        return b""
                if status == 200:
                    self._whole = self._read_body(response, self.whole_body_limit, deadline, whole=True)
                    self._cache.clear()
                    return b""
                if status != 206:
                    reason = response.reason_phrase
                    raise _FetchError(f"HTTP {status}{' ' + reason if reason else ''} from {self._host}")
                content_range = response.headers.get("content-range", "")
                first_byte = _content_range_start(content_range)
                total = _content_range_total(content_range)
                if first_byte != start or total is None:
                    raise _FetchError(f"unusable Content-Range {content_range[:60]!r} from {self._host}")
                self._size_seen = total
                want = min(end, total - 1) - start + 1
                body = self._read_body(response, want, deadline, whole=False)
        except httpx.TimeoutException:
            raise _FetchError(f"timed out reading from {self._host}") from None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            detail = _scrub(str(exc), self._url) or type(exc).__name__
            raise _FetchError(f"{detail} (from {self._host})") from None
        if len(body) < want:
            raise _FetchError(f"short answer from {self._host} ({len(body):,} of {want:,} bytes)")
        return body

    def _read_body(self, response: httpx.Response, limit: int, deadline: float, *, whole: bool) -> bytes:
        chunks: list[bytes] = []
        got = 0
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:
                raise _FetchError(f"too slow: {self._host} took over {self.request_time_limit():.0f} s")
            chunks.append(chunk)
            got += len(chunk)
            if whole and got > limit:
                raise _FetchError(
                    f"{self._host} ignores Range requests and the file is over "
                    f"{self.whole_body_limit:,} bytes: it cannot be probed without downloading it all"
                )
            if not whole and got >= limit:
                break
        return b"".join(chunks)[: None if whole else limit]


def _content_range_start(value: str) -> int | None:
    """'bytes 0-99/1234' -> 0."""
    unit, _, rest = value.strip().partition(" ")
    first, sep, _ = rest.partition("-")
    if unit.lower() != "bytes" or not sep or not first.strip().isdigit():
        return None
    return int(first)


def _content_range_total(value: str) -> int | None:
    """'bytes 0-99/1234' -> 1234, 'bytes */0' -> 0, 'bytes 0-99/*' -> None."""
    total = value.rpartition("/")[2].strip()
    return int(total) if value.strip().lower().startswith("bytes") and total.isdigit() else None


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    import httpx

    return httpx.create_ssl_context(trust_env=False)


def probe_url(
    url: str,
    *,
    timeout_s: float = 10.0,
    max_size: int | None = None,
    max_duration: float | None = None,
    transport: httpx.BaseTransport | None = None,
) -> MediaInfo:
    """Probe an http(s) URL by Range requests (only the parts FFmpeg needs are fetched); raises
    MediaInvalid, also when the server cannot be read (the reason names the host, never the query)."""
    import httpx

    # One TLS context for every probe: building one (loading the CA bundle) costs ~40 ms of CPU.
    verify = True if transport is not None else _ssl_context()
    try:
        with (
            httpx.Client(
                trust_env=False, timeout=timeout_s, transport=transport, follow_redirects=True, verify=verify
            ) as client,
            HttpRangeReader(client, url) as reader,
        ):
            return probe_stream(reader, size=reader.size, max_size=max_size, max_duration=max_duration)
    except _FetchError as exc:
        raise MediaInvalid(_read_failure(exc)) from None
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError, ValueError) as exc:
        detail = _scrub(str(exc), url) or type(exc).__name__
        raise MediaInvalid(
            f"the file cannot be read ({detail}; from {_host(url)}): check the URL (a presigned one may "
            "have expired)"
        ) from None
