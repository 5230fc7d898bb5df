"""The robot policy's one configuration: `PolicyConfig` (``policy_config.json`` in a checkpoint, and the
``model`` section of a ``handvla posttrain`` YAML).

Its fields come in three groups:

- how the policy is built and trained (the YAML's ``model`` section): where the backbone comes from
  (``init_checkpoint`` | ``backbone`` | ``preset``, ``seed``, ``text_vocab_size``, ``dtype``), image tiles per
  camera, the backbone mode (full / frozen / lora) with its LoRA settings, gradient checkpointing, the head
  sizes, the loss and the prompt template;
- what the policy reads and writes, filled in from the dataset and the backbone when the policy is built
  (`BUILT_FIELDS`: state / action sizes, feature keys and names, cameras and image shapes, chunk size, fps,
  the default task, the LLM width, the policy token ids). The posttrain YAML does not set them;
- ``init`` (read-only, derived): where the backbone came from, as the summaries and the server's metadata
  report it.

Checkpoints written before the two configs were merged hold ``init`` and none of the build fields: loading
turns their ``init`` back into ``init_checkpoint`` / ``backbone`` / ``preset`` + ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, computed_field, field_validator, model_validator

from handvla.atomic import read_json
from handvla.config import ConfigModel, load_config
from handvla.errors import CheckpointError, ConfigError
from handvla.policy.action_space import UNIFIED_DIM, EmbodimentMap, ResolvedMap

POLICY_CONFIG_NAME = "policy_config.json"
POLICY_FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 16
DEFAULT_PROMPT = "{images}{task}. The robot state is {state}. What are the next {chunk_size} actions?"
BackboneMode = Literal["full", "frozen", "lora"]
BACKBONE_MODES: tuple[str, ...] = get_args(BackboneMode)
DTYPES = ("float32", "bfloat16", "float16")
# Qwen2 decoder linear layers (attention and MLP)
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: fields set when the policy is built (from the dataset and the backbone), never by a training config
BUILT_FIELDS = (
    "format_version",
    "state_dim",
    "action_dim",
    "chunk_size",
    "hidden_size",
    "default_task",
    "image_keys",
    "image_shapes",
    "state_key",
    "action_key",
    "state_names",
    "action_names",
    "fps",
    "prop_token_id",
    "action_token_offset",
    "embodiment",
)


def image_observation_names(image_keys: Sequence[str]) -> list[str]:
    """Observation keys the policy expects for its cameras: the first camera is ``image`` (what the
    simulator and the open-loop evaluator send), further ones ``image.<last part of the dataset key>``."""
    names = []
    for i, k in enumerate(image_keys):
        names.append("image" if i == 0 else f"image.{k.split('.')[-1]}")
    if len(set(names)) != len(names):
        raise ConfigError(f"image keys {list(image_keys)} give clashing observation names {names}")
    return names


class LoraSettings(ConfigModel):
    """LoRA adapters of the ``lora`` backbone mode (peft)."""

    rank: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    vision: bool = Field(False, description="also adapt the vision tower (its attention / MLP linears)")


class FlowSettings(ConfigModel):
    """The flow-matching action expert of ``head: flow`` (handvla.policy.flow)."""

    width: int | None = Field(
        None, gt=0, description="the expert's width D (None: half the LLM width, in 64..1024; set when built)"
    )
    layers: int = Field(4, gt=0)
    heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    num_steps: int = Field(10, ge=1, description="Euler integration steps at inference")
    noise_scale: float = Field(
        0.5,
        ge=0.0,
        description="standard deviation of the starting noise at inference: 1 samples the learnt action "
        "distribution, below 1 nearer its mode, 0 integrates deterministically from zero. 0.5 measured best "
        "on unseen seeds (README, robot suite): Adroit relocate at 2500 steps 0.69 vs 0.46 at 1, Meta-World "
        "MT10 0.884 vs 0.860 (0: 0.872)",
    )
    time_beta: tuple[float, float] = Field(
        (1.5, 1.0), description="flow time t = time_max * (1 - Beta(a, b)): weight on the noisier steps"
    )
    time_max: float = Field(0.999, gt=0.0, le=1.0)
    train_samples: int = Field(
        4,
        ge=1,
        description="flow-matching draws (noise, time) per training chunk: the backbone runs once and the "
        "expert sees every draw (a lower-variance loss; 1 = one draw, as pi0 trains). On Meta-World MT10 "
        "at 2000 steps 4 draws lifted held-out success from 0.72 to 0.785 (README, robot suite)",
    )
    context_in_norms: bool = Field(
        False,
        description="also condition the expert's adaptive norms on the mean of the VLA's context (beside the "
        "flow time), not only its cross-attention: a stronger hold on which task the chunk is for",
    )
    residual: bool = Field(
        False,
        description="a regression head beside the expert (trained with the policy's ``loss``) gives the "
        "chunk's mean; the expert generates only what the mean leaves out (action minus the regression "
        "head's chunk, which the expert's loss does not train): regression's hold on which task the chunk "
        "is for, flow's spread around it. Meta-World MT10 over three training seeds (README, robot suite): "
        "no task behind regression (door-open 0.93 vs 0.95; the default expert 0.80, behind at every seed), "
        "overall 0.885 vs 0.884 for the default expert; Adroit relocate 0.96 vs regression 0.98 (one seed); "
        "off by default until more seeds back it",
    )
    rtc_guidance: float = Field(
        2.0,
        ge=0.0,
        description="real-time chunking: weight of the pull towards the committed prefix (0: inpainting only)",
    )

    def width_for(self, llm_width: int) -> int:
        """``width``, or the default for an LLM of width ``llm_width``: half of it, within 64..1024, a
        multiple of ``heads``."""
        if self.width is not None:
            return self.width
        w = max(64, min(1024, llm_width // 2))
        return max(self.heads, w - w % self.heads)

    @model_validator(mode="after")
    def _check(self) -> FlowSettings:
        if self.width is not None and self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if min(self.time_beta) <= 0:
            raise ValueError(f"time_beta {self.time_beta}: both parameters must be > 0")
        return self


HeadKind = Literal["regression", "flow"]


class PolicyConfig(ConfigModel):
    """Everything the policy needs besides weights, tokenizer and statistics (see the module doc).
    ``init_checkpoint`` or ``backbone`` wins over ``preset``; giving both of them is an error when the
    policy is built."""

    format_version: int = POLICY_FORMAT_VERSION
    # -- how it is built and trained -----------------------------------------------------------------
    init_checkpoint: str | None = Field(None, description="handvla VLA checkpoint folder (load_vla)")
    backbone: str | None = Field(None, description="InternVL3 -hf folder (vla_from_backbone)")
    preset: str | None = Field("tiny", description="random init from a HandVLAConfig preset")
    seed: int = 0
    text_vocab_size: int = Field(1024, ge=259, description="BPE size of a random preset's text tokenizer")
    dtype: str | None = Field(None, description="backbone load dtype: float32, bfloat16, float16")
    max_tiles: int | None = Field(1, ge=1, description="image tiles per camera (None: the VLA's setting)")
    backbone_mode: BackboneMode = "full"
    freeze_vision: bool = Field(False, description="full mode: keep the vision tower and projector fixed")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    gradient_checkpointing: bool = False
    proprio_hidden_size: int | None = Field(None, gt=0, description="fp's hidden width (default H)")
    head_hidden_size: int | None = Field(None, gt=0, description="fr's hidden width (default H)")
    head: HeadKind = Field(
        "regression",
        description="regression: fr on the action queries' hidden states (Being-H0); flow: a flow-matching "
        "action expert attending to the VLA's hidden states",
    )
    flow: FlowSettings = Field(default_factory=FlowSettings)
    loss: Literal["l1", "mse"] = Field("l1", description="the regression head's loss")
    prompt_template: str = DEFAULT_PROMPT
    # -- set when built (BUILT_FIELDS) ---------------------------------------------------------------
    state_dim: int | None = Field(None, gt=0, description="robot state size (from the dataset)")
    action_dim: int | None = Field(None, gt=0, description="action size (from the dataset)")
    chunk_size: int = Field(
        DEFAULT_CHUNK_SIZE, gt=0, description="Na: actions per chunk (one query token each)"
    )
    hidden_size: int | None = Field(None, description="LLM width H (set from the backbone)")
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
    embodiment: EmbodimentMap | None = Field(
        None, description="where state and actions live in the unified 200-d space (None: the dataset's own)"
    )

    @model_validator(mode="wrap")
    @classmethod
    def _derived_init(cls, data: Any, handler):
        """``init`` is derived from the build fields. Given with them (a dumped config) it must agree;
        given without them, the file predates the merge and ``init`` says what they were."""
        if not isinstance(data, dict) or "init" not in data:
            return handler(data)
        data = dict(data)
        init = data.pop("init")
        if any(k in data for k in ("init_checkpoint", "backbone", "preset")):
            cfg = handler(data)
            if cfg.init != init:
                raise ValueError(
                    f"init {init!r} disagrees with init_checkpoint / backbone / preset / seed ({cfg.init!r}); "
                    "init is derived from them: set those instead"
                )
            return cfg
        if not isinstance(init, dict):
            raise ValueError(f"init: expected an object, got {type(init).__name__}")
        data.setdefault("max_tiles", None)  # unknown: the backbone's config.json has the tiles it used
        kind = init.get("type")
        if kind == "checkpoint":
            data |= {"init_checkpoint": init.get("path"), "preset": None}
        elif kind == "backbone":
            data |= {"backbone": init.get("path"), "preset": None}
        elif kind == "preset":
            data |= {"preset": init.get("preset"), "seed": init.get("seed", 0)}
        elif not init:
            data["preset"] = None
        else:
            raise ValueError(f"init: unknown type {kind!r} (expected checkpoint, backbone or preset)")
        return handler(data)

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, v):
        if v is not None and v not in DTYPES:
            raise ValueError(f"expected float32, bfloat16 or float16, got {v!r}")
        return v

    @computed_field  # type: ignore[prop-decorator]
    @property
    def init(self) -> dict[str, Any]:
        """Where the backbone came from: {type: checkpoint | backbone, path} or {type: preset, preset, seed}
        ({} when none is named)."""
        if self.init_checkpoint:
            return {"type": "checkpoint", "path": str(self.init_checkpoint)}
        if self.backbone:
            return {"type": "backbone", "path": str(self.backbone)}
        if self.preset:
            return {"type": "preset", "preset": self.preset, "seed": self.seed}
        return {}

    @property
    def model_state_dim(self) -> int | None:
        """The state size the model reads: the unified space's with an embodiment map, else the robot's."""
        return UNIFIED_DIM if self.embodiment is not None else self.state_dim

    @property
    def model_action_dim(self) -> int | None:
        """The action size the model writes (unified space or the robot's own)."""
        return UNIFIED_DIM if self.embodiment is not None else self.action_dim

    def unified_map(self) -> ResolvedMap | None:
        """The embodiment map as index arrays for this config's state and action sizes (None: no map)."""
        if self.embodiment is None:
            return None
        return self.embodiment.resolve(self.state_dim, self.action_dim, "embodiment")

    @property
    def observation_names(self) -> list[str]:
        return image_observation_names(self.image_keys)

    def observation_spec(self) -> dict[str, dict[str, Any]]:
        """The policy server's observation spec (raw robot units; the policy normalises the state itself)."""
        spec: dict[str, dict[str, Any]] = {"state": {"shape": [self.state_dim], "dtype": "float32"}}
        for name, shape in zip(self.observation_names, self.image_shapes):
            spec[name] = {"shape": list(shape), "dtype": "uint8"}
        return spec


def load_policy_config(path: str | Path) -> PolicyConfig:
    """A checkpoint's ``policy_config.json`` (CheckpointError naming the file and the field)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a policy checkpoint has {POLICY_CONFIG_NAME})")
    raw = read_json(path, dict, CheckpointError)
    if raw.get("format_version") != POLICY_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: field 'format_version': expected {POLICY_FORMAT_VERSION}, got {raw.get('format_version')!r}"
        )
    try:
        cfg = load_config(PolicyConfig, base=raw, what=str(path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    for name in ("state_dim", "action_dim"):
        if getattr(cfg, name) is None:
            raise CheckpointError(f"{path}: field '{name}': Field required")
    return cfg


__all__ = [
    "BACKBONE_MODES",
    "BUILT_FIELDS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_PROMPT",
    "POLICY_CONFIG_NAME",
    "LoraSettings",
    "PolicyConfig",
    "image_observation_names",
    "load_policy_config",
]
