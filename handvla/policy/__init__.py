"""The robot policy, LeRobot-style: one configuration, the model, its processing.

- `configuration`: `PolicyConfig` (``policy_config.json``; the ``model`` section of a posttrain config),
  `LoraSettings`, `load_policy_config`.
- `modeling`: `HandVLAPolicyModel` (VLA backbone + proprioception projector + action queries + regression
  head; ``save_pretrained`` / ``from_pretrained``) and `HandVLAPolicy` (a loaded checkpoint behind the
  policy-server protocol).
- `processing`: robot-feature statistics and the `Normalizer` (stored in checkpoints), the policy tokens,
  and `PolicyProcessor` (observation / sample -> batch, predicted chunk -> robot units).

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
    FeatureStats,
    Normalizer,
    PolicyProcessor,
    action_chunk_token,
    add_policy_tokens,
    compute_feature_stats,
    compute_stats,
    load_dataset_stats,
    stats_from_json,
)

__all__ = [
    "DEFAULT_PROMPT",
    "PROP_CONTEXT_TOKEN",
    "FeatureStats",
    "HandVLAPolicy",
    "HandVLAPolicyModel",
    "LoraSettings",
    "Normalizer",
    "PolicyConfig",
    "PolicyOutput",
    "PolicyProcessor",
    "action_chunk_token",
    "add_policy_tokens",
    "compute_feature_stats",
    "compute_stats",
    "image_observation_names",
    "load_dataset_stats",
    "load_policy_config",
    "resolve_device",
    "stats_from_json",
]
