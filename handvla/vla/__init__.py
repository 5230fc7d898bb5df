"""The motion VLA: InternVL3 + motion vocabulary (configuration, modeling, processing, generation).

Importing this package imports transformers (a few seconds); the submodules are the API::

    from handvla.vla import build_vla, load_vla, save_vla, vla_from_backbone, generate_motion
"""

from handvla.vla.configuration import PRESETS, HandVLAConfig, estimate_num_parameters
from handvla.vla.generation import (
    MotionBlockConstraint,
    MotionGeneration,
    generate_motion,
    is_valid_motion_output,
    parse_motion_output,
    predict_motion,
    translate_motion,
)
from handvla.vla.modeling import (
    HandVLAForConditionalGeneration,
    VLABundle,
    build_vla,
    extend_vocabulary,
    fresh_weights,
    load_vla,
    motion_lm_loss,
    save_vla,
    vla_from_backbone,
)
from handvla.vla.processing import (
    HAND_MODES,
    HandVLAProcessor,
    generation_prompt,
    hands_for_mode,
)
from handvla.vla.text_tokenizer import (
    MotionVocab,
    add_motion_tokens,
    build_text_tokenizer,
    load_text_tokenizer,
)

__all__ = [
    "HAND_MODES",
    "PRESETS",
    "HandVLAConfig",
    "HandVLAForConditionalGeneration",
    "HandVLAProcessor",
    "MotionBlockConstraint",
    "MotionGeneration",
    "MotionVocab",
    "VLABundle",
    "add_motion_tokens",
    "build_text_tokenizer",
    "build_vla",
    "estimate_num_parameters",
    "extend_vocabulary",
    "generate_motion",
    "generation_prompt",
    "hands_for_mode",
    "is_valid_motion_output",
    "load_text_tokenizer",
    "fresh_weights",
    "load_vla",
    "motion_lm_loss",
    "parse_motion_output",
    "predict_motion",
    "save_vla",
    "translate_motion",
    "vla_from_backbone",
]
