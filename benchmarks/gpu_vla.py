"""The motion VLA on one lent NVIDIA H100 / H200, in at most 8 minutes: training throughput and MFU of the
InternVL3-1B shape, constrained-generation speed, and a short HandWorld learning run of the ``small`` preset.
Prints ONE JSON object on stdout (everything else goes to stderr) and writes it to ``OUT/gpu_vla.json``
after every section, so a run cut short still leaves what it measured.

Sections (``--sections``, default all three, always run in this order; each is timed, and a failure in one
is reported as its ``error`` while the others still run):

1. ``train_throughput``: the ``internvl3-1b`` preset (InternViT-300M + Qwen2.5-0.5B shape, random init, fp32
   master weights) with Being-H0's motion vocabulary (8192 motion ids, 128 per hand-second) and a text
   vocabulary padded to the preset's 151674 rows (what a real InternVL3 -hf tokenizer gives), trained in
   bf16 autocast with sequence packing (``handvla.vla.data.collate_packs``: rows of several samples, position
   ids restarting per sample, no attention mask) through the repo's loss ``handvla.vla.pretrain.vla_loss``
   and the trainer's optimiser step (AdamW, gradient clipping at 1.0). Synthetic samples: a 448x448 image
   (one tile = 256 visual tokens), the reference generation prompt, 1 or 2 seconds of random motion ids of
   one or both hands as the answer. Reports tokens/s (every non-padding token), answer tokens/s, samples/s,
   peak memory, and MFU = model FLOPs/s over the GPU's peak dense bf16 FLOPs (``peak_flops``, from the
   device name; H100 SXM and H200 989e12). Model FLOPs per step: 6 x (LLM parameters without the input
   embedding) x tokens, + 6 x LM-head parameters x answer tokens (``vla_loss`` runs the head on answer
   positions only), + 6 x (vision-tower parameters x 1025 patch tokens + projector parameters x 256 tokens)
   per image; ``mfu_with_attention`` adds the attention matmuls (causal LLM, per packed sample; full ViT);
   ``mfu_naive_6n`` is 6 x all LLM parameters x tokens + the same vision term (over-counts the embedding
   and the head).
2. ``generation``: motion tokens/s of ``handvla.vla.generation.generate_motion`` (greedy, block-constrained,
   2 seconds of the right hand = 2 blocks = 256 motion ids per sample) at batch 1 and 32, model in bf16.
3. ``small_handworld``: ``benchmarks/vla_learning.py``'s ``main`` (the demo's recipe, aligned images only) on
   HandWorld, with the ``small`` preset when ``handvla.demo.DemoConfig`` has a field for the VLA preset (the
   JSON's ``preset`` / ``preset_note`` say what was trained), a training budget that keeps the whole script
   under ``--budget-minutes`` (default 7.5; at most ``--handworld-minutes``, default 4), and the headline
   numbers: target accuracy with its 95 % interval per evaluation store, the input-free baselines, steps
   done, final loss. The full result of vla_learning goes to ``OUT/small_handworld_full.json``.

On the device machine (it runs a copy of this repo with its own Python 3.12 + torch 2.11 CUDA + transformers
5.x and reaches no package registry). Its image lacks some of handvla's dependencies (as last listed:
pydantic and its helpers, PyAV, websockets); carry them as wheels (see the device README's notes), made here
once::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl pydantic pydantic-core annotated-types typing-inspection av websockets

then run (``carry: [".whl"]``, ``timeout_s`` about 540)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
        && export PYTHONPATH=/tmp/site; python3 benchmarks/gpu_vla.py --out "$OUT"

(``--out /tmp/gpu`` works too, but only files under ``$OUT`` come back.) ``environment.missing_modules`` in
the JSON names any dependency that still did not import. Scratch data (HandWorld stores, checkpoints) go to
``--work`` (default: a new folder under the system temp dir), never under ``--out``.

On a CPU, ``--tiny`` runs every section at toy size in a minute or two (tiny preset, 56-px tiles, 2 steps,
a few HandWorld episodes): a check that the script works, not a measurement::

    python benchmarks/gpu_vla.py --tiny --sections train_throughput,generation --out /tmp/gpu_tiny
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the device runs a plain copy of the repo (handvla not installed)
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

SECTIONS = ("train_throughput", "generation", "small_handworld")
RESULT_NAME = "gpu_vla.json"

#: peak dense bf16 FLOP/s by device-name substring, most specific first (vendor datasheets, no sparsity)
PEAK_BF16_DENSE: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),  # H200 SXM (and GH200): the H100 SXM's tensor cores
    ("H100 PCIE", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312e12),
)

TASKS = (
    "pick up the red cube",
    "grasp the blue cup",
    "open the drawer",
    "push the green ball to the left",
    "lift the yellow box and put it down gently",
    "rotate the bottle",
    "wipe the table",
    "stack the white block on the black block",
)

# Sizes per mode. "tiny" is for CPU checks only.
SIZES = {
    "full": dict(preset="internvl3-1b", tile=448, text_vocab_rows=151674, rows=8, pack_length=2048,
                 steps=20, warmup=3, pool=96, gen_batches=(1, 32), gen_repeats=2,
                 handworld=dict(train=320, heldout=80, unseen=60, translation=20, prediction=20,
                                tokenizer_minutes=0.75, steps=4000)),
    "tiny": dict(preset="tiny", tile=56, text_vocab_rows=0, rows=2, pack_length=1024,
                 steps=2, warmup=1, pool=16, gen_batches=(1, 32), gen_repeats=1,
                 handworld=dict(train=8, heldout=4, unseen=4, translation=2, prediction=2,
                                tokenizer_minutes=0.05, steps=2)),
}  # fmt: skip


# ---- small helpers ------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[gpu_vla] {msg}", file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send file descriptor 1 (Python, C and child processes alike) to stderr while the sections run, so
    stdout carries only the final JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _write_json(path: Path, obj: Any) -> None:
    from handvla.atomic import atomic_write_json

    atomic_write_json(path, _jsonable(obj), indent=1)


def peak_bf16_flops(device_name: str | None) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU from its name (None: unknown)."""
    if not device_name:
        return None
    up = device_name.upper()
    for key, value in PEAK_BF16_DENSE:
        if key in up:
            return value
    return None


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except Exception as e:  # reported, not fatal: every section names its own failure
        env["transformers"] = f"import failed: {type(e).__name__}: {e}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu_name=torch.cuda.get_device_name(device), gpu_memory_gib=props.total_memory / 2**30,
                   gpu_capability=f"{props.major}.{props.minor}", torch_cuda=torch.version.cuda)  # fmt: skip
    missing = []
    for mod in ("pydantic", "av", "yaml", "pyarrow", "scipy", "tokenizers", "safetensors", "tqdm", "msgpack",
                "websockets", "PIL"):  # fmt: skip
        try:
            importlib.import_module(mod)
        except Exception:
            missing.append(mod)
    env["missing_modules"] = missing
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)  # fmt: skip
        env["git_commit"] = rev.stdout.strip() or None
    except Exception:
        env["git_commit"] = None
    return env


# ---- the model ----------------------------------------------------------------------------------------


def build_bundle(preset: str, tile: int, text_vocab_rows: int, seed: int = 0):
    """A randomly initialised VLA of ``preset`` with Being-H0's motion layout (8192 ids, 128 per block) and
    a small BPE text tokenizer; with ``text_vocab_rows`` > 0 the embedding and LM head are padded to that many
    text rows plus the added motion vocabulary, as a real InternVL3 -hf tokenizer would give (the padding
    rows are never produced by the tokenizer but cost what real rows cost). Returns (bundle, info)."""
    from handvla.tokenizer.configuration import TokenizerConfig
    from handvla.tokenizer.layout import token_layout
    from handvla.vla.configuration import PRESETS
    from handvla.vla.modeling import build_vla
    from handvla.vla.processing import generation_prompt
    from handvla.vla.text_tokenizer import DEFAULT_CORPUS, build_text_tokenizer

    t0 = time.perf_counter()
    layout = token_layout(TokenizerConfig())
    corpus = list(DEFAULT_CORPUS) + [generation_prompt(t, s, m) for t in TASKS for s in (1, 2)
                                     for m in ("left", "right", "both")]  # fmt: skip
    tok = build_text_tokenizer(corpus, vocab_size=1024)
    text_tokens = len(tok)
    overrides: dict[str, Any] = {}
    if int(PRESETS[preset]["vision_config"]["image_size"]) != int(tile):
        overrides["vision_config"] = {"image_size": int(tile)}
    bundle = build_vla(preset, tokenizer=tok, layout=layout, seed=seed, **overrides)
    model = bundle.model
    added = len(tok) - text_tokens  # image tokens + <mot> </mot> <MOT_NOOP> + motion ids
    rows = model.get_input_embeddings().weight.shape[0]
    target = int(text_vocab_rows) + layout.vocab_size + 3 if text_vocab_rows else rows
    if target > rows:
        model.resize_token_embeddings(target, mean_resizing=False)
        model.config.text_config.vocab_size = target
    info = {
        "preset": preset,
        "tile": int(tile),
        "tokens_per_tile": int(model.config.tokens_per_tile),
        "motion_ids": layout.vocab_size,
        "tokenizer_tokens": len(tok),
        "tokenizer_added_tokens": added,
        "vocab_rows": int(model.get_input_embeddings().weight.shape[0]),
        "tied_embeddings": bool(model.config.tie_word_embeddings),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "build_seconds": time.perf_counter() - t0,
    }
    return bundle, info


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def flop_model(model) -> dict[str, Any]:
    """Parameter counts that do matmul work, and the shapes the attention term needs."""
    inner = model.model
    lm, vt, proj = inner.language_model, inner.vision_tower, inner.multi_modal_projector
    embed = lm.get_input_embeddings().weight.numel()
    head = model.lm_head.weight.numel()
    vis_skip = sum(
        p.numel() for n, p in vt.named_parameters() if "position_embeddings" in n or "cls_token" in n
    )
    tc, vc = model.config.text_config, model.config.vision_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    side = (
        vc.image_size[0] // vc.patch_size[0]
        if isinstance(vc.image_size, (list, tuple))
        else vc.image_size // vc.patch_size
    )
    total = _params(model)
    return {
        "params_total": total,
        "params_llm_body": _params(lm) - embed,  # decoder layers + final norm
        "params_input_embedding": embed,
        "params_lm_head": head,
        "head_tied": model.lm_head.weight is lm.get_input_embeddings().weight,
        "params_vision_tower": _params(vt),
        "params_vision_matmul": _params(vt) - vis_skip,
        "params_projector": _params(proj),
        "llm_layers": int(tc.num_hidden_layers),
        "llm_attn_width": int(tc.num_attention_heads * head_dim),
        "vision_layers": int(vc.num_hidden_layers),
        "vision_width": int(vc.hidden_size),
        "vision_seq": int(side * side + 1),  # patches + CLS
        "tokens_per_tile": int(model.config.tokens_per_tile),
    }


def step_flops(
    fm: dict[str, Any], sample_lengths: list[int], answer_tokens: int, tiles: int
) -> dict[str, float]:
    """Model FLOPs (forward + backward) of one training step; see the module docstring."""
    tokens = sum(sample_lengths)
    llm = 6.0 * fm["params_llm_body"] * tokens
    head = 6.0 * fm["params_lm_head"] * answer_tokens
    vision = (
        6.0
        * tiles
        * (fm["params_vision_matmul"] * fm["vision_seq"] + fm["params_projector"] * fm["tokens_per_tile"])
    )
    # attention matmuls (QK^T and AV: 4 * width * s^2 forward, x3 with backward); causal LLM counts half
    attn_llm = 6.0 * fm["llm_layers"] * fm["llm_attn_width"] * sum(s * s for s in sample_lengths)
    attn_vis = 12.0 * fm["vision_layers"] * fm["vision_width"] * fm["vision_seq"] ** 2 * tiles
    naive = 6.0 * (fm["params_llm_body"] + fm["params_input_embedding"]
                   + (0 if fm["head_tied"] else fm["params_lm_head"])) * tokens + vision  # fmt: skip
    return {"llm": llm, "lm_head": head, "vision": vision, "attention_llm": attn_llm, "attention_vision": attn_vis,
            "model": llm + head + vision, "model_with_attention": llm + head + vision + attn_llm + attn_vis,
            "naive_6n": naive}  # fmt: skip


# ---- synthetic training data ---------------------------------------------------------------------------


def synthetic_samples(processor, n: int, tile: int, seed: int) -> list[tuple[Any, int]]:
    """``n`` generation samples: (EncodedSample, image tiles). Random noise image of one tile, a task, 1-2
    seconds of random motion ids (legal at each block position) for one or both hands as the answer."""
    from PIL import Image

    from handvla.vla.processing import generation_prompt, hands_for_mode

    rng = np.random.default_rng(seed)
    layout = processor.vocab.layout
    ranges = layout.position_id_ranges()
    fps = processor.config.motion_fps
    out = []
    for i in range(n):
        mode = ("left", "right", "both")[int(rng.integers(3))]
        seconds = int(rng.integers(1, 3))
        hands = len(hands_for_mode(mode))
        u = rng.random((seconds, hands, layout.tokens_per_block))
        motion = (ranges[:, 0] + np.floor(u * (ranges[:, 1] - ranges[:, 0]))).astype(np.int64)
        img = Image.fromarray(rng.integers(0, 256, (tile, tile, 3), dtype=np.uint8))
        prompt = generation_prompt(TASKS[i % len(TASKS)], seconds, mode, fps)
        s = processor.encode(prompt, "<motion>", images=[img], answer_motions=[motion])
        out.append((s, int(s.pixel_values.shape[0]) if s.pixel_values is not None else 0))
    return out


def packed_batches(samples, n_batches: int, rows: int, pack_length: int, pad_id: int, seed: int):
    """``n_batches`` packed batches of ``rows`` rows (next-fit over a shuffled, cycled sample pool), each
    with its accounting: (batch, {"lengths", "answer_tokens", "tiles", "samples"})."""
    from handvla.vla.data import collate_packs

    rng = np.random.default_rng(seed)
    order: list[int] = []
    out = []
    for _ in range(n_batches):
        packs: list[list[int]] = [[]]
        room = pack_length
        while True:
            if not order:
                order = rng.permutation(len(samples)).tolist()
            i = order[0]
            n = len(samples[i][0].input_ids)
            if n > pack_length:
                raise ValueError(
                    f"a synthetic sample of {n} tokens is longer than --pack-length {pack_length}"
                )
            if n > room:
                if len(packs) == rows:
                    break
                packs.append([])
                room = pack_length
            packs[-1].append(order.pop(0))
            room -= n
        items = [[samples[i][0] for i in p] for p in packs]
        batch = collate_packs(items, pad_id)
        lengths = [len(samples[i][0].input_ids) for p in packs for i in p]
        acct = {
            "lengths": lengths,
            # vla_loss scores labels[:, 1:] != -100 (a sample's first label is always its prompt's)
            "answer_tokens": int((batch["labels"][:, 1:] != -100).sum()),
            "tiles": sum(samples[i][1] for p in packs for i in p),
            "samples": sum(len(p) for p in packs),
        }
        out.append((batch, acct))
    return out


# ---- section 1: training throughput ---------------------------------------------------------------------


def _train_once(bundle, batches, warmup: int, device: torch.device, lr: float) -> dict[str, Any]:
    from handvla.vla.pretrain import vla_loss

    model = bundle.model
    model.config.motion_logit_mask_prob = 0.5  # handvla pretrain's default (Being-H0's p = 50 %)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)  # as the Trainer
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, step_s = [], []
    try:
        _sync(device)
        t_start = time.perf_counter()
        for i, (batch, _acct) in enumerate(batches):
            t0 = time.perf_counter()
            b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                loss, _metrics = vla_loss(model, b)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            _sync(device)
            step_s.append(time.perf_counter() - t0)
            if i == warmup - 1:
                _log(
                    f"train_throughput: warm-up done ({warmup} steps, {time.perf_counter() - t_start:.1f} s)"
                )
    finally:
        opt.zero_grad(set_to_none=True)
        del opt
        model.eval()
        _free_memory()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"losses": losses, "step_seconds": step_s, "peak_memory_gib": peak}


def section_train_throughput(args, ctx: dict[str, Any]) -> dict[str, Any]:
    device, sz = ctx["device"], ctx["sizes"]
    bundle, info = build_bundle(args.preset or sz["preset"], args.tile or sz["tile"], sz["text_vocab_rows"])
    ctx["bundle"], ctx["bundle_info"] = bundle, info
    _log(f"train_throughput: built {info['preset']} in {info['build_seconds']:.1f} s")
    t0 = time.perf_counter()
    model = bundle.model.to(device)
    move_s = time.perf_counter() - t0
    fm = flop_model(model)
    t0 = time.perf_counter()
    pool = synthetic_samples(bundle.processor, sz["pool"], info["tile"], seed=0)
    steps, warmup = args.steps or sz["steps"], sz["warmup"] if args.warmup is None else args.warmup
    rows = args.rows or sz["rows"]
    pack_length = args.pack_length or sz["pack_length"]
    attempts = []
    while True:
        batches = packed_batches(
            pool, warmup + steps, rows, pack_length, bundle.processor.vocab.pad_id, seed=1
        )
        data_s = time.perf_counter() - t0
        try:
            run = _train_once(bundle, batches, warmup, device, lr=1e-4)
            break
        except torch.cuda.OutOfMemoryError as e:  # retry with fewer rows per step
            attempts.append({"rows": rows, "error": f"OutOfMemoryError: {str(e)[:200]}"})
            _free_memory()
            if rows == 1:
                raise
            rows //= 2
            _log(f"train_throughput: out of memory, retrying with {rows} rows")
    timed = batches[warmup:]
    t_steps = run["step_seconds"][warmup:]
    total_s = sum(t_steps)
    tokens = sum(sum(a["lengths"]) for _, a in timed)
    answer = sum(a["answer_tokens"] for _, a in timed)
    flops = {k: 0.0 for k in ("llm", "lm_head", "vision", "attention_llm", "attention_vision", "model",
                               "model_with_attention", "naive_6n")}  # fmt: skip
    for _, a in timed:
        for k, v in step_flops(fm, a["lengths"], a["answer_tokens"], a["tiles"]).items():
            flops[k] += v
    gpu = ctx["env"].get("gpu_name")
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_bf16_flops(gpu)

    def mfu(key: str) -> float | None:
        return flops[key] / total_s / peak if peak and total_s > 0 else None

    res = {
        "model": {**info, **fm, "move_to_device_seconds": move_s},
        "setup": {
            "rows": rows,
            "pack_length": pack_length,
            "steps_timed": len(timed),
            "warmup_steps": warmup,
            "sample_pool": len(pool),
            "data_prep_seconds": data_s,
            "precision": "bf16 autocast, fp32 weights",
            "optimizer": "AdamW(betas=(0.9, 0.95)), grad clip 1.0",
            "motion_logit_mask_prob": 0.5,
            "oom_retries": attempts,
        },  # fmt: skip
        "tokens_per_step": tokens / max(len(timed), 1),
        "answer_tokens_per_step": answer / max(len(timed), 1),
        "samples_per_step": sum(a["samples"] for _, a in timed) / max(len(timed), 1),
        "images_per_step": sum(a["tiles"] for _, a in timed) / max(len(timed), 1),
        "packing_efficiency": tokens / (len(timed) * rows * pack_length) if timed else None,
        "step_seconds_mean": total_s / max(len(timed), 1),
        "step_seconds_median": float(np.median(t_steps)) if t_steps else None,
        "warmup_step_seconds": run["step_seconds"][:warmup],
        "tokens_per_s": tokens / total_s if total_s > 0 else None,
        "answer_tokens_per_s": answer / total_s if total_s > 0 else None,
        "samples_per_s": sum(a["samples"] for _, a in timed) / total_s if total_s > 0 else None,
        "model_tflops_per_s": flops["model"] / total_s / 1e12 if total_s > 0 else None,
        "model_flops_per_step": {k: v / max(len(timed), 1) for k, v in flops.items()},
        "gpu_name": gpu,
        "peak_flops": peak,
        "peak_flops_source": "--peak-tflops"
        if args.peak_tflops
        else ("device name" if peak else "unknown device"),
        "mfu": mfu("model"),
        "mfu_with_attention": mfu("model_with_attention"),
        "mfu_naive_6n": mfu("naive_6n"),
        "loss_first": run["losses"][0] if run["losses"] else None,
        "loss_last": run["losses"][-1] if run["losses"] else None,
        "peak_memory_gib": run["peak_memory_gib"],
    }
    return res


# ---- section 2: generation ------------------------------------------------------------------------------


def section_generation(args, ctx: dict[str, Any]) -> dict[str, Any]:
    from PIL import Image

    from handvla.vla.generation import generate_motion

    device, sz = ctx["device"], ctx["sizes"]
    bundle = ctx.get("bundle")
    info = ctx.get("bundle_info")
    if bundle is None:
        bundle, info = build_bundle(
            args.preset or sz["preset"], args.tile or sz["tile"], sz["text_vocab_rows"]
        )
        ctx["bundle"], ctx["bundle_info"] = bundle, info
    model = bundle.model.to(device=device, dtype=torch.bfloat16).eval()
    proc = bundle.processor
    rng = np.random.default_rng(2)
    tile = info["tile"]
    image = Image.fromarray(rng.integers(0, 256, (tile, tile, 3), dtype=np.uint8))
    seconds, hand_mode = 2, "right"
    batches = [int(b) for b in (args.gen_batches.split(",") if args.gen_batches else sz["gen_batches"])]
    repeats = args.gen_repeats or sz["gen_repeats"]
    t0 = time.perf_counter()
    for b in sorted({1, max(batches)}):  # warm-up: kernels, allocator, the constraint's table
        generate_motion(model, proc, image, list(TASKS[:1]) * b, seconds=1, hand_mode=hand_mode)
    _sync(device)
    out: dict[str, Any] = {
        "model": {k: info[k] for k in ("preset", "tile", "vocab_rows", "motion_ids")},
        "dtype": "bfloat16",
        "decoding": "greedy, MotionBlockConstraint (restrict_parts)",
        "motion_seconds": seconds,
        "hand_mode": hand_mode,
        "motion_tokens_per_sample": seconds * proc.vocab.layout.tokens_per_block,
        "warmup_seconds": time.perf_counter() - t0,
        "batches": {},
    }
    for b in batches:
        tasks = [TASKS[i % len(TASKS)] for i in range(b)]
        runs = []
        for _ in range(repeats):
            _sync(device)
            t1 = time.perf_counter()
            gen = generate_motion(model, proc, image, tasks, seconds=seconds, hand_mode=hand_mode)
            _sync(device)
            dt = time.perf_counter() - t1
            new = int(gen.sequences.shape[1] - gen.prompt_length)
            motion_tokens = int(sum(m.size for m in gen.motion))
            runs.append({"seconds": dt, "motion_tokens": motion_tokens, "new_tokens_per_row": new,
                         "prompt_length": int(gen.prompt_length),
                         "valid": all(m.shape == (seconds, 1, proc.vocab.layout.tokens_per_block) for m in gen.motion)})  # fmt: skip
        best = min(runs, key=lambda r: r["seconds"])
        med = float(np.median([r["seconds"] for r in runs]))
        out["batches"][str(b)] = {
            "batch": b,
            "motion_tokens_per_s": best["motion_tokens"] / med,
            "motion_tokens_per_s_best": best["motion_tokens"] / best["seconds"],
            "motion_tokens_per_s_per_sequence": best["motion_tokens"] / med / b,
            "ms_per_decode_step": 1000 * med / best["new_tokens_per_row"],
            "seconds_median": med,
            "runs": runs,
        }
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


# ---- section 3: the small preset on HandWorld -----------------------------------------------------------


def _load_vla_learning():
    path = REPO / "benchmarks" / "vla_learning.py"
    spec = importlib.util.spec_from_file_location("handvla_bench_vla_learning", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, path.read_text()


def _pick(d: dict | None, keys) -> dict:
    return {k: d.get(k) for k in keys if d is not None and k in d}


def _store_headline(s: dict) -> dict:
    keys = ("episodes", "target_pairs", "target_accuracy", "target_accuracy_ci95", "chance_target_accuracy",
            "oracle_target_accuracy", "valid_output_rate", "final_wrist_error_m", "mpjpe_mm", "mwte_mm",
            "baselines_skipped")  # fmt: skip
    out = _pick(s, keys)
    out["baselines"] = {name: _pick(b, ("target_accuracy", "target_accuracy_ci95", "target_pairs",
                                        "final_wrist_error_m", "mpjpe_mm"))
                        for name, b in (s.get("baselines") or {}).items()}  # fmt: skip
    for extra in ("translation", "prediction"):
        if isinstance(s.get(extra), dict):
            out[extra] = {k: v for k, v in s[extra].items() if not isinstance(v, (dict, list))}
    return out


def section_small_handworld(args, ctx: dict[str, Any]) -> dict[str, Any]:
    from handvla.demo import DemoConfig

    hw = ctx["sizes"]["handworld"]
    mod, src = _load_vla_learning()
    fields = set(DemoConfig.model_fields)
    sets: list[str] = []
    notes: list[str] = []
    preset_fields = sorted(f for f in fields if "preset" in f and not f.startswith("tokenizer"))
    wanted = "tiny" if args.tiny else "small"
    if args.tiny:
        sets += ["tokenizer_preset=tiny", f"tokenizer_minutes={hw['tokenizer_minutes']}", "tokenizer_codebook_size=16",
                 "vla_tile=56", "workers=1", "tokenizer_builtin_sequences=8"]  # fmt: skip
    else:
        sets += [f"tokenizer_minutes={hw['tokenizer_minutes']}", f"workers={min(8, os.cpu_count() or 2)}"]
        if preset_fields:
            sets.append(f"{preset_fields[0]}={wanted}")
            sets.append("vla_tile=224")  # the small preset's own tile: 64 visual tokens
        else:
            notes.append("handvla.demo.DemoConfig has no field for the VLA preset: the demo's own preset was "
                         "trained (see 'preset', read from the checkpoint)")  # fmt: skip
        prec = sorted(f for f in fields if "precision" in f)
        if prec and ctx["device"].type == "cuda":
            sets.append(f"{prec[0]}=bf16")
    sets = [s for s in sets if s.split("=", 1)[0] in fields]  # only fields that exist
    sets += list(args.handworld_set or [])
    # time: whatever is left of the script's budget, less the data, tokenizer and evaluation around training
    left_min = (ctx["deadline"] - time.perf_counter()) / 60
    reserve_min = 0.3 if args.tiny else hw["tokenizer_minutes"] + 2.0
    cap = args.handworld_minutes if args.handworld_minutes is not None else (0.2 if args.tiny else 4.0)
    minutes = max(0.1 if args.tiny else 0.5, min(cap, left_min - reserve_min))
    work = ctx["work"] / "handworld"
    argv = ["--out", str(work), "--train-episodes", str(hw["train"]), "--heldout-episodes", str(hw["heldout"]),
            "--unseen-episodes", str(hw["unseen"]), "--steps", str(args.handworld_steps or hw["steps"]),
            "--minutes", f"{minutes:.3f}", "--no-unaligned"]  # fmt: skip
    for flag, key in (("--translation-episodes", "translation"), ("--prediction-episodes", "prediction")):
        if flag in src:
            argv += [flag, str(hw[key])]
    if args.threads and "--threads" in src:
        argv += ["--threads", str(args.threads)]
    for s in sets:
        argv += ["--set", s]
    _log(f"small_handworld: vla_learning.main({' '.join(argv)})")
    t0 = time.perf_counter()
    res = mod.main(argv)
    wall = time.perf_counter() - t0
    _write_json(ctx["out"] / "small_handworld_full.json", res)
    preset_used = None
    cfg_path = work / "aligned" / "vla" / "final" / "config.json"
    if cfg_path.is_file():
        preset_used = json.loads(cfg_path.read_text()).get("preset")
    if preset_used != wanted and not args.tiny:
        notes.append(f"wanted the '{wanted}' preset, trained '{preset_used}'")
    tr = (res.get("trainings") or {}).get("aligned") or {}
    evals = tr.get("eval") or {}
    curve = tr.get("learning_curve") or []
    return {
        "preset": preset_used,
        "preset_note": "; ".join(notes) or None,
        "vla_learning_argv": argv,
        "train_minutes_budget": minutes,
        "train": tr.get("train"),
        "train_wall_seconds": tr.get("train_wall_seconds"),
        "last_logged": curve[-1] if curve else None,
        "eval": {name: _store_headline(s) for name, s in evals.items() if name != "heldout_images_shuffled"},
        "heldout_images_shuffled": evals.get("heldout_images_shuffled"),
        "tokenizer": _pick(res.get("tokenizer"), ("mpjpe_mm", "pa_mpjpe_mm", "mwte_mm", "steps", "minutes")),
        "data_seconds": res.get("data_seconds"),
        "vla_learning_seconds": wall,
        "full_result": "small_handworld_full.json",
    }


# ---- main -----------------------------------------------------------------------------------------------

RUNNERS = {
    "train_throughput": section_train_throughput,
    "generation": section_generation,
    "small_handworld": section_small_handworld,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_vla.json (and small_handworld_full.json)")
    p.add_argument("--work", default=None, help="scratch folder (default: a new temp folder)")
    p.add_argument("--tiny", action="store_true", help="CPU-sized check: tiny preset, 56-px tiles, 2 steps")
    p.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    p.add_argument("--budget-minutes", type=float, default=7.5, help="whole-script budget (sizes section 3)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 with --tiny)")
    p.add_argument("--preset", default=None, help="override the model preset of sections 1-2")
    p.add_argument("--tile", type=int, default=None, help="override the image tile side of sections 1-2")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 20; tiny 2)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed training steps first (default 3; tiny 1)"
    )
    p.add_argument("--rows", type=int, default=None, help="packed rows per step (default 8; tiny 2)")
    p.add_argument(
        "--pack-length", type=int, default=None, help="tokens per packed row (default 2048; tiny 1024)"
    )
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: by name)"
    )
    p.add_argument("--gen-batches", default=None, help="generation batch sizes (default 1,32)")
    p.add_argument("--gen-repeats", type=int, default=None, help="timed generations per batch size")
    p.add_argument(
        "--handworld-minutes", type=float, default=None, help="cap on section 3's training minutes"
    )
    p.add_argument("--handworld-steps", type=int, default=None, help="section 3's step cap (default 4000)")
    p.add_argument("--handworld-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra DemoConfig override for section 3")  # fmt: skip
    a = p.parse_args(argv)
    names = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        p.error(f"--sections: expected names from {','.join(SECTIONS)}, got {a.sections!r}")
    a.section_list = [s for s in SECTIONS if s in names]
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    t_start = time.perf_counter()
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_vla_"))
    work.mkdir(parents=True, exist_ok=True)
    threads = args.threads or (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
        args.threads = threads
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "benchmark": "gpu_vla",
        "mode": "tiny" if args.tiny else "full",
        "sections_requested": args.section_list,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "work": str(work),
    }
    with _stdout_to_stderr():
        env = _environment(device)
        result["environment"] = env
        if device.type != "cuda" and not args.tiny:
            result["warning"] = "no CUDA device: the full sizes on a CPU take hours; use --tiny for a check"
        ctx = {"device": device, "sizes": SIZES["tiny" if args.tiny else "full"], "env": env, "out": out,
               "work": work, "deadline": t_start + 60 * args.budget_minutes}  # fmt: skip
        for name in args.section_list:
            if name == "small_handworld":  # the 1B model is not needed any more
                ctx.pop("bundle", None)
                _free_memory()
            _log(f"section {name} ...")
            t0 = time.perf_counter()
            try:
                sec = RUNNERS[name](args, ctx)
                sec["ok"] = True
            except (Exception, SystemExit) as e:
                sec = {"ok": False, "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc(limit=8)[-3000:]}  # fmt: skip
                _log(f"section {name} failed: {sec['error']}")
                _free_memory()
            sec["seconds"] = time.perf_counter() - t0
            result[name] = sec
            result["total_seconds"] = time.perf_counter() - t_start
            _write_json(out / RESULT_NAME, result)
            _log(f"section {name}: {'ok' if sec['ok'] else 'FAILED'} in {sec['seconds']:.1f} s")
        ctx.clear()
    result["total_seconds"] = time.perf_counter() - t_start
    _write_json(out / RESULT_NAME, result)
    print(json.dumps(_jsonable(result), indent=1), flush=True)
    return result


if __name__ == "__main__":
    main()
