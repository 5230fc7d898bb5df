"""Being-H0's released VLA checkpoints -> handvla VLA checkpoints (``handvla convert being-h0``).

The release (GitHub BeingBeyond/Being-H, branch being-h0; weights Being-H0-1B/8B/14B-2508) keeps the
InternVL *chat-model* layout of OpenGVLab's remote code (``InternVLChatModel``):

- ``config.json`` with ``vision_config`` (InternViT: ``hidden_size``, ``qkv_bias``, ``norm_type``,
  ``qk_normalization``, ...), ``llm_config`` (a Qwen2 config), ``downsample_ratio``, ``select_layer``,
  ``ps_version``, ``template``, ``force_image_size``, ``min_dynamic_patch`` / ``max_dynamic_patch``,
  ``use_thumbnail`` (the release's modular ``BeingVLAConfig`` may nest the two sub-configs under
  ``vlm_config``; both are read);
- weights as safetensors, one file or shards with ``model.safetensors.index.json`` (torch pickles only when
  ``torch.load(weights_only=True)`` reads them: no pickled code runs), under the chat model's names:
  ``vision_model.*`` (InternViT with a fused ``attn.qkv`` and layer scales ``ls1`` / ``ls2``), ``mlp1.{0,1,3}.*``
  (LayerNorm, Linear, GELU, Linear), ``language_model.model.*`` and ``language_model.lm_head.weight``. The
  release's adapter prefixes (``vlm_adapter._vision_model.`` ...) and DeepSpeed's ``module.`` are read as
  the same names; its motion-model tensors (``vq_model.*`` ...) are skipped: the motion tokenizer comes
  converted from ``handvla tokenizer convert --from being-h0``;
- a Qwen2 tokenizer extended with ``<mot>``, ``<motion_id_0>`` .. ``<motion_id_{K-1}>``, ``<MOT_NOOP>``,
  ``</mot>`` at contiguous ids (motion id i is token ``i + mot_start_id + 1``).

The conversion maps every tensor to transformers' InternVL names (the ``qkv`` rows split into q, k, v;
``ls1`` -> ``lambda_1``; ``mlp1.0/1/3`` -> the projector's ``layer_norm`` / ``linear_1`` / ``linear_2``; the LLM
under ``model.language_model``), checks each name and shape against the model the config describes (built
on the meta device, no memory), and writes the output as it reads the input, tensor by tensor (one
release shard open at a time), in output shards of a bounded size: the model is never held whole. The vocabulary is kept as it is: handvla reads motion ids by token string
(`MotionVocab`), so every motion id keeps its token id, embedding row and output row, and the converted
model gives the release's logits and ids. The text tokenizer is saved with the checkpoint and the motion
tokenizer under ``motion_tokenizer/`` (`load_vla` reads the folder).
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import GenerationConfig, Qwen2Config

from handvla.atomic import atomic_dir, atomic_write_text, read_json
from handvla.errors import CheckpointError, MissingResourceError
from handvla.tokenizer.being_h0 import convert_release
from handvla.tokenizer.loading import load_tokenizer
from handvla.tokenizer.modeling import CONFIG_NAME as TOKENIZER_CONFIG_NAME
from handvla.vla.configuration import (
    IM_END_TOKEN,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    MOT_END_TOKEN,
    MOT_NOOP_TOKEN,
    MOT_START_TOKEN,
    HandVLAConfig,
    motion_token,
)
from handvla.vla.modeling import MOTION_TOKENIZER_DIR, HandVLAForConditionalGeneration
from handvla.vla.text_tokenizer import MotionVocab, add_motion_tokens, load_text_tokenizer

CONFIG_NAME = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"

#: prefixes of the release's modular model (and DeepSpeed's) -> the chat model's names
PREFIX_ALIASES = (
    ("vlm_adapter._vision_model.", "vision_model."),
    ("vlm_adapter._language_model.", "language_model."),
    ("vlm_adapter.mlp1.", "mlp1."),
)
#: tensors of the release's motion model, which the converted motion tokenizer replaces
MOTION_MODEL_PREFIXES = ("vq_model.", "mano_model.", "motion_adapter.")
MOTION_MODEL_SCALARS = ("upsample_ratio", "num_joints")
#: the system message of the release's chat templates (its conversation.py), by ``template`` name
TEMPLATE_SYSTEM_PROMPTS = {
    "being_h0": "You are Being-H0, a helpful and harmless AI assistant developed by BeingBeyond.",
    "internvl2_5": (
        "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
    ),
}
#: llm_config keys that describe the release's training setup, not the network
_LLM_DROP = ("_name_or_path", "auto_map", "architectures", "attn_implementation", "_attn_implementation_autoset",
             "use_bfloat16", "transformers_version")  # fmt: skip
_KNOWN_TEXT = "vision_model.*, mlp1.{0,1,3}.*, language_model.model.* or language_model.lm_head.weight"

# name rules: (regex on the chat model's name, the transformers name); full matches only
_L = r"vision_model\.encoder\.layers\.(\d+)\."
_VT = "model.vision_tower."
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(a), b)
    for a, b in (
        (r"vision_model\.embeddings\.class_embedding", _VT + "embeddings.cls_token"),
        (r"vision_model\.embeddings\.position_embedding", _VT + "embeddings.position_embeddings"),
        (r"vision_model\.embeddings\.patch_embedding\.(weight|bias)", _VT + r"embeddings.patch_embeddings.projection.\1"),
        (_L + r"ls([12])", _VT + r"encoder.layer.\1.lambda_\2"),
        (_L + r"norm1\.(weight|bias)", _VT + r"encoder.layer.\1.layernorm_before.\2"),
        (_L + r"norm2\.(weight|bias)", _VT + r"encoder.layer.\1.layernorm_after.\2"),
        (_L + r"attn\.proj\.(weight|bias)", _VT + r"encoder.layer.\1.attention.projection_layer.\2"),
        (_L + r"attn\.([qk])_norm\.(weight|bias)", _VT + r"encoder.layer.\1.attention.\2_norm.\3"),
        (_L + r"attn\.qkv\.(weight|bias)", _VT + r"encoder.layer.\1.attention.{}_proj.\2"),  # split in 3
        (_L + r"mlp\.fc([12])\.(weight|bias)", _VT + r"encoder.layer.\1.mlp.fc\2.\3"),
        (r"mlp1\.0\.(weight|bias)", r"model.multi_modal_projector.layer_norm.\1"),
        (r"mlp1\.1\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1"),
        (r"mlp1\.3\.(weight|bias)", r"model.multi_modal_projector.linear_2.\1"),
        (r"language_model\.model\.(.+)", r"model.language_model.\1"),
        (r"language_model\.lm_head\.weight", "lm_head.weight"),
    )
)  # fmt: skip
#: non-persistent buffers older checkpoints hold (recomputed from the config)
_BUFFER = re.compile(r"language_model\.model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq")


def canonical_name(key: str) -> str | None:
    """The chat model's name of a stored tensor (``module.`` and the adapter prefixes removed), or None for
    a tensor of the release's motion model (skipped)."""
    if key.startswith("module."):
        key = key[len("module.") :]
    for old, new in PREFIX_ALIASES:
        if key.startswith(old):
            return new + key[len(old) :]
    if key.startswith(MOTION_MODEL_PREFIXES) or key in MOTION_MODEL_SCALARS:
        return None
    return key


def map_tensor(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]] | None:
    """transformers InternVL (name, tensor) pairs for one tensor under its chat-model ``name`` (the fused
    ``attn.qkv`` gives three: its rows are q, k, v in that order). None: not a tensor of the chat model."""
    for pattern, target in _RULES:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        new = m.expand(target)
        if "{}" in new:
            if tensor.shape[0] % 3:
                return [(new.format("qkv"), tensor)]  # the shape check names it
            q, k, v = tensor.chunk(3, dim=0)
            return [(new.format(p), t.contiguous()) for p, t in zip("qkv", (q, k, v))]
        return [(new, tensor)]
    return None


# ---- config ----------------------------------------------------------------------------------------------


def _need(d: dict, key: str, where: Path, field: str, kind: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise CheckpointError(f"{where}: field '{field}': missing")
    v = d[key]
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise CheckpointError(
            f"{where}: field '{field}': expected {getattr(kind, '__name__', kind)}, got {v!r}"
        )
    return v


def _sub_configs(raw: dict, path: Path) -> tuple[dict, dict, str]:
    """(vision_config, llm_config, the prefix of their fields' names) of a chat-model config.json."""
    if isinstance(raw.get("vision_config"), dict) and isinstance(raw.get("llm_config"), dict):
        return raw["vision_config"], raw["llm_config"], ""
    nested = raw.get("vlm_config")
    if isinstance(nested, dict) and isinstance(nested.get("vision_config"), dict):
        if isinstance(nested.get("llm_config"), dict):
            return nested["vision_config"], nested["llm_config"], "vlm_config."
    field = "vision_config" if not isinstance(raw.get("vision_config"), dict) else "llm_config"
    raise CheckpointError(
        f"{path}: field '{field}': missing (expected an InternVL chat-model config with vision_config and "
        f"llm_config, got keys {sorted(raw)[:8]})"
    )


def handvla_config(raw: dict, path: Path, vocab: MotionVocab, motion_fps: int) -> HandVLAConfig:
    """The `HandVLAConfig` of a chat-model ``config.json`` (parsed as ``raw``, read from ``path``) with the
    token ids of ``vocab`` (read from the release's tokenizer)."""
    vision, llm, pre = _sub_configs(raw, path)
    top = raw if not pre else {**raw, **raw["vlm_config"]}
    v = lambda key, kind=int: _need(vision, key, path, f"{pre}vision_config.{key}", kind)  # noqa: E731
    ps = top.get("ps_version", "v2")
    if ps != "v2":
        raise CheckpointError(
            f"{path}: field 'ps_version': expected 'v2' (transformers' pixel shuffle), got {ps!r}"
        )
    arch = (llm.get("architectures") or ["Qwen2ForCausalLM"])[0]
    if arch != "Qwen2ForCausalLM" or llm.get("model_type", "qwen2") != "qwen2":
        raise CheckpointError(
            f"{path}: field '{pre}llm_config.architectures': expected Qwen2ForCausalLM (Being-H0's LLM), got {arch!r}"
        )
    image_size = top.get("force_image_size") or v("image_size")
    norm_type = v("norm_type", str)
    if norm_type not in ("layer_norm", "rms_norm"):
        raise CheckpointError(
            f"{path}: field '{pre}vision_config.norm_type': expected 'layer_norm' or 'rms_norm', got {norm_type!r}"
        )
    vision_cfg = dict(
        hidden_size=v("hidden_size"),
        intermediate_size=v("intermediate_size"),
        num_hidden_layers=v("num_hidden_layers"),
        num_attention_heads=v("num_attention_heads"),
        image_size=int(image_size),
        patch_size=v("patch_size"),
        num_channels=int(vision.get("num_channels", 3)),
        attention_bias=v("qkv_bias", bool),
        use_qk_norm=bool(vision.get("qk_normalization", False)),
        norm_type=norm_type,
        layer_norm_eps=float(vision.get("layer_norm_eps", 1e-6)),
        hidden_act=str(vision.get("hidden_act", "gelu")),
        attention_dropout=float(vision.get("attention_dropout", 0.0)),
        projection_dropout=float(vision.get("dropout", 0.0)),
        use_mean_pooling=True,  # the chat model uses the last hidden state as it is (no final norm)
        use_absolute_position_embeddings=True,
    )
    _need(llm, "vocab_size", path, f"{pre}llm_config.vocab_size", int)
    text = Qwen2Config(**{k: x for k, x in llm.items() if k not in _LLM_DROP and k != "model_type"}).to_dict()
    tied = bool(llm.get("tie_word_embeddings", False))
    text["tie_word_embeddings"] = tied
    ratio = float(top.get("downsample_ratio", 0.5))
    template = top.get("template")
    min_tiles = int(top.get("min_dynamic_patch", 1))
    max_tiles = int(top.get("max_dynamic_patch", 12)) if top.get("dynamic_image_size", True) else 1
    try:
        config = HandVLAConfig(
            vision_config=vision_cfg,
            text_config=text,
            downsample_ratio=ratio,
            projector_hidden_act="gelu",
            vision_feature_layer=int(top.get("select_layer", -1)),
            vision_feature_select_strategy="default",
            image_token_id=vocab.img_context_id,
            tie_word_embeddings=tied,
            motion_token_layout=vocab.layout.to_dict(),
            motion_fps=motion_fps,
            min_tiles=min_tiles,
            max_tiles=max(max_tiles, min_tiles),
            use_thumbnail=bool(top.get("use_thumbnail", True)),
            system_prompt=TEMPLATE_SYSTEM_PROMPTS.get(template, HandVLAConfig.system_prompt),
        )
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError
        raise CheckpointError(
            f"{path}: does not describe an InternVL model: {str(e).splitlines()[0]}"
        ) from None
    vocab.write_to_config(config)
    config.preset = None
    return config


# ---- tokenizer -----------------------------------------------------------------------------------------


def release_vocab(tok_dir: Path, tokenizer: Any, num_motion_ids: int, mt_where: Path) -> tuple[int, int]:
    """Check the release's motion vocabulary against the motion tokenizer's id count: ``<mot>``, then
    ``<motion_id_0>`` .. ``<motion_id_{K-1}>`` at ``mot_start_id + 1 + i``, then ``<MOT_NOOP>``, ``</mot>``.
    Returns (mot_start_id, K)."""
    vocab = tokenizer.get_vocab()
    tfile = tok_dir / (
        "tokenizer.json" if (tok_dir / "tokenizer.json").is_file() else "tokenizer_config.json"
    )
    for tok in (IM_END_TOKEN, IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN, MOT_START_TOKEN, MOT_END_TOKEN,
                MOT_NOOP_TOKEN, motion_token(0)):  # fmt: skip
        if tok not in vocab:
            raise CheckpointError(
                f"{tfile}: field '{tok}': missing from the vocabulary (a Being-H0 tokenizer has it)"
            )
    n = sum(1 for t in vocab if t.startswith("<motion_id_") and t.endswith(">"))
    if n != num_motion_ids:
        raise CheckpointError(
            f"{tfile}: field '<motion_id_*>': expected {num_motion_ids} motion tokens (the id count of the motion "
            f"tokenizer {mt_where}), got {n}"
        )
    start = int(vocab[MOT_START_TOKEN])
    for i in range(n):
        if vocab.get(motion_token(i)) != start + 1 + i:
            raise CheckpointError(
                f"{tfile}: field '{motion_token(i)}': expected id {start + 1 + i} (<mot> = {start} + 1 + {i}), "
                f"got {vocab.get(motion_token(i))}"
            )
    for tok, want in ((MOT_NOOP_TOKEN, start + n + 1), (MOT_END_TOKEN, start + n + 2)):
        if vocab[tok] != want:
            raise CheckpointError(
                f"{tfile}: field '{tok}': expected id {want} (after the motion ids), got {vocab[tok]}"
            )
    return start, n


def read_motion_tokenizer(src: str | Path) -> Any:
    """A converted motion tokenizer folder (config.json), or the release's ``wrist/`` + ``finger/`` folders
    (``DIR`` holding both, or ``WRIST_DIR+FINGER_DIR``), converted here."""
    p = Path(src)
    if "+" not in str(src) and not p.is_dir():
        raise MissingResourceError(f"{p}: motion tokenizer folder not found (--tokenizer)")
    if p.is_dir() and (p / TOKENIZER_CONFIG_NAME).is_file():
        return load_tokenizer(p)
    return convert_release(src)


# ---- weights -------------------------------------------------------------------------------------------


def weight_files(src: Path) -> tuple[list[Path], dict[str, str] | None, Path | None]:
    """(weight files in order, the index's weight_map or None, the index path or None)."""
    for index_name, single in ((SAFETENSORS_INDEX, SAFETENSORS_SINGLE), (PICKLE_INDEX, PICKLE_SINGLE)):
        index = src / index_name
        if index.is_file():
            raw = read_json(index, dict, CheckpointError)
            wm = raw.get("weight_map")
            if not isinstance(wm, dict) or not wm or not all(isinstance(x, str) for x in wm.values()):
                raise CheckpointError(
                    f"{index}: field 'weight_map': expected a mapping tensor name -> file name"
                )
            files = []
            for name in dict.fromkeys(wm.values()):
                f = src / name
                if not f.is_file() or Path(name).name != name:
                    key = next(k for k, x in wm.items() if x == name)
                    raise MissingResourceError(
                        f"{index}: field 'weight_map.{key}': the shard file {f} is missing"
                    )
                files.append(f)
            return files, wm, index
        if (src / single).is_file():
            return [src / single], None, None
    shards = sorted(src.glob("*.safetensors"))
    if len(shards) == 1:
        return shards, None, None
    raise MissingResourceError(
        f"{src}: no weights: expected {SAFETENSORS_INDEX} with its shards, {SAFETENSORS_SINGLE}, "
        f"or (weights-only pickles) {PICKLE_INDEX} / {PICKLE_SINGLE}"
    )


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A torch pickle of tensors, read with ``weights_only=True`` (memory-mapped): a pickle that refers to
    code is refused and nothing in it runs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # legacy (non-zip) format cannot be memory-mapped
                if "mmap" not in str(e):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = re.search(r"GLOBAL (\S+)", str(e))
        what = f"refers to code ({code.group(1)})" if code else "is not weights-only"
        raise CheckpointError(
            f"{path}: field 'state_dict': expected plain tensors, but the pickle {what}; it was not run "
            "(read with torch.load(weights_only=True))"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: field 'state_dict': expected a mapping of names to tensors")
    return obj


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of one weight file, one tensor read at a time for safetensors."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except SafetensorError as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    else:
        yield from _read_pickle(path).items()


def expected_tensors(config: HandVLAConfig) -> dict[str, tuple[tuple[int, ...], bool]]:
    """name -> (shape, optional) of the tensors `save_vla` would write for ``config``: the model built on
    the meta device (no memory); a tied LM head is optional."""
    with torch.device("meta"):
        model = HandVLAForConditionalGeneration(config)
    out = {k: (tuple(t.shape), False) for k, t in model.state_dict().items()}
    if config.tie_word_embeddings and "lm_head.weight" in out:
        out["lm_head.weight"] = (out["lm_head.weight"][0], True)
    return out


#: output shards are cut at this size (safetensors serialises a whole output shard in memory)
DEFAULT_MAX_SHARD_BYTES = 512 * 2**20


def convert_weights(
    src: Path,
    out: Path,
    expected: dict[str, tuple[tuple[int, ...], bool]],
    cfg_path: Path,
    log: Callable[[str], None] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> dict[str, Any]:
    """Map and write the weights of ``src`` into ``out`` as they are read (tensor by tensor for safetensors),
    in output shards of at most ``max_shard_bytes`` (one tensor may exceed it) plus the index; every name
    and shape checked against ``expected``. Returns counts."""
    files, weight_map, index = weight_files(src)
    done: dict[str, str] = {}
    skipped = total = 0
    dtypes: dict[str, int] = {}
    parts: list[tuple[Path, list[str]]] = []
    pending: dict[str, torch.Tensor] = {}
    pending_bytes = 0
    tied_head = expected.get("lm_head.weight", ((), False))[1]

    def flush() -> None:
        nonlocal pending, pending_bytes
        if pending:
            part = out / f".part-{len(parts):05d}.safetensors"
            save_file(pending, str(part), metadata={"format": "pt"})
            parts.append((part, list(pending)))
            if log:
                log(f"wrote {len(pending)} tensors ({pending_bytes / 2**20:.0f} MiB)")
        pending, pending_bytes = {}, 0

    for path in files:
        seen: set[str] = set()
        for key, tensor in iter_tensors(path):
            seen.add(key)
            if weight_map is not None and weight_map.get(key) != path.name:
                raise CheckpointError(
                    f"{index}: field 'weight_map.{key}': expected {path.name} (the file that holds it), got "
                    f"{weight_map.get(key)!r}"
                )
            chat = canonical_name(key)
            if chat is None or _BUFFER.fullmatch(chat):
                skipped += 1
                continue
            if chat == "language_model.lm_head.weight" and tied_head:
                skipped += 1  # the LLM ties its head to the embeddings
                continue
            pairs = map_tensor(chat, tensor)
            if pairs is None:
                raise CheckpointError(
                    f"{path}: field '{key}': not a tensor of the Being-H0 chat model (expected {_KNOWN_TEXT})"
                )
            for new, t in pairs:
                if new not in expected:
                    raise CheckpointError(
                        f"{path}: field '{key}': no such tensor in the model {cfg_path} describes ({new})"
                    )
                shape = expected[new][0]
                if tuple(t.shape) != shape:
                    raise CheckpointError(
                        f"{path}: field '{key}': expected shape {shape} (from {cfg_path}), got {tuple(t.shape)}"
                    )
                if not t.dtype.is_floating_point:
                    raise CheckpointError(
                        f"{path}: field '{key}': expected floating-point values, got {t.dtype}"
                    )
                if new in done:
                    raise CheckpointError(f"{path}: field '{key}': {new} already came from {done[new]}")
                done[new] = path.name
                nbytes = t.numel() * t.element_size()
                dtypes[str(t.dtype)] = dtypes.get(str(t.dtype), 0) + t.numel()
                if pending and pending_bytes + nbytes > max_shard_bytes:
                    flush()
                pending[new] = t
                pending_bytes += nbytes
                total += nbytes
            del tensor, pairs
        if weight_map is not None:
            lost = sorted(k for k, f in weight_map.items() if f == path.name and k not in seen)
            if lost:
                raise CheckpointError(f"{index}: field 'weight_map.{lost[0]}': not in {path}")
    missing = sorted(k for k, (_s, optional) in expected.items() if not optional and k not in done)
    if missing:
        where = index or files[0]
        raise CheckpointError(
            f"{where}: field '{_release_name(missing[0])}': missing (needed by the model {cfg_path} describes; "
            f"{len(missing)} missing in all)"
        )
    flush()
    out_map: dict[str, str] = {}
    for n, (part, keys) in enumerate(parts):
        name = SAFETENSORS_SINGLE if len(parts) == 1 else f"model-{n + 1:05d}-of-{len(parts):05d}.safetensors"
        part.rename(out / name)
        out_map |= dict.fromkeys(keys, name)
    if len(parts) > 1:
        idx = {"metadata": {"total_size": total}, "weight_map": dict(sorted(out_map.items()))}
        atomic_write_text(out / SAFETENSORS_INDEX, json.dumps(idx, indent=2), durable=False)
    dtype = max(dtypes, key=dtypes.get).removeprefix("torch.")
    return {"tensors": len(done), "skipped": skipped, "bytes": total, "shards": len(parts), "dtype": dtype}


def _release_name(new: str) -> str:
    """The chat-model name a transformers name comes from (for error messages)."""
    for pat, rep in (
        (r"model\.vision_tower\.encoder\.layer\.(\d+)\.attention\.[qkv]_proj\.(\w+)", r"vision_model.encoder.layers.\1.attn.qkv.\2"),
        (r"model\.vision_tower\.encoder\.layer\.(\d+)\.lambda_(\d)", r"vision_model.encoder.layers.\1.ls\2"),
        (r"model\.multi_modal_projector\.layer_norm\.(\w+)", r"mlp1.0.\1"),
        (r"model\.multi_modal_projector\.linear_1\.(\w+)", r"mlp1.1.\1"),
        (r"model\.multi_modal_projector\.linear_2\.(\w+)", r"mlp1.3.\1"),
        (r"model\.language_model\.(.+)", r"language_model.model.\1"),
        (r"lm_head\.weight", "language_model.lm_head.weight"),
    ):  # fmt: skip
        if re.fullmatch(pat, new):
            return re.sub(pat, rep, new)
    return new


# ---- the conversion ------------------------------------------------------------------------------------


def convert_being_h0(
    src: str | Path,
    tokenizer: str | Path,
    out: str | Path,
    log: Callable[[str], None] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> dict[str, Any]:
    """Convert the Being-H0 chat-model checkpoint in ``src`` with the motion tokenizer ``tokenizer`` (a
    converted folder, or the release's part folders) into a handvla VLA checkpoint folder ``out``, written
    atomically, in output shards of at most ``max_shard_bytes``. Returns a summary (sizes, ids, seconds). Errors are one line naming the file and field."""
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise MissingResourceError(f"{src}: Being-H0 checkpoint folder not found (--src)")
    cfg_path = src / CONFIG_NAME
    if not cfg_path.is_file():
        raise MissingResourceError(
            f"{cfg_path}: missing (a Being-H0 checkpoint has its chat-model config there)"
        )
    raw = read_json(cfg_path, dict, CheckpointError)
    _sub_configs(raw, cfg_path)
    mt = read_motion_tokenizer(tokenizer)
    layout = mt.layout
    text_tok = load_text_tokenizer(src)
    mot_start, k = release_vocab(src, text_tok, layout.vocab_size, Path(tokenizer))
    vocab = add_motion_tokens(text_tok, layout)  # adds nothing (all present): checks and reads the ids
    fps = float(getattr(mt.config, "fps", 15))
    if fps != int(fps):
        raise CheckpointError(
            f"{tokenizer}: field 'fps': expected a whole number of frames per second, got {fps}"
        )
    config = handvla_config(raw, cfg_path, vocab, int(fps))
    rows = config.text_config.vocab_size
    if len(text_tok) > rows:
        raise CheckpointError(
            f"{cfg_path}: field 'llm_config.vocab_size': expected at least {len(text_tok)} (the tokenizer's size), "
            f"got {rows}"
        )
    expected = expected_tensors(config)
    with atomic_dir(out) as tmp:
        counts = convert_weights(src, tmp, expected, cfg_path, log, max_shard_bytes)
        config.has_motion_tokenizer = True
        # the weights' own dtype (what loading with dtype 'auto' gives), whatever the release's config says
        for c in (config, config.text_config, config.vision_config):
            c.dtype = counts["dtype"]
        config.architectures = [HandVLAForConditionalGeneration.__name__]
        config.save_pretrained(str(tmp))
        GenerationConfig(
            eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id, bos_token_id=config.text_config.bos_token_id
        ).save_pretrained(str(tmp))
        text_tok.save_pretrained(str(tmp))
        mt_src = Path(tokenizer)
        if mt_src.is_dir() and (mt_src / TOKENIZER_CONFIG_NAME).is_file():  # a converted folder: as it is
            shutil.copytree(mt_src, tmp / MOTION_TOKENIZER_DIR)
        else:
            mt.save_pretrained(tmp / MOTION_TOKENIZER_DIR)
    return {
        "out": str(out),
        **counts,
        "vision_layers": config.vision_config.num_hidden_layers,
        "llm_layers": config.text_config.num_hidden_layers,
        "llm_hidden_size": config.text_config.hidden_size,
        "vocab_rows": rows,
        "mot_start_id": mot_start,
        "motion_token_offset": vocab.motion_offset,
        "num_motion_ids": k,
        "seconds": time.perf_counter() - t0,
    }


__all__ = [
    "MOTION_MODEL_PREFIXES",
    "PREFIX_ALIASES",
    "TEMPLATE_SYSTEM_PROMPTS",
    "canonical_name",
    "convert_being_h0",
    "expected_tensors",
    "handvla_config",
    "map_tensor",
    "read_motion_tokenizer",
    "release_vocab",
    "weight_files",
]
