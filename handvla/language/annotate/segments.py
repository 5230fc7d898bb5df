"""Cutting episodes into annotation clips, 2 FPS frame samples and overlapping 1 s windows.

UniHand's recipe (docs/being-h0-reference.md section 7): clips of at most 10 s, frames sampled at 2 FPS for
the annotator, and per-second text on overlapping 1 s windows. Everything here works on frame indices of
the stored episode (times in seconds from the episode start = frame / fps), so a clip read back from the
store with ``EpisodeStore.load_episode(k, start_s, end_s)`` is exactly frames [start_frame, end_frame).

Clips are cut greedily at whole multiples of ``max_clip_s`` (so clip starts fall on whole seconds and the
1 s motion-token windows of later stages line up with them); a tail shorter than ``min_clip_s`` is not
left alone but shares the last ``max_clip_s + tail`` seconds with the clip before it, split at a whole
second. Episodes shorter than ``min_clip_s`` give one clip (or none if they have fewer than 2 frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import ConfigDict, model_validator

from handvla.config import ConfigModel
from handvla.errors import ConfigError

#: UniHand's defaults
MAX_CLIP_S = 10.0
FRAME_RATE_HZ = 2.0
WINDOW_S = 1.0
STRIDE_S = 0.5
MIN_CLIP_S = 1.0


def _round_half_up(x: float) -> int:
    """Nearest whole number, halves up (Python's round() sends halves to even: uneven strides)."""
    return int(math.floor(x + 0.5 + 1e-9))


class SegmentConfig(ConfigModel):
    """How clips, frame samples and per-second windows are cut (all seconds)."""

    model_config = ConfigDict(frozen=True)

    max_clip_s: float = MAX_CLIP_S
    min_clip_s: float = MIN_CLIP_S
    frame_rate_hz: float = FRAME_RATE_HZ
    window_s: float = WINDOW_S
    stride_s: float = STRIDE_S

    @model_validator(mode="after")
    def _check(self) -> SegmentConfig:
        for name in ("max_clip_s", "frame_rate_hz", "window_s", "stride_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(
                    f"SegmentConfig.{name}: expected a positive number of seconds (or Hz), got {v!r}"
                )
        if not (math.isfinite(self.min_clip_s) and 0 <= self.min_clip_s <= self.max_clip_s / 2):
            raise ConfigError(
                f"SegmentConfig.min_clip_s: expected 0 <= min_clip_s <= max_clip_s / 2 ({self.max_clip_s / 2}), "
                f"got {self.min_clip_s!r}"
            )
        if self.window_s > self.max_clip_s:
            raise ConfigError(
                f"SegmentConfig.window_s: expected <= max_clip_s ({self.max_clip_s}), got {self.window_s}"
            )
        return self

    def fingerprint(self) -> str:
        """A short text that changes whenever the cut changes (stored with every annotation)."""
        return (
            f"clip{self.max_clip_s:g}/min{self.min_clip_s:g}/frames{self.frame_rate_hz:g}Hz/"
            f"win{self.window_s:g}/stride{self.stride_s:g}"
        )


@dataclass(frozen=True)
class ClipSpec:
    """Frames [start_frame, end_frame) of one episode: one annotation unit."""

    episode_index: int
    clip_index: int
    start_frame: int
    end_frame: int
    fps: float

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame

    @property
    def start_s(self) -> float:
        return self.start_frame / self.fps

    @property
    def end_s(self) -> float:
        return self.end_frame / self.fps

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    def sample_frames(self, rate_hz: float = FRAME_RATE_HZ) -> list[int]:
        """Episode frame indices of the frames shown to an annotator: one every 1/rate_hz seconds from the
        clip start (a 10 s clip at 2 FPS -> 20 frames), always inside the clip."""
        n = max(1, math.ceil(self.duration_s * rate_hz - 1e-9))
        out = []
        for k in range(n):
            f = self.start_frame + _round_half_up(k * self.fps / rate_hz)
            out.append(min(f, self.end_frame - 1))
        return sorted(set(out))

    def windows(self, window_s: float = WINDOW_S, stride_s: float = STRIDE_S) -> list[tuple[int, int]]:
        """Overlapping per-second windows as episode frame ranges [a, b): starts every ``stride_s`` while a
        whole window fits, plus one window ending exactly at the clip end when the stride leaves a gap, so
        every frame of the clip is covered. A clip shorter than a window is one window."""
        w = round(window_s * self.fps)
        if w >= self.num_frames or w < 1:
            return [(self.start_frame, self.end_frame)]
        out = []
        j = 0
        while True:
            a = self.start_frame + _round_half_up(j * stride_s * self.fps)
            if a + w > self.end_frame:
                break
            if not out or a > out[-1][0]:
                out.append((a, a + w))
            j += 1
        if out[-1][1] < self.end_frame:
            out.append((self.end_frame - w, self.end_frame))
        return out

    def window_times(
        self, window_s: float = WINDOW_S, stride_s: float = STRIDE_S
    ) -> list[tuple[float, float]]:
        """``windows`` in seconds from the episode start."""
        return [(a / self.fps, b / self.fps) for a, b in self.windows(window_s, stride_s)]


def segment_episode(
    num_frames: int, fps: float, episode_index: int = 0, config: SegmentConfig | None = None
) -> list[ClipSpec]:
    """Non-overlapping clips of at most ``config.max_clip_s`` covering frames [0, num_frames)."""
    cfg = config or SegmentConfig()
    if not (math.isfinite(fps) and fps > 0):
        raise ConfigError(f"segment_episode: expected a positive fps, got {fps!r}")
    T = int(num_frames)
    if T < 2:
        return []
    max_f = max(1, math.floor(cfg.max_clip_s * fps + 1e-6))
    min_f = math.ceil(cfg.min_clip_s * fps - 1e-6)
    bounds = list(range(0, T, max_f)) + [T]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < min_f:
        # the tail is too short to annotate on its own: re-split the last two clips at a whole second
        a, b = bounds[-3], T
        sec = fps if fps >= 1 else 1.0
        mid = a + round(math.floor((b - a) / 2 / sec) * sec)
        if mid - a < min_f or b - mid > max_f or mid <= a:
            mid = a + (b - a) // 2
        bounds[-2] = mid
    return [ClipSpec(episode_index, i, bounds[i], bounds[i + 1], float(fps)) for i in range(len(bounds) - 1)]
