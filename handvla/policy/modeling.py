"""The VLA as a robot policy (Being-H0 stage 3): proprioception token, action queries, regression head;
and `HandVLAPolicy`, the loaded policy behind the policy-server protocol.

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
- ``head: flow`` replaces fr by the flow-matching action expert (`handvla.policy.flow`), which reads all
  last-layer hidden states; with ``flow.residual`` fr stays and the expert generates the action minus fr's
  chunk (both losses train).

Both token kinds are added to the text tokenizer as special tokens and the embedding table grows to match
(rows initialised at the mean embedding, like the motion tokens), so token ids stay below the table size
for every tool that checks it; the rows themselves are never used.

Backbone modes (`apply_backbone_mode`): ``full`` (everything trains; the vision tower is frozen when the
policy sees no image), ``frozen`` (only fp, the queries and fr train), ``lora`` (peft LoRA adapters on the
LLM's linear layers, optionally the vision tower's; the rest of the backbone frozen). A LoRA model is
saved with the adapters merged into the weights, so a checkpoint loads without peft.

Checkpoint folder (`HandVLAPolicyModel.save_pretrained` / ``from_pretrained``; self-contained)::

    config.json, model.safetensors (or shards)   the backbone (InternVLModel weights, HandVLAConfig)
    policy_config.json                           `PolicyConfig` (handvla.policy.configuration)
    policy_head.safetensors                      fp, action_queries, fr and / or action_expert
    tokenizer.json, ...                          the text tokenizer with motion and policy tokens
    normalization.safetensors / .json            state and action statistics (handvla.policy.processing)
    motion_tokenizer/                            copied from the VLA checkpoint it started from, if any

Deployment (`HandVLAPolicy`, what ``handvla serve`` and ``handvla eval`` run)::

    policy = HandVLAPolicy.load("runs/relocate/final")
    chunk = policy.infer({"state": state_39, "image": rgb_uint8})   # (chunk_size, action_dim), robot units

An observation goes through `PolicyProcessor.preprocess` (exactly the training samples' processing) and
the chunk through `PolicyProcessor.postprocess`. The instruction is ``obs["task"]`` when an in-process
caller passes a string there, else the one set with ``set_task`` (the simulator evaluator calls it), else
the checkpoint's default task (the training dataset's first task).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from handvla.atomic import atomic_dir, check_safetensors, read_json
from handvla.errors import CheckpointError, ConfigError, InputError, MissingResourceError
from handvla.policy.configuration import (
    BACKBONE_MODES,
    POLICY_CONFIG_NAME,
    PolicyConfig,
    load_policy_config,
)
from handvla.policy.flow import ActionExpert, committed_mask
from handvla.policy.processing import (
    PROP_CONTEXT_TOKEN,
    Normalizer,
    PolicyProcessor,
    add_policy_tokens,
    check_policy_tokens,
)
from handvla.vla.configuration import HandVLAConfig
from handvla.vla.processing import HandVLAProcessor
from handvla.vla.text_tokenizer import load_text_tokenizer

HEAD_WEIGHTS_NAME = "policy_head.safetensors"
MOTION_TOKENIZER_DIR = "motion_tokenizer"


# ---- the model ----------------------------------------------------------------------------------------


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Linear-ReLU-Linear (Being-H0's fp and fr)."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))


@dataclass
class PolicyOutput:
    """``actions`` (B, Na, action_dim), normalised. The flow head in training mode gives its one-step
    estimate ``x_t + (1 - t) v`` there (the loss is ``velocity_mse``); in eval mode, the integrated chunk."""

    actions: torch.Tensor
    loss: torch.Tensor | None = None
    l1: torch.Tensor | None = None  # mean |error| over real steps and action dims (normalised units)
    mse: torch.Tensor | None = None
    velocity_mse: torch.Tensor | None = None  # the flow head's training loss


def masked_action_errors(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, MSE) of ``pred`` vs ``target`` (B, Na, A), averaged over the real entries: ``mask`` (B, Na) marks
    the real chunk steps (all action dimensions count), (B, Na, A) the real entries (an embodiment's
    slots of the unified space on its real steps)."""
    err = pred.float() - target.float()
    m = torch.ones(err.shape[:2], device=err.device) if mask is None else mask.to(err.device, torch.float32)
    if m.dim() == 2:
        m = m[..., None].expand_as(err)
    denom = m.sum().clamp(min=1.0)
    return (err.abs() * m).sum() / denom, (err.square() * m).sum() / denom


def _keep_prefix(chunk: torch.Tensor, prefix: torch.Tensor, prefix_len: torch.Tensor | None) -> torch.Tensor:
    """``chunk`` (B, Na, A) with its first actions replaced by the committed ``prefix`` (B, d, A): row b's
    first ``prefix_len[b]`` (default all d)."""
    d = prefix.shape[1]
    keep = committed_mask(chunk.shape[0], d, prefix_len, chunk.device)
    return torch.cat([torch.where(keep, prefix.to(chunk), chunk[:, :d]), chunk[:, d:]], dim=1)


@torch.no_grad()
def _init_rows_at_mean(weight: torch.Tensor, start: int, noise: float = 0.02, seed: int = 0) -> None:
    """Rows [start:] := mean of rows [:start] + noise * per-dimension std * N(0, 1)."""
    if start >= weight.shape[0] or start < 2:
        return
    old = weight[:start].float()
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn((weight.shape[0] - start, weight.shape[1]), generator=g)
    weight[start:] = (old.mean(0).cpu() + noise * old.std(0).cpu() * eps).to(weight.dtype).to(weight.device)


def _vision_parts(backbone: nn.Module) -> list[nn.Module]:
    """The modules that make the visual tokens: tower, projector and, with ``vision_film``, the modulation
    (and with ``binding_mark``, the mark)."""
    extra = [getattr(backbone, name, None) for name in ("instruction_film", "binding_mark")]
    return [backbone.vision_tower, backbone.multi_modal_projector] + [m for m in extra if m is not None]


class HandVLAPolicyModel(nn.Module):
    """InternVL backbone (no LM head) + proprioception projector fp + action queries + an action head:
    the regression head fr (``config.head: regression``, Being-H0) or the flow-matching action expert
    (``flow``, `handvla.policy.flow.ActionExpert`), which reads the backbone's last hidden states.

    Build one from a VLA with `from_vla`, load a saved one with `from_pretrained`. Besides its modules it
    carries ``processor`` (a `PolicyProcessor`), ``normalizer`` (a `Normalizer`, or None until set) and
    ``motion_tokenizer_dir`` (a folder copied into checkpoints, or None)."""

    def __init__(self, backbone: nn.Module, config: PolicyConfig, processor: PolicyProcessor | None = None):
        super().__init__()
        missing = [n for n in ("state_dim", "action_dim") if getattr(config, n) is None]
        if missing:
            raise ConfigError(f"HandVLAPolicyModel: PolicyConfig.{missing[0]} is not set")
        if config.hidden_size is None:
            config.hidden_size = int(backbone.config.text_config.hidden_size)
        H = config.hidden_size
        self.config = config
        self.backbone = backbone
        # with an embodiment map the model reads and writes the unified 200-d space
        Ds, A = config.model_state_dim, config.model_action_dim
        self.proprio = mlp(Ds, config.proprio_hidden_size or H, H)  # fp
        self.action_queries = nn.Parameter(torch.zeros(config.chunk_size, H))
        if config.head == "flow":
            config.flow.width = config.flow.width_for(H)  # the checkpoint says the width it was built with
            self.action_expert = ActionExpert(A, H, config.chunk_size, config.flow)
        if self.has_regression_head:
            self.action_head = mlp(H, config.head_hidden_size or H, A)  # fr
        self.processor = processor
        self.normalizer: Normalizer | None = None
        self.motion_tokenizer_dir: Path | None = None
        self.image_token_id = int(backbone.config.image_token_id)
        self._lora = False

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_vla(cls, bundle, config: PolicyConfig) -> HandVLAPolicyModel:
        """A policy on the backbone of a ``VLABundle`` (its LM head is dropped): adds the policy tokens to
        the bundle's tokenizer (in place, their ids into ``config``), grows the embedding table, sets the
        VLA's image tiles per camera to ``config.max_tiles`` (None: keep the VLA's setting), draws the new
        heads with ``config.seed``. What trains is set afterwards with `apply_backbone_mode`."""
        # transformers: see the import note in from_pretrained

        seed = config.seed
        vla_cfg = bundle.model.config
        if config.max_tiles is not None:
            vla_cfg.max_tiles = int(config.max_tiles)
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

    @property
    def has_regression_head(self) -> bool:
        """fr exists: the regression head, or the flow expert's mean (``flow.residual``)."""
        return self.config.head == "regression" or self.config.flow.residual

    def head_modules(self) -> dict[str, nn.Module]:
        """The modules beside the backbone and the queries, by checkpoint prefix: fp, and fr and / or the
        expert."""
        heads: dict[str, nn.Module] = {"proprio": self.proprio}
        if self.config.head == "flow":
            heads["action_expert"] = self.action_expert
        if self.has_regression_head:
            heads["action_head"] = self.action_head
        return heads

    @torch.no_grad()
    def reset_heads(self, seed: int = 0) -> None:
        """Draw fp and fr (PyTorch's default Linear init) or the expert (`ActionExpert.reset_parameters`,
        under ``seed``), and put the queries at the mean token embedding plus small noise, so they start in
        the range the LLM is used to."""
        g = torch.Generator().manual_seed(seed)
        mlps = [self.proprio] + ([self.action_head] if self.has_regression_head else [])
        for lin in [m for seq in mlps for m in seq if isinstance(m, nn.Linear)]:
            bound = 1.0 / lin.in_features**0.5
            lin.weight.copy_(torch.empty_like(lin.weight).uniform_(-bound, bound, generator=g))
            lin.bias.copy_(torch.empty_like(lin.bias).uniform_(-bound, bound, generator=g))
        if self.config.head == "flow":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                self.action_expert.reset_parameters()
        emb = self.backbone.get_input_embeddings().weight.float()
        n = min(emb.shape[0], self.config.prop_token_id or emb.shape[0])
        mean, std = emb[:n].mean(0).cpu(), emb[:n].std(0).cpu()
        eps = torch.randn(self.action_queries.shape, generator=g)
        self.action_queries.copy_((mean + 0.02 * std * eps).to(self.action_queries.device))

    def apply_backbone_mode(self) -> None:
        """Set what trains from ``config.backbone_mode`` (with ``freeze_vision`` / ``lora``; see the module
        doc). Call once, before building the optimiser."""
        mode, lora = self.config.backbone_mode, self.config.lora
        if mode not in BACKBONE_MODES:
            raise ConfigError(f"backbone_mode: expected one of {BACKBONE_MODES}, got {mode!r}")
        bb = self.backbone
        if mode == "full":
            bb.requires_grad_(True)
            if self.config.freeze_vision or not self.config.image_keys:
                # why: unused parameters would break DDP, and a camera-less policy never uses the vision tower
                for part in _vision_parts(bb):
                    part.requires_grad_(False)
        elif mode == "frozen":
            bb.requires_grad_(False)
        else:
            try:  # peft: an optional dependency, only the lora mode needs it
                from peft import LoraConfig, inject_adapter_in_model
            except ImportError as e:
                raise MissingResourceError(
                    f"backbone_mode 'lora' needs peft (pip install -c constraints.txt peft): {e}"
                ) from None
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
        for module in self.head_modules().values():
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
        prefix: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        prefix_len: torch.Tensor | None = None,
    ) -> PolicyOutput:
        """``input_ids`` / ``attention_mask`` (B, L) from `PolicyProcessor.collate`, ``state`` (B, Ds)
        normalised, ``pixel_values`` (tiles, 3, S, S). With ``actions`` (B, Na, A) (normalised) and
        ``action_mask`` (B, Na), also the loss. ``prefix`` (B, d, A), normalised: committed first actions
        (real-time chunking), kept exactly; the flow expert generates the rest consistent with them;
        ``prefix_len`` (B,): how many of them row b commits (default all). ``generator``: the flow
        expert's noise at inference."""
        cfg = self.config
        B, Na = input_ids.shape[0], cfg.chunk_size
        bb = self.backbone
        embeds = bb.get_input_embeddings()(input_ids)  # (B, L, H)
        dtype = embeds.dtype
        if pixel_values is not None:
            vision_trains = any(p.requires_grad for part in _vision_parts(bb) for p in part.parameters())
            from handvla.vla.modeling import image_features  # see the import note in from_pretrained

            with torch.set_grad_enabled(vision_trains and torch.is_grad_enabled()):
                feats = image_features(bb, pixel_values, input_ids, attention_mask)
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
        pred = None
        if self.has_regression_head:
            # the template writes the queries in order 0..Na-1, so position order is query order
            hq = hidden[q_mask].reshape(B, Na, -1)
            pred = self.action_head(hq.to(self.action_queries.dtype))  # (B, Na, A): fr
        if cfg.head == "flow":
            return self._flow_output(
                hidden, attention_mask, actions, action_mask, prefix, prefix_len, generator, mean=pred
            )
        if prefix is not None:
            pred = _keep_prefix(pred, prefix, prefix_len)
        out = PolicyOutput(actions=pred)
        if actions is not None:
            out.l1, out.mse = masked_action_errors(pred, actions, action_mask)
            out.loss = out.l1 if cfg.loss == "l1" else out.mse
        return out

    def _flow_output(
        self, hidden, attention_mask, actions, action_mask, prefix, prefix_len, generator, mean=None
    ) -> PolicyOutput:
        """The flow head: in training mode with ``actions``, the flow-matching loss (and the one-step
        estimate of the chunk); otherwise the integrated chunk (and its errors when ``actions`` are given).
        ``mean`` (B, Na, A) (``flow.residual``): the regression head's chunk; the expert then generates
        ``chunk - mean`` (its target uses ``mean`` detached, so the expert's loss does not move fr) and the
        loss adds fr's own (``config.loss``)."""
        expert = self.action_expert
        ctx_mask = attention_mask.bool()
        base = None if mean is None else mean.float()
        reg_loss = None
        if actions is not None and base is not None:
            l1, mse = masked_action_errors(base, actions, action_mask)
            reg_loss = l1 if self.config.loss == "l1" else mse
        if actions is not None and self.training:
            k = expert.settings.train_samples  # draws per chunk; the backbone's states are shared
            rep = (lambda z: z.repeat_interleave(k, dim=0)) if k > 1 else (lambda z: z)
            acts, amask = rep(actions), None if action_mask is None else rep(action_mask)
            shift = 0.0 if base is None else rep(base.detach())
            x_t, t, u = expert.training_targets(acts - shift)
            v = expert(x_t, t, rep(hidden), rep(ctx_mask))
            est = x_t + (1 - t)[:, None, None] * v + shift
            _, vel_mse = masked_action_errors(v, u, amask)
            loss = vel_mse if reg_loss is None else vel_mse + reg_loss
            out = PolicyOutput(actions=est[::k], loss=loss, velocity_mse=vel_mse)
            with torch.no_grad():
                out.l1, out.mse = masked_action_errors(est, acts, amask)
            return out
        committed = prefix
        if prefix is not None and base is not None:
            prefix = prefix.to(base) - base[:, : prefix.shape[1]]
        chunk = expert.sample(hidden, ctx_mask, prefix=prefix, generator=generator, prefix_len=prefix_len)
        if base is not None:
            chunk = chunk + base
            if committed is not None:  # exactly the committed actions, not (prefix - mean) + mean
                chunk = _keep_prefix(chunk, committed, prefix_len)
        out = PolicyOutput(actions=chunk)
        if actions is not None:
            out.l1, out.mse = masked_action_errors(chunk, actions, action_mask)
            x_t, t, u = expert.training_targets(actions if base is None else actions - base)
            _, out.velocity_mse = masked_action_errors(expert(x_t, t, hidden, ctx_mask), u, action_mask)
            out.loss = out.velocity_mse if reg_loss is None else out.velocity_mse + reg_loss
        return out

    # -- saving ---------------------------------------------------------------------------------------
    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's weights with any LoRA adapters merged in (plain module names)."""
        sd = self.backbone.state_dict()
        if not self._lora:
            return sd
        from peft.tuners.lora import LoraLayer  # optional dependency: only a lora-mode model gets here

        out = {k: v for k, v in sd.items() if ".lora_" not in k}
        for name, mod in self.backbone.named_modules():
            if isinstance(mod, LoraLayer):
                key = f"{name}.base_layer.weight"
                delta = sum(mod.get_delta_weight(a).float() for a in mod.active_adapters)
                out[key] = (out[key].float() + delta).to(out[key].dtype)
        return {k.replace(".base_layer.", "."): v for k, v in out.items()}

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """The queries and the head modules' tensors by checkpoint key (live tensors)."""
        sd = {"action_queries": self.action_queries}
        for prefix, module in self.head_modules().items():
            sd |= {f"{prefix}.{k}": v for k, v in module.state_dict().items()}
        return sd

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.head_tensors().items()}

    def save_pretrained(self, path: str | Path, max_shard_size: str = "5GB") -> Path:
        """Write the self-contained checkpoint folder (module doc) atomically: built beside ``path``,
        then swapped in."""
        if self.processor is None:
            raise ConfigError("save_pretrained: the model has no processor (build it with from_vla)")
        if self.normalizer is None:
            raise ConfigError("save_pretrained: set model.normalizer (the training statistics) first")
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
        # why here: transformers takes seconds to import, and this package is imported for its statistics
        # and processing (robot data tools, the policy client's tests) without ever loading a model
        from handvla.vla.modeling import HandVLAModel

        path = Path(path)
        if not path.is_dir():
            raise MissingResourceError(f"{path}: policy checkpoint folder not found")
        pcfg = load_policy_config(path / POLICY_CONFIG_NAME)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path / 'config.json'}: missing (the backbone configuration)")
        if (
            read_json(path / "config.json", dict, CheckpointError).get("model_type")
            != HandVLAConfig.model_type
        ):
            raise CheckpointError(
                f"{path / 'config.json'}: field 'model_type': expected '{HandVLAConfig.model_type}'"
            )
        if not (path / HEAD_WEIGHTS_NAME).is_file():
            raise CheckpointError(f"{path / HEAD_WEIGHTS_NAME}: missing (the policy head weights)")
        check_safetensors(path)  # a corrupt or truncated weights file: CheckpointError naming it
        vla_cfg = HandVLAConfig.from_pretrained(str(path))
        tokenizer = load_text_tokenizer(path)
        check_policy_tokens(tokenizer, pcfg, str(path))
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        try:
            backbone, info = HandVLAModel.from_pretrained(
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
        own = model.head_tensors()
        if set(head) != set(own) or any(head[k].shape != own[k].shape for k in own):
            odd = sorted(set(head) ^ set(own)) or [k for k in own if head[k].shape != own[k].shape]
            raise CheckpointError(
                f"{path / HEAD_WEIGHTS_NAME}: tensors do not match {POLICY_CONFIG_NAME} (head {pcfg.head!r}, "
                f"state_dim {pcfg.state_dim}, action_dim {pcfg.action_dim}, chunk {pcfg.chunk_size}): "
                f"first differing keys {odd[:4]}"
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


# ---- the deployable policy -----------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"``: CUDA when available, else the CPU; a CUDA device asked for without CUDA is a
    ConfigError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but no CUDA device is available")
    return dev


class HandVLAPolicy:
    """A `HandVLAPolicyModel` with its statistics behind the policy-server protocol
    (``handvla.robot.server.Policy``: ``metadata()``, ``infer(observation)``; see the module doc)."""

    def __init__(
        self,
        model: HandVLAPolicyModel,
        task: str | None = None,
        device: str | torch.device | None = None,
        checkpoint: str | Path | None = None,
    ):
        if model.normalizer is None or model.processor is None:
            raise ConfigError(
                "HandVLAPolicy: the model needs its processor and normalizer (load a checkpoint)"
            )
        self.device = resolve_device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.normalizer = model.normalizer
        self.processor = model.processor
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.task = task if task is not None else self.config.default_task
        self.calls = 0
        self.seed = int(self.config.seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    @classmethod
    def load(
        cls,
        ckpt: str | Path,
        device: str | torch.device | None = "auto",
        dtype: torch.dtype | str | None = None,
        task: str | None = None,
    ) -> HandVLAPolicy:
        """Load a post-trained checkpoint folder (`HandVLAPolicyModel.save_pretrained`)."""
        dev = resolve_device(device)
        model = HandVLAPolicyModel.from_pretrained(ckpt, device=dev, dtype=dtype)
        return cls(model, task=task, device=dev, checkpoint=ckpt)

    # -- protocol -----------------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        c = self.config
        return {
            "policy": "handvla",
            "chunk_size": c.chunk_size,
            "action_dim": c.action_dim,
            "state_dim": c.state_dim,
            "observation": c.observation_spec(),
            "state_names": c.state_names,
            "action_names": c.action_names,
            "task": self.task,
            "fps": c.fps,
            "backbone_mode": c.backbone_mode,
            "head": c.head,
            "flow_steps": c.flow.num_steps if c.head == "flow" else None,
            "real_time_chunking": True,
            "init": c.init,
            "checkpoint": self.checkpoint,
        }

    def set_task(self, task: str) -> None:
        if not isinstance(task, str):
            raise InputError("set_task", "task", "an instruction string", type(task).__name__)
        self.task = task

    def reset(self) -> None:
        """Re-seed the flow expert's noise (``config.seed``): an evaluation that resets before each episode
        gets the same chunks for the same observations, run after run. The regression head has no state."""
        self._generator.manual_seed(self.seed)

    def preprocess(self, observation: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One observation -> the model's batch of one (`PolicyProcessor.preprocess`)."""
        return self.processor.preprocess(observation, self.normalizer, self.task)

    def committed_prefix(self, observation: dict[str, Any]) -> np.ndarray | None:
        """Real-time chunking: the observation's ``prev_actions`` (n, action_dim), robot units, the previous
        chunk's actions from the observation's time step on, and ``inference_delay`` d (control steps that
        run before the new chunk arrives, 0 <= d <= min(n, chunk_size)) -> the first d of them, normalised,
        (d, action_dim); None when not asked for (no ``prev_actions`` or d = 0)."""
        if "prev_actions" not in observation:
            if "inference_delay" in observation:
                raise InputError("observation", "prev_actions", "the previous chunk with inference_delay", "missing")
            return None
        c = self.config
        prev = np.asarray(observation["prev_actions"], np.float32)
        if prev.ndim != 2 or prev.shape[1] != c.action_dim or not np.isfinite(prev).all():
            raise InputError(
                "observation", "prev_actions", f"finite (n, {c.action_dim}) actions", f"{prev.dtype} {prev.shape}"
            )
        delay = np.asarray(observation.get("inference_delay", 0))
        if delay.size != 1 or delay.dtype.kind not in "iu" or not 0 <= int(delay) <= min(len(prev), c.chunk_size):
            raise InputError(
                "observation", "inference_delay",
                f"an integer in 0..{min(len(prev), c.chunk_size)} (prev_actions rows, chunk size)", str(delay.tolist()),
            )  # fmt: skip
        d = int(delay)
        if d == 0:
            return None
        prefix = np.asarray(self.normalizer.normalize(c.action_key, prev[:d]), np.float32)
        return self.processor.actions_to_model(prefix)

    @torch.no_grad()  # not inference_mode: the flow expert's prefix guidance takes a gradient
    def predict_normalized_batch(self, observations: list[dict[str, Any]]) -> np.ndarray:
        """The chunks of several observations in one forward pass, normalised, (B, chunk_size, action_dim)
        float32 (with each one's committed prefix of real-time chunking, see `committed_prefix`)."""
        samples = [self.processor.observation_sample(o, self.normalizer, self.task) for o in observations]
        prefixes = [self.committed_prefix(o) for o in observations]
        batch = {k: v.to(self.device) for k, v in self.processor.collate(samples).items()}
        d = max((len(p) for p in prefixes if p is not None), default=0)
        if d:
            A = self.config.model_action_dim
            pre = np.zeros((len(observations), d, A), np.float32)
            lens = np.zeros(len(observations), np.int64)
            for b, p in enumerate(prefixes):
                if p is not None:
                    pre[b, : len(p)], lens[b] = p, len(p)
            batch["prefix"] = torch.from_numpy(pre).to(self.device)
            batch["prefix_len"] = torch.from_numpy(lens)
        return self.model(**batch, generator=self._generator).actions.float().cpu().numpy()

    def predict_normalized(self, observation: dict[str, Any]) -> np.ndarray:
        """The chunk in normalised action units, (chunk_size, action_dim) float32."""
        return self.predict_normalized_batch([observation])[0]

    def infer_batch(self, observations: list[dict[str, Any]]) -> list[np.ndarray]:
        """`infer` for several observations in one forward pass (what the server does for concurrent
        clients)."""
        preds = self.processor.postprocess(self.predict_normalized_batch(observations), self.normalizer)
        self.calls += len(observations)
        out = []
        for obs, pred in zip(observations, preds):
            d = int(np.asarray(obs.get("inference_delay", 0)))
            if d > 0:  # exact robot units (no round trip through the statistics)
                pred[:d] = np.asarray(obs["prev_actions"], np.float32)[:d]
            out.append(pred)
        return out

    def infer(self, observation: dict[str, Any]) -> np.ndarray:
        """(chunk_size, action_dim) float32 actions in the dataset's units. With ``prev_actions`` and
        ``inference_delay`` d in the observation, the first d actions are exactly ``prev_actions[:d]``."""
        return self.infer_batch([observation])[0]


__all__ = [
    "HEAD_WEIGHTS_NAME",
    "MOTION_TOKENIZER_DIR",
    "HandVLAPolicy",
    "HandVLAPolicyModel",
    "PolicyOutput",
    "masked_action_errors",
    "mlp",
    "resolve_device",
]
