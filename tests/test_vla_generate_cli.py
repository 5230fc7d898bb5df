"""``handvla generate`` and ``handvla vla-eval`` on a tiny checkpoint: the npz holds the motion the
checkpoint's tokenizer decodes from the printed ids (checked by decoding again), the mp4 has one frame per
motion frame at the image's size, bad input fails with one clear line (exit 2), and the HandWorld metrics
use the episode's own ground truth (object positions checked against the generator's recorded targets)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from handvla.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from handvla.data.store import EpisodeStore
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer
    from handvla.vla import build_vla, save_vla

    root = tmp_path_factory.mktemp("vla_generate")
    store = root / "hw"
    generate_episodes(
        3,
        store,
        seed=11,
        config=HandWorldConfig(width=64, height=48, seconds=2.0, shadows=False),
        progress=False,
    )
    torch.manual_seed(0)
    mt = MotionTokenizer(TokenizerConfig(**PRESETS["tiny"]))
    with torch.no_grad():  # spread the codebooks so different ids decode to different motion
        for part in mt.parts.values():
            part.quantizer.codebook.normal_(0, 0.5)
    bundle = build_vla("tiny", motion_tokenizer=mt, seed=0)
    bundle.model.config.image_alignment = "canonical"
    ckpt = save_vla(root / "ckpt", bundle)
    ep = EpisodeStore(store).load_episode(0)
    Image.fromarray(ep.video[0]).save(root / "frame.png")
    c = ep.camera
    return root, store, ckpt, mt, f"{c.fx},{c.fy},{c.cx},{c.cy}", ep


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_writes_valid_outputs(setup, capsys):
    root, store, ckpt, mt, intr, ep = setup
    from handvla.commands.generate import load_generated
    from handvla.video import read_video

    out = root / "gen"
    argv = ["generate", "--ckpt", str(ckpt), "--image", str(root / "frame.png"), "--intrinsics", intr,
            "--instruction", "pick up the red cube", "--hands", "both", "--seconds", "1", "--out", str(out)]  # fmt: skip
    rc, stdout, err = _run(capsys, argv)
    assert rc == 0, err
    info = json.loads(stdout)
    assert (
        info["hands"] == ["left", "right"] and info["aligned"] and info["generated_tokens"] == 1 * 2 * 130 + 1
    )
    assert info["answer_prefix"] == ""  # the reference answers with motion only
    got = load_generated(out.with_suffix(".npz"))
    with np.load(out.with_suffix(".npz")) as d:
        ids = {s: d[f"{s}.motion_ids"] for s in ("left", "right")}
        assert tuple(d["camera"][4:]) == (64, 48) and str(d["answer_prefix"]) == ""
    for side in ("left", "right"):
        m = got[side]
        assert m.side == side and len(m) == 15 and m.fps == 15.0
        assert ids[side].shape == (1, 128) and ids[side][:, :64].max() < 64 <= ids[side][:, 64:].min()
        ref = mt.decode_motion(ids[side], side=side)  # decoding the printed ids again gives the stored motion
        np.testing.assert_allclose(m.wrist_pos, ref.wrist_pos, atol=1e-6)
        np.testing.assert_allclose(got["joints"][side], mt.motion_joints(ref), atol=1e-6)
    frames = read_video(out.with_suffix(".mp4"))
    assert frames.shape == (15, 48, 64, 3)
    # greedy decoding is deterministic; sampling with a seed too
    rc, stdout2, _ = _run(capsys, argv[:-2] + ["--out", str(root / "gen2"), "--no-video"])
    with np.load(root / "gen2.npz") as d:
        assert np.array_equal(d["left.motion_ids"], ids["left"]) and not (root / "gen2.mp4").exists()


def test_generate_best_of_k_by_the_models_boxes(setup, capsys):
    root, store, ckpt, mt, intr, ep = setup
    from handvla.commands.generate import load_generated

    out = root / "gen_rr"
    argv = ["generate", "--ckpt", str(ckpt), "--image", str(root / "frame.png"), "--intrinsics", intr,
            "--instruction", "pick up the red cube", "--hands", "right", "--seconds", "1", "--out", str(out),
            "--no-video", "--rerank-samples", "3"]  # fmt: skip
    rc, stdout, err = _run(capsys, argv)
    assert rc == 0, err
    rr = json.loads(stdout)["rerank"]
    assert rr["samples"] == 3 and rr["objects"] == {"right": "red cube"} and 0 <= rr["chosen"] < 3
    assert list(rr["boxes"]) == ["right"] and len(rr["view_distance"]) == 3
    with np.load(out.with_suffix(".npz")) as d:  # the kept sample is what the files hold
        np.testing.assert_allclose(load_generated(out.with_suffix(".npz"))["right"].wrist_pos,
                                   mt.decode_motion(d["right.motion_ids"], side="right").wrist_pos, atol=1e-6)  # fmt: skip
    rc, stdout, err = _run(capsys, argv[:-1] + ["2", "--objects", "right=blue ball"])
    assert rc == 0, err
    assert json.loads(stdout)["rerank"]["objects"] == {"right": "blue ball"}
    rc, _, err = _run(capsys, argv[:10] + ["both"] + argv[11:] + ["--objects", "red cube"])
    assert rc == 2 and "--objects" in err
    rc, _, err = _run(capsys, argv[:-1] + ["-2"])
    assert rc == 2 and "--rerank-samples" in err
    # on the table (3-D): the JSON gives where each box puts its object and every sample's distance to it
    rc, stdout, err = _run(capsys, argv + ["--table-plane", "0,-2,-1,1.2"])
    assert rc == 0, err
    rr = json.loads(stdout)["rerank"]
    placed = rr["object_points_m"]["right"] is not None
    assert rr["chosen_in"] == ("table" if placed else "view") and len(rr["object_distance_m"]) == 3
    for bad in ("0,0,0,1", "1,2,3", "a,b,c,d"):
        rc, _, err = _run(capsys, argv + ["--table-plane", bad])
        assert rc == 2 and "--table-plane" in err
    rc, _, err = _run(capsys, argv[:-2] + ["--table-plane", "0,-1,0,0.5"])
    assert rc == 2 and "--table-plane" in err and "--rerank-samples" in err
    # the motion made from the model's own boxes instead of the image
    rc, stdout, err = _run(capsys, argv[:-1] + ["1", "--motion-from", "places"])
    assert rc == 0, err
    rr = json.loads(stdout)["rerank"]
    assert rr["motion_from"] == "places" and rr["samples"] == 1
    box = rr["boxes"]["right"]
    assert rr["places"] == ("" if box is None else f"<ref>the red cube</ref><box>[[{', '.join(map(str, box))}]]</box>")
    rc, _, err = _run(capsys, argv[:-2] + ["--motion-from", "places"])
    assert rc == 2 and "--motion-from" in err and "--rerank-samples" in err


def test_generate_bad_input(setup, capsys, tmp_path):
    root, store, ckpt, mt, intr, ep = setup
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG but not really")
    base = ["generate", "--ckpt", str(ckpt), "--image", str(root / "frame.png"), "--instruction", "wave",
            "--out", str(tmp_path / "o")]  # fmt: skip

    def err_of(args):
        rc, _, err = _run(capsys, args)
        line = err.strip().splitlines()[-1]
        assert rc == 2 and line.startswith("handvla: error:"), err
        return line

    assert "bad.png" in err_of(base[:4] + [str(bad)] + base[5:]) and "decodes" in err_of(
        base[:4] + [str(bad)] + base[5:]
    )
    assert "hand_mode" in err_of(base + ["--hands", "three"])
    assert "--seconds" in err_of(base + ["--seconds", "0"])
    assert "--intrinsics" in err_of(base + ["--intrinsics", "1,2,3"])
    assert "fx/fy" in err_of(base + ["--intrinsics=-1,2,3,4"])
    assert "not found" in err_of(base[:2] + [str(tmp_path / "nope")] + base[3:])
    # a checkpoint whose motion tokenizer folder is gone, and one saved without a tokenizer
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    shutil.rmtree(broken / "motion_tokenizer")
    assert "motion_tokenizer" in err_of(base[:2] + [str(broken)] + base[3:])
    from handvla.vla import load_vla, save_vla

    b = load_vla(ckpt)
    b.motion_tokenizer = None
    save_vla(tmp_path / "no_tok", b)
    assert "no motion tokenizer" in err_of(base[:2] + [str(tmp_path / "no_tok")] + base[3:])


def test_handworld_ground_truth_and_vla_eval(setup, capsys):
    root, store, ckpt, mt, intr, ep = setup
    from handvla.vla.evaluate import object_positions_camera, target_hit

    # object positions at the last frame agree with the generator's recorded final target positions
    last = ep.num_frames - 1
    objs = object_positions_camera(ep, last)
    for tg in ep.ground_truth["targets"]:
        np.testing.assert_allclose(objs[tg["object_id"]], tg["final_camera"], atol=2e-4)
        np.testing.assert_allclose(
            object_positions_camera(ep, 0)[tg["object_id"]], tg["initial_camera"], atol=2e-4
        )
    a, b = np.zeros(3), np.array([1.0, 0, 0])
    assert target_hit(np.array([0.2, 0, 0]), 0, {0: a, 1: b}) and not target_hit(
        np.array([0.7, 0, 0]), 0, {0: a, 1: b}
    )

    out = root / "eval.json"
    rc, stdout, err = _run(capsys, ["vla-eval", "--ckpt", str(ckpt), "--store", f"seen={store}", "--episodes", "2",
                                    "--max-seconds", "1", "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 0, err
    s = json.loads(stdout)["seen"]
    assert s["episodes"] == 2 and s["valid_output_rate"] == 1.0 and s["tokens_per_s"] > 0
    assert s["mpjpe_mm"] > 0 and s["mwte_mm"] > 0 and s["align"] is True
    rows = json.loads(out.read_text())["seen"]["episodes"]
    assert [r["seconds"] for r in rows] == [1, 1]
    # unconstrained decoding of an untrained model is (almost surely) not valid motion: the constraint matters
    rc, stdout, _ = _run(capsys, ["vla-eval", "--ckpt", str(ckpt), "--store", str(store), "--episodes", "1",
                                  "--max-seconds", "1", "--no-constraint", "--quiet"])  # fmt: skip
    assert rc == 0 and json.loads(stdout)["hw"]["valid_output_rate"] == 0.0
    # best of K by the model's own boxes, beside the greedy answer, in the JSON and the table
    rc, stdout, err = _run(capsys, ["vla-eval", "--ckpt", str(ckpt), "--store", f"seen={store}", "--episodes", "2",
                                    "--max-seconds", "1", "--rerank-samples", "2", "--translation-episodes", "0",
                                    "--prediction-episodes", "0", "--out", str(out)])  # fmt: skip
    assert rc == 0, err
    rr = json.loads(stdout)["seen"]["reranked"]
    rows = json.loads(out.read_text())["seen"]["reranked_episodes"]  # the kept answers' rows, for paired tests
    assert sum(len(r["target_hits"]) for r in rows) == rr["target_pairs"] and all("rerank" in r for r in rows)
    assert rr["rerank"]["samples"] == 2 and rr["target_pairs"] == json.loads(stdout)["seen"]["target_pairs"]
    assert "best of 2 by box" in err and "any of 2" in err and "vs the model above" in err
    # paired on the same pairs: won / lost recounted from the two sets of rows
    greedy = {r["episode"]: r["target_hits"] for r in json.loads(out.read_text())["seen"]["episodes"]}
    won = sum(b and not a for r in rows for a, b in zip(greedy[r["episode"]], r["target_hits"]))
    lost = sum(a and not b for r in rows for a, b in zip(greedy[r["episode"]], r["target_hits"]))
    pv = rr["paired_vs_greedy"]
    assert (pv["won"], pv["lost"], pv["n"]) == (won, lost, rr["target_pairs"]) and 0 < pv["p"] <= 1
    assert rr["motion_from"] == "image"
    rc, _, err = _run(capsys, ["vla-eval", "--ckpt", str(ckpt), "--store", str(store), "--rerank-samples", "-1"])
    assert rc != 0 and "--rerank-samples" in err
