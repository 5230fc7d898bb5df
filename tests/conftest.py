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


def places_bundle(**config):
    """A tiny random-init VLA whose tokenizer has 16 ray end-point bins and whose motion answers state places
    (``motion_answer_prefix`` target_places), with ``config`` (HandVLAConfig fields) set on top."""
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer, with_end_points
    from handvla.vla import build_vla

    mt = with_end_points(MotionTokenizer(TokenizerConfig(**PRESETS["tiny"])), "ray", 16)
    b = build_vla("tiny", motion_tokenizer=mt, seed=0)
    for k, v in {"motion_answer_prefix": "target_places", **config}.items():
        setattr(b.model.config, k, v)
    return b


def end_point_bins(p, cfg):
    """(3,) bins of camera-frame point ``p`` in a ray end-point space, computed here by hand from the
    tokenizer config's span (x / z, y / z, z; clipped to the first / last bin)."""
    import numpy as np

    lo, hi = (np.asarray(v, np.float64) for v in cfg.end_point_span)
    c = np.array([p[0] / p[2], p[1] / p[2], p[2]])
    return np.clip(np.floor((c - lo) / (hi - lo) * cfg.end_point_bins), 0, cfg.end_point_bins - 1).astype(int)
