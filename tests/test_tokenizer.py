"""Motion tokenizer: id layout, quantiser against vector-quantize-pytorch, save/load, determinism, mirroring,
training that learns, exact resume, bad input and corrupted checkpoints. Tiny preset, single thread."""

import json

import numpy as np
import pytest
import torch

from handvla.cli import main as cli_main
from handvla.errors import CheckpointError, ConfigError, InputError, MissingResourceError
from handvla.hand.features import feature_spec, features_to_joints, motion_to_features
from handvla.hand.io import save_motion
from handvla.hand.model import BuiltinHand
from handvla.hand.motion import HandMotion
from handvla.tokenizer import training
from handvla.tokenizer.configuration import TokenizerConfig, TokenizerTrainConfig, load_config_file, preset
from handvla.tokenizer.data import (
    FeatureClip,
    WindowSampler,
    _yaw_matrices,
    load_sources,
    make_clips,
    rotate_features,
)
from handvla.tokenizer.evaluation import evaluate_files
from handvla.tokenizer.layout import token_layout
from handvla.tokenizer.modeling import (
    GroupedResidualQuantizer,
    MotionTokenizer,
    beam_search_codes,
    kmeans,
    lattice_codebook,
    nearest_code,
)
from handvla.tokenizer.training import train


def _motion(T=40, side="right", seed=0, fps=15.0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, T)[:, None]
    return HandMotion(
        global_orient=rng.normal(size=3) * 0.8 + t * rng.normal(size=3) * 0.5,
        hand_pose=0.3 * rng.normal(size=(15, 3)) + 0.2 * t[:, :, None] * rng.normal(size=(15, 3)),
        wrist_pos=np.array([0.05, 0.1, 0.45]) + 0.1 * t * rng.normal(size=3),
        betas=rng.normal(size=10) * 0.5,
        side=side,
        fps=fps,
    )


def _tiny_model(seed=0) -> MotionTokenizer:
    """A tiny tokenizer with codebooks initialised on random latents and normalisation from a motion."""
    torch.manual_seed(seed)
    cfg, _ = preset("tiny")
    model = MotionTokenizer(cfg)
    feats = model.motion_features(_motion(60, seed=seed + 1))
    from handvla.hand.features import FeatureNormalizer

    model.set_normalizer(FeatureNormalizer.fit(feats))
    for part in model.parts.values():
        part.quantizer.init_codebooks(torch.randn(256, cfg.code_dim))
    return model.eval()


def _tiny_train_config(**kw) -> TokenizerTrainConfig:
    _, tc = preset("tiny")
    return tc.replace(**{"builtin_sequences": 6, "builtin_seconds": 3.0, "threads": 1, **kw})


# ---------------------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------------------


def test_default_config_reproduces_reference_layout():
    cfg = TokenizerConfig()
    assert (cfg.frames_per_block, cfg.window_frames, cfg.latent_steps) == (15, 16, 4)
    assert cfg.dilations == (9, 3, 1) and cfg.parts == ("wrist", "finger")
    assert (cfg.part_dim("wrist"), cfg.part_dim("finger")) == (9, 150)
    lay = token_layout(cfg)
    assert (lay.tokens_per_part, lay.tokens_per_block, lay.vocab_size) == (64, 128, 8192)
    assert lay.id_range("wrist") == (0, 4096) and lay.id_range("finger") == (4096, 8192)
    # code (finger, group 1, time 2, layer 3) = 77 sits at 64 + 1*32 + 2*8 + 3 and reads 4096 + 77
    codes = {p: torch.zeros(1, 4, 2, 8, dtype=torch.long) for p in lay.parts}
    codes["finger"][0, 2, 1, 3] = 77
    ids = lay.pack(codes)
    assert ids.shape == (1, 128) and int(ids[0, 64 + 32 + 16 + 3]) == 4096 + 77
    assert int((ids[0, 64:] == 4096).sum()) == 63 and int(ids[0, :64].max()) == 0
    rnd = {p: torch.randint(0, 4096, (3, 4, 2, 8)) for p in lay.parts}
    back = lay.unpack(lay.validate(lay.pack(rnd)))
    assert all(torch.equal(back[p], rnd[p]) for p in lay.parts)


def test_whole_hand_layout_and_preset_sizes():
    cfg = TokenizerConfig(part_level=False, groups=4)
    lay = token_layout(cfg)
    assert lay.parts == ("hand",) and lay.tokens_per_block == 4 * 4 * 8 and lay.vocab_size == 4096
    tiny, _ = preset("tiny")
    assert token_layout(tiny).tokens_per_block == 128 and token_layout(tiny).vocab_size == 128


# ---------------------------------------------------------------------------------------------------------
# Quantiser
# ---------------------------------------------------------------------------------------------------------


def test_quantizer_matches_vector_quantize_pytorch():
    from vector_quantize_pytorch import GroupedResidualVQ

    torch.manual_seed(1)
    ours = GroupedResidualQuantizer(32, groups=2, layers=3, codebook_size=16)
    ours.init_codebooks(torch.randn(500, 32))
    ref = GroupedResidualVQ(dim=32, groups=2, num_quantizers=3, codebook_size=16).eval()
    with torch.no_grad():
        for g in range(2):
            for layer in range(3):
                ref.rvqs[g].layers[layer]._codebook.embed.copy_(ours.codebook[g, layer][None])
        z = torch.randn(4, 5, 32)
        q = ours(z, update=False)
        ref_q, ref_idx, _ = ref(z)
    assert torch.equal(ref_idx.permute(1, 2, 0, 3), q.codes)  # (groups, B, N, L) -> (B, N, groups, L)
    torch.testing.assert_close(q.quantized, ref_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.decode_codes(q.codes), q.quantized, atol=1e-5, rtol=0)


def test_quantizer_ema_kmeans_and_dead_code_reset():
    torch.manual_seed(0)
    q = GroupedResidualQuantizer(4, groups=1, layers=1, codebook_size=8, decay=0.5, dead_threshold=0.0)
    centres = torch.tensor([[5.0, 0, 0, 0], [-5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, -5.0, 0, 0]])
    data = centres.repeat_interleave(50, 0) + 0.01 * torch.randn(200, 4)
    q.init_codebooks(data)
    # k-means finds the four clusters: every data point is within noise of its code
    out = q(data[None], update=False)
    assert (out.quantized[0] - data).abs().max() < 0.1
    assert torch.allclose(q.ema_usage.sum(-1), torch.ones(1, 1))
    # EMA: the codes follow the data when it moves (decay 0.5: the old position fades as 0.5^steps)
    q.train()
    shifted = data + torch.tensor([1.0, 0, 0, 0])
    for _ in range(15):
        q(shifted[None])
    err = q(shifted[None], update=False).quantized[0] - shifted
    assert err.abs().max() < 0.1
    # one EMA step by hand: the code becomes the usage-weighted mean of its EMA statistics
    before_sum, before_use = q.ema_sum.clone(), q.ema_usage.clone()
    codes = q(shifted[None]).codes.flatten()
    share = torch.bincount(codes, minlength=8).float() / 200
    use = 0.5 * before_use[0, 0] + 0.5 * share
    torch.testing.assert_close(q.ema_usage[0, 0], use)
    smoothed = (use + q.eps) / (use.sum() + 8 * q.eps)
    torch.testing.assert_close(q.codebook[0, 0], q.ema_sum[0, 0] / smoothed[:, None])
    assert not torch.equal(before_sum, q.ema_sum)
    # a code far from everything is never chosen; below the dead threshold it is reset to a batch vector
    q.dead_threshold = 0.5
    q.codebook[0, 0, 0] = torch.tensor([100.0, 100, 100, 100])
    q.ema_usage[0, 0, 0] = 0.0
    q(shifted[None])
    assert ((shifted - q.codebook[0, 0, 0]).abs().sum(-1) < 1e-6).any()


def _quant_mse(x: torch.Tensor, cb: torch.Tensor) -> float:
    return float((x - cb[nearest_code(x, cb)]).square().sum(-1).mean())


def test_lattice_codebook_tiles_the_principal_axes_and_generalises():
    torch.manual_seed(1)
    d, K = 12, 256
    # anisotropic data in a rotated frame: principal stds 3, 2, 1.5, 1, 0.5, ... along random axes
    std = torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.05, 0.05])
    Q, _ = torch.linalg.qr(torch.randn(d, d))
    mean = torch.randn(d)
    train_x = (torch.randn(2 * K, d) * std) @ Q.T + mean
    test_x = (torch.randn(4000, d) * std) @ Q.T + mean
    cb = lattice_codebook(train_x, K)
    assert cb.shape == (K, d) and cb.dtype == torch.float32
    assert len(torch.unique(cb, dim=0)) == K  # a full grid: every code distinct
    # all codes lie in the span of the top principal axes, around the data mean
    top = Q[:, :5]
    off = (cb - mean) - ((cb - mean) @ top) @ top.T
    assert off.norm(dim=-1).max() < 0.3 * std[0]
    # the grid's error on unseen data is close to its error on the training data, while k-means on so
    # few points memorises them (near-zero training error) and does worse on unseen data
    km, _ = kmeans(train_x, K, 10)
    lat_train, lat_test = _quant_mse(train_x, cb), _quant_mse(test_x, cb)
    km_train, km_test = _quant_mse(train_x, km), _quant_mse(test_x, km)
    assert lat_test < 1.3 * lat_train
    assert km_train < 0.5 * lat_train
    assert lat_test < km_test
    # codebook sizes that are not a power of 2 repeat grid points; k < 2 gives the mean
    assert len(torch.unique(lattice_codebook(train_x, 100), dim=0)) == 64
    torch.testing.assert_close(lattice_codebook(train_x, 1)[0], train_x.mean(0), atol=1e-5, rtol=0)


def test_quantizer_init_methods_per_part_and_config_checks():
    cfg = preset("tiny")[0].replace(codebook_init={"wrist": "lattice"})
    model = MotionTokenizer(cfg)
    assert model.parts["wrist"].quantizer.init_method == "lattice"
    assert model.parts["finger"].quantizer.init_method == "kmeans"  # absent parts: k-means
    assert TokenizerConfig().codebook_init["finger"] == "lattice"
    q = GroupedResidualQuantizer(8, groups=2, layers=3, codebook_size=16, init_method="lattice")
    x = torch.randn(400, 8) * torch.linspace(2, 0.1, 8)
    q.init_codebooks(x)
    errs = []
    for layers in range(1, 4):  # each residual layer lowers the error
        q.layers = layers
        errs.append(float((q(x[None], update=False).quantized[0] - x).square().mean()))
        q.layers = 3
    assert errs[0] > errs[1] > errs[2]
    torch.testing.assert_close(q.ema_usage.sum(-1), torch.ones(2, 3))
    with pytest.raises(ConfigError, match="codebook_init.finger"):
        TokenizerConfig(codebook_init={"finger": "random"})
    with pytest.raises(ConfigError, match="codebook_init"):
        TokenizerConfig(codebook_init={"thumb": "kmeans"})
    # checkpoints written before per-field weights still load
    old = {**TokenizerConfig().model_dump(), "wrist_pos_weight": 2.0}
    del old["field_weights"]
    assert TokenizerConfig(**old).field_weights == {"wrist_pos": 2.0}


def _sum_error(x, codebooks, codes):
    """Squared error of x against the sum of its codes' vectors, per row."""
    total = sum(codebooks[layer][codes[:, layer]] for layer in range(codebooks.shape[0]))
    return (x - total).square().sum(-1)


def test_beam_search_codes_against_greedy_and_exhaustive_search():
    torch.manual_seed(0)
    L, K, d = 3, 5, 4
    x = torch.randn(200, d)
    books = torch.randn(L, K, d) * torch.tensor([1.0, 0.6, 0.3])[:, None, None]
    # beam 1 is the greedy chain: each layer's nearest code to what the previous layers left
    greedy, residual = [], x
    for layer in range(L):
        idx = nearest_code(residual, books[layer])
        residual = residual - books[layer][idx]
        greedy.append(idx)
    greedy = torch.stack(greedy, -1)
    assert torch.equal(beam_search_codes(x, books, 1), greedy)
    # every combination of codes, the true optimum of the sum
    combos = torch.cartesian_prod(*[torch.arange(K)] * L)  # (K^L, L)
    sums = sum(books[layer][combos[:, layer]] for layer in range(L))  # (K^L, d)
    best = combos[torch.cdist(x, sums).argmin(1)]
    exact = _sum_error(x, books, best)
    errs = {b: _sum_error(x, books, beam_search_codes(x, books, b, chunk=7)) for b in (1, 2, 4, K**L)}
    for b in (2, 4, K**L):  # a wider beam is never worse than greedy, row by row, nor worse than the optimum
        assert (errs[b] <= errs[1] + 1e-5).all() and (errs[b] >= exact - 1e-5).all()
    assert errs[4].mean() < errs[1].mean()  # and here it is better on average
    torch.testing.assert_close(errs[K**L], exact)  # keeping every candidate finds the optimum
    # chunking does not change the result
    assert torch.equal(beam_search_codes(x, books, 4, chunk=7), beam_search_codes(x, books, 4, chunk=1000))


def test_quantizer_beam_encoding_config_and_old_checkpoints(tmp_path):
    torch.manual_seed(0)
    q = GroupedResidualQuantizer(8, groups=2, layers=3, codebook_size=16, beam=4)
    q.init_codebooks(torch.randn(300, 8))
    z = torch.randn(2, 5, 8)
    out = q(z, update=False)
    for g in range(2):  # the forward pass uses the beam's codes, group by group
        ref = beam_search_codes(z.reshape(10, 8)[:, 4 * g : 4 * g + 4], q.codebook[g], 4)
        assert torch.equal(out.codes.reshape(10, 2, 3)[:, g], ref)
    torch.testing.assert_close(q.decode_codes(out.codes), out.quantized)
    q.beam = 1
    greedy = q(z, update=False)
    assert (out.quantized - z).square().sum() <= (greedy.quantized - z).square().sum() + 1e-6
    assert not torch.equal(out.codes, greedy.codes)  # the beam did choose other codes here
    q.beam = 4  # a pass that updates the codebooks (EMA) assigns greedily, as k-means does
    assert torch.equal(q(z, update=True).codes, greedy.codes)
    with pytest.raises(ValueError, match="beam"):
        GroupedResidualQuantizer(8, groups=2, layers=3, codebook_size=16, beam=0)
    # the config's encode_beam reaches every part; a saved model keeps it
    cfg = preset("tiny")[0]
    assert cfg.encode_beam == TokenizerConfig().encode_beam > 1
    model = MotionTokenizer(cfg.replace(encode_beam=3))
    assert {p.quantizer.beam for p in model.parts.values()} == {3}
    model.save_pretrained(tmp_path / "new")
    assert MotionTokenizer.from_pretrained(tmp_path / "new").config.encode_beam == 3
    # folders written before the field existed encoded greedily and still do
    raw = json.loads((tmp_path / "new" / "config.json").read_text())
    del raw["encode_beam"]
    (tmp_path / "new" / "config.json").write_text(json.dumps(raw))
    old = MotionTokenizer.from_pretrained(tmp_path / "new")
    assert old.config.encode_beam == 1 and {p.quantizer.beam for p in old.parts.values()} == {1}
    with pytest.raises(ConfigError, match="encode_beam"):
        TokenizerConfig(encode_beam=0)


# ---------------------------------------------------------------------------------------------------------
# Model: shapes, determinism, save / load, mirroring
# ---------------------------------------------------------------------------------------------------------


def test_encode_decode_shapes_ranges_and_determinism():
    model = _tiny_model()
    x = model.motion_features(_motion(16))[None].repeat(3, 1, 1)
    ids = model.encode(x)
    assert ids.shape == (3, 128) and ids.dtype == torch.int64
    assert ids[:, :64].min() >= 0 and ids[:, :64].max() < 64
    assert ids[:, 64:].min() >= 64 and ids[:, 64:].max() < 128
    assert torch.equal(ids, model.encode(x))
    f1, f2 = model.decode(ids), model.decode(ids)
    assert f1.shape == (3, 16, 162) and torch.equal(f1, f2)
    motion = _motion(40)
    tokens = model.encode_motion(motion)
    assert tokens.ids.shape == (3, 128) and tokens.num_frames == 40 and tokens.side == "right"
    rec = model.decode_motion(tokens, betas=motion.betas)
    assert len(rec) == 40 and rec.side == "right" and rec.fps == 15.0
    # the last partial second is the first 10 frames of a block padded with the 10th frame
    feats = model.motion_features(motion)
    padded = torch.cat([feats[30:40], feats[39:40].expand(6, -1)])
    assert torch.equal(model.encode(padded[None])[0], torch.as_tensor(tokens.ids[2]))


def test_final_wrist_positions_match_decoding_whole_motions():
    """The batched end point (last blocks only) equals decode_motion's last wrist, per side (left mirrored)."""
    model = _tiny_model()
    with torch.no_grad():  # spread the codebooks so ids decode to different places
        for part in model.parts.values():
            part.quantizer.codebook.normal_(0, 0.5)
    motions = [model.encode_motion(_motion(45, seed=s)).ids for s in range(4)]
    sides = ["left", "right", "left", "right"]
    got = model.final_wrist_positions(np.stack([m[-1] for m in motions]), sides, batch_size=3)
    ref = np.stack([model.decode_motion(m, side=s).wrist_pos[-1] for m, s in zip(motions, sides)])
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert np.abs(got[0] - got[1]).max() > 1e-3  # the sides and motions did differ
    with pytest.raises(InputError, match="sides"):
        model.final_wrist_positions(np.stack([m[-1] for m in motions]), sides[:3])


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = _tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["format_version"] == 1
    loaded = MotionTokenizer.from_pretrained(tmp_path)
    sd0, sd1 = model.state_dict(), loaded.state_dict()
    for k, v in sd0.items():
        if k.endswith("ema_sum"):  # rebuilt from codebook x usage
            torch.testing.assert_close(sd1[k], v, rtol=1e-5, atol=1e-7)
        else:
            assert torch.equal(sd1[k], v), k
    motion = _motion(33, seed=3)
    t0, t1 = model.encode_motion(motion), loaded.encode_motion(motion)
    assert np.array_equal(t0.ids, t1.ids)
    m0, m1 = model.decode_motion(t0), loaded.decode_motion(t1)
    assert np.array_equal(m0.hand_pose, m1.hand_pose) and np.array_equal(m0.wrist_pos, m1.wrist_pos)


def test_mirroring_left_hands_shares_codes():
    model = _tiny_model()
    hand_r, hand_l = BuiltinHand("right"), BuiltinHand("left")
    right = _motion(20, seed=4)
    left = right.mirrored()
    assert left.side == "left" and left.mirrored().side == "right"
    # the left model's joints of the mirrored motion are the right joints reflected through x = 0
    jr = hand_r(right.global_orient, right.hand_pose, right.betas, right.wrist_pos).joints
    jl = hand_l(left.global_orient, left.hand_pose, left.betas, left.wrist_pos).joints
    torch.testing.assert_close(jl, jr * torch.tensor([-1.0, 1.0, 1.0]), atol=1e-6, rtol=0)
    tl, tr = model.encode_motion(left), model.encode_motion(right)
    assert tl.side == "left" and np.array_equal(tl.ids, tr.ids)
    dl, dr = model.decode_motion(tl, betas=left.betas), model.decode_motion(tr, betas=right.betas)
    assert dl.side == "left"
    np.testing.assert_allclose(model.motion_joints(dl), model.motion_joints(dr) * [-1, 1, 1], atol=1e-6)


def test_differentiable_joints_match_hand_model():
    model = _tiny_model()
    motion = _motion(16, seed=5)
    feats = model.motion_features(motion)[None].requires_grad_(True)
    j = features_to_joints(model.spec, feats, torch.from_numpy(motion.betas)[None], BuiltinHand("right"))
    ref = model.motion_joints(motion)
    np.testing.assert_allclose(j[0].detach().numpy(), ref, atol=2e-5)
    j.sum().backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


def test_scene_rotation_augmentation_matches_rotated_motion():
    spec = feature_spec("D162")
    motion = _motion(16, seed=6)
    rot = _yaw_matrices(np.array([0.7]))
    feats = motion_to_features(spec, motion)[None]
    R = rot[0].numpy()
    from scipy.spatial.transform import Rotation

    go = (Rotation.from_matrix(R) * Rotation.from_rotvec(motion.global_orient)).as_rotvec()
    rotated = HandMotion(go, motion.hand_pose, motion.wrist_pos @ R.T, motion.betas)
    expected = motion_to_features(spec, rotated)[None]
    torch.testing.assert_close(rotate_features(spec, feats, rot), expected, atol=1e-5, rtol=0)


def test_linear_skip_starts_as_pca_autoencoder():
    """After init_linear_skip the continuous model is the PCA auto-encoder of alpha-frame patches: exact
    for the wrist (4 x 9 = 36 <= 64 latent dims) and, for the fingers, as good as numpy's rank-64 PCA."""
    cfg = TokenizerConfig(width=16, code_dim=64, codebook_size=16, res_depth=1)
    model = MotionTokenizer(cfg)
    feats = torch.stack([model.motion_features(_motion(16, seed=s)) for s in range(40)])
    from handvla.tokenizer.data import normalizer_from_features

    model.set_normalizer(normalizer_from_features(cfg, feats.reshape(-1, 162)))
    model.init_linear_skip(feats)
    with torch.no_grad():
        rec = model(feats, quantize=False).recon
    x = model.normalize(feats)
    wi, fi = (torch.as_tensor(cfg.spec.part_indices(p)) for p in ("wrist", "finger"))
    assert (rec[..., wi] - x[..., wi]).abs().max() < 1e-4
    patches = x[..., fi].reshape(40, 4, 4 * 150).reshape(-1, 600).double().numpy()
    _, sv, _ = np.linalg.svd(patches, full_matrices=False)  # uncentred, as the model's init
    pca_err = (sv[64:] ** 2).sum() / patches.size  # mean squared error of the rank-64 reconstruction
    ours = float(((rec[..., fi] - x[..., fi]).double() ** 2).mean())
    assert ours == pytest.approx(pca_err, rel=0.05, abs=1e-7)


def test_field_normalisation_shares_one_std_per_field():
    from handvla.tokenizer.data import normalizer_from_features

    cfg = TokenizerConfig(field_weights={"wrist_pos": 2.0})
    feats = motion_to_features(cfg.spec, _motion(50, seed=8))
    norm = normalizer_from_features(cfg, feats)
    for field, sl in cfg.spec.slices().items():
        std = norm.std[sl]
        assert torch.allclose(std, std[0].expand_as(std)), field
    raw = feats[:, cfg.spec.slices()["wrist_pos"]].std(0).square().mean().sqrt()
    torch.testing.assert_close(norm.std[96], raw / 2.0)


def test_resample_motion_keeps_frames_on_the_grid():
    m30 = _motion(31, fps=30.0, seed=7)
    m15 = m30.resampled(15.0)
    assert m15.fps == 15.0 and len(m15) == 16
    np.testing.assert_allclose(m15.wrist_pos, m30.wrist_pos[::2], atol=1e-6)
    np.testing.assert_allclose(m15.hand_pose, m30.hand_pose[::2], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Bad input, bad config, bad checkpoints
# ---------------------------------------------------------------------------------------------------------


def test_bad_ids_and_features_raise_clear_errors():
    model = _tiny_model()
    ok = model.encode(model.motion_features(_motion(16))[None])
    bad = ok.clone()
    bad[0, 70] = 5  # a wrist-range id in a finger position
    with pytest.raises(InputError, match=r"ids\[0, 70\].*finger id in \[64, 128\)"):
        model.decode(bad)
    with pytest.raises(InputError, match="blocks of 128 ids"):
        model.decode(ok[:, :100])
    with pytest.raises(InputError, match="integer"):
        model.decode(ok.float())
    with pytest.raises(InputError, match=r"shape \(batch, 16, 162\)"):
        model.encode(torch.zeros(2, 15, 162))
    with pytest.raises(InputError, match="finite"):
        model.encode(torch.full((1, 16, 162), float("nan")))
    with pytest.raises(InputError, match="fps"):
        model.encode_motion(_motion(20, fps=30.0))
    with pytest.raises(InputError, match="num_frames"):
        model.decode_sequence(ok, num_frames=16)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="features"):
        TokenizerConfig(features="D77")
    with pytest.raises(ConfigError, match="alpha"):
        TokenizerConfig(alpha=3)
    with pytest.raises(ConfigError, match="'widht': unknown field"):
        TokenizerConfig(widht=3)
    y = tmp_path / "c.yaml"
    y.write_text("width: 48\nmodel:\n  codebook_size: 32\ntrain:\n  lr: 0.002\nbatch_size: 8\n")
    mc, tc = load_config_file(y, base=preset("tiny"))
    assert (mc.width, mc.codebook_size, tc.lr, tc.batch_size, mc.code_dim) == (48, 32, 0.002, 8, 32)
    y.write_text("colour: red\n")
    with pytest.raises(ConfigError, match="colour"):
        load_config_file(y)
    assert (
        cli_main(["tokenizer", "train", "--features", "D77", "--out", str(tmp_path / "x"), "--steps", "1"])
        == 2
    )


def test_corrupted_or_missing_checkpoint_files(tmp_path):
    model = _tiny_model()
    model.save_pretrained(tmp_path)
    w = tmp_path / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        MotionTokenizer.from_pretrained(tmp_path)
    w.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        MotionTokenizer.from_pretrained(tmp_path)
    w.write_bytes(data)
    cfg = tmp_path / "config.json"
    good = cfg.read_text()
    cfg.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        MotionTokenizer.from_pretrained(tmp_path)
    cfg.write_text(good.replace('"width": 32', '"width": 48'))
    with pytest.raises(CheckpointError, match="model.safetensors.*expected"):
        MotionTokenizer.from_pretrained(tmp_path)
    cfg.write_text(good.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(CheckpointError, match="format_version"):
        MotionTokenizer.from_pretrained(tmp_path)
    cfg.unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        MotionTokenizer.from_pretrained(tmp_path)
    with pytest.raises(MissingResourceError):
        MotionTokenizer.from_pretrained(tmp_path / "nope")
    assert cli_main(["tokenizer", "eval", "--ckpt", str(tmp_path), "--data", "builtin"]) == 2


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------


def test_window_sampler_pads_like_encoding():
    cfg, _ = preset("tiny")
    feats = torch.arange(10, dtype=torch.float32)[:, None].expand(10, cfg.spec.dim).clone()
    clip = FeatureClip(feats, torch.zeros(10), torch.ones(10, dtype=torch.bool), "short")
    b = WindowSampler(cfg, [clip], seed=0).sample(2)
    assert b.feats.shape == (2, 16, cfg.spec.dim)
    assert b.feats[0, :, 0].tolist() == list(range(10)) + [9.0] * 6
    assert b.mask[0].tolist() == [True] * 10 + [False] * 6


def test_window_sampler_speed_augmentation():
    cfg, _ = preset("tiny")
    F = cfg.frames_per_block
    T = 200
    feats = torch.arange(T, dtype=torch.float32)[:, None].expand(T, cfg.spec.dim).clone()  # feature = time
    valid = torch.ones(T, dtype=torch.bool)
    clip = FeatureClip(feats, torch.zeros(10), valid, "ramp")
    # off (1): the same draws and the same windows as a sampler without the option
    a, b = WindowSampler(cfg, [clip], seed=3).sample(8), WindowSampler(cfg, [clip], seed=3, aug_speed=1.0).sample(8)
    assert torch.equal(a.feats, b.feats) and torch.equal(a.mask, b.mask)
    # on: each window is the ramp played at one speed in [1/2, 2], interpolated, inside the clip
    w = WindowSampler(cfg, [clip], seed=3, aug_speed=2.0).sample(256)
    x = w.feats[:, :F, 0].double()
    slopes = (x[:, 1:] - x[:, :-1]).numpy()
    assert np.allclose(slopes, slopes[:, :1], atol=1e-4)  # constant speed within a window
    v = slopes[:, 0]
    assert v.min() >= 0.5 - 1e-6 and v.max() <= 2.0 + 1e-6 and v.min() < 0.7 and v.max() > 1.4
    assert (x >= 0).all() and (x <= T - 1).all() and w.mask[:, :F].all()
    # log-uniform: as many windows faster as slower
    assert 0.35 < float(np.mean(v > 1.0)) < 0.65
    # an invalid frame on either side of an interpolated sample masks it
    valid2 = valid.clone()
    valid2[100] = False
    w2 = WindowSampler(cfg, [FeatureClip(feats, torch.zeros(10), valid2, "gap")], seed=4, aug_speed=2.0).sample(256)
    x2, m2 = w2.feats[:, :F, 0], w2.mask[:, :F]
    near = (x2 > 99) & (x2 < 101)
    assert near.any() and not m2[near].any() and m2[~near].all()
    with pytest.raises(InputError):
        WindowSampler(cfg, [clip], aug_speed=0.5)


def test_training_reduces_loss_and_resume_is_exact(tmp_path, monkeypatch):
    mc, _ = preset("tiny")
    data = []
    for i in range(4):  # smooth random motions as parameter files (cheaper than built-in generation)
        data.append(
            str(save_motion(tmp_path / f"m{i}.npz", _motion(60, side=("left", "right")[i % 2], seed=20 + i)))
        )
    tc = _tiny_train_config(steps=32, warmup_steps=3, checkpoint_every=16, log_every=4)
    full = train(mc, tc, data, tmp_path / "full", progress=False)
    assert (full.step, full.schedule_steps, full.stopped_by, len(full.losses)) == (32, 32, "steps", 32)
    first, last = np.mean(full.losses[:4]), np.mean(full.losses[-4:])
    assert last < 0.6 * first, (first, last)
    log = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "end" and log[-1]["steps_done"] == 32 and log[-1]["stop_reason"] == "max_steps"
    assert {"finger_perplexity", "wrist_live_codes", "joint_mm", "lr"} <= set(log[-2])
    assert full.last_log["step"] == 32 and "data_s" in full.last_log and full.too_few_steps
    model = MotionTokenizer.from_pretrained(tmp_path / "full")
    assert model.config == mc
    # killed in step 20, after the step-16 checkpoint, then resumed in a new session: the same losses from
    # step 17 on and the same weights as the uninterrupted run
    calls, real_loss = {"n": 0}, training.compute_loss

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training, "compute_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        train(mc, tc, data, tmp_path / "part", progress=False)
    monkeypatch.undo()
    torch.manual_seed(123)  # whatever state the new session starts in
    rest = train(mc, tc, [], tmp_path / "part", resume=True, progress=False)
    assert rest.step == 32 and rest.losses == full.losses[16:]
    resumed = MotionTokenizer.from_pretrained(tmp_path / "part").state_dict()
    assert all(torch.equal(v, resumed[k]) for k, v in model.state_dict().items())
    curves = [
        [(r["step"], r["loss"]) for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())
         if "loss" in r]
        for d in ("full", "part")
    ]  # fmt: skip
    assert curves[0] == curves[1] and len(curves[0]) == 8
    with pytest.raises(CheckpointError, match="run.json"):
        train(mc, tc, [], tmp_path / "never_trained", resume=True, progress=False)


def test_frozen_encoder_trains_only_the_decoders(tmp_path):
    mc, _ = preset("tiny")
    data = [str(save_motion(tmp_path / "m.npz", _motion(40, seed=30)))]
    tc = _tiny_train_config(steps=3, warmup_steps=1, freeze_encoder=True, vq_warmup_steps=2)
    train(mc, tc, data, tmp_path / "run", progress=False)
    model = MotionTokenizer.from_pretrained(tmp_path / "run")
    for part in model.parts.values():
        # the conv stacks start silent beside the PCA path; a frozen encoder's stays silent
        assert not part.encoder.net[-1].weight.any()
        assert part.decoder.net[-1].weight.any()
        assert part.encoder.skip.weight.any() and bool(part.quantizer.initted)


def test_evaluate_param_file_and_cli(tmp_path):
    model = _tiny_model()
    model.save_pretrained(tmp_path / "ckpt")
    save_motion(tmp_path / "clip.npz", _motion(25, side="left", seed=9))
    res = evaluate_files(model, [str(tmp_path / "clip.npz")])
    assert res["tokens_per_hand_second"] == 128 and res["frames"] == 25
    for k in ("mpjpe_mm", "pa_mpjpe_mm", "mwte_mm"):
        assert np.isfinite(res[k]) and res[k] >= 0
    assert res["pa_mpjpe_mm"] <= res["mpjpe_mm"] + 1e-6
    motions = load_sources([str(tmp_path / "clip.npz")], 15.0)
    clips = make_clips(model.config, motions)
    assert clips[0].feats.shape == (25, 162)
    rc = cli_main(
        ["tokenizer", "eval", "--ckpt", str(tmp_path / "ckpt"), "--data", str(tmp_path / "clip.npz")]
    )
    assert rc == 0
