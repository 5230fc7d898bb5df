"""Source adapters for UniHand-style ingestion: one module per dataset, each reading only that dataset's
native layout and returning ``SourceEpisode`` records in the project convention (see ``base``).

    from handvla.ingest.sources import get_source
    src = get_source("dexycb", mano_dir="~/mano")
    for key in src.list_episodes(root):
        ep = src.read_episode(root, key)   # InputError for a bad file: report it and go on

``SOURCES`` maps each name to its class; ``describe_sources()`` lists name, licence, kind, params, fps.
"""

from __future__ import annotations

from typing import Any

from handvla.errors import ConfigError
from handvla.ingest.sources.arctic import ArcticSource
from handvla.ingest.sources.base import PARAM_KINDS, SOURCE_KINDS, Source, SourceEpisode
from handvla.ingest.sources.dexycb import DexYCBSource
from handvla.ingest.sources.egodex import EgoDexSource
from handvla.ingest.sources.fpha import FPHASource
from handvla.ingest.sources.h2o import H2OSource
from handvla.ingest.sources.hamer import HaMeRSource
from handvla.ingest.sources.hoi4d import HOI4DSource
from handvla.ingest.sources.joints21 import Joints21Source
from handvla.ingest.sources.oakink2 import OakInk2Source
from handvla.ingest.sources.taco import TACOSource

SOURCES: dict[str, type[Source]] = {
    cls.name: cls
    for cls in (
        EgoDexSource,
        ArcticSource,
        DexYCBSource,
        HOI4DSource,
        H2OSource,
        TACOSource,
        FPHASource,
        OakInk2Source,
        Joints21Source,
        HaMeRSource,
    )
}


def get_source(name: str, **options: Any) -> Source:
    """An adapter by name; ``options`` go to its constructor (``mano_dir`` for every source, plus its own)."""
    if name not in SOURCES:
        raise ConfigError(f"unknown data source {name!r}: expected one of {', '.join(sorted(SOURCES))}")
    try:
        return SOURCES[name](**options)
    except TypeError as e:
        raise ConfigError(f"data source {name!r}: bad options {sorted(options)}: {e}") from None


def describe_sources() -> list[dict[str, Any]]:
    """Name, licence, kind, params, fps, whether MANO is needed, url and layout of every source."""
    return [cls().describe() for cls in SOURCES.values()]


__all__ = [
    "PARAM_KINDS",
    "SOURCES",
    "SOURCE_KINDS",
    "Source",
    "SourceEpisode",
    "describe_sources",
    "get_source",
]
