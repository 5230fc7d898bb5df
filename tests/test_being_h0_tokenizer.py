"""Being-H0's released tokenizer: a tiny fixture written here in the release's folder layout (its tensor
names, motion_args.json fields, motion_meta.json / meta_mask.json, ``torch.save`` under ``net``) is converted
with ``handvla tokenizer convert`` and compared with a direct re-implementation of the release's arithmetic
in this file (nearest code per residual layer on the residual, ``id = code + nb_code * layer + part_base``,
decoder forward from the raw tensors); the encode / decode commands for a converted and a trained tokenizer;
one-line errors for a wrong key, a missing part folder, a pickle holding code and bad statistics."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_mano import write_fake_mano_pickle  # noqa: E402

from handvla.cli import main  # noqa: E402
from handvla.errors import CheckpointError  # noqa: E402
from handvla.hand.features import features_to_params, motion_to_features  # noqa: E402
from handvla.hand.io import load_motion, save_motion  # noqa: E402
from handvla.hand.motion import HandMotion  # noqa: E402
from handvla.hand.registry import load_hand_model  # noqa: E402
from handvla.tokenizer.being_h0 import BeingH0Tokenizer, BeingH0TokenizerConfig, PartNetwork  # noqa: E402
from handvla.tokenizer.configuration import preset  # noqa: E402
from handvla.tokenizer.layout import token_layout  # noqa: E402
from handvla.tokenizer.loading import load_tokenizer  # noqa: E402
from handvla.tokenizer.modeling import MotionTokenizer, calibrated_tokenizer  # noqa: E402

# the fixture's sizes (the release's structure at toy widths)
NB, LAYERS, GROUPS, WIDTH, CODE, DEPTH, DOWN = 16, 8, 2, 16, 8, 3, 2
DILATIONS = (9, 3, 1)
FRAMES = 15  # one block; the release appends one zero frame -> 16
#: D162 positions of each part, in the release's order (wrist: rotation 6D, position; finger: pose 6D,
#: joints 1..20)
PART_INDEX = {"wrist": np.r_[90:99], "finger": np.r_[0:90, 102:162]}
PART_BASE = {"wrist": 0, "finger": NB * LAYERS}


# ---- the release's files, written from scratch ------------------------------------------------------------


def _release_net(dim: int, seed: int) -> dict[str, torch.Tensor]:
    """A random state dict with the release's tensor names for one part (ManoVQModel with a grouped RVQ)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, c_out: int, c_in: int, k: int) -> None:
        sd[name + ".weight"] = torch.randn(c_out, c_in, k, generator=g) / (c_in * k) ** 0.5
        sd[name + ".bias"] = 0.1 * torch.randn(c_out, generator=g)

    def resblocks(prefix: str) -> None:
        for b in range(DEPTH):
            conv(f"{prefix}.model.{b}.conv1", WIDTH, WIDTH, 3)
            conv(f"{prefix}.model.{b}.conv2", WIDTH, WIDTH, 1)

    conv("model.encoder.model.0", WIDTH, dim, 3)
    for s in range(DOWN):
        conv(f"model.encoder.model.{2 + s}.0", WIDTH, WIDTH, 4)
        resblocks(f"model.encoder.model.{2 + s}.1")
    conv(f"model.encoder.model.{2 + DOWN}", CODE, WIDTH, 3)
    conv("model.decoder.model.0", WIDTH, CODE, 3)
    for s in range(DOWN):
        resblocks(f"model.decoder.model.{2 + s}.0")
        conv(f"model.decoder.model.{2 + s}.2", WIDTH, WIDTH, 3)
    conv(f"model.decoder.model.{2 + DOWN}", WIDTH, WIDTH, 3)
    conv(f"model.decoder.model.{4 + DOWN}", dim, WIDTH, 3)
    for grp in range(GROUPS):
        for layer in range(LAYERS):
            p = f"model.quantizer.rvqs.{grp}.layers.{layer}._codebook."
            embed = torch.randn(1, NB, CODE // GROUPS, generator=g) * 0.6**layer  # finer codes deeper down
            sd[p + "initted"] = torch.ones(1)
            sd[p + "cluster_size"] = torch.rand(1, NB, generator=g) * 10
            sd[p + "embed_avg"] = embed * 3.0
            sd[p + "embed"] = embed
    return sd


def _motion_args(part: str) -> dict:
    """motion_args.json as the release writes it (its argument names; fields the network ignores too)."""
    return {
        "motion_feat": "mano162", "fps": 20, "unit_length": 4, "code_dim": CODE, "nb_code": NB, "mu": 0.99,
        "down_t": DOWN, "stride_t": 2, "width": WIDTH, "depth": DEPTH, "dilation_growth_rate": 3,
        "output_emb_width": CODE, "activate": "relu", "norm": None, "window_size": FRAMES,
        "eval_window_size": 15, "num_conv_layers": 1, "use_part": part, "quantizer_name": "group_residualvq",
        "num_quantizers": LAYERS, "num_quant_groups": GROUPS, "shared_codebook": False, "commit_weight": 0.02,
        "depth_first": True, "motion_code_path": None,
    }  # fmt: skip


def write_release(root: Path, seed: int = 0) -> dict:
    """``root/wrist`` and ``root/finger`` in the release's layout; returns what the reference needs."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, (part, idx) in enumerate(PART_INDEX.items()):
        folder = root / part
        folder.mkdir(parents=True)
        net = _release_net(len(idx), seed + i)
        torch.save({"net": net, "nb_iter": 1000, "best_mpjpe": 0.5}, folder / "net_best_mpjpe.pth")
        mean, std = rng.normal(size=len(idx)), rng.uniform(0.2, 2.0, size=len(idx))
        if part == "finger":  # full-length vectors and a mask selecting the part, as meta_mask.json allows
            full_mean, full_std = np.zeros(162), np.ones(162)
            full_mean[idx], full_std[idx] = mean, std
            mask = np.zeros(162, bool)
            mask[idx] = True
            meta, meta_mask = {"mean": full_mean.tolist(), "std": full_std.tolist()}, mask.tolist()
        else:
            meta, meta_mask = {"mean": mean.tolist(), "std": std.tolist()}, None
        (folder / "motion_meta.json").write_text(json.dumps(meta))
        (folder / "meta_mask.json").write_text(json.dumps({"meta_mask": meta_mask}))
        (folder / "motion_args.json").write_text(json.dumps(_motion_args(part)))
        out[part] = {"net": net, "mean": torch.tensor(mean, dtype=torch.float32),
                     "std": torch.tensor(std, dtype=torch.float32)}  # fmt: skip
    return out


# ---- the release's arithmetic, re-implemented from the raw tensors -------------------------------------------


def _conv(sd, name, x, **kw):
    return F.conv1d(x, sd[name + ".weight"], sd[name + ".bias"], **kw)


def _res(sd, prefix, h):
    for b, d in enumerate(DILATIONS):
        r = _conv(sd, f"{prefix}.model.{b}.conv1", F.relu(h), padding=d, dilation=d)
        h = h + _conv(sd, f"{prefix}.model.{b}.conv2", F.relu(r))
    return h


def _encode_part(sd, x):  # (B, 16, dim) -> (B, 4, CODE)
    h = F.relu(_conv(sd, "model.encoder.model.0", x.transpose(1, 2), padding=1))
    for s in range(DOWN):
        h = _res(
            sd,
            f"model.encoder.model.{2 + s}.1",
            _conv(sd, f"model.encoder.model.{2 + s}.0", h, stride=2, padding=1),
        )
    return _conv(sd, f"model.encoder.model.{2 + DOWN}", h, padding=1).transpose(1, 2)


def _decode_part(sd, z):  # (B, 4, CODE) -> (B, 16, dim)
    h = F.relu(_conv(sd, "model.decoder.model.0", z.transpose(1, 2), padding=1))
    for s in range(DOWN):
        h = _res(sd, f"model.decoder.model.{2 + s}.0", h)
        h = _conv(
            sd, f"model.decoder.model.{2 + s}.2", F.interpolate(h, scale_factor=2, mode="nearest"), padding=1
        )
    h = F.relu(_conv(sd, f"model.decoder.model.{2 + DOWN}", h, padding=1))
    return _conv(sd, f"model.decoder.model.{4 + DOWN}", h, padding=1).transpose(1, 2)


def _books(sd, grp):
    return [sd[f"model.quantizer.rvqs.{grp}.layers.{layer}._codebook.embed"][0] for layer in range(LAYERS)]


def reference_ids(release: dict, feats: torch.Tensor) -> torch.Tensor:
    """D162 blocks (B, 15, 162) -> ids (B, 128): per part normalise, append a zero frame, encode; per group
    and residual layer the nearest code to the residual; id = code + NB * layer + part base, in (group,
    latent step, layer) order, wrist then finger."""
    out = []
    for part, idx in PART_INDEX.items():
        r = release[part]
        x = (feats[..., idx] - r["mean"]) / (r["std"] + 1e-6)
        x = torch.cat([x, torch.zeros(x.shape[0], 1, x.shape[2])], 1)
        z = _encode_part(r["net"], x)
        B, N, _ = z.shape
        ids = torch.zeros(B, GROUPS, N, LAYERS, dtype=torch.long)
        for grp in range(GROUPS):
            residual = z[..., grp * CODE // GROUPS : (grp + 1) * CODE // GROUPS]
            for layer, books in enumerate(_books(r["net"], grp)):
                code = ((residual[:, :, None, :] - books) ** 2).sum(-1).argmin(-1)
                residual = residual - books[code]
                ids[:, grp, :, layer] = code + NB * layer + PART_BASE[part]
        out.append(ids.reshape(B, -1))
    return torch.cat(out, 1)


def reference_decode(release: dict, ids: torch.Tensor) -> torch.Tensor:
    """ids (B, 128) -> D162 (B, 15, 162): codes = (id - part base) % NB, summed per group, decoded, the pad
    frame dropped, x * std + mean; the wrist joint (in no part) is zero."""
    out = torch.zeros(ids.shape[0], FRAMES, 162)
    for i, (part, idx) in enumerate(PART_INDEX.items()):
        r = release[part]
        c = ((ids[:, i * 64 : (i + 1) * 64] - PART_BASE[part]) % NB).reshape(-1, GROUPS, 4, LAYERS)
        z = torch.cat(
            [
                sum(books[c[:, grp, :, layer]] for layer, books in enumerate(_books(r["net"], grp)))
                for grp in range(GROUPS)
            ],
            -1,
        )
        out[..., idx] = _decode_part(r["net"], z)[:, :FRAMES] * r["std"] + r["mean"]
    return out


# ---- tests -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    release = write_release(root)
    out = root / "converted"
    assert main(["tokenizer", "convert", "--from", "being-h0", "--src", f"{root / 'wrist'}+{root / 'finger'}",
                 "--out", str(out)]) == 0  # fmt: skip
    return release, root, out


def _feats(n=48, seed=1):
    return torch.randn(n, FRAMES, 162, generator=torch.Generator().manual_seed(seed)) * 1.5


def test_converted_tokenizer_gives_the_releases_ids_and_features(converted):
    release, _, out = converted
    tok = load_tokenizer(out)
    assert isinstance(tok, BeingH0Tokenizer) and tok.layout.vocab_size == 2 * NB * LAYERS
    feats = _feats()
    want = reference_ids(release, feats)
    assert torch.equal(tok.encode(feats), want)
    assert len(torch.unique(want)) > 100  # the ids vary: the comparison means something
    # a block given with its 16th (padding) frame: the release's zero frame replaces it
    assert torch.equal(tok.encode(torch.cat([feats, feats[:, -1:]], 1)), want)
    dec = tok.decode(want)
    assert dec.shape == (len(feats), 16, 162)
    torch.testing.assert_close(dec[:, :FRAMES], reference_decode(release, want), atol=1e-5, rtol=1e-5)


def test_weights_load_unchanged_and_ids_have_the_release_ranges(converted):
    release, _, out = converted
    tok = load_tokenizer(out)
    for part in PART_INDEX:
        state = tok.parts[part].state_dict()
        assert state.keys() == release[part]["net"].keys()
        assert all(torch.equal(state[k], v) for k, v in release[part]["net"].items())
        PartNetwork(len(PART_INDEX[part]), tok.config).load_state_dict(release[part]["net"], strict=True)
    ranges = tok.layout.position_id_ranges()
    for pos in range(128):  # position = part * 64 + group * 32 + step * 8 + layer
        part, layer = divmod(pos, 64)[0], pos % LAYERS
        lo = part * NB * LAYERS + NB * layer
        assert tuple(ranges[pos]) == (lo, lo + NB)


def test_preset_is_the_grvq_8k_layout():
    cfg, _ = preset("being-h0-grvq-8k")
    layout = token_layout(cfg)
    assert (layout.tokens_per_block, layout.vocab_size, layout.codebook_size) == (128, 8192, 512)
    assert (layout.groups, layout.latent_steps, layout.layers, layout.id_layout) == (2, 4, 8, "per_layer")
    assert layout.id_range("wrist") == (0, 4096) and layout.id_range("finger") == (4096, 8192)
    assert tuple(layout.position_id_ranges()[9]) == (512, 1024)  # wrist, group 0, step 1, layer 1
    release = BeingH0TokenizerConfig()
    assert token_layout(release) == layout and release.window_frames == 16
    assert (release.part_dim("wrist"), release.part_dim("finger")) == (9, 150)


def test_save_load_sequences_and_the_other_loader(converted, tmp_path):
    _, _, out = converted
    tok = load_tokenizer(out)
    tok.save_pretrained(tmp_path / "again")
    again = load_tokenizer(tmp_path / "again")
    seq = _feats(3, seed=5).reshape(-1, 162)[:40]  # 40 frames: 3 blocks, the last one partial
    ids = again.encode_sequence(seq)
    assert ids.shape == (3, 128) and torch.equal(ids, tok.encode_sequence(seq))
    assert torch.equal(ids[:2], tok.encode(seq[:30].reshape(2, FRAMES, 162)))
    back = again.decode_sequence(ids, num_frames=40)
    assert back.shape == (40, 162)
    torch.testing.assert_close(back[:15], tok.decode(ids[:1])[0, :15], atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointError) as e:
        MotionTokenizer.from_pretrained(out)
    assert "config.json" in str(e.value) and "model_type" in str(e.value) and "\n" not in str(e.value)


def _read_ids(path):
    return torch.from_numpy(np.load(path))


def test_encode_decode_commands_for_a_converted_tokenizer(converted, tmp_path, capsys):
    release, _, out = converted
    feats = _feats(2, seed=7).reshape(-1, 162)  # 30 frames = 2 blocks
    np.save(tmp_path / "f.npy", feats.numpy())
    assert main(["tokenizer", "encode", "--ckpt", str(out), "--features", str(tmp_path / "f.npy"),
                 "--out", str(tmp_path / "ids.npy")]) == 0  # fmt: skip
    ids = _read_ids(tmp_path / "ids.npy")
    assert ids.dtype == torch.int64 and torch.equal(
        ids, reference_ids(release, feats.reshape(2, FRAMES, 162))
    )
    assert main(["tokenizer", "decode", "--ckpt", str(out), "--ids", str(tmp_path / "ids.npy"), "--side", "left",
                 "--out", str(tmp_path / "m.npz"), "--features-out", str(tmp_path / "d.npy")]) == 0  # fmt: skip
    dec = torch.from_numpy(np.load(tmp_path / "d.npy"))
    torch.testing.assert_close(dec, reference_decode(release, ids).reshape(-1, 162), atol=1e-5, rtol=1e-5)
    motion = load_motion(tmp_path / "m.npz")
    # a left hand is read in its own frame (the release does not mirror it)
    p = features_to_params(load_tokenizer(out).spec, dec)
    assert motion.side == "left" and len(motion) == 30
    np.testing.assert_allclose(motion.global_orient, p["global_orient"].numpy(), atol=1e-5)
    np.testing.assert_allclose(motion.wrist_pos, p["wrist_pos"].numpy(), atol=1e-6)


def _hand_motion(T=20, side="right", seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, T)[:, None]
    return HandMotion(
        global_orient=rng.normal(size=3) * 0.5 + t * rng.normal(size=3) * 0.3,
        hand_pose=0.2 * rng.normal(size=(15, 3)) + 0.1 * t[:, :, None] * rng.normal(size=(15, 3)),
        wrist_pos=np.array([0.05, 0.1, 0.45]) + 0.05 * t * rng.normal(size=3),
        betas=rng.normal(size=10) * 0.3,
        side=side,
        fps=15.0,
    )


def test_encode_decode_commands_for_a_trained_tokenizer(tmp_path, capsys):
    cfg, _ = preset("tiny")
    mt = calibrated_tokenizer([_hand_motion(40, seed=s) for s in range(3)], cfg)
    mt.save_pretrained(tmp_path / "tok")
    motion = _hand_motion(25, side="left", seed=9)
    save_motion(tmp_path / "m.npz", motion)
    assert main(["tokenizer", "encode", "--ckpt", str(tmp_path / "tok"), "--motion", str(tmp_path / "m.npz"),
                 "--out", str(tmp_path / "ids.npy")]) == 0  # fmt: skip
    ids = np.load(tmp_path / "ids.npy")
    np.testing.assert_array_equal(ids, mt.encode_motion(motion).ids)
    assert main(["tokenizer", "decode", "--ckpt", str(tmp_path / "tok"), "--ids", str(tmp_path / "ids.npy"),
                 "--side", "left", "--num-frames", "25", "--out", str(tmp_path / "back.npz")]) == 0  # fmt: skip
    want = mt.decode_motion(ids, side="left", num_frames=25)
    got = load_motion(tmp_path / "back.npz")
    np.testing.assert_allclose(got.hand_pose, want.hand_pose, atol=1e-6)
    np.testing.assert_allclose(got.wrist_pos, want.wrist_pos, atol=1e-6)


def test_encode_motion_uses_mano_joints_of_the_hands_own_side(converted, tmp_path, capsys):
    _, _, out = converted
    mano = tmp_path / "mano"
    for side, seed in (("right", 1), ("left", 2)):
        write_fake_mano_pickle(mano / f"MANO_{side.upper()}.pkl", side, seed)
    motion = _hand_motion(20, side="left", seed=3)
    save_motion(tmp_path / "m.npz", motion)
    assert main(["tokenizer", "encode", "--ckpt", str(out), "--motion", str(tmp_path / "m.npz"), "--mano-dir",
                 str(mano), "--out", str(tmp_path / "ids.npy")]) == 0  # fmt: skip
    tok = load_tokenizer(out)
    assert tok.config.hand_model == "mano" and tok.spec.joints_frame == "camera"
    feats = motion_to_features(tok.spec, motion, load_hand_model("mano", "left", mano))
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), tok.encode_sequence(feats).numpy())


class _RunsCode:
    """Unpickling this would create a folder: the converter must refuse it without running it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _break_wrong_key(root):
    path = root / "finger" / "net_best_mpjpe.pth"
    ckpt = torch.load(path, weights_only=True)
    ckpt["net"]["model.encoder.model.0.wieght"] = ckpt["net"].pop("model.encoder.model.0.weight")
    torch.save(ckpt, path)
    return path, ["net", "model.encoder.model.0.weight"]


def _break_missing_folder(root):
    (root / "finger").rename(root / "elsewhere")
    return root / "finger", ["finger"]


def _break_code(root):
    path = root / "wrist" / "net_best_mpjpe.pth"
    torch.save({"net": {}, "hook": _RunsCode(root / "pwned")}, path)
    return path, ["net", "os.makedirs"]


def _break_stats(root):
    path = root / "wrist" / "motion_meta.json"
    path.write_text(json.dumps({"mean": [0.0] * 8, "std": [1.0] * 9}))
    return path, ["mean"]


@pytest.mark.parametrize("breaker", [_break_wrong_key, _break_missing_folder, _break_code, _break_stats])
def test_bad_release_folders_are_one_line_errors(breaker, tmp_path, capsys):
    write_release(tmp_path)
    named, fields = breaker(tmp_path)
    rc = main(
        ["tokenizer", "convert", "--from", "being-h0", "--src", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert str(named) in err[0] and all(f in err[0] for f in fields), err[0]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "o").exists()
