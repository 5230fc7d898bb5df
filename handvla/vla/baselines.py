"""Baselines that ignore the input, for judging a motion VLA's HandWorld scores (``handvla.vla.evaluate``).

A target accuracy of 0.63 means nothing until it is compared with what a model that never looks at the
image (or not even at the instruction) gets on the same pairs: on a table where the target is usually the
object in front of the acting hand, a constant final wrist position already scores well. Everything here is
fitted on TRAINING episodes (`load_training_reference`) and queried per evaluated (episode, hand):

- ``constant``: the mean final wrist position (camera frame, metres) of the training episodes' acting
  hands of that side, at the evaluated length (frame ``min(n, T) - 1``, or the last valid frame before it);
- ``template``: the same mean over training episodes of the same instruction template (the instruction
  with its object, direction and hand words removed: `instruction_template`), the constant when the
  template was never seen in training;
- ``retrieval``: the final wrist of the training episode whose instruction is nearest by token-set
  Jaccard similarity (`retrieve_nearest`; ties go to the lowest index), same hand side.

Also here: the words of motion translation (`names_object`, `direction_words`) and the constant-velocity
continuation of contextual prediction (`constant_velocity`).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from handvla.data.store import EpisodeStore
from handvla.errors import InputError
from handvla.hand.motion import HandMotion
from handvla.synth.handworld.episodes import DIRECTIONS, TEMPLATES
from handvla.synth.handworld.scene import PALETTE, SHAPE_NOUNS
from handvla.vla.data import in_split  # the train/validation split pretraining used

#: what pretraining writes one folder above ``final/`` (``handvla.vla.pretrain.run_pretrain``)
PRETRAIN_CONFIG_NAME = "pretrain_config.json"

_WORD = re.compile(r"[a-z0-9]+")
#: "left hand", "right hands", "both hands": hand words, never directions
_HAND_PHRASE = re.compile(r"\b(?:left|right|both)\s+hands?\b")
#: how HandWorld says its directions (``handvla.synth.handworld.episodes.DIRECTIONS``), as patterns
_DIRECTION_PATTERNS: dict[str, re.Pattern] = {
    "left": re.compile(r"\bleft\b"),
    "right": re.compile(r"\bright\b"),
    "forward": re.compile(r"\bforwards?\b|\baway from you\b"),
    "back": re.compile(r"\bback(?:wards?)?\b|\btowards you\b|\bcloser to you\b"),
}


# ---- text ----------------------------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    """Lower case, single spaces, no trailing full stop."""
    return " ".join(str(text).lower().split()).rstrip(".").strip()


def text_tokens(text: str) -> frozenset[str]:
    """The set of lower-case word tokens ([a-z0-9]+) of ``text``."""
    return frozenset(_WORD.findall(str(text).lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a & b| / |a | b| of two token sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _template_pattern(template: str) -> re.Pattern:
    parts = []
    for literal, fld, _spec, _conv in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if fld is not None:
            parts.append(r".+?")
    return re.compile("".join(parts))


_PATTERN_CACHE: dict[str, re.Pattern] = {}


def instruction_template(instruction: str, ground_truth: dict[str, Any] | None = None) -> str:
    """The instruction with its object / direction / hand words removed: for a HandWorld episode
    (``ground_truth["task"]`` one of ``TEMPLATES``) the generator's template, as ``"task: template"``
    (e.g. ``"push: push the {obj} {dir}"``); otherwise the normalised text with hand phrases, direction
    phrases, colour words and object nouns replaced by ``{hand}``, ``{dir}``, ``{colour}``, ``{noun}``."""

    text = normalise_text(instruction)
    task = (ground_truth or {}).get("task")
    if task in TEMPLATES:
        for t in TEMPLATES[task]:
            pat = _PATTERN_CACHE.setdefault(t, _template_pattern(t))
            if pat.fullmatch(text):
                return f"{task}: {t}"
    out = re.sub(r"\b(?:left|right)(\s+hands?)\b", r"{hand}\1", text)
    phrases = sorted({p for _, words in DIRECTIONS.values() for p in words}, key=len, reverse=True)
    for p in phrases:
        out = re.sub(rf"\b{re.escape(p)}\b", "{dir}", out)
    out = re.sub(r"\b(?:" + "|".join(map(re.escape, PALETTE)) + r")\b", "{colour}", out)
    nouns = sorted(set(SHAPE_NOUNS.values()), key=len, reverse=True)
    out = re.sub(r"\b(?:" + "|".join(map(re.escape, nouns)) + r")s?\b", "{noun}", out)
    return out


def names_object(text: str, colour: str, noun: str) -> bool:
    """True when ``text`` holds both the colour word and the noun (or its plural) as whole words."""
    words = text_tokens(text)
    noun = noun.lower()
    return colour.lower() in words and (noun in words or f"{noun}s" in words)


def direction_words(text: str) -> set[str]:
    """The HandWorld directions ("left", "right", "forward", "back") ``text`` names; "left hand" and
    "right hand" are hand words, not directions."""
    t = _HAND_PHRASE.sub(" ", normalise_text(text))
    return {name for name, pat in _DIRECTION_PATTERNS.items() if pat.search(t)}


def direction_hit(text: str, direction: str) -> bool:
    """True when ``text`` names ``direction`` and no other direction."""
    return direction_words(text) == {direction}


# ---- training reference --------------------------------------------------------------------------------


@dataclass
class TrainingEpisode:
    """What the input-free baselines need of one training episode: its instruction (and template), the
    acting hands' wrist tracks (camera frame, metres) and validity, the target objects' names, the
    task's direction (None without one) and the camera rig that filmed it (None when unknown)."""

    store: str
    index: int
    key: str
    instruction: str
    template: str
    acting: tuple[str, ...]
    wrist: dict[str, np.ndarray]  # side -> (T, 3) camera frame, metres
    valid: dict[str, np.ndarray]  # side -> (T,) bool
    objects: list[str] = field(default_factory=list)  # "red cube", per target
    direction: str | None = None
    tokens: frozenset[str] = frozenset()
    rig: str | None = None


def final_wrist_at(wrist: np.ndarray, valid: np.ndarray, num_frames: int) -> np.ndarray | None:
    """The wrist (3,) at frame ``min(num_frames, T) - 1``, or at the last valid frame before it; None when
    no frame up to there is valid."""
    t = min(int(num_frames), len(wrist)) - 1
    if t < 0:
        return None
    ok = np.flatnonzero(np.asarray(valid[: t + 1], bool))
    return None if len(ok) == 0 else np.asarray(wrist[int(ok[-1])], np.float64)


#: the input-free baselines `handvla.vla.evaluate` scores from a `TrainingReference`, in report order
INPUT_FREE_BASELINES = ("constant", "template", "rig_template", "retrieval")


class TrainingReference:
    """Training episodes and the input-free predictions made from them (cached per query)."""

    def __init__(
        self, entries: Sequence[TrainingEpisode], stores: Sequence[str] = (), val_fraction: float = 0.0
    ):
        self.entries = list(entries)
        self.stores = [str(s) for s in stores]
        self.val_fraction = float(val_fraction)
        self._means: dict[tuple, np.ndarray | None] = {}  # (template or None, rig or None, side, frames)

    def __len__(self) -> int:
        return len(self.entries)

    def without(self, keys: Iterable[str]) -> TrainingReference:
        """A copy without the episodes of these keys (an evaluated episode never predicts itself)."""
        drop = set(keys)
        return TrainingReference(
            [e for e in self.entries if e.key not in drop], self.stores, self.val_fraction
        )

    def _mean_final(self, template: str | None, rig: str | None, side: str, n: int) -> np.ndarray | None:
        """Mean final wrist (3,) of ``side`` at frame ``n`` over the training episodes where it acts, of
        ``template`` and ``rig`` (None: any), cached; None when there is no such episode."""
        key = (template, rig, side, int(n))
        if key not in self._means:
            ps = [
                final_wrist_at(e.wrist[side], e.valid[side], n)
                for e in self.entries
                if side in e.acting
                and (template is None or e.template == template)
                and (rig is None or e.rig == rig)
            ]
            ps = [p for p in ps if p is not None]
            self._means[key] = np.mean(ps, axis=0) if ps else None
        return self._means[key]

    def constant(self, side: str, num_frames: int) -> np.ndarray | None:
        """Mean final wrist (3,) of ``side`` over the training episodes where it acts, at the evaluated
        length ``num_frames``; None when no training episode has that hand acting."""
        return self._mean_final(None, None, side, num_frames)

    def template_mean(self, template: str, side: str, num_frames: int) -> tuple[np.ndarray | None, bool]:
        """(mean final wrist of the training episodes of ``template`` with ``side`` acting, True), or
        (`constant`, False) when the template (with that hand) was never seen."""
        p = self._mean_final(template, None, side, num_frames)
        return (p, True) if p is not None else (self.constant(side, num_frames), False)

    def rig_template_mean(
        self, template: str, rig: str | None, side: str, num_frames: int
    ) -> tuple[np.ndarray | None, bool]:
        """(mean final wrist of the training episodes of ``template`` filmed by camera ``rig`` with ``side``
        acting, True), or (`template_mean`, False) when that template and hand were never filmed by that rig
        (an unseen rig, or ``rig`` None). It knows what the image says about the camera (where the table
        sits in its frame) but nothing of the scene's layout: a model that beats ``template`` only by as
        much as this baseline does may have learnt the camera, not the objects."""
        p = None if rig is None else self._mean_final(template, str(rig), side, num_frames)
        return (p, True) if p is not None else (self.template_mean(template, side, num_frames)[0], False)

    def retrieve_nearest(self, text: str, side: str | None = None) -> int | None:
        """Index (into ``entries``) of the training episode whose instruction has the highest token-set
        Jaccard similarity to ``text``, among those where ``side`` acts (any when None); ties go to the
        lowest index. None when there is no candidate."""
        q = text_tokens(text)
        best, best_s = None, -1.0
        for i, e in enumerate(self.entries):
            if side is not None and side not in e.acting:
                continue
            s = jaccard(q, e.tokens)
            if s > best_s:
                best, best_s = i, s
        return best

    def retrieval(self, text: str, side: str, num_frames: int) -> np.ndarray | None:
        """Final wrist (3,) of ``side`` in the nearest-instruction training episode (`retrieve_nearest`)."""
        i = self.retrieve_nearest(text, side)
        if i is None:
            return None
        e = self.entries[i]
        return final_wrist_at(e.wrist[side], e.valid[side], num_frames)

    def constant_text(self) -> str:
        """The input-free translation: the most frequent training target object ("the red cube", ties by
        first occurrence) and the most frequent direction phrase ("" when none)."""

        objs = Counter(o for e in self.entries for o in e.objects)
        dirs = Counter(e.direction for e in self.entries if e.direction in DIRECTIONS)
        words = []
        if objs:
            words.append(f"the {objs.most_common(1)[0][0]}")
        if dirs:
            words.append(DIRECTIONS[dirs.most_common(1)[0][0]][1][0])
        return " ".join(words)


def training_episode(store: str, k: int, ep) -> TrainingEpisode | None:
    """The `TrainingEpisode` of a loaded episode; None without an instruction or acting hands."""
    gt = ep.ground_truth or {}
    if not ep.tasks or not ep.tasks[0].strip():
        return None
    acting = tuple(s for s in ("left", "right") if s in (gt.get("acting_hands") or []))
    if not acting:
        return None
    instr = ep.tasks[0]
    direction = (gt.get("task_params") or {}).get("direction")
    return TrainingEpisode(
        store=str(store),
        index=int(k),
        key=str(ep.key),
        instruction=instr,
        template=instruction_template(instr, gt),
        acting=acting,
        wrist={s: np.asarray(ep.hands[s].wrist_pos, np.float64) for s in acting},
        valid={s: np.asarray(ep.hands[s].valid, bool) for s in acting},
        objects=[
            f"{t['colour']} {t['noun']}" for t in gt.get("targets", []) if "colour" in t and "noun" in t
        ],
        direction=str(direction) if direction is not None else None,
        tokens=text_tokens(instr),
        rig=None if getattr(ep, "rig", None) is None else str(ep.rig),
    )


def load_training_reference(
    stores: Sequence[str | Path], val_fraction: float = 0.0, progress: bool = False
) -> TrainingReference:
    """Read the training episodes (no video) of ``stores``; with ``val_fraction`` > 0 only the episodes in
    pretraining's training split (``handvla.vla.data``'s hash split by episode key). Episodes without an
    instruction or acting hands (ground truth) are left out."""


    if not stores:
        raise InputError("training reference", "train_stores", "at least one store folder", "none")
    entries = []
    for path in stores:
        st = EpisodeStore(path)
        for k in tqdm(range(len(st)), desc=f"train {Path(path).name}", unit="ep", disable=not progress):
            if val_fraction > 0 and not in_split(st.meta(k)["key"], val_fraction, "train"):
                continue
            e = training_episode(str(path), k, st.load_episode(k, with_video=False))
            if e is not None:
                entries.append(e)
    return TrainingReference(entries, [str(s) for s in stores], val_fraction)


def checkpoint_training_stores(ckpt: str | Path) -> tuple[list[str], float, str | None]:
    """The training stores a pretrained checkpoint was made from: ``data.stores`` and ``data.val_fraction``
    of ``pretrain_config.json`` in the checkpoint folder or one folder above it (``OUTPUT_DIR/final``).
    Returns (stores, val_fraction, None), or ([], 0.0, why not)."""
    ckpt = Path(ckpt)
    cands = [ckpt / PRETRAIN_CONFIG_NAME, ckpt.parent / PRETRAIN_CONFIG_NAME]
    path = next((p for p in cands if p.is_file()), None)
    if path is None:
        return [], 0.0, f"{ckpt}: no {PRETRAIN_CONFIG_NAME} here or one folder up (give --train-store)"
    try:
        data = json.loads(path.read_text()).get("data") or {}
    except (OSError, ValueError, AttributeError) as e:
        return [], 0.0, f"{path}: unreadable ({type(e).__name__}); give --train-store"
    stores = [str(s) for s in data.get("stores") or []]
    if not stores:
        why = "an instruction manifest" if data.get("manifest") else "no stores"
        return [], 0.0, f"{path}: field 'data.stores': the run used {why}; give --train-store"
    found, missing = [], []
    for s in stores:
        p = Path(s)
        alt = path.parent / s
        if p.is_dir():
            found.append(str(p))
        elif not p.is_absolute() and alt.is_dir():
            found.append(str(alt))
        else:
            missing.append(s)
    if missing:
        return [], 0.0, f"{path}: field 'data.stores': {missing[0]} not found; give --train-store"
    return found, float(data.get("val_fraction") or 0.0), None


# ---- contextual prediction ----------------------------------------------------------------------------


def constant_velocity(history: HandMotion, num_frames: int, hold: bool = False) -> HandMotion:
    """The ``num_frames`` frames after ``history``: the wrist keeps the velocity between the history's last
    two valid frames (metres per frame; 0 with ``hold`` or fewer than two consecutive valid frames), the
    wrist orientation and finger pose stay those of the last valid frame."""
    valid = np.flatnonzero(history.valid)
    if len(valid) == 0:
        raise InputError("constant_velocity", "history.valid", "at least one valid frame", "none")
    t = int(valid[-1])
    p = np.asarray(history.wrist_pos, np.float64)
    v = p[t] - p[t - 1] if (not hold and t >= 1 and history.valid[t - 1]) else np.zeros(3)
    steps = len(history) - t + np.arange(int(num_frames))  # frames from t to each future frame
    return HandMotion(
        global_orient=np.repeat(history.global_orient[t : t + 1], num_frames, 0),
        hand_pose=np.repeat(history.hand_pose[t : t + 1], num_frames, 0),
        wrist_pos=p[t] + steps[:, None] * v,
        betas=history.betas,
        side=history.side,
        fps=history.fps,
        hand_model=history.hand_model,
    )


__all__ = [
    "PRETRAIN_CONFIG_NAME",
    "TrainingEpisode",
    "TrainingReference",
    "checkpoint_training_stores",
    "constant_velocity",
    "direction_hit",
    "direction_words",
    "final_wrist_at",
    "instruction_template",
    "jaccard",
    "load_training_reference",
    "names_object",
    "normalise_text",
    "text_tokens",
    "training_episode",
]
