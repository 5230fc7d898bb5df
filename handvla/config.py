"""Typed YAML configs: one loader for every job's pydantic config (file + ``--set key=value`` overrides).

    cfg = load_config(PretrainConfig, "pretrain.yaml", ["train.lr=3e-4", "data.seconds=[1,2]"])

Unknown fields, wrong types and bad values become a one-line ``ConfigError`` naming the file and field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from handvla.errors import ConfigError, MissingResourceError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def set_dotted(d: dict, key: str, value: Any, where: str) -> None:
    """``set_dotted(raw, "train.lr", 3e-4)``: set a nested field, creating sections on the way."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{where}: bad key {key!r}: expected section.field, e.g. train.lr")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{where}: {key!r}: '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    """``["train.lr=3e-4", "data.seconds=[1,2]"]`` -> [(key, value)]; values are read as YAML."""
    import yaml

    out = []
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=3e-4")
        k, v = item.split("=", 1)
        try:
            out.append((k.strip(), yaml.safe_load(v)))
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from None
    return out


def load_config(
    cls: type[ConfigT],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict | None = None,
    what: str = "config",
) -> ConfigT:
    """Read a YAML/JSON file (or start from ``base``), apply ``key=value`` overrides, validate as ``cls``."""
    import yaml

    raw: dict = json.loads(json.dumps(base or {}))  # a deep copy: the caller's dict is left alone
    where = what
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise MissingResourceError(f"{path}: {what} file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(loaded, dict):
            sections = ", ".join(cls.model_fields)
            raise ConfigError(f"{path}: expected a mapping with sections {sections}")
        raw.update(loaded)
    for k, v in parse_overrides(overrides):
        set_dotted(raw, k, v, where)
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"{where}: field '{loc}': {first['msg']} (got {first.get('input')!r})") from None
