"""The post-trained VLA as a deployable policy (``handvla.robot.server.Policy``).

    policy = HandVLAPolicy.load("runs/relocate/final")
    chunk = policy.infer({"state": state_39, "image": rgb_uint8})   # (chunk_size, action_dim), robot units

An observation is preprocessed exactly as the training samples were (``handvla.robot.posttrain``): the raw
state is normalised with the checkpoint's statistics (``Normalizer.normalize``, the same call the training
dataset makes), the camera images go through the same `PolicyProcessor` (chat template, InternVL tiling),
and the predicted chunk is unnormalised with the same statistics. The instruction is ``obs["task"]`` when
an in-process caller passes a string there, else the one set with ``set_task`` (the simulator evaluator
calls it), else the checkpoint's default task (the training dataset's first task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from handvla.errors import ConfigError, InputError
from handvla.robot.action_head import HandVLAPolicyModel


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but no CUDA device is available")
    return dev


class HandVLAPolicy:
    """A `HandVLAPolicyModel` with its statistics behind the policy-server protocol."""

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

    @classmethod
    def load(
        cls,
        ckpt: str | Path,
        device: str | torch.device | None = "auto",
        dtype: torch.dtype | str | None = None,
        task: str | None = None,
    ) -> HandVLAPolicy:
        """Load a post-trained checkpoint folder (``HandVLAPolicyModel.save_pretrained``)."""
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
            "init": c.init,
            "checkpoint": self.checkpoint,
        }

    def set_task(self, task: str) -> None:
        if not isinstance(task, str):
            raise InputError("set_task", "task", "an instruction string", type(task).__name__)
        self.task = task

    def reset(self) -> None:
        """Nothing to reset: each chunk depends on the current observation only."""

    # -- preprocessing ------------------------------------------------------------------------------------
    def preprocess(self, observation: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One observation -> the model's batch of one (the training sample layout)."""
        c = self.config
        if not isinstance(observation, dict) or "state" not in observation:
            raise InputError("observation", "state", f"a map with 'state' ({c.state_dim} floats)", "missing")
        state = np.asarray(observation["state"], np.float32).reshape(-1)
        if state.shape != (c.state_dim,):
            raise InputError(
                "observation", "state", f"{c.state_dim} values", str(np.shape(observation["state"]))
            )
        state_n = self.normalizer.normalize(c.state_key, state)  # (Ds,) float32, the training statistics
        images = []
        for name in c.observation_names:
            if name not in observation:
                raise InputError("observation", name, "a uint8 (H, W, 3) camera image", "missing")
            img = np.asarray(observation[name])
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise InputError("observation", name, "a uint8 (H, W, 3) image", f"{img.dtype} {img.shape}")
            images.append(img)
        task = observation.get("task")
        task = task if isinstance(task, str) else self.task
        sample = self.processor.encode(task, images, state_n)
        return self.processor.collate([sample])

    @torch.inference_mode()
    def predict_normalized(self, observation: dict[str, Any]) -> np.ndarray:
        """The chunk in normalised action units, (chunk_size, action_dim) float32."""
        batch = {k: v.to(self.device) for k, v in self.preprocess(observation).items()}
        return self.model(**batch).actions[0].float().cpu().numpy()

    def infer(self, observation: dict[str, Any]) -> np.ndarray:
        """(chunk_size, action_dim) float32 actions in the dataset's units."""
        pred = self.predict_normalized(observation)
        self.calls += 1
        return np.asarray(self.normalizer.unnormalize(self.config.action_key, pred), np.float32)


__all__ = ["HandVLAPolicy", "resolve_device"]
