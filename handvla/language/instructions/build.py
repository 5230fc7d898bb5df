"""Instruction samples from annotated stores: candidates, rule-based template filling, the manifest.

A sample refers to motion by reference, never by value: (dataset dir, episode, start_s, end_s, hands) plus
the history window for prediction; the motion is read and tokenized at training time. Candidates per clip
and hand mode ('both' when the clip's annotation has text for both hands, then each hand):
- generation:  the whole clip (clip instruction) and every 1 s window (per-second instruction);
  a store without annotations falls back to the episode's own task for one-clip episodes;
- translation: the same spans; the answer is the instruction or a description (clip summary / per-second
  description), as the template asks;
- prediction:  every whole-second point t of the clip with a history of ``history_s`` before it and a
  target of ``future_s`` after it, both inside the clip; with a goal (the clip instruction) when the clip
  is annotated and the template draws one.
Spans of generation and translation cover whole seconds (a clip's span is its whole-second part) so that
they line up with the 1 s motion-token windows. ``image_s`` is the time of the frame the prompt's image
shows: the start of the target span. A store without video (built with ``video: false``) gets the
motion-only templates: prompts without ``<image>`` and ``image_s`` = None.

The manifest (``.jsonl`` or ``.parquet``) is written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ConfigDict, Field, model_validator
from tqdm import tqdm

from handvla.atomic import atomic_write_parquet, atomic_write_text, file_target
from handvla.config import ConfigModel
from handvla.data.store import EpisodeStore
from handvla.errors import ConfigError, InputError
from handvla.language.annotate.base import ClipAnnotation, clip_id, stable_hash
from handvla.language.annotate.segments import SegmentConfig, segment_episode
from handvla.language.annotate.table import ANNOTATIONS_DIR, load_annotations
from handvla.language.instructions.sampling import InstructionBalanceConfig, balanced_sample
from handvla.language.instructions.templates import TASK_TYPES, Template, fill, templates_for

SPAN_KINDS = ("clip", "second", "task")
HAND_CODES = ("both", "left", "right")


class InstructionBuildConfig(ConfigModel):
    """Which instruction candidates to make."""

    model_config = ConfigDict(frozen=True)

    history_s: tuple[int, ...] = (1, 2)  # prediction: history lengths (whole seconds)
    future_s: tuple[int, ...] = (1, 2)  # prediction: target lengths (whole seconds)
    goal_prob: float = 0.5  # prediction: share of samples stating the goal (when the clip has one)
    backends: tuple[str, ...] | None = None  # annotation tables to read, in order of preference
    segmentation: SegmentConfig = Field(default_factory=SegmentConfig)  # for episodes without annotations

    @model_validator(mode="after")
    def _check(self) -> InstructionBuildConfig:
        for name in ("history_s", "future_s"):
            v = getattr(self, name)
            if not v or any(int(x) != x or x < 1 for x in v):
                raise ConfigError(
                    f"InstructionBuildConfig.{name}: expected whole numbers of seconds >= 1, got {v!r}"
                )
        if not 0 <= self.goal_prob <= 1:
            raise ConfigError(f"InstructionBuildConfig.goal_prob: expected 0..1, got {self.goal_prob!r}")
        return self


@dataclass
class DatasetInfo:
    root: Path
    fps: float
    keys: list[str]
    sources: list[str]
    tasks: list[list[str]]
    annotations: dict[str, ClipAnnotation]
    video: bool = True  # False: a motion-only store (no camera video): prompts without <image>


@dataclass
class CandidatePool:
    """All candidates, column-wise (row i = one candidate)."""

    datasets: list[DatasetInfo]
    sources: list[str]
    cols: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.cols["task"])

    def strata(self) -> dict[tuple[str, str], np.ndarray]:
        out = {}
        src, task = self.cols["source"], self.cols["task"]
        for si, s in enumerate(self.sources):
            for ti, t in enumerate(TASK_TYPES):
                idx = np.flatnonzero((src == si) & (task == ti))
                if len(idx):
                    out[(s, t)] = idx
        return out

    def counts(self) -> dict[str, Any]:
        return {
            "candidates": len(self),
            "by_task_type": {t: int((self.cols["task"] == i).sum()) for i, t in enumerate(TASK_TYPES)},
            "by_source": {s: int((self.cols["source"] == i).sum()) for i, s in enumerate(self.sources)},
        }


def _clips_of_store(
    store, anns: dict[str, ClipAnnotation], seg: SegmentConfig
) -> dict[int, list[tuple[int, int, ClipAnnotation | None]]]:
    """{episode: [(start_frame, end_frame, annotation or None)]}: the annotated clips, or the default cut."""
    by_key: dict[str, list[ClipAnnotation]] = {}
    for a in anns.values():
        by_key.setdefault(a.episode_key, []).append(a)
    out = {}
    for k in range(len(store)):
        row = store.meta(k)
        got = sorted(by_key.get(row["key"], []), key=lambda a: a.start_frame)
        if got:
            out[k] = [(a.start_frame, a.end_frame, a) for a in got]
        else:
            out[k] = [
                (c.start_frame, c.end_frame, None)
                for c in segment_episode(int(row["length"]), store.fps, k, seg)
            ]
    return out


_BASE_COLS = ("dataset", "episode", "source", "hands", "clip_start", "clip_end")


def _add(
    rows: dict[str, list],
    base: tuple,
    task: int,
    span: int,
    window: int,
    start: float,
    end: float,
    hist: float = math.nan,
) -> None:
    """Append one candidate: ``base`` = (dataset, episode, source, hands, clip start, clip end frames)."""
    for col, v in zip(_BASE_COLS, base):
        rows[col].append(v)
    for col, v in (
        ("task", task),
        ("span", span),
        ("window", window),
        ("start", start),
        ("end", end),
        ("hist", hist),
    ):
        rows[col].append(v)


def collect_candidates(dirs: list[str | Path], config: InstructionBuildConfig | None = None) -> CandidatePool:
    """Candidates of every store in ``dirs`` (see the module doc)."""

    cfg = config or InstructionBuildConfig()
    rows: dict[str, list] = {
        c: []
        for c in (
            "dataset",
            "episode",
            "source",
            "task",
            "hands",
            "span",
            "window",
            "clip_start",
            "clip_end",
            "start",
            "end",
            "hist",
        )
    }
    datasets: list[DatasetInfo] = []
    sources: list[str] = []
    src_id: dict[str, int] = {}
    for di, d in enumerate(dirs):
        root = Path(d)
        store = EpisodeStore(root)
        anns_dir = root / ANNOTATIONS_DIR
        backends = list(cfg.backends) if cfg.backends else None
        anns = load_annotations(root, backends) if (backends or anns_dir.is_dir()) else {}
        fps = float(store.fps)
        info = DatasetInfo(root.resolve(), fps, [], [], [], anns, video=store.camera is not None)
        datasets.append(info)
        clips = _clips_of_store(store, anns, cfg.segmentation)
        for k in range(len(store)):
            row = store.meta(k)
            source = row["source"] or root.name
            info.keys.append(row["key"])
            info.sources.append(source)
            info.tasks.append(list(row["tasks"]))
            if source not in src_id:
                src_id[source] = len(sources)
                sources.append(source)
            si = src_id[source]
            ep_hands = [h for h in ("left", "right") if h in (row["hands"] or [])]
            ep_clips = clips[k]
            for a, b, ann in ep_clips:
                t0 = a / fps
                whole = math.floor((b - a) / fps + 1e-6)
                if ann is not None:
                    modes = ann.hand_keys
                else:
                    modes = (["both"] if len(ep_hands) == 2 else []) + ep_hands
                for mode in modes:
                    base = (di, k, si, HAND_CODES.index(mode), a, b)
                    if ann is not None:
                        if whole >= 1:
                            for task in (0, 1):
                                _add(rows, base, task, 0, -1, t0, t0 + whole)
                        for wi, sec in enumerate(ann.seconds):
                            fa, fb = round(sec.start_s * fps), round(sec.end_s * fps)  # back to exact frames
                            if fb - fa == round(fps):  # whole 1 s windows only
                                for task in (0, 1):
                                    _add(rows, base, task, 1, wi, fa / fps, fb / fps)
                    elif len(ep_clips) == 1 and whole >= 1 and info.tasks[-1] and info.tasks[-1][0].strip():
                        _add(
                            rows, base, 0, 2, -1, t0, t0 + whole
                        )  # the episode's task describes its only clip
                    for h in cfg.history_s:
                        for n in cfg.future_s:
                            for t in range(int(h), int(whole - n) + 1):
                                _add(rows, base, 2, 0, -1, t0 + t, t0 + t + n, t0 + t - h)
    dtypes = {"start": np.float64, "end": np.float64, "hist": np.float64}
    cols = {c: np.asarray(v, dtypes.get(c, np.int64)) for c, v in rows.items()}
    return CandidatePool(datasets, sources, cols)


def _text(ann: ClipAnnotation, mode: str, span: int, window: int, kind: str) -> str:
    if span == 0:
        entry = ann.clip[mode]
        return entry["instruction"] if kind == "instruction" else entry["summary"]
    entry = ann.seconds[window].text[mode]
    return entry["instruction"] if kind == "instruction" else entry["description"]


def make_sample(pool: CandidatePool, i: int, rng: random.Random, goal_prob: float = 0.5) -> dict[str, Any]:
    """Candidate ``i`` with a template drawn by ``rng`` and filled: one manifest record."""
    c = {k: v[i] for k, v in pool.cols.items()}
    ds = pool.datasets[int(c["dataset"])]
    k = int(c["episode"])
    key = ds.keys[k]
    task = TASK_TYPES[int(c["task"])]
    mode = HAND_CODES[int(c["hands"])]
    span = int(c["span"])
    start, end = float(c["start"]), float(c["end"])
    seconds = round(end - start, 6)
    cid = clip_id(key, int(c["clip_start"]), int(c["clip_end"]))
    ann = ds.annotations.get(cid)
    text_source = ann.backend if ann is not None else ("task" if span == 2 else None)
    answer = None
    hist = None if math.isnan(float(c["hist"])) else float(c["hist"])
    image = ds.video
    if task == "generation":
        instr = _text(ann, mode, span, int(c["window"]), "instruction") if span != 2 else ds.tasks[k][0]
        tpl = _pick(rng, templates_for(task, image=image))
        prompt = fill(tpl, mode, seconds, ds.fps, task=instr)
    elif task == "translation":
        tpl = _pick(rng, templates_for(task, image=image))
        answer = _text(ann, mode, span, int(c["window"]), tpl.answer)
        prompt = fill(tpl, mode, seconds, ds.fps)
    else:
        goal = ann.clip[mode]["instruction"] if ann is not None else None
        use_goal = goal is not None and rng.random() < goal_prob
        tpl = _pick(rng, templates_for(task, goal=use_goal, image=image))
        prompt = fill(tpl, mode, seconds, ds.fps, goal=goal if use_goal else None, history_s=start - hist)
        if not use_goal:
            text_source = None
    steps = int(round(seconds * ds.fps))
    rec = {
        "dataset": str(ds.root),
        "source": pool.sources[int(c["source"])],
        "episode_index": k,
        "episode_key": key,
        "clip_id": cid,
        "start_s": round(start, 6),
        "end_s": round(end, 6),
        "duration_s": seconds,
        "steps": steps,
        "fps": ds.fps,
        "image_s": round(start, 6) if image else None,  # None: a motion-only sample (no <image>)
        "hands": mode,
        "task_type": task,
        "template_id": tpl.id,
        "prompt": prompt,
        "answer_type": "text" if task == "translation" else "motion",
        "answer": answer,
        "history_start_s": None if hist is None else round(hist, 6),
        "history_end_s": None if hist is None else round(start, 6),
        "span": SPAN_KINDS[span],
        "text_source": text_source,
    }
    rec["id"] = f"{stable_hash(rec['dataset'], cid, task, mode, start, end, hist, tpl.id, prompt):016x}"
    return rec


def _pick(rng: random.Random, templates: list[Template]) -> Template:
    return templates[rng.randrange(len(templates))]


def manifest_target(path: str | Path) -> Path:
    """``path`` checked as a manifest to write: a .jsonl / .parquet file name, not an existing folder."""
    path = Path(path)
    if path.suffix not in (".parquet", ".jsonl", ".json"):
        raise ConfigError(f"--out {path}: expected a .jsonl or .parquet file name")
    return file_target(path)


def write_manifest(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the samples as JSONL (one per line) or parquet (by the extension), atomically."""
    path = manifest_target(path)
    if path.suffix == ".parquet":
        atomic_write_parquet(path, pa.Table.from_pylist(records) if records else pa.table({}))
    else:
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "an instruction manifest", "missing")
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{i}", None, "one JSON sample per line", str(e)) from None
    return out


def build_instructions(
    dirs: list[str | Path],
    out: str | Path | None,
    size: int | None = None,
    seed: int = 0,
    balance: InstructionBalanceConfig | None = None,
    config: InstructionBuildConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Collect candidates, pick a balanced subset of ``size`` (every candidate once when None), fill the
    templates and write the manifest to ``out`` (not written when None). Returns a report."""

    cfg = config or InstructionBuildConfig()
    if out is not None:
        manifest_target(out)  # before any work
    t0 = time.perf_counter()
    pool = collect_candidates(dirs, cfg)
    t1 = time.perf_counter()
    if size is None:
        sel = np.arange(len(pool))
        bal_report: dict[str, Any] = {"balanced": False}
    else:
        bcfg = balance or InstructionBalanceConfig(size=int(size), seed=seed)
        if bcfg.size != size:
            bcfg = bcfg.replace(size=int(size), seed=seed)
        sel, bal_report = balanced_sample(pool.strata(), bcfg)
        bal_report["balanced"] = True
    rng = random.Random(stable_hash("instructions", seed))
    records = []
    for i in tqdm(sel.tolist(), desc="instructions", unit="sample", disable=not progress):
        records.append(make_sample(pool, i, rng, cfg.goal_prob))
    t2 = time.perf_counter()
    if out is not None:
        write_manifest(records, out)
    t3 = time.perf_counter()
    tt = {t: sum(1 for r in records if r["task_type"] == t) for t in TASK_TYPES}
    n = max(1, len(records))
    return {
        "out": None if out is None else str(out),
        "datasets": [str(d.root) for d in pool.datasets],
        "pool": pool.counts(),
        "samples": len(records),
        "task_types": {t: {"count": c, "share": round(c / n, 4)} for t, c in tt.items()},
        "hands": {h: sum(1 for r in records if r["hands"] == h) for h in HAND_CODES},
        "templates_used": {
            t: len({r["template_id"] for r in records if r["task_type"] == t}) for t in TASK_TYPES
        },
        "balance": bal_report,
        "seconds": {"collect": round(t1 - t0, 3), "fill": round(t2 - t1, 3), "write": round(t3 - t2, 3)},
        "samples_per_s": round(len(records) / max(t2 - t1, 1e-9), 1),
    }
