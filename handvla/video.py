"""Video files: write RGB frames to MP4 (H.264) or GIF, read frames back (all, a frame range or a time window).

Writing (``VideoWriter`` / ``write_video``):
- the container is chosen by the file extension: ``.mp4`` / ``.mov`` / ``.mkv`` (H.264 via libx264, yuv420p,
  the frame padded to even width and height by repeating its last row/column, because 4:2:0 chroma needs
  them even) or ``.gif`` (PIL, an adaptive 256-colour palette per frame, looping forever);
- frames are (H, W, 3) uint8 RGB; the first frame fixes the size;
- the file appears atomically: everything goes to a temporary file in the same folder, renamed over the
  target with ``os.replace`` only once the video is complete; on an error the temporary file is removed.

GIF stores frame delays in hundredths of a second, so a GIF plays at 100 / round(100 / fps) frames/s (15 fps
becomes 14.3 fps); MP4 keeps the exact rate. PIL stores repeated identical frames once, with a longer delay.

Reading (``read_video`` / ``iter_video``) decodes only what is asked: for MP4 it seeks to the key frame at or
before the first wanted frame, then decodes up to the last one. Frame ``i`` is the frame shown at time
``i / fps`` from the start of the stream: a frame displayed for several frame periods (a GIF's merged
repeats, variable-rate video) is returned once per period. A GIF's rate is its shortest frame delay.
Output is (T, H, W, 3) uint8 RGB.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from handvla.atomic import file_target, tmp_path
from handvla.errors import InputError, MissingResourceError

#: extensions written with H.264 and the container format PyAV is given for each
H264_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
GIF_EXTS = (".gif",)
VIDEO_EXTS = tuple(H264_FORMATS) + GIF_EXTS


def _ext(path: Path) -> str:
    ext = path.suffix.lower()
    if ext not in VIDEO_EXTS:
        raise InputError(path, "extension", f"one of {', '.join(VIDEO_EXTS)}", repr(path.suffix))
    return ext


def check_frame(frame: np.ndarray, where: str = "frame") -> np.ndarray:
    """Return ``frame`` as a C-contiguous (H, W, 3) uint8 array, or raise a clear error."""
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(
            where, "frame", "a uint8 RGB array of shape (H, W, 3)", f"{a.dtype} array of shape {a.shape}"
        )
    return np.ascontiguousarray(a)


def pad_to_even(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H + H % 2, W + W % 2, 3), repeating the last row/column (no visible border)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class VideoWriter:
    """Streams frames into an MP4 or GIF file, written atomically. Use as a context manager::

        with VideoWriter("out.mp4", fps=15) as w:
            for frame in frames:  # (H, W, 3) uint8
                w.write(frame)

    ``crf`` (0-51, lower = better) and ``preset`` are libx264's quality/speed settings. ``threads``: libx264's
    encoding threads; 0 lets it choose from the machine's cores, and then the bytes written depend on the
    machine (the pictures differ slightly too); a fixed number gives the same file on every machine.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float = 15.0,
        crf: int = 18,
        preset: str = "veryfast",
        threads: int = 0,
    ):
        self.path = file_target(path)  # not an existing folder
        self._ext = _ext(self.path)
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise InputError(self.path, "fps", "a positive number", repr(fps))
        if not self.path.parent.is_dir():
            raise InputError(
                self.path, "path", "a file in an existing folder", f"missing folder {self.path.parent}"
            )
        self.fps = float(fps)
        self.crf, self.preset = int(crf), str(preset)
        if not (isinstance(threads, int) and threads >= 0):
            raise InputError(self.path, "threads", "an integer >= 0 (0: libx264 chooses)", repr(threads))
        self.threads = threads
        # a temporary name in the same folder (keeping the extension, which picks the container);
        # created with the usual permissions, unlike mkstemp's owner-only ones
        self._tmp = Path(f"{tmp_path(self.path)}{self._ext}")
        self._size: tuple[int, int] | None = None  # (H, W) of the input frames
        self._container = None
        self._stream = None
        self._gif_frames: list[Image.Image] = []
        self.num_frames = 0
        self._closed = False

    # -- writing ---------------------------------------------------------------------------------------
    def _open_h264(self, h: int, w: int) -> None:
        self._container = av.open(str(self._tmp), mode="w", format=H264_FORMATS[self._ext])
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream("libx264", rate=rate)
        stream.width, stream.height = w + w % 2, h + h % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(self.crf), "preset": self.preset, "threads": str(self.threads)}
        self._stream = stream

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        if self._closed:
            raise InputError(self.path, "write", "an open writer", "a closed one")
        frame = check_frame(frame, str(self.path))
        if self._size is None:
            self._size = frame.shape[:2]
            if self._ext not in GIF_EXTS:
                self._open_h264(*self._size)
        elif frame.shape[:2] != self._size:
            raise InputError(
                self.path,
                f"frame {self.num_frames}",
                f"size {self._size} like the first frame",
                str(frame.shape[:2]),
            )
        if self._ext in GIF_EXTS:
            # An adaptive palette per frame keeps colours faithful; fast octree, no dithering (it flickers).
            img = Image.fromarray(frame).quantize(
                256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
            )
            self._gif_frames.append(img)
        else:
            vf = av.VideoFrame.from_ndarray(pad_to_even(frame), format="rgb24")
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
        self.num_frames += 1

    def write_all(self, frames: Iterable[np.ndarray]) -> None:
        for frame in frames:
            self.write(frame)

    def close(self) -> Path:
        """Finish the file and move it into place. Returns the final path."""
        if self._closed:
            return self.path
        if self.num_frames == 0:
            self.abort()
            raise InputError(self.path, "frames", "at least one frame", "none")
        try:
            if self._ext in GIF_EXTS:
                # GIF delays are whole hundredths of a second; browsers treat < 2 as 10, so 2 is the floor.
                delay_ms = 10 * max(2, round(100.0 / self.fps))
                first, rest = self._gif_frames[0], self._gif_frames[1:]
                first.save(
                    self._tmp, format="GIF", save_all=True, append_images=rest, duration=delay_ms, loop=0
                )
                self._gif_frames = []
            else:
                for packet in self._stream.encode():  # flush the encoder
                    self._container.mux(packet)
                self._container.close()
                self._container = None
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; the target file is left untouched."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being thrown away; a failing close must not hide the first error
                pass
            self._container = None
        self._gif_frames = []
        self._tmp.unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # a writer that was never closed leaves no temporary file behind
        if not getattr(self, "_closed", True):
            self.abort()


def write_video(
    path: str | Path,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float = 15.0,
    crf: int = 18,
    preset: str = "veryfast",
    threads: int = 0,
) -> Path:
    """Write frames ((T, H, W, 3) uint8 array or an iterable of (H, W, 3)) to an MP4 or GIF, atomically
    (``crf``, ``preset``, ``threads``: see ``VideoWriter``)."""
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise InputError(path, "frames", "a uint8 array of shape (T, H, W, 3)", f"shape {frames.shape}")
    with VideoWriter(path, fps=fps, crf=crf, preset=preset, threads=threads) as w:
        w.write_all(frames)
    return Path(path)


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    num_frames: int
    duration_s: float
    codec: str


def _open(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise MissingResourceError(f"{path}: video file not found")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise InputError(path, None, "a readable video file", f"{type(e).__name__}: {e}") from None
    if not container.streams.video:
        container.close()
        raise InputError(path, "streams", "a video stream", "none")
    return container


def _stream_fps(container, stream) -> float:
    """Nominal frame rate. For a GIF: 1 / its shortest frame delay (PIL merges repeats into longer delays,
    and the container's average rate would count a merged frame once)."""
    if stream.codec_context.name == "gif" and stream.time_base:
        durations = [p.duration for p in container.demux(stream) if p.size > 0 and p.duration]
        container.seek(0)
        if durations:
            return 1.0 / float(min(durations) * stream.time_base)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _frame_spans(container, stream, fps: float, start: int) -> Iterator[tuple[int, int, object]]:
    """Decode and yield (first index, stop index, frame): the frame periods during which each frame shows."""
    tb = stream.time_base
    t0 = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    timed = tb is not None and fps > 0
    # Seeking is exact where timestamps are (H.264 here); a GIF is decoded from its start (it is small).
    if timed and start > 0 and stream.codec_context.name != "gif":
        container.seek(int((t0 + start / fps) / tb), stream=stream, backward=True, any_frame=False)
    count = 0
    for frame in container.decode(stream):
        if timed and frame.pts is not None:
            t = float(frame.pts * tb) - t0
            d = float(frame.duration * tb) if frame.duration else 1.0 / fps
            i0 = round(t * fps)
            i1 = max(i0 + 1, round((t + d) * fps))
        else:
            i0, i1 = count, count + 1
        count = i1
        yield i0, i1, frame


def video_info(path: str | Path) -> VideoInfo:
    """Size, frame rate and frame count of the first video stream (frame count in periods of 1 / fps, found
    from the packets when the container does not store it)."""
    with _open(path) as c:
        s = c.streams.video[0]
        fps = _stream_fps(c, s)
        n = int(s.frames or 0)
        if s.codec_context.name == "gif" or n == 0:
            tb = s.time_base
            packets = [p for p in c.demux(s) if p.size > 0]
            if tb and fps > 0 and all(p.duration for p in packets):
                n = round(sum(float(p.duration * tb) for p in packets) * fps)
            else:
                n = len(packets)
        return VideoInfo(
            width=s.codec_context.width,
            height=s.codec_context.height,
            fps=fps,
            num_frames=n,
            duration_s=n / fps if fps > 0 else 0.0,
            codec=s.codec_context.name,
        )


def _frame_range(start, stop, start_s, stop_s, fps: float, path) -> tuple[int, int | None]:
    if (start_s is not None or stop_s is not None) and (start not in (None, 0) or stop is not None):
        raise InputError(path, "start/stop", "either a frame range or a time window, not both", "both")
    if start_s is not None or stop_s is not None:
        if fps <= 0:
            raise InputError(path, "fps", "a known frame rate to read a time window", "none")
        # frame i is shown at i / fps; the window [start_s, stop_s) holds the frames whose time lies in it
        start = math.ceil(float(start_s) * fps - 1e-6) if start_s is not None else 0
        stop = math.ceil(float(stop_s) * fps - 1e-6) if stop_s is not None else None
    start = 0 if start is None else int(start)
    if start < 0 or (stop is not None and int(stop) < start):
        raise InputError(path, "start/stop", "0 <= start <= stop", f"start={start}, stop={stop}")
    return start, (None if stop is None else int(stop))


def iter_video(
    path: str | Path,
    start: int | None = 0,
    stop: int | None = None,
    *,
    start_s: float | None = None,
    stop_s: float | None = None,
) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 RGB frames ``start <= i < stop`` (or those shown in ``[start_s, stop_s)``)."""
    c = _open(path)
    try:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        fps = _stream_fps(c, s)
        start, stop = _frame_range(start, stop, start_s, stop_s, fps, path)
        if stop is not None and stop <= start:
            return
        for i0, i1, frame in _frame_spans(c, s, fps, start):
            lo, hi = max(i0, start), i1 if stop is None else min(i1, stop)
            if hi > lo:
                rgb = frame.to_ndarray(format="rgb24")
                for _ in range(hi - lo):
                    yield rgb
            if stop is not None and i1 >= stop:
                break
    except av.error.FFmpegError as e:
        raise InputError(path, None, "a decodable video", f"{type(e).__name__}: {e}") from None
    finally:
        c.close()


def read_video(
    path: str | Path,
    start: int | None = 0,
    stop: int | None = None,
    *,
    start_s: float | None = None,
    stop_s: float | None = None,
) -> np.ndarray:
    """Frames ``start <= i < stop`` (or the time window ``[start_s, stop_s)`` in seconds) as (T, H, W, 3) uint8."""
    frames = list(iter_video(path, start, stop, start_s=start_s, stop_s=stop_s))
    if frames:
        return np.stack(frames)
    info = video_info(path)
    return np.zeros((0, info.height, info.width, 3), np.uint8)
