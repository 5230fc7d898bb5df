"""End-point ids (``TokenizerConfig.end_point_space``, docs/vla-learning.md (18)): each block starts with
three ids that say where its wrist ends; the codes are those of the tokenizer without them, decoding moves the
path so that every block ends in its stated cell, the stated end of the last block is where
``final_wrist_positions`` says the motion ends, and a VLA trained without them continues with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handvla.errors import ConfigError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    root = tmp_path_factory.mktemp("end_points")
    cfg = HandWorldConfig(width=64, height=48, seconds=3.0, shadows=False, tasks=("reach", "move", "grasp"))
    generate_episodes(6, root / "hw", seed=11, config=cfg, progress=False)
    return root / "hw"


@pytest.fixture(scope="module")
def motions(world):
    from handvla.data.store import EpisodeStore

    st = EpisodeStore(world)
    return [m for k in range(len(st)) for m in st.load_episode(k, with_video=False).hands.values() if m.valid.any()]


@pytest.fixture(scope="module")
def tokenizers(world):
    from conftest import calibrated_tokenizer

    return calibrated_tokenizer(world, id_layout="per_layer")


def test_layout_puts_three_end_ids_first():
    from handvla.tokenizer.layout import TokenLayout

    base = TokenLayout(("wrist", "finger"), 2, 4, 3, 16, "per_layer")
    lay = TokenLayout(("wrist", "finger"), 2, 4, 3, 16, "per_layer", end_point_bins=8)
    assert lay.tokens_per_block == base.tokens_per_block + 3
    assert lay.vocab_size == base.vocab_size + 24 and lay.end_point_id_range == (base.vocab_size, lay.vocab_size)
    r = lay.position_id_ranges()
    np.testing.assert_array_equal(r[:3], [[96, 104], [104, 112], [112, 120]])
    np.testing.assert_array_equal(r[3:], base.position_id_ranges())  # the codes' ranges, shifted by 3 places
    assert list(lay.position_layers()[:3]) == [0, 0, 0]
    part, layer = lay.id_kinds(np.arange(lay.vocab_size))
    assert set(part[96:]) == {2} and set(layer[96:]) == {0}
    np.testing.assert_array_equal(part[:96], base.id_kinds(np.arange(96))[0])
    # pack / unpack: the codes come back, the bins are read back
    codes = {p: torch.randint(0, 16, (5, 4, 2, 3)) for p in lay.parts}
    bins = torch.randint(0, 8, (5, 3))
    ids = lay.validate(lay.pack(codes, bins))
    np.testing.assert_array_equal(ids[:, 3:], base.pack(codes))
    torch.testing.assert_close(lay.end_point_bins_of(ids), bins)
    for p in lay.parts:
        torch.testing.assert_close(lay.unpack(ids)[p], codes[p])
    assert TokenLayout.from_dict(lay.to_dict()) == lay and not lay.same_ids(base)
    with pytest.raises(Exception, match="end_point_bins"):
        lay.pack(codes)
    with pytest.raises(Exception, match="end point id"):
        lay.validate(torch.cat([torch.zeros(1, 3, dtype=torch.long), ids[:1, 3:]], 1))
    with pytest.raises(ConfigError, match="end_point_bins"):
        TokenLayout(("wrist",), 1, 1, 1, 4, end_point_bins=-1)


@pytest.mark.parametrize("space,frame", [("ray", "hand"), ("xyz", "hand"), ("ray", "camera")])
def test_codes_unchanged_and_every_block_ends_in_its_cell(tokenizers, motions, space, frame, tmp_path):
    from handvla.tokenizer import MotionTokenizer, with_end_points

    mt = tokenizers
    ep = with_end_points(mt, space, 32, motions=motions, frame=frame)
    assert ep.config.end_point_frame == frame
    assert ep.layout.tokens_per_block == mt.layout.tokens_per_block + 3
    lo, hi = ep.config.end_point_span
    F = mt.config.frames_per_block
    for m in motions[:6]:
        t, t0 = ep.encode_motion(m), mt.encode_motion(m)
        np.testing.assert_array_equal(t.ids[:, 3:], t0.ids)  # the codes are the tokenizer's own
        bins = ep.layout.end_point_bins_of(torch.as_tensor(t.ids))
        # the bins are those of the true wrist at each block's last frame (in the 'hand' frame mirrored for
        # left hands; binned here as a right hand's, which no frame changes)
        sign = np.array([-1.0 if m.side == "left" and frame == "hand" else 1.0, 1, 1])
        last = [min((b + 1) * F, len(m)) - 1 for b in range(len(t.ids))]
        filled = np.asarray(m.wrist_pos)[last] * sign  # the HandWorld tracks are valid throughout
        torch.testing.assert_close(ep.end_point_bins(torch.as_tensor(filled, dtype=torch.float32)), bins)
        d, d0 = ep.decode_motion(t, betas=m.betas), mt.decode_motion(t0, betas=m.betas)
        # every block ends in its stated cell; the start and the finger pose are the codes'
        got = torch.as_tensor(d.wrist_pos[last] * sign, dtype=torch.float32)
        got_bins = ep.end_point_bins(got)
        torch.testing.assert_close(got_bins, bins)
        np.testing.assert_allclose(d.wrist_pos[0], d0.wrist_pos[0], atol=1e-6)
        np.testing.assert_allclose(d.hand_pose, d0.hand_pose, atol=1e-6)
        # where the motion ends, from its last block alone
        fin = ep.final_wrist_positions(t.ids[-1:], [m.side])[0]
        np.testing.assert_allclose(fin, d.wrist_pos[-1], atol=1e-5)
        # another stated end moves the end there, and only through a smooth shift
        other = t.ids.copy()
        other[-1, 0] = ep.layout.position_id_ranges()[0, 0] + (int(bins[-1, 0]) + 8) % 32
        d2 = ep.decode_motion(other, side=m.side, betas=m.betas, num_frames=t.num_frames)
        moved = ep.end_point_bins(torch.as_tensor(d2.wrist_pos[-1] * sign, dtype=torch.float32))
        assert int(moved[0]) == int(other[-1, 0]) - ep.layout.position_id_ranges()[0, 0]
        step = np.linalg.norm(np.diff(d2.wrist_pos - d.wrist_pos, axis=0), axis=-1)
        assert step.max() < 0.5 * np.linalg.norm(d2.wrist_pos[-1] - d.wrist_pos[-1]) + 1e-6
    # any decoded end, however far, is moved into the stated bin's cell (edge bins reach beyond the span)
    grid = torch.arange(32).repeat(3, 1).T
    for far in ([5.0, -5.0, 9.0], [-5.0, 5.0, 0.05]):
        moved = ep.end_point_targets(torch.tensor([far]).repeat(32, 1), grid)
        torch.testing.assert_close(ep.end_point_bins(moved.float()), grid)
    assert all(h > lo_ for lo_, h in zip(lo, hi))
    ep.save_pretrained(tmp_path / "ep")
    back = MotionTokenizer.from_pretrained(tmp_path / "ep")
    assert back.config == ep.config
    np.testing.assert_array_equal(back.encode_motion(motions[0]).ids, ep.encode_motion(motions[0]).ids)


def test_camera_frame_end_points_are_one_place_for_either_hand(tokenizers, motions):
    """With ``end_point_frame: camera`` a left hand's blocks state their end in the camera frame: the last
    block's end-point ids are the place (`place_ids`) of where the motion ends, for either hand, while the
    codes stay those of the mirrored hand; the hand-frame tokenizer states the mirrored place for a left hand."""
    from handvla.tokenizer import with_end_points
    from handvla.vla.places import place_ids

    cam = with_end_points(tokenizers, "ray", 32, motions=motions, frame="camera")
    hand = with_end_points(tokenizers, "ray", 32, span=cam.config.end_point_span)
    left = [m for m in motions if m.side == "left"][:3]
    assert left
    for m in left:
        t, th = cam.encode_motion(m), hand.encode_motion(m)
        np.testing.assert_array_equal(t.ids[:, 3:], th.ids[:, 3:])
        end = np.asarray(m.wrist_pos)[len(m) - 1]
        np.testing.assert_array_equal(t.ids[-1, :3], place_ids(end, cam))
        np.testing.assert_array_equal(th.ids[-1, :3], place_ids(end * [-1, 1, 1], hand))
        # decoding un-mirrors the stated end: the motion ends in the place's cell, and the last block alone
        # says so (final_wrist_positions, per-row sides)
        d = cam.decode_motion(t, betas=m.betas)
        np.testing.assert_array_equal(place_ids(d.wrist_pos[-1], cam), t.ids[-1, :3])
        fin = cam.final_wrist_positions(np.stack([t.ids[-1], t.ids[-1]]), ["left", "right"])
        np.testing.assert_allclose(fin[0], d.wrist_pos[-1], atol=1e-5)
        # the same ids read as a right hand's end in the same camera cell, on the other side of the codes
        np.testing.assert_array_equal(place_ids(fin[1], cam), t.ids[-1, :3])
    with pytest.raises(Exception, match="side"):
        cam.end_point_bins(torch.zeros(2, 3), ["left"])


def test_config_checks_the_span():
    from handvla.tokenizer.configuration import TokenizerConfig

    with pytest.raises(ConfigError, match="end_point_range"):
        TokenizerConfig(end_point_space="ray", end_point_range=[[0, 0, 1], [1, 1, 0.5]])
    assert TokenizerConfig().end_point_space == "none"  # the reference has no end-point ids


def test_a_vla_continues_with_end_point_ids(tokenizers, motions, tmp_path):
    from handvla.tokenizer import with_end_points
    from handvla.vla.generation import generate_motion, is_valid_motion_output
    from handvla.vla.loading import load_initial_vla
    from handvla.vla.modeling import build_vla, save_vla
    from handvla.vla.pretrain import ModelConfig, token_kinds

    mt = tokenizers
    save_vla(tmp_path / "vla", build_vla("tiny", motion_tokenizer=mt, seed=0))
    ep = with_end_points(mt, "ray", 16, motions=motions)
    ep.save_pretrained(tmp_path / "ep")
    before = build_vla("tiny", motion_tokenizer=mt, seed=0).model.get_input_embeddings().weight.detach().clone()
    src = ModelConfig(init_checkpoint=str(tmp_path / "vla"), preset=None, motion_tokenizer=str(tmp_path / "ep"))
    bundle = load_initial_vla(src, [], tmp_path, True, lambda: None, motion_tokenizer=src.motion_tokenizer,
                              need_motion_tokenizer=True)
    c = bundle.model.config
    assert c.motion_layout == ep.layout and bundle.processor.vocab.num_motion_ids == ep.layout.vocab_size
    emb = bundle.model.get_input_embeddings().weight
    assert emb.shape[0] >= before.shape[0] + 48 and len(bundle.tokenizer) == before.shape[0] + 48
    torch.testing.assert_close(emb[: before.shape[0]], before)  # the old rows are kept
    # constrained generation gives the end-point ids at each block's start, which decode
    img = np.full((48, 64, 3), 90, np.uint8)
    gen = generate_motion(bundle.model, bundle.processor, img, "pick up the red cube", seconds=2, hand_mode="right")
    answer = gen.sequences[0, gen.prompt_length :]
    assert is_valid_motion_output(answer, bundle.processor.vocab, seconds=2, hands=1)
    ids = gen.motion[0][:, 0]  # (seconds, ids_per_block) of the right hand
    assert ids.shape == (2, ep.layout.tokens_per_block)
    ep.layout.validate(ids)  # the first three of each block are end-point ids
    d = ep.decode_motion(ids, side="right")
    np.testing.assert_allclose(d.wrist_pos[-1], ep.final_wrist_positions(ids[-1:], ["right"])[0], atol=1e-5)
    # the loss metrics name the end-point ids
    off = c.motion_token_offset
    kind, names = token_kinds(torch.tensor([off + ep.layout.vocab_size - 1, off]), c)
    assert names[int(kind[0])] == "end_point" and names[int(kind[1])] == "wrist_l0"
    # a tokenizer with other ids is refused
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer

    MotionTokenizer(TokenizerConfig(**{**PRESETS["tiny"], "codebook_size": 8})).save_pretrained(tmp_path / "bad")
    with pytest.raises(ConfigError, match="end-point ids"):
        load_initial_vla(ModelConfig(init_checkpoint=str(tmp_path / "vla"), preset=None), [], tmp_path, True,
                         lambda: None, motion_tokenizer=tmp_path / "bad", need_motion_tokenizer=True)
    # continuing the end-point model with the same layout: silent for the same ids' meaning, a warning that
    # names the field when the ids stand for other places (here the camera frame)
    save_vla(tmp_path / "vla_ep", bundle)
    src2 = ModelConfig(init_checkpoint=str(tmp_path / "vla_ep"), preset=None)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*end-point ids have")
        load_initial_vla(src2, [], tmp_path, True, lambda: None, motion_tokenizer=tmp_path / "ep",
                         need_motion_tokenizer=True)  # fmt: skip
    with_end_points(mt, "ray", 16, span=ep.config.end_point_span, frame="camera").save_pretrained(tmp_path / "epc")
    with pytest.warns(UserWarning, match="end_point_frame: 'hand' -> 'camera'"):
        load_initial_vla(src2, [], tmp_path, True, lambda: None, motion_tokenizer=tmp_path / "epc",
                         need_motion_tokenizer=True)  # fmt: skip


def test_cli_adds_end_points_from_a_store(tokenizers, world, tmp_path, capsys):
    import json

    from handvla.cli import main
    from handvla.tokenizer import MotionTokenizer

    tokenizers.save_pretrained(tmp_path / "tok")
    rc = main(["tokenizer", "end-points", "--ckpt", str(tmp_path / "tok"), "--data", str(world), "--bins", "16",
               "--out", str(tmp_path / "ep")])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ids_per_block"] == tokenizers.layout.tokens_per_block + 3 and out["span_from"].endswith("motions")
    ep = MotionTokenizer.from_pretrained(tmp_path / "ep")
    assert ep.config.end_point_bins == 16
    np.testing.assert_allclose(ep.config.end_point_span, [out["span"]["lo"], out["span"]["hi"]], atol=1e-4)
    rc = main(["tokenizer", "end-points", "--ckpt", str(tmp_path / "tok"), "--data", str(world), "--bins", "16",
               "--frame", "camera", "--out", str(tmp_path / "epc")])  # fmt: skip
    assert rc == 0 and json.loads(capsys.readouterr().out)["frame"] == "camera"
    assert MotionTokenizer.from_pretrained(tmp_path / "epc").config.end_point_frame == "camera"
    assert ep.config.end_point_frame == "hand"
    # a second time is refused with the field named
    rc = main(["tokenizer", "end-points", "--ckpt", str(tmp_path / "ep"), "--out", str(tmp_path / "ep2")])
    assert rc == 2 and "end_point_space" in capsys.readouterr().err and not (tmp_path / "ep2").exists()
