"""The robot policy, LeRobot-style: one configuration, the model, its processing.

- `configuration`: `PolicyConfig` (``policy_config.json``; the ``model`` section of a posttrain config),
  `LoraSettings`, `load_policy_config`.
- `modeling`: `HandVLAPolicyModel` (VLA backbone + proprioception projector + action queries + regression
  head; ``save_pretrained`` / ``from_pretrained``) and `HandVLAPolicy` (a loaded checkpoint behind the
  policy-server protocol).
- `processing`: the `Normalizer` of robot features (stored in checkpoints; the statistics it applies are
  ``handvla.data.lerobot.FeatureStats``), the policy tokens, and `PolicyProcessor` (observation / sample -> batch, predicted chunk -> robot units).

Training the policy is a robot job (``handvla.robot.posttrain``); serving and evaluating it too
(``handvla.robot.server``, ``handvla.robot.evaluate``).
"""

from handvla.policy.configuration import (
    DEFAULT_PROMPT,
    LoraSettings,
    PolicyConfig,
    image_observation_names,
    load_policy_config,
)
from handvla.policy.modeling import HandVLAPolicy, HandVLAPolicyModel, PolicyOutput, resolve_device
from handvla.policy.processing import (
    PROP_CONTEXT_TOKEN,
    Normalizer,
    PolicyProcessor,
    action_chunk_token,
    add_policy_tokens,
)

__all__ = [
    "DEFAULT_PROMPT",
    "PROP_CONTEXT_TOKEN",
    "HandVLAPolicy",
    "HandVLAPolicyModel",
    "LoraSettings",
    "Normalizer",
    "PolicyConfig",
    "PolicyOutput",
    "PolicyProcessor",
    "action_chunk_token",
    "add_policy_tokens",
    "image_observation_names",
    "load_policy_config",
    "resolve_device",
]
