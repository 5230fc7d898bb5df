"""Random scripts: activities and primitives drawn at random, one- and two-hand sequences, whole datasets."""


from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from handvla.errors import InputError
from handvla.hand.motion import HandMotion
from handvla.hand.topology import check_side
from handvla.synth.builtin_motion.bimanual import BimanualScript
from handvla.synth.builtin_motion.constants import (
    MIRROR_X,
    PRIMITIVES,
    SINGLE_PRIMITIVES,
)
from handvla.synth.builtin_motion.labels import MotionLabels
from handvla.synth.builtin_motion.script import HandScript
from handvla.synth.builtin_motion.workspace import Workspace

# ---------------------------------------------------------------------------------------------------------
# Random scripts
# ---------------------------------------------------------------------------------------------------------


def _own_side_point(
    h: HandScript, rng: np.random.Generator, height=(0.02, 0.12), cross: float = 0.25
) -> np.ndarray:
    """A table point mostly on this hand's side (camera frame of the hand's side)."""
    ws = h.ws
    lat = (-0.12 if rng.random() < cross else 0.0, ws.lateral_range[1])
    p = ws.sample_point(rng, lateral=lat, height=height)
    return p * MIRROR_X if h.side == "left" else p


def _activity(h: HandScript, rng: np.random.Generator, name: str) -> None:
    """One random everyday activity (a chain of primitives) for one hand."""
    if name == "pick_place":
        obj, dest = _own_side_point(h, rng, (0.02, 0.06)), _own_side_point(h, rng, (0.02, 0.06))
        h.reach(obj, anchor="grasp").grasp(rng.uniform(0.45, 0.9)).lift().move(
            dest + 0.08 * h.ws.up, anchor="grasp"
        )
        h.place(dest, anchor="grasp").release()
    elif name == "pinch_pick":
        obj, dest = _own_side_point(h, rng, (0.0, 0.02)), _own_side_point(h, rng, (0.0, 0.02))
        h.reach(obj, anchor="pinch").pinch().lift().move(dest + 0.06 * h.ws.up, anchor="pinch").place(
            dest, anchor="pinch"
        ).release()
    elif name == "inspect":
        obj = _own_side_point(h, rng, (0.02, 0.06))
        h.reach(obj, anchor="grasp").grasp(rng.uniform(0.5, 0.9)).lift(rng.uniform(0.1, 0.2))
        a = float(rng.uniform(50, 110))
        h.rotate(a).idle(rng.uniform(0.3, 0.8)).rotate(-a).place(obj, anchor="grasp").release()
    elif name == "point":
        h.point(_own_side_point(h, rng, (0.0, 0.03), cross=0.5))
    elif name == "wave":
        h.wave()
    elif name == "rotate":
        h.reach(_own_side_point(h, rng, (0.08, 0.2)), shape="relaxed")
        a = float(rng.uniform(40, 120))
        h.rotate(a).idle(rng.uniform(0.2, 0.6)).rotate(-a * rng.uniform(0.7, 1.0))
    elif name == "flex":
        h.reach(_own_side_point(h, rng, (0.08, 0.2)), shape="open").flex()
    elif name == "push":
        obj = _own_side_point(h, rng, (0.03, 0.08))
        h.reach(obj, shape="open").push()
        h.release()
    elif name == "open_close":
        for _ in range(int(rng.integers(1, 3))):
            h.close().idle(rng.uniform(0.2, 0.5)).open(spread=bool(rng.random() < 0.5))
    elif name == "idle":
        h.idle(rng.uniform(0.8, 2.0))
    else:
        raise InputError("sample_sequence", "activity", f"one of {ACTIVITIES}", repr(name))
    if rng.random() < 0.3:
        h.go_home()


#: everyday chains of primitives drawn by ``sample_sequence`` when no primitive list is given
ACTIVITIES = (
    "pick_place",
    "pinch_pick",
    "inspect",
    "point",
    "wave",
    "rotate",
    "flex",
    "push",
    "open_close",
    "idle",
)
_ACTIVITY_WEIGHTS = np.array([3, 2, 1.5, 1, 1, 1, 1, 1, 1, 0.7])


def _primitive(h: HandScript, rng: np.random.Generator, name: str) -> None:
    """One primitive with random parameters (for ``sample_sequence(primitives=...)``)."""
    if name == "reach":
        h.reach(_own_side_point(h, rng, (0.02, 0.2)), shape=str(rng.choice(["preshape", "open", "relaxed"])))
    elif name == "grasp":
        h.grasp(rng.uniform(0.4, 1.0))
    elif name == "release":
        h.release()
    elif name == "pinch":
        h.pinch()
    elif name == "point":
        h.point(_own_side_point(h, rng, (0.0, 0.03), cross=0.5))
    elif name == "wave":
        h.wave()
    elif name == "rotate":
        h.rotate()
    elif name == "flex":
        h.flex()
    elif name == "open":
        h.open(spread=bool(rng.random() < 0.5))
    elif name == "close":
        h.close()
    elif name == "lift":
        if h.ws.to_table(h.pos)[2] > 0.3:
            h.reach(_own_side_point(h, rng, (0.02, 0.06)))
        h.lift()
    elif name == "move":
        h.move(_own_side_point(h, rng, (0.04, 0.2)))
    elif name == "place":
        h.place(_own_side_point(h, rng, (0.02, 0.05)))
    elif name == "push":
        h.push()
    elif name == "idle":
        h.idle()
    else:
        raise InputError(
            "sample_sequence", "primitives", f"names from {SINGLE_PRIMITIVES} (and 'clap')", repr(name)
        )


def _check_hands(hands) -> tuple[str, ...]:
    hands = (hands,) if isinstance(hands, str) else tuple(hands)
    if not hands or len(set(hands)) != len(hands):
        raise InputError(
            "sample_sequence", "hands", "('left',), ('right',) or ('left', 'right')", repr(hands)
        )
    for s in hands:
        check_side(s)
    return hands


def sample_labelled_sequence(
    rng: np.random.Generator,
    seconds: float,
    fps: float = 15.0,
    hands: Sequence[str] = ("right",),
    primitives: Sequence[str] | None = None,
    workspace: Workspace | None = None,
    noise: bool = True,
) -> tuple[dict[str, HandMotion], dict[str, MotionLabels]]:
    """A random motion of ``seconds`` (exactly round(seconds * fps) frames) for each of ``hands``, with
    labels. ``primitives``: draw only these primitives (random parameters) instead of everyday activities.
    For two hands, scenes are symmetric (clap, lifting a box together) or each hand acts on its own, one
    sometimes resting."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise InputError("sample_sequence", "seconds", "a positive duration", repr(seconds))
    hands = _check_hands(hands)
    if primitives is not None:
        primitives = tuple(primitives)
        bad = [p for p in primitives if p not in PRIMITIVES]
        if bad or not primitives:
            raise InputError(
                "sample_sequence",
                "primitives",
                f"a non-empty list of names from {PRIMITIVES}",
                repr(bad or primitives),
            )
        if primitives == ("clap",) and len(hands) == 1:
            raise InputError(
                "sample_sequence",
                "primitives",
                "a one-hand primitive for one hand ('clap' needs two)",
                "('clap',)",
            )
    T = int(round(seconds * fps))
    if T < 2:
        raise InputError("sample_sequence", "seconds", f"at least 2 frames at {fps} fps", repr(seconds))
    ws = workspace or Workspace.random(rng)
    tempo = float(rng.uniform(0.75, 1.3))
    if len(hands) == 2:
        script = BimanualScript(rng, fps, ws, tempo)
        while min(h.num_frames for h in script.hands.values()) < T:
            _bimanual_step(script, rng, primitives)
        motions, labels = script.build(noise, T)
        return motions, labels
    h = HandScript(hands[0], rng, fps, workspace=ws, tempo=tempo)
    while h.num_frames < T:
        _single_step(h, rng, primitives)
    m, lab = h.build(noise, T)
    return {hands[0]: m}, {hands[0]: lab}


def _single_step(h: HandScript, rng: np.random.Generator, primitives: tuple[str, ...] | None) -> None:
    if primitives is None:
        _activity(h, rng, str(rng.choice(ACTIVITIES, p=_ACTIVITY_WEIGHTS / _ACTIVITY_WEIGHTS.sum())))
    else:
        singles = [p for p in primitives if p != "clap"]
        _primitive(h, rng, str(rng.choice(singles)))


def _bimanual_step(
    script: BimanualScript, rng: np.random.Generator, primitives: tuple[str, ...] | None
) -> None:
    if primitives is not None:
        if "clap" in primitives and (len(primitives) == 1 or rng.random() < 1.0 / len(primitives)):
            script.clap()
            return
        singles = [p for p in primitives if p != "clap"]
        for h in script.hands.values():
            _primitive(h, rng, str(rng.choice(singles)))
        script.sync()
        return
    u = rng.random()
    if u < 0.15:
        script.clap()
    elif u < 0.3:
        script.together()
    elif u < 0.55:  # one hand works, the other rests
        active = script.hands[str(rng.choice(["left", "right"]))]
        _activity(
            active,
            rng,
            str(rng.choice(ACTIVITIES[:-1], p=_ACTIVITY_WEIGHTS[:-1] / _ACTIVITY_WEIGHTS[:-1].sum())),
        )
        script.sync()
    else:  # both busy with their own things
        for h in script.hands.values():
            _activity(h, rng, str(rng.choice(ACTIVITIES, p=_ACTIVITY_WEIGHTS / _ACTIVITY_WEIGHTS.sum())))
        script.sync()


def sample_sequence(
    rng: np.random.Generator,
    seconds: float,
    fps: float = 15.0,
    hands: Sequence[str] = ("right",),
    primitives: Sequence[str] | None = None,
    workspace: Workspace | None = None,
    noise: bool = True,
) -> dict[str, HandMotion]:
    """``sample_labelled_sequence`` without the labels: {side: HandMotion}."""
    return sample_labelled_sequence(rng, seconds, fps, hands, primitives, workspace, noise)[0]


def generate_dataset(
    n_sequences: int, seconds: float = 4.0, seed: int = 0, fps: float = 15.0, bimanual_prob: float = 0.4
) -> list[HandMotion]:
    """``n_sequences`` one-hand motions for tokenizer training, left and right, deterministic given ``seed``
    (sequence i depends only on (seed, i), so a longer dataset starts with the shorter one). A share
    ``bimanual_prob`` comes from two-hand scenes (one of the two hands is kept)."""
    if int(n_sequences) != n_sequences or n_sequences < 0:
        raise InputError("generate_dataset", "n_sequences", "a non-negative integer", repr(n_sequences))
    out = []
    for i in range(int(n_sequences)):
        rng = np.random.default_rng([int(seed), i])
        side = "right" if rng.random() < 0.5 else "left"
        if rng.random() < bimanual_prob:
            motions = sample_sequence(rng, seconds, fps, ("left", "right"))
        else:
            motions = sample_sequence(rng, seconds, fps, (side,))
        out.append(motions[side])
    return out
