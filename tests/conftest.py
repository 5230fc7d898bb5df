"""Test-wide settings: deterministic, single-threaded torch per worker (the CI machine has 2 cores and
pytest-xdist runs one worker per core), and paths to the real captured data shipped beside the repo."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REAL_HANDS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_hands"


@pytest.fixture(scope="session")
def real_hands_dir() -> Path:
    if not REAL_HANDS.is_dir():
        pytest.skip(f"real captured data not found at {REAL_HANDS}")
    return REAL_HANDS


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def calibrated_tokenizer(store_dir: Path, **overrides):
    """A tiny motion tokenizer whose normaliser and codebooks (k-means on the encoder's latents) are fitted
    to the store's motion: untrained weights, but blocks get distinct ids (an all-zero codebook would give
    every block the same ids). ``overrides``: TokenizerConfig fields over the tiny preset."""
    from handvla.data.store import EpisodeStore
    from handvla.hand.features import FeatureNormalizer
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer

    torch.manual_seed(0)
    mt = MotionTokenizer(TokenizerConfig(**{**PRESETS["tiny"], **overrides}))
    store = EpisodeStore(store_dir)
    feats = []
    for k in range(len(store)):
        ep = store.load_episode(k, with_video=False)
        feats += [mt.motion_features(m) for m in ep.hands.values() if m.valid.any()]
    mt.set_normalizer(FeatureNormalizer.fit(feats))
    blocks = torch.cat([mt.blocks_from_sequence(f) for f in feats])
    with torch.no_grad():
        for part, xp in mt._split(mt.normalize(blocks)).items():
            m = mt.parts[part]
            m.quantizer.init_codebooks(m.encoder(xp.transpose(1, 2)).transpose(1, 2))
    return mt.eval()
