"""Every example in configs/ loads into its job's config class (the file name's first word names the job),
and a mistake in one is a ConfigError naming the file and the field."""

from pathlib import Path

import pytest
from pydantic import BaseModel

from handvla.errors import ConfigError
from handvla.ingest.build import BuildConfig, load_build_config
from handvla.robot.posttrain import PosttrainConfig, load_posttrain_config
from handvla.tokenizer.configuration import TokenizerConfig, TokenizerTrainConfig, load_config_file
from handvla.vla.pretrain import PretrainConfig, load_pretrain_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

#: job (the file name's first word) -> (loader, the config classes it returns)
JOBS = {
    "build": (load_build_config, (BuildConfig,)),
    "tokenizer": (load_config_file, (TokenizerConfig, TokenizerTrainConfig)),
    "pretrain": (load_pretrain_config, (PretrainConfig,)),
    "posttrain": (load_posttrain_config, (PosttrainConfig,)),
}
FILES = sorted(CONFIGS.iterdir())


def _job(path: Path) -> str:
    job = path.stem.split("_")[0]
    assert path.suffix == ".yaml" and job in JOBS, f"{path.name}: expected <job>_<name>.yaml, job one of {sorted(JOBS)}"
    return job


def test_every_job_has_an_example():
    assert {_job(p) for p in FILES} == set(JOBS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_example_loads_into_its_config_class(path):
    load, classes = JOBS[_job(path)]
    loaded = load(path)
    configs = loaded if isinstance(loaded, tuple) else (loaded,)
    assert [type(c) for c in configs] == list(classes)
    assert all(isinstance(c, BaseModel) for c in configs)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_unknown_field_names_the_file_and_the_field(path, tmp_path):
    bad = tmp_path / path.name
    bad.write_text(path.read_text() + "\nno_such_field: 1\n")
    load, _ = JOBS[_job(path)]
    with pytest.raises(ConfigError, match=rf"{bad.name}.*no_such_field"):
        load(bad)
