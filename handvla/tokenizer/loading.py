"""Load any motion-tokenizer checkpoint folder: the class is the one its ``config.json`` names in
``model_type`` (handvla's own GRQ-VAE, or Being-H0's released tokenizer after ``tokenizer convert``)."""

from __future__ import annotations

from pathlib import Path

from handvla.atomic import read_json
from handvla.errors import CheckpointError, MissingResourceError
from handvla.tokenizer.being_h0 import BEING_H0_MODEL_TYPE, BeingH0Tokenizer
from handvla.tokenizer.configuration import MODEL_TYPE
from handvla.tokenizer.modeling import CONFIG_NAME, MotionTokenizer

#: tokenizer class per ``model_type``
TOKENIZER_CLASSES: dict[str, type[MotionTokenizer]] = {
    MODEL_TYPE: MotionTokenizer,
    BEING_H0_MODEL_TYPE: BeingH0Tokenizer,
}


def load_tokenizer(directory: str | Path) -> MotionTokenizer:
    """The tokenizer saved in ``directory``, of the class its config.json's ``model_type`` names."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingResourceError(f"{directory}: tokenizer checkpoint folder not found")
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing (a tokenizer checkpoint needs {CONFIG_NAME})")
    # folders saved before the field existed hold the project's own tokenizer
    kind = read_json(cfg_path, dict, CheckpointError).get("model_type", MODEL_TYPE)
    if kind not in TOKENIZER_CLASSES:
        raise CheckpointError(
            f"{cfg_path}: field 'model_type': expected one of {', '.join(map(repr, TOKENIZER_CLASSES))}, got {kind!r}"
        )
    return TOKENIZER_CLASSES[kind].from_pretrained(directory)


__all__ = ["TOKENIZER_CLASSES", "load_tokenizer"]
