"""The part-level GRQ-VAE motion tokenizer: hand motion <-> discrete motion ids (128 per hand-second).

- ``configuration``: ``TokenizerConfig`` (model, saved as config.json),
  ``TokenizerTrainConfig`` (a training run), presets.
- ``modeling``: ``MotionTokenizer`` (encode / decode / encode_motion / decode_motion, save_pretrained /
  from_pretrained), the grouped residual quantiser.
- ``layout``: ``TokenLayout`` / ``token_layout``, how codes become motion ids (the VLA reads the same layout).
- ``data``: motion sources (built-in, joint files fitted to hand parameters, parameter files) and windows.
- ``training``: the tokenizer's model, data and loss, trained by the shared ``handvla.train.trainer.Trainer``.
- ``evaluation``: reconstruction metrics in millimetres.
- ``being_h0``: Being-H0's released GRVQ-8K tokenizer (its modules and key names; conversion of its part
  folders). ``loading.load_tokenizer``: any tokenizer folder, of the class its config.json names.
"""

from handvla.tokenizer.configuration import TokenizerConfig, TokenizerTrainConfig, preset
from handvla.tokenizer.layout import TokenLayout, token_layout
from handvla.tokenizer.modeling import MotionTokenizer, MotionTokens, with_end_points

__all__ = [
    "MotionTokenizer",
    "MotionTokens",
    "TokenLayout",
    "TokenizerConfig",
    "TokenizerTrainConfig",
    "preset",
    "token_layout",
    "with_end_points",
]
