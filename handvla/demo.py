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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from handvla.atomic import atomic_write_json, atomic_write_text


@dataclass
class DemoConfig:
    """Sizes of the demo. The defaults fit about 10 minutes on 2 CPU cores; ``quick()`` is a smoke test."""

    seed: int = 0
    train_episodes: int = 64
    heldout_episodes: int = 12
    unseen_rig_episodes: int = 12
    episode_seconds: float = 3.0
    image_size: tuple[int, int] = (96, 72)
    train_rigs: tuple[str, ...] = ("ego", "third")
    unseen_rig: str = "phone"
    #: 'default' = the reference-sized tokenizer (the one benchmarks/tokenizer.py measures); 'tiny' for
    #: smoke tests
    tokenizer_preset: str = "default"
    tokenizer_minutes: float = 2.0
    tokenizer_builtin_sequences: int = 96
    vla_minutes: float = 3.0
    vla_max_steps: int = 2000
    videos: int = 3
    workers: int = 2

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(train_episodes=6, heldout_episodes=2, unseen_rig_episodes=2, tokenizer_preset="tiny",
                   tokenizer_minutes=0.1,
                   tokenizer_builtin_sequences=8, vla_minutes=0.15, vla_max_steps=6, videos=1, workers=1)


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _done(path: Path) -> bool:
    return path.exists()


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(type(x).__name__)


# ---- stages --------------------------------------------------------------------------------------------


def build_worlds(cfg: DemoConfig, out: Path, progress: bool) -> dict[str, Path]:
    from handvla.data.handworld.episodes import HandWorldConfig, generate_episodes

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
    from handvla.data.store import EpisodeStore

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
    from handvla.hand.io import save_motion
    from handvla.tokenizer.configuration import preset
    from handvla.tokenizer.evaluation import evaluate_motions, reconstruct
    from handvla.tokenizer.modeling import MotionTokenizer
    from handvla.tokenizer.training import train

    tok_dir = out / "tokenizer"
    if not _done(tok_dir / "model.safetensors"):
        model_cfg, train_cfg = preset(cfg.tokenizer_preset)
        train_cfg.max_minutes = cfg.tokenizer_minutes
        train_cfg.builtin_sequences = cfg.tokenizer_builtin_sequences
        train_cfg.builtin_seconds = 6.0
        train_cfg.batch_size = 16
        train_cfg.lr = 5e-5
        train_cfg.freeze_encoder = True
        if cfg.tokenizer_preset == "default":
            train_cfg.lattice_init_windows = 4096
        train_cfg.seed = cfg.seed
        # the training store's hand tracks become parameter files the tokenizer reads
        motion_dir = out / "tokenizer_data"
        motion_dir.mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(_store_motions(worlds["train"])):
            save_motion(motion_dir / f"train_{i:05d}.npz", m)
        t0 = time.perf_counter()
        train(model_cfg, train_cfg, ["builtin", str(motion_dir)], tok_dir, progress=progress)
        _log(f"tokenizer trained in {time.perf_counter() - t0:.1f} s")
    tokenizer = MotionTokenizer.from_pretrained(tok_dir)
    from handvla.tokenizer.data import LoadedMotion

    heldout = _store_motions(worlds["heldout"])
    metrics = evaluate_motions(tokenizer, [LoadedMotion(f"heldout_{i}", m, "params") for i, m in enumerate(heldout)])
    video = out / "videos" / "tokenizer_before_after.mp4"
    if heldout and not _done(video):
        from handvla.hand.render import render_motions

        video.parent.mkdir(parents=True, exist_ok=True)
        truth = heldout[0]
        render_motions(video, truth, compare=reconstruct(tokenizer, truth), titles=("truth", "tokenizer reconstruction"))
    return tok_dir, {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}


def pretrain_vla(cfg: DemoConfig, out: Path, worlds: dict[str, Path], tok_dir: Path, progress: bool) -> Path:
    from handvla.train.trainer import TrainConfig
    from handvla.vla.data import VLADataConfig
    from handvla.vla.pretrain import ModelConfig, PretrainConfig, run_pretrain

    run_dir = out / "vla"
    final = run_dir / "final"
    if _done(final / "config.json"):
        return final
    pc = PretrainConfig(
        data=VLADataConfig(stores=[str(worlds["train"])], seconds=[1, 2], align=True, seed=cfg.seed),
        model=ModelConfig(preset="tiny", motion_tokenizer=str(tok_dir), seed=cfg.seed),
        train=TrainConfig(output_dir=str(run_dir), max_steps=cfg.vla_max_steps, max_minutes=cfg.vla_minutes,
                          batch_size=8, lr=3e-3, warmup_steps=20, save_every=200, log_every=10,
                          seed=cfg.seed, progress=progress, tensorboard=False),
    )
    t0 = time.perf_counter()
    run_pretrain(pc, resume=True, progress=progress)
    _log(f"VLA pretrained in {time.perf_counter() - t0:.1f} s")
    return final


def evaluate_vla(cfg: DemoConfig, ckpt: Path, worlds: dict[str, Path]) -> dict[str, Any]:
    from handvla.vla.evaluate import evaluate_checkpoint

    res = evaluate_checkpoint(ckpt, {"heldout_seen_rigs": worlds["heldout"], "unseen_rig": worlds["unseen_rig"]},
                              max_seconds=2, batch_size=4)
    return {name: r["summary"] for name, r in res.items()}


def generation_videos(cfg: DemoConfig, out: Path, ckpt: Path, worlds: dict[str, Path]) -> list[dict[str, str]]:
    """Generated motion drawn over the input image, for the first held-out episodes of each store."""
    from handvla.data.store import EpisodeStore
    from handvla.hand.render import Camera, render_motions
    from handvla.vla.data import prepare_image
    from handvla.vla.evaluate import hand_mode_of, model_alignment, model_image_size
    from handvla.vla.generation import generate_motion
    from handvla.vla.modeling import load_vla

    bundle = load_vla(ckpt)
    align, size = model_alignment(bundle.model.config), model_image_size(bundle.model.config, bundle.processor)
    rows = []
    for name in ("heldout", "unseen_rig"):
        store = EpisodeStore(worlds[name])
        for k in range(min(cfg.videos, len(store))):
            ep = store.load_episode(k)
            sides = [s for s, m in ep.hands.items() if m.valid.any()]
            mode = hand_mode_of(sides)
            instruction = ep.tasks[0] if ep.tasks else "move the hands"
            from PIL import Image

            image = Image.fromarray(ep.video[0])
            cam = ep.camera
            K = np.array([[cam.fx, 0, cam.cx], [0, cam.fy, cam.cy], [0, 0, 1]])
            view = prepare_image(image, K if align else None, align, size)
            gen = generate_motion(bundle.model, bundle.processor, view, instruction, 2, mode, seed=cfg.seed)
            ids = gen.motion[0]
            from handvla.vla.processing import hands_for_mode

            motions = {s: bundle.motion_tokenizer.decode_motion(ids[:, j], side=s) for j, s in enumerate(hands_for_mode(mode))}
            path = out / "videos" / f"generated_{name}_{k}.mp4"
            # the demo's frames are small: draw at 4x so the hands can be seen (camera scaled with them)
            s = 4
            T = len(next(iter(motions.values())))
            frames = np.stack([np.asarray(Image.fromarray(f).resize((cam.width * s, cam.height * s), Image.BILINEAR))
                               for f in ep.video[:T]])
            render_motions(path, motions, background=frames, side_tags=True, title=instruction[:60],
                           camera=Camera(cam.fx * s, cam.fy * s, cam.cx * s, cam.cy * s, cam.width * s, cam.height * s))
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


def write_report(out: Path, metrics: dict[str, Any], videos: list[dict[str, str]]) -> Path:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>handvla demo</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
        "td{border:1px solid #ccc;padding:4px 8px}video{margin:6px;border:1px solid #999}</style>",
        "<h1>handvla demo</h1>",
        f"<p>Built {html.escape(time.strftime('%Y-%m-%d %H:%M'))} in {metrics['minutes']:.1f} minutes on this machine. "
        "All numbers come from this run.</p>",
        "<h2>Motion tokenizer (held-out HandWorld motion)</h2>",
        _table(metrics["tokenizer"]),
        "<video src='videos/tokenizer_before_after.mp4' controls loop width='640'></video>",
    ]
    for name, summary in metrics["vla"].items():
        flat = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
        parts += [f"<h2>VLA generation: {html.escape(name)}</h2>", _table(flat)]
    parts.append("<h2>Generated motion over the input image</h2>")
    for v in videos:
        parts.append(f"<figure style='display:inline-block'><video src='{html.escape(v['video'])}' controls loop "
                     f"width='320'></video><figcaption>{html.escape(v['store'])} ({html.escape(v['rig'])}): "
                     f"{html.escape(v['instruction'])}</figcaption></figure>")
    return atomic_write_text(out / "report.html", "\n".join(parts))


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
    metrics = {"config": asdict(cfg), "tokenizer": tok_metrics, "vla": vla_metrics,
               "minutes": (time.perf_counter() - t0) / 60, "checkpoint": str(ckpt)}
    atomic_write_json(out / "metrics.json", metrics, default=_jsonable)
    report = write_report(out, metrics, videos)
    _log(f"report: {report}")
    return metrics
