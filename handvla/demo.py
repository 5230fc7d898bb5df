"""The demo: the whole pipeline on the built-in world, on a CPU, in minutes.

1. HandWorld data: a training store (ego + third-person rigs), a held-out store of new scenes on the same
   rigs, and a store on a rig never seen in training (the wide phone camera).
2. The motion tokenizer, trained on built-in motion and the training store's motion, evaluated on held-out
   motion; a before/after video (truth | reconstruction).
3. The VLA (tiny preset) pretrained on the three task types with weak-perspective alignment.
4. Generation on held-out scenes with constrained decoding: valid-output rate, target accuracy, MPJPE,
   MWTE against the true motion, on the seen rigs and on the unseen rig; videos of generated motion over
   the input image.
5. ``report.html`` (videos + metrics table) and ``metrics.json``.

Every stage writes into its own folder and is skipped when its output is already there, so an
interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import field_validator

from handvla.atomic import atomic_write_json, atomic_write_text, json_default
from handvla.camera import Camera
from handvla.config import ConfigModel
from handvla.data.store import EpisodeStore
from handvla.hand.io import save_motion
from handvla.hand.render import render_motions
from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes
from handvla.tokenizer.configuration import preset
from handvla.tokenizer.data import LoadedMotion
from handvla.tokenizer.evaluation import evaluate_motions, reconstruct
from handvla.tokenizer.loading import load_tokenizer
from handvla.tokenizer.training import train
from handvla.train.trainer import TrainConfig
from handvla.vla.baselines import load_training_reference
from handvla.vla.configuration import ImagePosition
from handvla.vla.data import VLADataConfig, prepare_image
from handvla.vla.evaluate import (
    evaluate_counterfactual,
    evaluate_handworld,
    hand_mode_of,
    model_alignment,
    model_image_size,
)
from handvla.vla.generation import generate_motion
from handvla.vla.modeling import load_vla
from handvla.vla.pretrain import ModelConfig, PretrainConfig, run_pretrain
from handvla.vla.processing import hands_for_mode


class DemoConfig(ConfigModel):
    """Sizes of the demo. The defaults fit about 10 minutes on 2 CPU cores; ``quick()`` is a smoke test.
    ``handvla demo --set KEY=VALUE`` changes a field (``handvla.config.load_config``).

    The VLA recipe (chosen by the ablations of ``benchmarks/vla_learning.py``, see the README): a motion
    tokenizer with per-layer id ranges (the reference release's id arithmetic) and small codebooks
    (``tokenizer_codebook_size`` codes per residual layer, so every motion id recurs across many training
    windows and the language model can learn which image + instruction calls for it), coarse residual
    layers first in each block, the tiny preset with a 112-pixel image tile (16 visual tokens instead of
    4: objects stay visible after the canonical warp), a few hundred HandWorld episodes, and a step budget
    (``vla_max_steps``) capped by the wall clock (``vla_minutes``).
    """

    seed: int = 0
    train_episodes: int = 300
    heldout_episodes: int = 100
    unseen_rig_episodes: int = 60
    episode_seconds: float = 2.0
    image_size: tuple[int, int] = (96, 72)
    train_rigs: tuple[str, ...] = ("ego", "third")
    unseen_rig: str = "phone"
    #: 'default' = the reference-sized tokenizer (the one benchmarks/tokenizer.py measures); 'tiny' for
    #: smoke tests
    tokenizer_preset: str = "default"
    tokenizer_minutes: float = 1.5
    tokenizer_builtin_sequences: int = 96
    #: codes per residual layer (the reference release: 512); ids per layer and the block order
    tokenizer_codebook_size: int = 128
    tokenizer_id_layout: str = "per_layer"
    tokenizer_token_order: str = "layer_group_time"
    #: the VLA preset (random init; 'small' for a GPU) and the side of its square image tile in pixels
    #: (the tiny preset's own is 56)
    vla_preset: str = "tiny"
    vla_tile: int = 112
    #: cross-entropy weight per residual layer of the motion ids (coarse layers carry where the hand goes;
    #: the finest ones are close to noise at this data size); None: all 1, the reference
    vla_layer_loss_weights: tuple[float, ...] | None = (4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25)
    #: where the image's tokens stand in the prompt: 'in_prompt' (the reference) or 'after_text' (after the
    #: instruction; `HandVLAConfig.image_position`)
    vla_image_position: ImagePosition = "in_prompt"
    vla_minutes: float = 3.5
    vla_max_steps: int = 500
    vla_batch_size: int = 16
    vla_lr: float = 3e-3
    #: weak-perspective alignment of the VLA's images to the canonical camera
    align: bool = True
    #: generated seconds per held-out episode
    eval_seconds: int = 2
    videos: int = 2
    workers: int = 2

    @field_validator("image_size", "train_rigs", "vla_layer_loss_weights", mode="before")
    @classmethod
    def _comma_separated(cls, v: Any) -> Any:
        """``--set train_rigs=ego,phone``: comma-separated text is a list."""
        return [p.strip() for p in v.split(",")] if isinstance(v, str) else v

    @classmethod
    def quick(cls) -> DemoConfig:
        # the VLA stops at its 6 steps; the 2-minute budget only guards a machine busy enough to stall it
        return cls(train_episodes=6, heldout_episodes=2, unseen_rig_episodes=2, tokenizer_preset="tiny",
                   tokenizer_minutes=0.1, tokenizer_codebook_size=16, vla_tile=56,
                   tokenizer_builtin_sequences=8, vla_minutes=2.0, vla_max_steps=6, videos=1, workers=1)


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _done(path: Path) -> bool:
    return path.exists()


# ---- stages --------------------------------------------------------------------------------------------


def build_worlds(cfg: DemoConfig, out: Path, progress: bool) -> dict[str, Path]:

    w, h = cfg.image_size
    stores = {
        "train": (cfg.train_episodes, cfg.seed, cfg.train_rigs),
        "heldout": (cfg.heldout_episodes, cfg.seed + 1, cfg.train_rigs),
        "unseen_rig": (cfg.unseen_rig_episodes, cfg.seed + 2, (cfg.unseen_rig,)),
    }
    paths = {}
    for name, (n, seed, rigs) in stores.items():
        path = out / "data" / name
        hw = HandWorldConfig(width=w, height=h, seconds=cfg.episode_seconds, rigs=tuple(rigs))
        t0 = time.perf_counter()
        summary = generate_episodes(n, path, seed=seed, config=hw, workers=cfg.workers, progress=progress)
        _log(f"HandWorld '{name}': {n} episodes ({'+'.join(rigs)}) in {time.perf_counter() - t0:.1f} s "
             f"({summary.get('written', n)} new)")
        paths[name] = path
    return paths


def _store_motions(path: Path) -> list:
    """Every valid hand track of a store as HandMotion (for tokenizer training and evaluation)."""

    store = EpisodeStore(path)
    out = []
    for k in range(len(store)):
        ep = store.load_episode(k, with_video=False)
        for m in ep.hands.values():
            if m.valid.all():
                out.append(m)
    return out


def train_tokenizer(cfg: DemoConfig, out: Path, worlds: dict[str, Path], progress: bool) -> tuple[Path, dict]:
    """The motion tokenizer (the reference's layout of 128 ids per hand-second) on built-in motion + the
    training store's motion: PCA-initialised linear paths, lattice / k-means codebooks, then the decoders
    trained at a low rate for the rest of ``tokenizer_minutes`` (the recipe of benchmarks/tokenizer.py)."""

    tok_dir = out / "tokenizer"
    if not _done(tok_dir / "model.safetensors"):
        model_cfg, train_cfg = preset(cfg.tokenizer_preset)
        model_cfg.codebook_size = cfg.tokenizer_codebook_size
        model_cfg.id_layout = cfg.tokenizer_id_layout
        model_cfg.token_order = cfg.tokenizer_token_order
        # greedy codes: the VLA learns the coarse layer first, and a beam may pick a coarse code that is not
        # the nearest one (better in sum, harder to predict); every VLA result was measured on greedy ids
        model_cfg.encode_beam = 1
        train_cfg.max_minutes = cfg.tokenizer_minutes
        train_cfg.builtin_sequences = cfg.tokenizer_builtin_sequences
        train_cfg.builtin_seconds = 6.0
        train_cfg.batch_size = 16
        train_cfg.lr = 5e-5
        train_cfg.freeze_encoder = True
        # the store's tracks are plentiful (no up-weighting), and the demo scores the tokenizer on its own
        # held-out stores afterwards (no validation split inside its short budget)
        train_cfg.real_weight = 1.0
        train_cfg.val_fraction = 0.0
        train_cfg.val_builtin_sequences = 0
        # small codebooks on plentiful motion of the evaluation's own kind: they keep refining during
        # training (the default keeps them as set up: scarce real captures get copied into 4096-code
        # codebooks) and no augmentation: the recipe the demo's numbers were measured with
        train_cfg.codebook_updates = "ema_reseed"
        train_cfg.aug_yaw_deg = train_cfg.aug_shift_m = 0.0
        if cfg.tokenizer_preset == "default":
            train_cfg.lattice_init_windows = 4096
        train_cfg.seed = cfg.seed
        # the training store's hand tracks become parameter files the tokenizer reads
        motion_dir = out / "tokenizer_data"
        motion_dir.mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(_store_motions(worlds["train"])):
            save_motion(motion_dir / f"train_{i:05d}.npz", m)
        t0 = time.perf_counter()
        result = train(model_cfg, train_cfg, ["builtin", str(motion_dir)], tok_dir, progress=progress)
        atomic_write_json(out / "tokenizer_train.json", _budget_of(result), default=json_default)
        _log(f"tokenizer trained in {time.perf_counter() - t0:.1f} s")
    tokenizer = load_tokenizer(tok_dir)

    heldout = _store_motions(worlds["heldout"])
    metrics = evaluate_motions(tokenizer, [LoadedMotion(f"heldout_{i}", m, "params") for i, m in enumerate(heldout)])
    video = out / "videos" / "tokenizer_before_after.mp4"
    if heldout and not _done(video):

        video.parent.mkdir(parents=True, exist_ok=True)
        truth = heldout[0]
        render_motions(video, truth, compare=reconstruct(tokenizer, truth), titles=("truth", "tokenizer reconstruction"))
    return tok_dir, {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}


def _budget_of(result: Any) -> dict[str, Any]:
    d = asdict(result) if is_dataclass(result) else dict(result)
    return {k: v for k, v in d.items() if not isinstance(v, (list, dict)) or k == "losses"}


def _layer_weights(cfg: DemoConfig, tok_dir: Path) -> list[float] | None:
    """The demo's per-layer loss weights, fitted to the tokenizer's layer count (the last weight repeats);
    None when the tokenizer's ids do not say their layer."""

    w = cfg.vla_layer_loss_weights
    tcfg = json.loads((tok_dir / "config.json").read_text())
    if not w or tcfg.get("id_layout") != "per_layer":
        return None
    n = int(tcfg["residual_layers"])
    return [float(w[min(i, len(w) - 1)]) for i in range(n)]


def pretrain_vla(cfg: DemoConfig, out: Path, worlds: dict[str, Path], tok_dir: Path, progress: bool) -> Path:

    run_dir = out / "vla"
    final = run_dir / "final"
    if _done(final / "config.json"):
        return final
    pc = PretrainConfig(
        data=VLADataConfig(stores=[str(worlds["train"])], seconds=sorted({1, cfg.eval_seconds}), align=cfg.align,
                           seed=cfg.seed),
        model=ModelConfig(preset=cfg.vla_preset, motion_tokenizer=str(tok_dir), seed=cfg.seed,
                          preset_overrides={"vision_config": {"image_size": cfg.vla_tile}},
                          motion_layer_loss_weights=_layer_weights(cfg, tok_dir),
                          image_position=cfg.vla_image_position),
        train=TrainConfig(output_dir=str(run_dir), max_steps=cfg.vla_max_steps, max_minutes=cfg.vla_minutes,
                          batch_size=cfg.vla_batch_size, lr=cfg.vla_lr, warmup_steps=min(30, cfg.vla_max_steps // 5),
                          save_every=100, log_every=10, seed=cfg.seed, progress=progress, tensorboard=False),
    )
    t0 = time.perf_counter()
    summary = run_pretrain(pc, resume=True, progress=progress)
    atomic_write_json(run_dir / "train_result.json", summary["train"], default=json_default)
    _log(f"VLA pretrained in {time.perf_counter() - t0:.1f} s: {summary['train'].get('steps_done')} steps, "
         f"final loss {summary['train'].get('final_loss', float('nan')):.3f}")
    return final


def evaluate_vla(cfg: DemoConfig, ckpt: Path, worlds: dict[str, Path]) -> dict[str, Any]:
    """Generation metrics with Wilson intervals and the input-free baselines (fitted on the training store),
    on the held-out scenes and on the unseen rig; then the same model with every held-out episode given
    ANOTHER episode's image (input sensitivity: a model that reads the image drops to the baselines), and
    asked for another object of the same scene (instruction following, `evaluate_counterfactual`)."""

    bundle = load_vla(ckpt)
    ref = load_training_reference([worlds["train"]])  # fitted once, used for both stores
    kw = dict(max_seconds=cfg.eval_seconds, batch_size=8)
    out = {name: evaluate_handworld(bundle, worlds[key], train_stores=ref, **kw)["summary"]
           for name, key in (("heldout_seen_rigs", "heldout"), ("unseen_rig", "unseen_rig"))}  # fmt: skip
    shuffled = evaluate_handworld(bundle, worlds["heldout"], shuffle_images=True, **kw)["summary"]
    out["heldout_counterfactual"] = evaluate_counterfactual(bundle, worlds["heldout"], seconds=cfg.eval_seconds,
                                                            batch_size=8)["summary"]
    out["heldout_images_shuffled"] = {k: shuffled.get(k) for k in (
        "target_pairs", "target_accuracy", "target_accuracy_ci95", "final_wrist_error_m", "images_shuffled")}
    return out


def generation_videos(cfg: DemoConfig, out: Path, ckpt: Path, worlds: dict[str, Path]) -> list[dict[str, str]]:
    """Side-by-side videos for the first held-out episodes of each store: the TRUE motion (left) and the
    GENERATED motion (right), both drawn the same size over the episode's own frames in its camera."""


    bundle = load_vla(ckpt)
    align, size = model_alignment(bundle.model.config), model_image_size(bundle.model.config, bundle.processor)
    rows = []
    for name in ("heldout", "unseen_rig"):
        store = EpisodeStore(worlds[name])
        for k in range(min(cfg.videos, len(store))):
            ep = store.load_episode(k)
            acting = (ep.ground_truth or {}).get("acting_hands") or [s for s, m in ep.hands.items() if m.valid.any()]
            mode = hand_mode_of(acting)
            instruction = ep.tasks[0] if ep.tasks else "move the hands"
            cam = ep.camera
            view = prepare_image(Image.fromarray(ep.video[0]), cam.K if align else None, align, size)
            gen = generate_motion(bundle.model, bundle.processor, view, instruction, cfg.eval_seconds, mode,
                                  seed=cfg.seed)  # fmt: skip
            ids = gen.motion[0]
            hands = hands_for_mode(mode)
            T = min(ep.num_frames, cfg.eval_seconds * int(round(store.fps)))
            generated = {h: bundle.motion_tokenizer.decode_motion(ids[:, j], side=h, betas=ep.hands[h].betas,
                                                                  num_frames=T) for j, h in enumerate(hands)}  # fmt: skip
            truth = {h: ep.hands[h].slice(0, T) for h in hands}
            path = out / "videos" / f"generated_{name}_{k}.mp4"
            # the demo's frames are small: draw at 4x so the hands can be seen (camera scaled with them)
            s = 4
            frames = np.stack([np.asarray(Image.fromarray(f).resize((cam.width * s, cam.height * s), Image.BILINEAR))
                               for f in ep.video[:T]])  # fmt: skip
            render_motions(path, truth, compare=generated, titles=("true motion", "generated by the VLA"),
                           background=frames, side_tags=True,
                           camera=Camera(cam.fx * s, cam.fy * s, cam.cx * s, cam.cy * s, cam.width * s, cam.height * s))  # fmt: skip
            rows.append({"video": str(path.relative_to(out)), "store": name, "instruction": instruction, "rig": ep.rig or ""})
    return rows


# ---- report --------------------------------------------------------------------------------------------


def _table(d: dict[str, Any]) -> str:
    cells = []
    for k, v in d.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        cells.append(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.0f}%"


def _ci(d: dict[str, Any], key: str = "target_accuracy") -> str:
    lo_hi = d.get(f"{key}_ci95")
    acc = _pct(d.get(key))
    return acc if not lo_hi else f"{acc} [{_pct(lo_hi[0])}, {_pct(lo_hi[1])}]"


def headline_rows(vla: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(row, held-out seen rigs, unseen rig, final wrist error on held-out) for the model, the input-free
    baselines, the tokenizer floor and the image-shuffled model."""
    seen, unseen = vla.get("heldout_seen_rigs", {}), vla.get("unseen_rig", {})

    def err(d: dict[str, Any]) -> str:
        v = d.get("final_wrist_error_m")
        return "n/a" if v is None else f"{100 * v:.1f} cm"

    rows = [("the VLA (image + instruction)", _ci(seen), _ci(unseen), err(seen))]
    names = {"constant": "constant output (mean training end point; no input)",
             "template": "mean end point per instruction template (no image)",
             "rig_template": "the same per template and camera rig (no scene layout)",
             "retrieval": "nearest training instruction's end point (no image)",
             "tokenizer_floor": "true motion through the tokenizer (the ceiling)"}
    for key, label in names.items():
        a, b = (seen.get("baselines") or {}).get(key), (unseen.get("baselines") or {}).get(key)
        if a or b:
            rows.append((label, _ci(a or {}), _ci(b or {}), err(a or {})))
    sh = vla.get("heldout_images_shuffled")
    if sh:
        rows.append(("the VLA given another scene's image", _ci(sh), "", err(sh)))
    cf = vla.get("heldout_counterfactual")
    if cf:
        rows.append(("the VLA asked for the episode's object ('move your hand to the ...')",
                     _ci(cf, "named_target_accuracy"), "", ""))
        rows.append(("the VLA asked for ANOTHER object of the same scene", _ci(cf, "other_object_accuracy"), "", ""))
    return rows


def reading(vla: dict[str, Any]) -> list[str]:
    """Plain-language sentences on what the headline numbers mean."""
    out = []
    seen = vla.get("heldout_seen_rigs", {})
    base = (seen.get("baselines") or {}).get("constant") or {}
    lo = (seen.get("target_accuracy_ci95") or [None])[0]
    if seen.get("target_accuracy") is not None:
        out.append(f"On {seen.get('target_pairs')} held-out (hand, object) pairs from new scenes, the generated wrist "
                   f"ends nearest the instructed object {_pct(seen['target_accuracy'])} of the time (95% interval "
                   f"{_ci(seen).split(' ', 1)[-1]}).")
    if base.get("target_accuracy") is not None and lo is not None:
        verdict = ("above" if lo > base["target_accuracy"] else "NOT clearly above")
        out.append(f"A model that ignores its input and always ends at the average training end point scores "
                   f"{_pct(base['target_accuracy'])}: the VLA's lower bound is {verdict} it.")
    rig = (seen.get("baselines") or {}).get("rig_template") or {}
    if rig.get("target_accuracy") is not None and lo is not None:
        verdict = ("above" if lo > rig["target_accuracy"] else "NOT clearly above")
        out.append(f"A prediction that knows the camera and the instruction (which hand acts, and HandWorld's hands "
                   f"mostly reach for objects on their own side) but not where the objects are, the average end "
                   f"point of training episodes filmed by the same camera with the same kind of instruction, scores "
                   f"{_pct(rig['target_accuracy'])}: the VLA's lower bound is {verdict} it.")
    sh = vla.get("heldout_images_shuffled") or {}
    if sh.get("target_accuracy") is not None and seen.get("target_accuracy") is not None:
        drop = seen["target_accuracy"] - sh["target_accuracy"]
        out.append(f"Given another scene's image with the same instruction, accuracy falls by {100 * drop:.0f} points "
                   f"(to {_pct(sh['target_accuracy'])}): " + ("the model uses the image." if drop > 0.1 else
                   "the image matters little to this model."))
    cf = vla.get("heldout_counterfactual") or {}
    if cf.get("episodes"):
        same = cf.get("same_end_point_rate")
        out.append(f"Asked for another object of the same scene, it reaches that object {_pct(cf.get('other_object_accuracy'))} "
                   f"of the time (chance {_pct(cf.get('chance'))}); in {_pct(same)} of {cf['episodes']} scenes both requests "
                   "end at the same object: " + ("the model does not yet read which object the instruction names."
                                                   if same is not None and same > 0.8 else
                                                   "the model follows the object named in the instruction."))
    un = vla.get("unseen_rig", {})
    if un.get("target_accuracy") is not None:
        out.append(f"On a camera rig never seen in training it reaches {_ci(un)}.")
    return out


def learning_curve_svg(records: list[dict[str, Any]], keys: tuple[str, ...] = ("loss", "acc/wrist_l0", "token_acc"),
                       width: int = 640, height: int = 220) -> str:
    """An inline SVG of training curves (one polyline per key, each scaled to its own range) from
    ``metrics.jsonl`` records; '' when there is nothing to draw."""
    colours = ("#c0392b", "#2471a3", "#1e8449", "#7d3c98")
    recs = [r for r in records if "step" in r and "event" not in r]
    if not recs:
        return ""
    x_max = max(r["step"] for r in recs) or 1
    pad = 30
    lines, legend = [], []
    for i, key in enumerate(k for k in keys if any(k in r for r in recs)):
        pts = [(r["step"], float(r[key])) for r in recs if key in r]
        lo, hi = min(v for _, v in pts), max(v for _, v in pts)
        span = (hi - lo) or 1.0
        xy = " ".join(f"{pad + (width - pad) * x / x_max:.1f},{height - pad - (height - 2 * pad) * (v - lo) / span:.1f}"
                      for x, v in pts)  # fmt: skip
        c = colours[i % len(colours)]
        lines.append(f"<polyline fill='none' stroke='{c}' stroke-width='2' points='{xy}'/>")
        legend.append(f"<text x='{pad + 150 * i}' y='16' fill='{c}' font-size='12'>{html.escape(key)} "
                      f"({lo:.3g} to {hi:.3g})</text>")
    axis = (f"<line x1='{pad}' y1='{height - pad}' x2='{width}' y2='{height - pad}' stroke='#888'/>"
            f"<text x='{width - 60}' y='{height - 8}' font-size='12'>step {x_max}</text>")
    return f"<svg width='{width}' height='{height}' style='border:1px solid #ddd'>{axis}{''.join(lines)}{''.join(legend)}</svg>"


def write_report(out: Path, metrics: dict[str, Any], videos: list[dict[str, str]]) -> Path:
    """``report.html`` in ``out``: budget warnings first (stages that trained too little), what the headline
    numbers say in plain words, the model beside its baselines, the learning curve, the training budget of
    each stage, the tokenizer, the detailed metrics and the side-by-side videos."""
    warnings, budget = training_budget_html(metrics)
    vla = metrics.get("vla", {})
    head = "".join(f"<th>{h}</th>" for h in ("", "target accuracy, held-out scenes (seen rigs) [95% CI]",
                                              "unseen rig [95% CI]", "final wrist error (held-out)"))
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in headline_rows(vla))
    parts = [
        "<!doctype html><meta charset='utf-8'><title>handvla demo</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px}video{margin:6px;border:1px solid #999}"
        ".budget-warning{background:#fde8e8;border:2px solid #c00;color:#900;padding:0.8em 1em;margin:1em 0}</style>",
        "<h1>handvla demo</h1>",
        warnings,
        f"<p>Built {html.escape(time.strftime('%Y-%m-%d %H:%M'))} in {metrics['minutes']:.1f} minutes on this machine. "
        "All numbers come from this run.</p>",
        "<h2>What the numbers say</h2><ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in reading(vla)) + "</ul>",
        f"<h2>The VLA beside models that ignore its input</h2><table><tr>{head}</tr>{rows}</table>",
        "<h2>Learning curve (VLA)</h2>" + learning_curve_svg(metrics.get("vla_curve", [])),
        budget,
        "<h2>Motion tokenizer (held-out HandWorld motion)</h2>",
        _table(metrics["tokenizer"]),
        "<video src='videos/tokenizer_before_after.mp4' controls loop width='640'></video>",
    ]
    for name, summary in vla.items():
        flat = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
        parts += [f"<h2>VLA generation: {html.escape(name)}</h2>", _table(flat)]
    parts.append("<h2>True (left) and generated (right) motion over the input video</h2>")
    for v in videos:
        parts.append(f"<figure style='display:inline-block'><video src='{html.escape(v['video'])}' controls loop "
                     f"width='520'></video><figcaption>{html.escape(v['store'])} ({html.escape(v['rig'])}): "
                     f"{html.escape(v['instruction'])}</figcaption></figure>")
    return atomic_write_text(out / "report.html", "\n".join(p for p in parts if p))


#: training stages whose summaries the demo's metrics may carry: (key in metrics, name in the report)
TRAINING_STAGES = (("tokenizer_train", "motion tokenizer"), ("vla_train", "VLA"))


def training_budget(summary: Any) -> dict[str, Any]:
    """One stage's training summary in common terms, from what it has: the shared trainer's result
    (``handvla.train.trainer.Trainer.train``) or the motion tokenizer's ``TrainResult`` (object or dict).

    Keys (each only when the summary tells it): ``steps_done``, ``max_steps`` (planned), ``final_loss`` (mean
    of the last logged losses), ``last_loss``, ``stopped_early``, ``stop_reason``, ``minutes`` (training
    minutes), ``budget_minutes``, ``too_few_steps``, ``warning`` (a sentence).
    """
    if is_dataclass(summary) and not isinstance(summary, type):
        summary = asdict(summary)
    if not isinstance(summary, dict):
        return {}
    s = summary
    b: dict[str, Any] = {}
    if "steps_done" in s or "step" in s:
        b["steps_done"] = s.get("steps_done", s.get("step"))
    planned = s.get("max_steps", s.get("schedule_steps"))
    if planned is not None:
        b["max_steps"] = planned
    losses = [v for v in s.get("losses") or [] if isinstance(v, (int, float))]
    if s.get("final_loss") is not None:
        b["final_loss"] = s["final_loss"]
    elif losses:
        b["final_loss"] = float(np.mean(losses[-10:]))
    last = s.get("last_loss", s.get("loss"))
    if last is None and losses:
        last = losses[-1]
    if last is not None:
        b["last_loss"] = last
    # the tokenizer says 'steps' / 'time'
    reason = s.get("stop_reason", {"steps": "max_steps", "time": "time_budget"}.get(s.get("stopped_by"), s.get("stopped_by")))
    if reason is not None:
        b["stop_reason"] = reason
    if "stopped_early" in s:
        b["stopped_early"] = bool(s["stopped_early"])
    elif reason is not None:
        b["stopped_early"] = reason != "max_steps" and not (planned and b.get("steps_done", 0) >= planned)
    if s.get("elapsed_minutes") is not None:
        b["minutes"] = s["elapsed_minutes"]
    elif s.get("elapsed_s") is not None:
        b["minutes"] = s["elapsed_s"] / 60
    elif s.get("minutes") is not None:
        b["minutes"] = s["minutes"]
    if s.get("budget_minutes") is not None:
        b["budget_minutes"] = s["budget_minutes"]
    if "too_few_steps" in s:
        b["too_few_steps"] = bool(s["too_few_steps"])
        b["warning"] = s.get("warning")
    return b


def budget_warning_text(stage: str, b: dict[str, Any]) -> str:
    """The report's plain-language warning for a stage (``stage``: its name) that trained too little."""
    done, planned = b.get("steps_done"), b.get("max_steps")
    steps = f"only {done} of {planned} planned training steps" if planned else f"only {done} training steps"
    if b.get("stop_reason") == "time_budget":
        budget = b.get("budget_minutes")
        why = f", because its {f'{budget:g}-minute ' if budget else ''}time budget ran out"
    else:
        why = ""
    return (f"The {stage} got {steps}{why}. It is barely trained, so the numbers below that depend on it do not "
            "mean much. Give it more time (or a faster machine) for a real result.")


def _budget_formatter(b: dict[str, Any]) -> Callable[..., str]:
    """``num(key, fmt)``: ``b[key]`` formatted, or '' when absent."""

    def num(k: str, fmt: str = "{:.4g}") -> str:
        v = b.get(k)
        return "" if v is None else fmt.format(v)

    return num


def training_budget_html(metrics: dict[str, Any]) -> tuple[str, str]:
    """(warning boxes, "Training budget" section) for the stages in ``TRAINING_STAGES`` whose summary
    ``metrics`` carries; empty strings when it carries none."""
    rows, boxes = [], []
    for key, stage in TRAINING_STAGES:
        b = training_budget(metrics.get(key))
        if not b:
            continue
        if b.get("too_few_steps"):
            boxes.append(f"<div class='budget-warning'><b>Warning:</b> {html.escape(budget_warning_text(stage, b))}"
                         + (f"<br><small>{html.escape(b['warning'])}</small>" if b.get("warning") else "") + "</div>")
        num = _budget_formatter(b)
        steps = num("steps_done", "{}") + (f" / {b['max_steps']}" if b.get("max_steps") else "")
        loss = num("final_loss") + (f" (last {num('last_loss')})" if b.get("last_loss") is not None else "")
        if "stopped_early" in b:
            stopped = ("yes: " if b["stopped_early"] else "no: ") + str(b.get("stop_reason", "")).replace("_", " ")
        else:
            stopped = str(b.get("stop_reason", "")).replace("_", " ")
        minutes = num("minutes", "{:.2f}") + (f" / {b['budget_minutes']:g}" if b.get("budget_minutes") else "")
        cells = (stage, steps, loss, stopped, minutes)
        style = " style='color:#c00'" if b.get("too_few_steps") else ""
        rows.append(f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    if not rows:
        return "", ""
    head = "".join(f"<th>{h}</th>" for h in ("stage", "steps done / planned", "final loss (mean of last logged)",
                                              "stopped early", "training minutes / budget"))
    return "".join(boxes), "<h2>Training budget</h2><table><tr>" + head + "</tr>" + "".join(rows) + "</table>"


def _read_json(path: Path) -> dict[str, Any] | None:

    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def run_demo(out: str | Path, cfg: DemoConfig | None = None, progress: bool = True) -> dict[str, Any]:
    cfg = cfg or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    worlds = build_worlds(cfg, out, progress)
    tok_dir, tok_metrics = train_tokenizer(cfg, out, worlds, progress)
    _log(f"tokenizer on held-out motion: MPJPE {tok_metrics.get('mpjpe_mm', float('nan')):.1f} mm, "
         f"{tok_metrics.get('tokens_per_hand_second')} tokens per hand-second")
    ckpt = pretrain_vla(cfg, out, worlds, tok_dir, progress)
    vla_metrics = evaluate_vla(cfg, ckpt, worlds)
    videos = generation_videos(cfg, out, ckpt, worlds)
    metrics = {"config": cfg.model_dump(), "tokenizer": tok_metrics, "vla": vla_metrics,
               "minutes": (time.perf_counter() - t0) / 60, "checkpoint": str(ckpt),
               "tokenizer_train": _read_json(out / "tokenizer_train.json"),
               "vla_train": _read_json(out / "vla" / "train_result.json"),
               "vla_curve": _read_jsonl(out / "vla" / "metrics.jsonl")}
    for stage in ("tokenizer_train", "vla_train"):
        b = training_budget(metrics[stage])
        if b.get("too_few_steps") or (stage == "vla_train" and not b):
            _log(f"WARNING: {stage}: {b.get('warning') or 'no training summary'}")
    atomic_write_json(out / "metrics.json", metrics, default=json_default)
    report = write_report(out, metrics, videos)
    _log(f"report: {report}")
    return metrics
