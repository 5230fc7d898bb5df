"""The source registry: every adapter listed, with a licence, a kind and a working constructor."""

from __future__ import annotations

import pytest

from handvla.data.schema import Episode
from handvla.errors import ConfigError, MissingResourceError
from handvla.ingest.sources import SOURCE_KINDS, SOURCES, SourceEpisode, describe_sources, get_source

EXPECTED = {"egodex", "arctic", "dexycb", "hoi4d", "h2o", "taco", "fpha", "oakink2", "joints21", "hamer"}


def test_every_source_is_registered_and_described():
    assert set(SOURCES) == EXPECTED
    rows = describe_sources()
    assert {r["name"] for r in rows} == EXPECTED
    for r in rows:
        assert r["licence"] and r["kind"] in SOURCE_KINDS and r["params"] in ("mano", "joints"), r
        assert r["fps"] > 0 and r["layout"], r
    joint_only = {r["name"] for r in rows if r["params"] == "joints"}
    assert joint_only == {"egodex", "fpha", "joints21"}
    assert issubclass(SourceEpisode, Episode)


def test_get_source(tmp_path):
    src = get_source("h2o", mano_dir=tmp_path, transl="mano")
    assert src.name == "h2o" and src.transl == "mano"
    with pytest.raises(ConfigError, match="unknown data source"):
        get_source("nope")
    with pytest.raises(ConfigError, match="bad options"):
        get_source("fpha", colour=True)
    for name in SOURCES:
        with pytest.raises(MissingResourceError, match=name):
            get_source(name).list_episodes(tmp_path / "missing")
