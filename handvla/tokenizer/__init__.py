"""The part-level GRQ-VAE motion tokenizer: hand motion <-> discrete motion ids (128 per hand-second).

- ``configuration``: ``TokenizerConfig`` (model, saved as config.json), ``TrainConfig``, presets.
- ``modeling``: ``MotionTokenizer`` (encode / decode / encode_motion / decode_motion, save_pretrained /
  from_pretrained), ``token_layout`` (the id layout the VLA relies on), the grouped residual quantiser.
- ``data``: motion sources (built-in, joint files fitted to hand parameters, parameter files) and windows.
- ``training``: the resumable training loop. ``evaluation``: reconstruction metrics in millimetres.
"""

from handvla.tokenizer.configuration import TokenizerConfig, TrainConfig, preset
from handvla.tokenizer.modeling import MotionTokenizer, MotionTokens, TokenLayout, mirror_motion, token_layout

__all__ = [
    "MotionTokenizer",
    "MotionTokens",
    "TokenLayout",
    "TokenizerConfig",
    "TrainConfig",
    "mirror_motion",
    "preset",
    "token_layout",
]
