"""Typed configs: every job's configuration is a pydantic model, and one loader reads any of them from a
YAML/JSON file with ``--set key=value`` overrides.

    cfg = load_config(PretrainConfig, "pretrain.yaml", ["train.lr=3e-4", "data.seconds=[1,2]"])
    seg = SegmentConfig(max_clip_s=5.0)        # a ConfigModel built in code is checked the same way

Unknown fields, wrong types and bad values become a one-line ``ConfigError`` naming the file (or, for a
config built in code, its class), the field and what was expected. Configs derive from ``ConfigModel``
(unknown fields are errors, assignments are checked, a bad value raises ``ConfigError``); a validator that
raises ``ConfigError`` itself keeps its own message. Each job's example file in ``configs/`` loads into its
config class (``tests/test_configs.py``).
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from handvla.errors import ConfigError, MissingResourceError

ConfigT = TypeVar("ConfigT", bound=BaseModel)
ModelT = TypeVar("ModelT", bound="ConfigModel")

#: at most this many problems are listed in one message
MAX_PROBLEMS = 5


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (directly, or inside Optional / list / dict), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        model = _model_in(arg)
        if model is not None:
            return model
    return None


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str] | None:
    """The field names of the (nested) model at ``loc`` (list positions skipped), or None if unknown."""
    model: type[BaseModel] | None = cls
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = _model_in(field.annotation) if field is not None else None
        if model is None:
            return None
    return list(model.model_fields) if model is not None else None


def validation_message(e: ValidationError, where: str, cls: type[BaseModel] | None = None) -> str:
    """``"<where>: field 'train.lr': <what was expected> (got <value>)"`` for each problem (at most 5)."""
    parts = []
    for err in e.errors()[:MAX_PROBLEMS]:
        loc = ".".join(str(x) for x in err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, Exception):  # a validator's own message: it says what was expected
            text = str(cause)
        elif err["type"] == "extra_forbidden":
            names = _fields_at(cls, err["loc"][:-1]) if cls is not None else None
            text = "unknown field" + (f"; expected one of {', '.join(names)}" if names else "")
        else:
            text = err["msg"]
            got = err.get("input")
            if err["type"] != "missing" and not isinstance(got, dict):
                text += f" (got {got!r})"
        parts.append(f"field '{loc}': {text}" if loc else text)
    return f"{where}: " + "; ".join(parts)


def _config_error(e: ValidationError, cls: type[BaseModel]) -> ConfigError:
    errors = e.errors()
    cause = (errors[0].get("ctx") or {}).get("error") if len(errors) == 1 else None
    if isinstance(cause, ConfigError):  # raised by the config's own check, with its complete message
        return cause
    return ConfigError(validation_message(e, cls.__name__, cls))


class _CheckedCall(type(BaseModel)):
    """``SomeConfig(...)`` in code raises ``ConfigError``, not pydantic's ``ValidationError``. (A metaclass
    rather than ``__init__``: pydantic calls an overridden ``__init__`` for nested and file-loaded configs
    too, where the error must name the field's full path and the file instead.)"""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as e:
            raise _config_error(e, cls) from None


class ConfigModel(BaseModel, metaclass=_CheckedCall):
    """Base of the job configs: unknown fields are errors, and building or changing one with a bad value
    raises a ``ConfigError`` naming the class, the field and what was expected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            raise _config_error(e, type(self)) from None

    def replace(self: ModelT, **changes: Any) -> ModelT:
        """A copy with ``changes`` applied, checked like a new config (``dataclasses.replace`` for configs)."""
        return type(self)(**{**dict(self), **changes})


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
    """Read a YAML/JSON file (or start from ``base``), apply ``key=value`` overrides, validate as ``cls``.

    Errors name the file (or ``what`` when there is none), the field and what was expected."""
    raw: dict = json.loads(json.dumps(base or {}))  # a deep copy: the caller's dict is left alone
    where = what
    if path is not None:
        path = Path(path).expanduser()
        where = str(path)
        if not path.is_file():
            raise MissingResourceError(f"{path}: {what} file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of the fields {', '.join(cls.model_fields)}")
        raw.update(loaded)
    for k, v in parse_overrides(overrides):
        set_dotted(raw, k, v, where)
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(validation_message(e, where, cls)) from None
