"""The VLA as a robot policy (Being-H0 stage 3): proprioception token, action queries, regression head.

Sequence (the VLA's chat template; ``<image>`` expands to InternVL image tokens as in pretraining)::

    <|im_start|>system\\n...<|im_end|>\\n
    <|im_start|>user\\nIn <image>, {task}. The robot state is <PROP_CONTEXT>. What are the next {Na} actions?<|im_end|>\\n
    <|im_start|>assistant\\n<ACTION_CHUNK_0><ACTION_CHUNK_1>...<ACTION_CHUNK_{Na-1}><|im_end|>

- ``<PROP_CONTEXT>``: one token whose input embedding is replaced by ``fp(state)``, ``fp`` = Linear-ReLU-Linear
  from the normalised robot state (state_dim,) to the LLM width H.
- ``<ACTION_CHUNK_i>`` (i < Na): placeholder tokens whose input embeddings are replaced by Na learned query
  vectors ``action_queries`` (Na, H). The queries live outside the embedding table, so a frozen or LoRA
  backbone still trains them. Their last-layer hidden states go through ``fr`` = Linear-ReLU-Linear to one
  action each: an (Na, action_dim) chunk of normalised actions, predicted in one forward pass.
- Loss: L1 (default) or MSE on normalised actions, padded chunk steps excluded; no language-model loss
  (the LM head is not even part of the policy).

Both token kinds are added to the text tokenizer as special tokens and the embedding table grows to match
(rows initialised at the mean embedding, like the motion tokens), so token ids stay below the table size
for every tool that checks it; the rows themselves are never used.

Backbone modes (`apply_backbone_mode`): ``full`` (everything trains; the vision tower is frozen when the
policy sees no image), ``frozen`` (only fp, the queries and fr train), ``lora`` (peft LoRA adapters on the
LLM's linear layers, optionally the vision tower's; the rest of the backbone frozen). A LoRA model is
saved with the adapters merged into the weights, so a checkpoint loads without peft.

Checkpoint folder (`HandVLAPolicyModel.save_pretrained` / ``from_pretrained``; self-contained)::

    config.json, model.safetensors (or shards)   the backbone (InternVLModel weights, HandVLAConfig)
    policy_config.json                           `PolicyConfig`: dims, chunk, token ids, prompt, cameras
    policy_head.safetensors                      fp, action_queries, fr
    tokenizer.json, ...                          the text tokenizer with motion and policy tokens
    normalization.safetensors / .json            state and action statistics (handvla.robot.normalize)
    motion_tokenizer/                            copied from the VLA checkpoint it started from, if any
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from handvla.errors import CheckpointError, ConfigError, InputError, MissingResourceError

PROP_CONTEXT_TOKEN = "<PROP_CONTEXT>"
POLICY_CONFIG_NAME = "policy_config.json"
HEAD_WEIGHTS_NAME = "policy_head.safetensors"
MOTION_TOKENIZER_DIR = "motion_tokenizer"
POLICY_FORMAT_VERSION = 1
DEFAULT_PROMPT = "{images}{task}. The robot state is {state}. What are the next {chunk_size} actions?"
BACKBONE_MODES = ("full", "frozen", "lora")
# Qwen2 decoder linear layers (attention and MLP)
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def action_chunk_token(i: int) -> str:
    """Vocabulary string of action query ``i``."""
    return f"<ACTION_CHUNK_{i}>"


def image_observation_names(image_keys: Sequence[str]) -> list[str]:
    """Observation keys the policy expects for its cameras: the first camera is ``image`` (what the
    simulator and the open-loop evaluator send), further ones ``image.<last part of the dataset key>``."""
    names = []
    for i, k in enumerate(image_keys):
        names.append("image" if i == 0 else f"image.{k.split('.')[-1]}")
    if len(set(names)) != len(names):
        raise ConfigError(f"image keys {list(image_keys)} give clashing observation names {names}")
    return names


class LoraSettings(BaseModel):
    """LoRA adapters of the ``lora`` backbone mode (peft)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    vision: bool = Field(False, description="also adapt the vision tower (its attention / MLP linears)")


class PolicyConfig(BaseModel):
    """Everything the policy needs besides weights, tokenizer and statistics (``policy_config.json``)."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = POLICY_FORMAT_VERSION
    state_dim: int = Field(..., gt=0)
    action_dim: int = Field(..., gt=0)
    chunk_size: int = Field(16, gt=0, description="Na: actions per chunk (one query token each)")
    hidden_size: int | None = Field(None, description="LLM width H (set from the backbone)")
    proprio_hidden_size: int | None = Field(None, description="fp's hidden width (default H)")
    head_hidden_size: int | None = Field(None, description="fr's hidden width (default H)")
    loss: Literal["l1", "mse"] = "l1"
    prompt_template: str = DEFAULT_PROMPT
    default_task: str = ""
    image_keys: list[str] = Field(
        default_factory=list, description="dataset video/image features, in prompt order"
    )
    image_shapes: list[list[int]] = Field(default_factory=list, description="(H, W, 3) of each camera")
    state_key: str = "observation.state"
    action_key: str = "action"
    state_names: list[str] | None = None
    action_names: list[str] | None = None
    fps: float | None = None
    prop_token_id: int | None = None
    action_token_offset: int | None = Field(None, description="token id of <ACTION_CHUNK_0> (ids contiguous)")
    backbone_mode: Literal["full", "frozen", "lora"] = "full"
    init: dict[str, Any] = Field(default_factory=dict, description="where the backbone came from")

    @property
    def observation_names(self) -> list[str]:
        return image_observation_names(self.image_keys)

    def observation_spec(self) -> dict[str, dict[str, Any]]:
        """The policy server's observation spec (raw robot units; the policy normalises the state itself)."""
        spec: dict[str, dict[str, Any]] = {"state": {"shape": [self.state_dim], "dtype": "float32"}}
        for name, shape in zip(self.observation_names, self.image_shapes):
            spec[name] = {"shape": list(shape), "dtype": "uint8"}
        return spec


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return obj


def load_policy_config(path: str | Path) -> PolicyConfig:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a policy checkpoint has {POLICY_CONFIG_NAME})")
    raw = _read_json(path)
    if raw.get("format_version") != POLICY_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: field 'format_version': expected {POLICY_FORMAT_VERSION}, got {raw.get('format_version')!r}"
        )
    try:
        return PolicyConfig.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise CheckpointError(f"{path}: field '{loc}': {first['msg']}") from None


# ---- tokens -------------------------------------------------------------------------------------------


def add_policy_tokens(tokenizer, chunk_size: int) -> tuple[int, int]:
    """Add ``<PROP_CONTEXT>`` and ``<ACTION_CHUNK_0..Na-1>`` (special, never split) to ``tokenizer`` in place.

    Idempotent; the action tokens must get contiguous ids. Returns (prop token id, id of <ACTION_CHUNK_0>)."""
    from tokenizers import AddedToken

    wanted = [PROP_CONTEXT_TOKEN] + [action_chunk_token(i) for i in range(chunk_size)]
    vocab = tokenizer.get_vocab()
    missing = [t for t in wanted if t not in vocab]
    if missing:
        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True
        )
    vocab = tokenizer.get_vocab()
    ids = [int(vocab[action_chunk_token(i)]) for i in range(chunk_size)]
    if ids != list(range(ids[0], ids[0] + chunk_size)):
        raise ConfigError(
            f"tokenizer: the action query tokens <ACTION_CHUNK_0..{chunk_size - 1}> do not have contiguous ids "
            f"({ids[:4]}...)"
        )
    return int(vocab[PROP_CONTEXT_TOKEN]), ids[0]


def _check_policy_tokens(tokenizer, cfg: PolicyConfig, where: str) -> None:
    vocab = tokenizer.get_vocab()
    got_prop = vocab.get(PROP_CONTEXT_TOKEN)
    got_act = [vocab.get(action_chunk_token(i)) for i in range(cfg.chunk_size)]
    want_act = [cfg.action_token_offset + i for i in range(cfg.chunk_size)]
    if got_prop != cfg.prop_token_id or got_act != want_act:
        raise CheckpointError(
            f"{where}: the tokenizer's policy token ids (<PROP_CONTEXT> = {got_prop}, <ACTION_CHUNK_0> = "
            f"{got_act[0]}) differ from {POLICY_CONFIG_NAME}'s ({cfg.prop_token_id}, {cfg.action_token_offset})"
        )


# ---- preprocessing (one code path for training and inference) -----------------------------------------


class PolicyProcessor:
    """Builds the policy's token sequence and image tiles: the same code for training samples
    (``handvla.robot.posttrain``) and live observations (``handvla.robot.policy``).

    ``vla_processor``: the backbone's ``HandVLAProcessor`` (chat template, tiling); ``config``: the
    `PolicyConfig` with its token ids set."""

    def __init__(self, vla_processor, config: PolicyConfig):
        if config.prop_token_id is None or config.action_token_offset is None:
            raise ConfigError(
                "PolicyProcessor: the policy token ids are not set (HandVLAPolicyModel.from_vla)"
            )
        self.vla = vla_processor
        self.config = config
        self.tokenizer = vla_processor.tokenizer
        self.pad_id = int(vla_processor.vocab.pad_id)
        self.answer = "".join(action_chunk_token(i) for i in range(config.chunk_size))
        self._ids_cache: dict[tuple, torch.Tensor] = {}

    def prompt(self, task: str | None) -> str:
        """The user turn for ``task`` (default: the config's ``default_task``)."""
        from handvla.vla.processing import IMAGE_PLACEHOLDER

        task = (task if task is not None else self.config.default_task).strip().rstrip(".")
        n = len(self.config.image_keys)
        images = f"In {' and '.join([IMAGE_PLACEHOLDER] * n)}, " if n else ""
        try:
            text = self.config.prompt_template.format(
                images=images, task=task, state=PROP_CONTEXT_TOKEN, chunk_size=self.config.chunk_size
            )
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"prompt_template {self.config.prompt_template!r}: expected only the fields {{images}}, {{task}}, "
                f"{{state}}, {{chunk_size}} ({type(e).__name__}: {e})"
            ) from None
        if text.count(PROP_CONTEXT_TOKEN) != 1 or text.count(IMAGE_PLACEHOLDER) != n:
            raise ConfigError(
                f"prompt_template {self.config.prompt_template!r}: must place {{state}} once and {{images}} once "
                f"(the text then holds {PROP_CONTEXT_TOKEN} once and {n} '{IMAGE_PLACEHOLDER}')"
            )
        return text

    def encode(
        self, task: str | None, images: Sequence[np.ndarray], state: np.ndarray | torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One sample: ``input_ids`` (L,) int64, ``pixel_values`` (tiles, 3, S, S) float32 (absent without
        cameras), ``state`` (state_dim,) float32 (already normalised)."""
        cfg = self.config
        if len(images) != len(cfg.image_keys):
            raise InputError(
                "policy observation", "images", f"{len(cfg.image_keys)} camera image(s)", str(len(images))
            )
        state_t = torch.as_tensor(
            np.asarray(state, np.float32) if not isinstance(state, torch.Tensor) else state
        )
        state_t = state_t.to(torch.float32).reshape(-1)
        if state_t.numel() != cfg.state_dim:
            raise InputError("policy observation", "state", f"{cfg.state_dim} values", str(state_t.numel()))
        imgs = [np.asarray(im.numpy() if isinstance(im, torch.Tensor) else im) for im in images]
        tiles = [self.vla.tile_image(im) for im in imgs]  # each (tiles, 3, S, S)
        # why: the token ids only depend on the task and the tile counts; tokenising the chat template
        # again for every frame would cost more than the model's forward pass on small models
        key = (task, tuple(t.shape[0] for t in tiles))
        ids = self._ids_cache.get(key)
        if ids is None:
            ids = self.vla.encode(self.prompt(task), self.answer, images=imgs).input_ids
            if len(self._ids_cache) < 4096:
                self._ids_cache[key] = ids
        out = {"input_ids": ids.clone(), "state": state_t}
        if tiles:
            out["pixel_values"] = torch.cat(tiles, 0)
        return out

    def collate(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Right-pad to a batch. ``input_ids`` comes first (the trainer counts samples by the first value):
        input_ids / attention_mask (B, L), state (B, Ds), pixel_values (all tiles), and when the samples
        carry them actions (B, Na, A) and action_mask (B, Na)."""
        if not samples:
            raise InputError("collate", "samples", "at least one sample", "none")
        B, L = len(samples), max(len(s["input_ids"]) for s in samples)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for b, s in enumerate(samples):
            n = len(s["input_ids"])
            ids[b, :n] = s["input_ids"]
            mask[b, :n] = 1
        out = {"input_ids": ids, "attention_mask": mask, "state": torch.stack([s["state"] for s in samples])}
        pix = [s["pixel_values"] for s in samples if "pixel_values" in s]
        if pix:
            out["pixel_values"] = torch.cat(pix, 0)
        if "actions" in samples[0]:
            out["actions"] = torch.stack([s["actions"] for s in samples])
            out["action_mask"] = torch.stack([s["action_mask"] for s in samples])
        return out


# ---- the model ----------------------------------------------------------------------------------------


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Linear-ReLU-Linear (Being-H0's fp and fr)."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))


@dataclass
class PolicyOutput:
    actions: torch.Tensor  # (B, Na, action_dim) normalised actions
    loss: torch.Tensor | None = None
    l1: torch.Tensor | None = None  # mean |error| over real steps and action dims (normalised units)
    mse: torch.Tensor | None = None


def masked_action_errors(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, MSE) of ``pred`` vs ``target`` (B, Na, A), averaged over the real steps (``mask`` (B, Na) True)
    and the action dimensions."""
    err = pred.float() - target.float()
    m = torch.ones(err.shape[:2], device=err.device) if mask is None else mask.to(err.device, torch.float32)
    denom = (m.sum() * err.shape[-1]).clamp(min=1.0)
    m = m[..., None]
    return (err.abs() * m).sum() / denom, (err.square() * m).sum() / denom


@torch.no_grad()
def _init_rows_at_mean(weight: torch.Tensor, start: int, noise: float = 0.02, seed: int = 0) -> None:
    """Rows [start:] := mean of rows [:start] + noise * per-dimension std * N(0, 1)."""
    if start >= weight.shape[0] or start < 2:
        return
    old = weight[:start].float()
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn((weight.shape[0] - start, weight.shape[1]), generator=g)
    weight[start:] = (old.mean(0).cpu() + noise * old.std(0).cpu() * eps).to(weight.dtype).to(weight.device)


class HandVLAPolicyModel(nn.Module):
    """InternVL backbone (no LM head) + proprioception projector fp + action queries + regression head fr.

    Build one from a VLA with `from_vla`, load a saved one with `from_pretrained`. Besides its modules it
    carries ``processor`` (a `PolicyProcessor`), ``normalizer`` (``handvla.robot.normalize.Normalizer`` or
    None until set) and ``motion_tokenizer_dir`` (a folder copied into checkpoints, or None)."""

    def __init__(self, backbone: nn.Module, config: PolicyConfig, processor: PolicyProcessor | None = None):
        super().__init__()
        if config.hidden_size is None:
            config.hidden_size = int(backbone.config.text_config.hidden_size)
        H = config.hidden_size
        self.config = config
        self.backbone = backbone
        self.proprio = mlp(config.state_dim, config.proprio_hidden_size or H, H)  # fp
        self.action_queries = nn.Parameter(torch.zeros(config.chunk_size, H))
        self.action_head = mlp(H, config.head_hidden_size or H, config.action_dim)  # fr
        self.processor = processor
        self.normalizer = None
        self.motion_tokenizer_dir: Path | None = None
        self.image_token_id = int(backbone.config.image_token_id)
        self._lora = False

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_vla(
        cls, bundle, config: PolicyConfig, max_tiles: int | None = None, seed: int = 0
    ) -> HandVLAPolicyModel:
        """A policy on the backbone of a ``VLABundle`` (its LM head is dropped): adds the policy tokens to
        the bundle's tokenizer (in place), grows the embedding table, draws the new heads with ``seed``.
        ``max_tiles``: image tiles per camera (None: the VLA's setting; 1 = one resized tile)."""
        from handvla.vla.processing import HandVLAProcessor

        vla_cfg = bundle.model.config
        if max_tiles is not None:
            if max_tiles < 1:
                raise ConfigError(f"max_tiles: expected >= 1, got {max_tiles}")
            vla_cfg.max_tiles = int(max_tiles)
            vla_cfg.min_tiles = min(vla_cfg.min_tiles, vla_cfg.max_tiles)
        tokenizer = bundle.processor.tokenizer
        first_new = len(tokenizer)
        config.prop_token_id, config.action_token_offset = add_policy_tokens(tokenizer, config.chunk_size)
        backbone = bundle.model.model  # InternVLModel: vision tower, projector, LLM without its head
        rows = backbone.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            backbone.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            _init_rows_at_mean(backbone.get_input_embeddings().weight, min(first_new, rows), seed=seed)
        vla_cfg.text_config.vocab_size = backbone.get_input_embeddings().weight.shape[0]
        vla_cfg.tie_word_embeddings = False  # no LM head any more
        processor = PolicyProcessor(HandVLAProcessor(tokenizer, vla_cfg), config)
        model = cls(backbone, config, processor)
        model.reset_heads(seed)
        return model

    @torch.no_grad()
    def reset_heads(self, seed: int = 0) -> None:
        """Draw fp and fr (PyTorch's default Linear init) and put the queries at the mean token embedding
        plus small noise, so they start in the range the LLM is used to."""
        g = torch.Generator().manual_seed(seed)
        for lin in [m for m in (*self.proprio, *self.action_head) if isinstance(m, nn.Linear)]:
            bound = 1.0 / lin.in_features**0.5
            lin.weight.copy_(torch.empty_like(lin.weight).uniform_(-bound, bound, generator=g))
            lin.bias.copy_(torch.empty_like(lin.bias).uniform_(-bound, bound, generator=g))
        emb = self.backbone.get_input_embeddings().weight.float()
        n = min(emb.shape[0], self.config.prop_token_id or emb.shape[0])
        mean, std = emb[:n].mean(0).cpu(), emb[:n].std(0).cpu()
        eps = torch.randn(self.action_queries.shape, generator=g)
        self.action_queries.copy_((mean + 0.02 * std * eps).to(self.action_queries.device))

    def apply_backbone_mode(
        self, mode: str, lora: LoraSettings | None = None, freeze_vision: bool = False
    ) -> None:
        """Set what trains (see the module doc). Call once, before building the optimiser."""
        if mode not in BACKBONE_MODES:
            raise ConfigError(f"backbone_mode: expected one of {BACKBONE_MODES}, got {mode!r}")
        self.config.backbone_mode = mode
        bb = self.backbone
        if mode == "full":
            bb.requires_grad_(True)
            if freeze_vision or not self.config.image_keys:
                # why: unused parameters would break DDP, and a camera-less policy never uses the vision tower
                bb.vision_tower.requires_grad_(False)
                bb.multi_modal_projector.requires_grad_(False)
        elif mode == "frozen":
            bb.requires_grad_(False)
        else:
            try:
                from peft import LoraConfig, inject_adapter_in_model
            except ImportError as e:
                raise MissingResourceError(
                    f"backbone_mode 'lora' needs peft (pip install -c constraints.txt peft): {e}"
                ) from None
            lora = lora or LoraSettings()
            bb.requires_grad_(False)
            cfg = LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                bias="none",
            )
            inject_adapter_in_model(cfg, bb.language_model)
            if lora.vision:
                vis = LoraConfig(
                    r=lora.rank,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=["q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2"],
                    bias="none",
                )
                inject_adapter_in_model(vis, bb.vision_tower)
            n_lora = 0
            for name, p in bb.named_parameters():
                is_lora = ".lora_" in name
                p.requires_grad_(is_lora)
                n_lora += int(is_lora)
            if n_lora == 0:
                raise ConfigError(
                    f"lora.target_modules {lora.target_modules}: matched no linear layer of the backbone"
                )
            self._lora = True
        for module in (self.proprio, self.action_head):
            module.requires_grad_(True)
        self.action_queries.requires_grad_(True)

    def trainable_parameter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    # -- forward --------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        state: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> PolicyOutput:
        """``input_ids`` / ``attention_mask`` (B, L) from `PolicyProcessor.collate`, ``state`` (B, Ds)
        normalised, ``pixel_values`` (tiles, 3, S, S). With ``actions`` (B, Na, A) (normalised) and
        ``action_mask`` (B, Na), also the loss."""
        cfg = self.config
        B, Na = input_ids.shape[0], cfg.chunk_size
        bb = self.backbone
        embeds = bb.get_input_embeddings()(input_ids)  # (B, L, H)
        dtype = embeds.dtype
        if pixel_values is not None:
            vision_trains = any(p.requires_grad for p in bb.vision_tower.parameters()) or any(
                p.requires_grad for p in bb.multi_modal_projector.parameters()
            )
            with torch.set_grad_enabled(vision_trains and torch.is_grad_enabled()):
                feats = bb.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
            feats = feats.reshape(-1, feats.shape[-1]).to(dtype)  # (tiles * tokens_per_tile, H)
            img_mask = input_ids == self.image_token_id
            if int(img_mask.sum()) != feats.shape[0]:
                raise InputError(
                    "HandVLAPolicyModel",
                    "pixel_values",
                    f"{int(img_mask.sum())} visual tokens (the image placeholders of input_ids)",
                    str(feats.shape[0]),
                )
            embeds = embeds.masked_scatter(img_mask[..., None], feats)
        prop_mask = input_ids == cfg.prop_token_id  # (B, L)
        q_index = input_ids - cfg.action_token_offset
        q_mask = (q_index >= 0) & (q_index < Na)
        if not (prop_mask.sum(1) == 1).all() or not (q_mask.sum(1) == Na).all():
            raise InputError(
                "HandVLAPolicyModel",
                "input_ids",
                f"one {PROP_CONTEXT_TOKEN} and {Na} action query tokens per row (PolicyProcessor.encode)",
                f"{prop_mask.sum(1).tolist()} and {q_mask.sum(1).tolist()}",
            )
        prop = self.proprio(state.to(self.action_queries.dtype)).to(dtype)  # (B, H): fp(state)
        embeds = torch.where(prop_mask[..., None], prop[:, None, :], embeds)
        queries = self.action_queries.to(dtype)[q_index.clamp(0, Na - 1)]  # (B, L, H)
        embeds = torch.where(q_mask[..., None], queries, embeds)
        hidden = bb.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state  # (B, L, H)
        # the template writes the queries in order 0..Na-1, so position order is query order
        hq = hidden[q_mask].reshape(B, Na, -1)
        pred = self.action_head(hq.to(self.action_queries.dtype))  # (B, Na, A): fr
        out = PolicyOutput(actions=pred)
        if actions is not None:
            out.l1, out.mse = masked_action_errors(pred, actions, action_mask)
            out.loss = out.l1 if cfg.loss == "l1" else out.mse
        return out

    # -- saving ---------------------------------------------------------------------------------------
    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's weights with any LoRA adapters merged in (plain module names)."""
        sd = self.backbone.state_dict()
        if not self._lora:
            return sd
        from peft.tuners.lora import LoraLayer

        out = {k: v for k, v in sd.items() if ".lora_" not in k}
        for name, mod in self.backbone.named_modules():
            if isinstance(mod, LoraLayer):
                key = f"{name}.base_layer.weight"
                delta = sum(mod.get_delta_weight(a).float() for a in mod.active_adapters)
                out[key] = (out[key].float() + delta).to(out[key].dtype)
        return {k.replace(".base_layer.", "."): v for k, v in out.items()}

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        sd = {"action_queries": self.action_queries}
        sd |= {f"proprio.{k}": v for k, v in self.proprio.state_dict().items()}
        sd |= {f"action_head.{k}": v for k, v in self.action_head.state_dict().items()}
        return {k: v.detach().cpu().contiguous() for k, v in sd.items()}

    def save_pretrained(self, path: str | Path, max_shard_size: str = "5GB") -> Path:
        """Write the self-contained checkpoint folder (module doc) atomically: built beside ``path``,
        then swapped in."""
        from safetensors.torch import save_file

        if self.processor is None:
            raise ConfigError("save_pretrained: the model has no processor (build it with from_vla)")
        if self.normalizer is None:
            raise ConfigError("save_pretrained: set model.normalizer (the training statistics) first")
        from handvla.atomic import atomic_dir

        path = Path(path)
        vla_cfg = self.backbone.config
        mt_dir = self.motion_tokenizer_dir
        had_mt = getattr(vla_cfg, "has_motion_tokenizer", False)
        try:
            with atomic_dir(path) as tmp:
                vla_cfg.has_motion_tokenizer = mt_dir is not None
                sd = {k: v.detach().cpu().contiguous() for k, v in self.backbone_state_dict().items()}
                self.backbone.save_pretrained(str(tmp), state_dict=sd, max_shard_size=max_shard_size)
                save_file(self.head_state_dict(), str(tmp / HEAD_WEIGHTS_NAME))
                self.processor.tokenizer.save_pretrained(str(tmp))
                self.normalizer.save(tmp)
                (tmp / POLICY_CONFIG_NAME).write_text(self.config.model_dump_json(indent=2))
                if mt_dir is not None:
                    if not Path(mt_dir).is_dir():
                        raise MissingResourceError(
                            f"{mt_dir}: motion tokenizer folder to copy into the checkpoint not found"
                        )
                    shutil.copytree(mt_dir, tmp / MOTION_TOKENIZER_DIR)
        except BaseException:
            vla_cfg.has_motion_tokenizer = had_mt
            raise
        if mt_dir is not None:
            self.motion_tokenizer_dir = path / MOTION_TOKENIZER_DIR
        return path

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> HandVLAPolicyModel:
        """Load a folder written by `save_pretrained` (CheckpointError naming the missing or inconsistent
        file). ``dtype`` applies to the backbone; the small heads stay float32."""
        from safetensors.torch import load_file
        from transformers import InternVLModel

        from handvla.robot.normalize import Normalizer
        from handvla.vla.configuration import HandVLAConfig
        from handvla.vla.processing import HandVLAProcessor
        from handvla.vla.text_tokenizer import load_text_tokenizer

        path = Path(path)
        if not path.is_dir():
            raise MissingResourceError(f"{path}: policy checkpoint folder not found")
        pcfg = load_policy_config(path / POLICY_CONFIG_NAME)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path / 'config.json'}: missing (the backbone configuration)")
        if _read_json(path / "config.json").get("model_type") != HandVLAConfig.model_type:
            raise CheckpointError(
                f"{path / 'config.json'}: field 'model_type': expected '{HandVLAConfig.model_type}'"
            )
        if not (path / HEAD_WEIGHTS_NAME).is_file():
            raise CheckpointError(f"{path / HEAD_WEIGHTS_NAME}: missing (the policy head weights)")
        vla_cfg = HandVLAConfig.from_pretrained(str(path))
        tokenizer = load_text_tokenizer(path)
        _check_policy_tokens(tokenizer, pcfg, str(path))
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        try:
            backbone, info = InternVLModel.from_pretrained(
                str(path), config=vla_cfg, dtype=dtype, output_loading_info=True, local_files_only=True
            )
        except OSError as e:
            raise CheckpointError(f"{path}: backbone weights do not load ({e})") from None
        bad = {k: sorted(info.get(k, []))[:5] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if any(bad.values()):
            raise CheckpointError(f"{path}: backbone weights do not match config.json: {bad}")
        if len(tokenizer) > backbone.get_input_embeddings().weight.shape[0]:
            raise CheckpointError(f"{path}: the tokenizer has more tokens than the embedding table has rows")
        processor = PolicyProcessor(HandVLAProcessor(tokenizer, vla_cfg), pcfg)
        model = cls(backbone, pcfg, processor)
        head = load_file(str(path / HEAD_WEIGHTS_NAME))
        own = {"action_queries": model.action_queries}
        own |= {f"proprio.{k}": v for k, v in model.proprio.state_dict().items()}
        own |= {f"action_head.{k}": v for k, v in model.action_head.state_dict().items()}
        if set(head) != set(own) or any(head[k].shape != own[k].shape for k in own):
            raise CheckpointError(
                f"{path / HEAD_WEIGHTS_NAME}: tensors {sorted((k, tuple(v.shape)) for k, v in head.items())[:6]} do "
                f"not match {POLICY_CONFIG_NAME} (state_dim {pcfg.state_dim}, action_dim {pcfg.action_dim}, "
                f"chunk {pcfg.chunk_size})"
            )
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(head[k])
        model.normalizer = Normalizer.load(path)
        for key in (pcfg.state_key, pcfg.action_key):
            if key not in model.normalizer.modes:
                raise CheckpointError(f"{path}: normalisation statistics lack feature '{key}'")
        if (path / MOTION_TOKENIZER_DIR).is_dir():
            model.motion_tokenizer_dir = path / MOTION_TOKENIZER_DIR
        if device is not None:
            model = model.to(device)
        return model.eval()


__all__ = [
    "DEFAULT_PROMPT",
    "PROP_CONTEXT_TOKEN",
    "HandVLAPolicyModel",
    "LoraSettings",
    "PolicyConfig",
    "PolicyOutput",
    "PolicyProcessor",
    "action_chunk_token",
    "add_policy_tokens",
    "image_observation_names",
    "load_policy_config",
    "masked_action_errors",
    "mlp",
]
