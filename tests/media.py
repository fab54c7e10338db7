"""Small real media files for the prober's tests, made with PyAV at test time (a few ms each).

Video is 64x48 at 10 fps in MPEG-4 Part 2 (`mpeg4`, FFmpeg's own encoder, in every PyAV wheel), audio
is AAC mono at 8 kHz (FFmpeg's `aac`). Frames are noise, so the media data (`mdat`) outweighs the
index (`moov`) and cutting a file short lands in its frames, as with a real interrupted upload.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Final

WIDTH, HEIGHT, FPS = 64, 48, 10
VIDEO_CODEC: Final = "mpeg4"
AUDIO_CODEC: Final = "aac"
SAMPLE_RATE = 8000


def make_mp4(path: Path | str, *, seconds: float = 1.0, faststart: bool = True, audio: bool = True) -> Path:
    """An MP4 with `seconds` of video (and AAC audio); its moov atom first when `faststart`, else after
    the media data (FFmpeg's default)."""
    return _mux(Path(path), seconds=seconds, faststart=faststart, video=True, audio=audio)


def make_moov_at_end(path: Path | str) -> Path:
    """A valid MP4 whose moov atom comes after mdat."""
    return make_mp4(path, faststart=False)


def make_truncated(path: Path | str, *, keep: float = 0.4, faststart: bool = True) -> Path:
    """A good MP4 cut to `keep` of its bytes. With `faststart` the moov atom survives and only the frames
    are cut (FFmpeg opens it and decodes its first frame: the cut shows only in the mdat box's size);
    without, the moov atom at the end is lost and the file does not open."""
    path = Path(path)
    make_mp4(path, faststart=faststart)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_audio_only(path: Path | str) -> Path:
    """An .mp4/.m4a holding one AAC audio stream and no video."""
    return _mux(Path(path), seconds=1.0, faststart=True, video=False, audio=True)


def make_raw_video(path: Path | str) -> Path:
    """An MPEG-4 elementary stream (.m4v) without a container: it plays, but nothing records its
    duration."""
    return _mux(Path(path), seconds=1.0, faststart=False, video=True, audio=False, format="m4v")


def make_text_as_mp4(path: Path | str) -> Path:
    """A text file under a video's name."""
    path = Path(path)
    path.write_text("title,url\nholiday,https://example.com/holiday.mp4\n" * 20)
    return path


def make_zero_bytes(path: Path | str) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def _mux(
    path: Path, *, seconds: float, faststart: bool, video: bool, audio: bool, format: str = "mp4"
) -> Path:
    import av

    noise = random.Random(1234)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format=format, options=options) as out:
        # Every stream is added before the first packet is muxed (that writes the header).
        vstream = out.add_stream(VIDEO_CODEC, rate=FPS) if video else None
        astream = out.add_stream(AUDIO_CODEC, rate=SAMPLE_RATE, layout="mono") if audio else None
        if vstream is not None:
            vstream.width, vstream.height, vstream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if astream is not None:
            astream.bit_rate = 24_000  # the encoder's default is more than mono 8 kHz can carry
        frames = max(1, round(seconds * FPS))
        samples_total, samples_done = round(frames / FPS * SAMPLE_RATE), 0
        for index in range(frames):  # interleaved: a video frame, then the audio up to its end
            if vstream is not None:
                picture = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
                for plane in picture.planes:
                    plane.update(noise.randbytes(plane.buffer_size))
                picture.pts = index
                out.mux(vstream.encode(picture))
            while astream is not None and samples_done < min(samples_total, (index + 1) * SAMPLE_RATE // FPS):
                samples = min(1024, samples_total - samples_done)  # AAC takes 1024 a frame, fewer at the end
                sound = av.AudioFrame(format="fltp", layout="mono", samples=samples)
                sound.sample_rate = SAMPLE_RATE
                sound.planes[0].update(bytes(sound.planes[0].buffer_size))  # silence
                sound.pts = samples_done
                samples_done += samples
                out.mux(astream.encode(sound))
        for stream in (vstream, astream):
            if stream is not None:
                out.mux(stream.encode(None))
    return path
