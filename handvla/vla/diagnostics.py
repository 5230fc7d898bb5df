"""Is a motion VLA using its input? Probes that a model which ignores the image or the instruction fails.

`input_sensitivity` generates motion for a set of (image, instruction, hand mode) requests three times:
as given, with every image replaced by the next request's image (instruction kept), and with every
instruction replaced by the next request's instruction (image kept); it reports how far the generated
final wrist position moves (metres, camera frame) under each swap. A model that reads its input moves
(centimetres on HandWorld, where objects are 10-50 cm apart); an input-blind model returns the same motion
and scores 0. ``handvla.vla.evaluate.evaluate_handworld(shuffle_images=True)`` is the scored counterpart:
target accuracy with each episode's image swapped for another's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from handvla.errors import InputError
from handvla.vla.generation import generate_motion


def final_wrists_and_texts(
    bundle, images, tasks, modes, seconds: int, batch_size: int = 8, prefixes=None
) -> tuple[np.ndarray, list[str]]:
    """(N, 3) final wrist position (metres, camera frame) of the first hand of each request (greedy,
    constrained generation of ``seconds`` seconds; its last block decoded by the bundle's motion tokenizer,
    `MotionTokenizer.final_wrist_positions`; the wrist joint does not depend on the hand shape), and each
    answer's text before its motion (``MotionGeneration.prefix_texts``). ``prefixes``: per request, text the
    answer is made to start with (`generate_motion`)."""
    out, texts = [], []
    mt = bundle.motion_tokenizer
    for b in range(0, len(tasks), batch_size):
        sl = slice(b, b + batch_size)
        gen = generate_motion(bundle.model, bundle.processor, list(images[sl]), list(tasks[sl]), seconds,
                              list(modes[sl]), prefixes=None if prefixes is None else list(prefixes[sl]))  # fmt: skip
        texts.extend(gen.prefix_texts)
        last = np.stack([ids[-1, 0] for ids in gen.motion])  # the first hand's last block
        out.append(mt.final_wrist_positions(last, [hands[0] for hands in gen.hands]))
    return (np.concatenate(out) if out else np.zeros((0, 3))), texts


def final_wrist_positions(bundle, images, tasks, modes, seconds: int, batch_size: int = 8, prefixes=None) -> np.ndarray:
    """`final_wrists_and_texts` without the texts."""
    return final_wrists_and_texts(bundle, images, tasks, modes, seconds, batch_size, prefixes)[0]


@torch.no_grad()
def input_sensitivity(
    bundle,
    requests: Sequence[tuple[Image.Image | np.ndarray, str, str]],
    seconds: int = 2,
    batch_size: int = 8,
) -> dict[str, Any]:
    """How much generated motion depends on the image and on the instruction.

    ``requests``: (image as the model sees it, instruction, hand mode), at least two. Returns
    ``image_swap_final_wrist_change_m`` / ``instruction_swap_final_wrist_change_m`` (mean distance between
    the final wrist of the original request and of the swapped one), the per-request values, and
    ``final_wrist_spread_m`` (mean distance of the original final wrists to their mean)."""
    if len(requests) < 2:
        raise InputError("input_sensitivity", "requests", "at least two (image, instruction, mode)", str(len(requests)))
    images = [r[0] for r in requests]
    tasks = [r[1] for r in requests]
    modes = [r[2] for r in requests]
    n = len(requests)
    nxt = [(i + 1) % n for i in range(n)]
    was = bundle.model.training
    bundle.model.eval()
    base = final_wrist_positions(bundle, images, tasks, modes, seconds, batch_size)
    img_swap = final_wrist_positions(bundle, [images[j] for j in nxt], tasks, modes, seconds, batch_size)
    txt_swap = final_wrist_positions(bundle, images, [tasks[j] for j in nxt], modes, seconds, batch_size)
    bundle.model.train(was)
    d_img = np.linalg.norm(img_swap - base, axis=1)
    d_txt = np.linalg.norm(txt_swap - base, axis=1)
    return {
        "requests": n,
        "image_swap_final_wrist_change_m": float(d_img.mean()),
        "instruction_swap_final_wrist_change_m": float(d_txt.mean()),
        "final_wrist_spread_m": float(np.linalg.norm(base - base.mean(0), axis=1).mean()),
        "per_request": {"image_swap_m": d_img.round(4).tolist(), "instruction_swap_m": d_txt.round(4).tolist()},
    }


__all__ = ["final_wrist_positions", "final_wrists_and_texts", "input_sensitivity"]
