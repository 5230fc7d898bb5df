"""Test-wide settings: deterministic, single-threaded torch per worker (the CI machine has 2 cores and
pytest-xdist runs one worker per core), and paths to the real captured data shipped beside the repo."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REAL_HANDS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_hands"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def real_hands_dir() -> Path:
    if not REAL_HANDS.is_dir():
        pytest.skip(f"real captured data not found at {REAL_HANDS}")
    return REAL_HANDS


@pytest.fixture(scope="session")
def benchmark_script():
    """``load(name)``: the script ``benchmarks/<name>.py`` imported as a module (the benchmarks are scripts,
    not a package), for tests that call its functions or its ``main(argv)``."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def calibrated_tokenizer(store_dir: Path, **overrides):
    """``handvla.tokenizer.modeling.calibrated_tokenizer`` on every hand track of a store, with the tiny
    preset and ``overrides`` (TokenizerConfig fields)."""
    from handvla.data.store import EpisodeStore
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import calibrated_tokenizer as calibrate

    store = EpisodeStore(store_dir)
    motions = [m for k in range(len(store)) for m in store.load_episode(k, with_video=False).hands.values()]
    return calibrate(motions, TokenizerConfig(**{**PRESETS["tiny"], **overrides}))
