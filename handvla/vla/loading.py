"""What a training job built on the VLA takes from it: the VLA it starts from, the backbone layers FSDP2
shards, and the run summary it writes. Used by ``handvla pretrain`` (`handvla.vla.pretrain`) and
``handvla posttrain`` (`handvla.robot.posttrain`, which builds the robot policy on the VLA).

The YAML's ``model`` section names where the VLA comes from (`VLASource`: the pretrain job's
``ModelConfig`` and the policy's ``PolicyConfig`` both have these fields)::

    init_checkpoint   a handvla VLA checkpoint folder (`load_vla`)
    backbone          an InternVL3 -hf folder with real weights, extended with motion tokens (`vla_from_backbone`)
    preset            random initialisation (`build_vla`), the default ("tiny"); seed, text_vocab_size
    dtype             load dtype: float32, bfloat16, float16 (None: the weights' own)

``init_checkpoint`` or ``backbone`` wins over ``preset``; giving both of them is an error. A random preset
gets a BPE text tokenizer trained on ``DEFAULT_CORPUS`` plus the job's own texts: under ``torchrun`` rank 0
trains it and saves it under ``OUTPUT_DIR/text_tokenizer`` while the other ranks wait at the barrier and
then read it, and a resumed run reuses it, so token ids never change between sessions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from handvla.atomic import atomic_dir, atomic_write_text
from handvla.errors import CheckpointError, ConfigError
from handvla.tokenizer.loading import load_tokenizer
from handvla.vla.modeling import (
    MOTION_TOKENIZER_DIR,
    VLABundle,
    build_vla,
    extend_vocabulary,
    load_vla,
    vla_from_backbone,
)
from handvla.vla.processing import HandVLAProcessor
from handvla.vla.text_tokenizer import DEFAULT_CORPUS, build_text_tokenizer, load_text_tokenizer

#: the random preset's text tokenizer, under the run's output folder
TEXT_TOKENIZER_DIR = "text_tokenizer"


class VLASource(Protocol):
    """The fields of a ``model`` config section that say where the VLA comes from (see the module doc)."""

    init_checkpoint: str | None
    backbone: str | None
    preset: str | None
    seed: int
    dtype: str | None
    text_vocab_size: int


def load_initial_vla(
    source: VLASource,
    corpus: Sequence[str],
    out_dir: Path,
    is_main: bool,
    barrier: Callable[[], None],
    *,
    motion_tokenizer: str | Path | None = None,
    need_motion_tokenizer: bool = False,
    preset_overrides: dict[str, Any] | None = None,
    backbone_overrides: dict[str, Any] | None = None,
) -> VLABundle:
    """The `VLABundle` a training job starts from (see the module doc). ``corpus``: the job's texts for a
    random preset's text tokenizer; ``is_main`` / ``barrier``: this rank trains that tokenizer or waits for
    it. ``motion_tokenizer``: a MotionTokenizer folder, used instead of the checkpoint's. With
    ``need_motion_tokenizer`` the bundle must carry one (the given one, else the checkpoint's, loaded; a
    random preset needs the given one); without it a checkpoint's motion tokenizer is not loaded.
    ``preset_overrides``: `HandVLAConfig` fields over the preset's; ``backbone_overrides``: `HandVLAConfig`
    fields of a model extended from a backbone (`vla_from_backbone`)."""
    if source.init_checkpoint and source.backbone:
        raise ConfigError("model: give one of init_checkpoint and backbone (got both)")
    mt = load_tokenizer(motion_tokenizer) if motion_tokenizer else None
    dtype = None if source.dtype is None else getattr(torch, source.dtype)
    if source.init_checkpoint:
        load_mt = need_motion_tokenizer and mt is None
        bundle = load_vla(source.init_checkpoint, dtype=dtype, load_motion_tokenizer=load_mt)
        if mt is not None:
            _adopt_motion_tokenizer(bundle, mt, source.init_checkpoint, source.seed)
    elif source.backbone:
        bundle = vla_from_backbone(
            source.backbone, motion_tokenizer=mt, dtype=dtype, seed=source.seed, **(backbone_overrides or {})
        )
    else:
        if not source.preset:
            raise ConfigError("model: give an init_checkpoint, a backbone or a preset")
        if need_motion_tokenizer and mt is None:
            raise ConfigError("model.motion_tokenizer: a random preset needs a motion tokenizer folder")
        tok_dir = out_dir / TEXT_TOKENIZER_DIR
        if is_main and not (tok_dir / "tokenizer.json").is_file():
            tok = build_text_tokenizer(list(DEFAULT_CORPUS) + list(corpus), vocab_size=source.text_vocab_size)
            with atomic_dir(tok_dir) as tmp:
                tok.save_pretrained(str(tmp))
        barrier()
        bundle = build_vla(
            source.preset,
            tokenizer=load_text_tokenizer(tok_dir),
            motion_tokenizer=mt,
            seed=source.seed,
            dtype=dtype,
            **(preset_overrides or {}),
        )
    if need_motion_tokenizer and bundle.motion_tokenizer is None:
        raise CheckpointError(
            "model: no motion tokenizer (give model.motion_tokenizer or a checkpoint that holds motion_tokenizer/)"
        )
    return bundle


def _adopt_motion_tokenizer(bundle: VLABundle, mt: Any, checkpoint: str, seed: int) -> None:
    """Continue ``checkpoint`` with the motion tokenizer ``mt``: the same ids, or the same ids plus blocks'
    end-point ids (`TokenLayout.end_point_bins`), which grow the vocabulary (`extend_vocabulary`: new rows at
    the mean embedding); any other layout is a ConfigError."""
    old, new = bundle.model.config.motion_layout, mt.layout
    if not old.same_ids(new):
        base = dataclasses.replace(new, end_point_bins=0)
        if old.end_point_bins or not base.same_ids(old):
            raise ConfigError(
                f"model.motion_tokenizer: its ids ({new}) are not those of the init_checkpoint {checkpoint} "
                f"({old}), nor those plus end-point ids"
            )
        extend_vocabulary(bundle.model, bundle.processor.tokenizer, new, seed=seed)
        bundle.processor = HandVLAProcessor(bundle.processor.tokenizer, bundle.model.config)
    elif old.end_point_bins:
        _warn_if_end_points_differ(mt, checkpoint)
    bundle.motion_tokenizer = mt
    bundle.model.config.has_motion_tokenizer = True


#: the tokenizer fields that say which place an end-point id stands for
END_POINT_MEANING = ("end_point_space", "end_point_range", "end_point_frame")


def _warn_if_end_points_differ(mt: Any, checkpoint: str) -> None:
    """Warn when ``mt``'s end-point ids (same layout as ``checkpoint``'s tokenizer) stand for other places than
    those the checkpoint learned (another span, space or frame, `END_POINT_MEANING`): the model's place ids
    must then be relearned."""
    path = Path(checkpoint) / MOTION_TOKENIZER_DIR / "config.json"
    if not path.is_file():
        return
    try:
        was = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    now = mt.config.model_dump()
    differ = [k for k in END_POINT_MEANING if was.get(k, "hand" if k == "end_point_frame" else None) != now.get(k)]
    if differ:
        warnings.warn(
            f"model.motion_tokenizer: its end-point ids have the init_checkpoint {checkpoint}'s layout but other "
            f"meanings ({', '.join(f'{k}: {was.get(k)!r} -> {now.get(k)!r}' for k in differ)}): the place each "
            "id stands for changes, and the model learns it anew",
            stacklevel=3,
        )


def backbone_layer_types(model: nn.Module) -> tuple[type, ...]:
    """The classes of the backbone's repeated layers (the vision encoder's and the LLM's), which FSDP2
    shards one by one (``Trainer(layer_types=...)``): the ones transformers lists as never to be split
    across devices (``_no_split_modules`` of every pretrained model inside ``model``)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return tuple({type(module) for module in model.modules() if type(module).__name__ in names})


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write a run's summary as JSON, atomically: tensors and numpy scalars as numbers, NaN and infinities
    (a loss that never got measured) as null."""

    def jsonable(x):
        if isinstance(x, dict):
            return {str(k): jsonable(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [jsonable(v) for v in x]
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if hasattr(x, "item"):
            return x.item()
        return x

    atomic_write_text(path, json.dumps(jsonable(summary), indent=2))


__all__ = ["TEXT_TOKENIZER_DIR", "VLASource", "backbone_layer_types", "load_initial_vla", "write_summary"]
