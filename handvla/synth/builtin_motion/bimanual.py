"""Two hands: a pair of scripts sharing one clock, and two-hand primitives (clap)."""


from __future__ import annotations

import numpy as np

from handvla.hand.motion import HandMotion
from handvla.hand.topology import NUM_BETAS
from handvla.synth.builtin_motion.constants import (
    MIRROR_X,
)
from handvla.synth.builtin_motion.labels import MotionLabels
from handvla.synth.builtin_motion.script import HandScript
from handvla.synth.builtin_motion.workspace import Workspace, rotation_from_directions

# ---------------------------------------------------------------------------------------------------------
# Two hands
# ---------------------------------------------------------------------------------------------------------


class BimanualScript:
    """Two ``HandScript``s (``.left``, ``.right``) on one timeline. Use the hands directly for independent
    actions and ``sync()`` to line them up; the bimanual primitives (``clap``, ``together``) sync first."""

    def __init__(
        self,
        rng: np.random.Generator | None = None,
        fps: float = 15.0,
        workspace: Workspace | None = None,
        tempo: float = 1.0,
        betas: np.ndarray | None = None,
        hand_model: str = "builtin",
    ):
        self.rng = rng if rng is not None else np.random.default_rng()
        self.ws = workspace or Workspace()
        if betas is None:  # one person: the same shape for both hands
            betas = np.clip(self.rng.normal(0, 0.5, NUM_BETAS), -1.5, 1.5)
        seeds = self.rng.integers(0, 2**63, size=2)
        self.right = HandScript(
            "right", np.random.default_rng(seeds[0]), fps, betas, self.ws, tempo=tempo, hand_model=hand_model
        )
        self.left = HandScript(
            "left", np.random.default_rng(seeds[1]), fps, betas, self.ws, tempo=tempo, hand_model=hand_model
        )

    @property
    def hands(self) -> dict[str, HandScript]:
        return {"left": self.left, "right": self.right}

    def sync(self) -> BimanualScript:
        """Pad the hand that is behind with idle frames so both have the same length."""
        gap = self.left.num_frames - self.right.num_frames
        if gap != 0:
            (self.right if gap > 0 else self.left).hold(abs(gap))
        return self

    def clap(self, n_claps: int | None = None, period: float | None = None) -> BimanualScript:
        """Both palms meet in front of the body, ``n_claps`` times."""
        self.sync()
        n_claps = n_claps if n_claps is not None else int(self.rng.integers(2, 5))
        period = period if period is not None else self.rng.uniform(0.4, 0.65)
        opening = self.rng.uniform(0.06, 0.14)
        half_gap = 0.016  # the wrist joints are ~3 cm apart when the palms touch
        ws = self.ws
        c = ws.to_camera([half_gap, self.rng.uniform(0.32, 0.45), self.rng.uniform(0.1, 0.2)])
        c = self.right._in_front(c, rotation_from_directions(ws.up + 0.8 * ws.forward, -ws.axes[:, 0]))
        approach = self.rng.uniform(0.5, 0.8) * self.right.tempo
        self.right.clap_approach(c, opening, approach)
        self.left.clap_approach(c * MIRROR_X, opening, approach)
        self.sync()  # a longer turn of one hand may have stretched its approach: both start together
        self.right.clap_with(c, n_claps, period, opening)
        self.left.clap_with(c * MIRROR_X, n_claps, period, opening)
        return self.sync()

    def together(
        self, centre: np.ndarray | None = None, width: float | None = None, hold: float | None = None
    ) -> BimanualScript:
        """Both hands approach from the sides of a box of ``width`` metres centred at ``centre`` (camera
        frame), press it (grip closed), lift it, put it down and let go."""
        self.sync()
        ws = self.ws
        if centre is None:
            centre = ws.to_camera(
                [self.rng.uniform(-0.05, 0.05), self.rng.uniform(0.28, 0.4), self.rng.uniform(0.05, 0.1)]
            )
        width = width if width is not None else self.rng.uniform(0.12, 0.24)
        dur = self.rng.uniform(0.8, 1.2) * self.right.tempo
        lift = self.rng.uniform(0.05, 0.12)
        hold = hold if hold is not None else self.rng.uniform(0.3, 0.8)
        right_axis = ws.axes[:, 0]
        # the grasp point is 3 cm out of the palm: put it 1.5 cm inside the box side
        sides = ((self.right, 1.0), (self.left, -1.0))
        points = {
            h.side: np.asarray(centre, float) + sgn * (0.5 * width - 0.015) * right_axis for h, sgn in sides
        }
        for h, sgn in sides:
            rot = rotation_from_directions(ws.forward + 0.3 * ws.up, -sgn * right_axis, h.side)
            h.reach(points[h.side], duration=dur, orient=rot, anchor="grasp", shape="open")
        self.sync()  # each phase starts together (a longer turn stretches one hand's reach)
        phases = (
            lambda h: h.grasp(closure=0.35, duration=0.4 * h.tempo, approach=0.005),
            lambda h: h.lift(lift, duration=0.7 * h.tempo),
            lambda h: h.idle(hold, drift=0.003),
            lambda h: h.place(points[h.side], duration=0.8 * h.tempo, anchor="grasp"),
            lambda h: h.release(duration=0.45 * h.tempo),
        )
        for phase in phases:
            for h, _ in sides:
                phase(h)
            self.sync()
        return self

    def build(
        self, noise: bool = True, num_frames: int | None = None
    ) -> tuple[dict[str, HandMotion], dict[str, MotionLabels]]:
        self.sync()
        out = {side: h.build(noise, num_frames) for side, h in self.hands.items()}
        return {s: m for s, (m, _) in out.items()}, {s: lab for s, (_, lab) in out.items()}
