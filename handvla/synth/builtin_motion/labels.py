"""Ground truth of a script: the primitive and grip state per frame and the labelled segments."""


from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from handvla.synth.builtin_motion.constants import (
    PRIMITIVES,
)

# ---------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Segment:
    name: str
    start: int  # first frame
    stop: int  # one past the last frame
    params: dict = field(default_factory=dict)  # targets etc., camera frame, metres


@dataclass
class MotionLabels:
    """Per-frame ground truth of a scripted motion."""

    primitive: np.ndarray  # (T,) int16, index into PRIMITIVES
    grip_closed: np.ndarray  # (T,) bool: a grasp or pinch holds (closure >= 0.5)
    closure: np.ndarray  # (T,) float32 0 = open .. 1 = fully closed grip
    segments: list[Segment]

    @property
    def names(self) -> list[str]:
        return [PRIMITIVES[i] for i in self.primitive]

    def slice(self, start: int, stop: int) -> MotionLabels:
        segs = [
            Segment(s.name, max(s.start, start) - start, min(s.stop, stop) - start, s.params)
            for s in self.segments
            if s.stop > start and s.start < stop
        ]
        return MotionLabels(
            self.primitive[start:stop], self.grip_closed[start:stop], self.closure[start:stop], segs
        )
