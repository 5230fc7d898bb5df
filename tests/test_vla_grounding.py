"""Object-grounding questions (``handvla.vla.grounding``): the answered box against the renderer's own object
pixels (resized and canonical views), the answer format's round trip, the auxiliary samples in
``collect_samples`` (count, split, determinism, the error without scene truth), their encoding (only the answer
labelled, no motion) and ``evaluate_grounding`` on a random-init tiny VLA beside its constant-box baseline."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from handvla.camera import CANONICAL_IMAGE_SIZE, canonical_homography, warp_image
from handvla.errors import ConfigError
from handvla.vla.grounding import (
    BOX_SCALE,
    grounding_answer,
    grounding_prompt,
    object_box_in_view,
    parse_grounding_answer,
)


def _mask_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return np.array([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h]) * BOX_SCALE


@pytest.mark.parametrize("align", [False, True])
def test_box_contains_the_rendered_object(align):
    from handvla.synth.handworld.cameras import make_camera
    from handvla.synth.handworld.raster import LABEL_OBJECT0, Renderer
    from handvla.synth.handworld.scene import sample_scene

    checked = 0
    for i in range(12):
        rng = np.random.default_rng([3, i])
        scene = sample_scene(rng)
        cam = make_camera(("ego", "third", "phone")[i % 3], 256, 192, rng)
        labels = Renderer(cam).render(scene).labels
        for o in scene.objects:
            mask = labels == LABEL_OBJECT0 + o.object_id
            box = object_box_in_view(o.to_dict(), cam, align)
            if mask.sum() < 30 or box is None:
                continue
            if align:  # the object's pixels, warped as the model's image is (nearest, no resampling blur)
                H = canonical_homography(cam.K)
                img = Image.fromarray(mask.astype(np.uint8) * 255)
                mask = np.asarray(warp_image(img, H, CANONICAL_IMAGE_SIZE, Image.NEAREST)) > 0
            truth = _mask_box(mask)
            b = np.asarray(box, np.float64)
            tol = 0.02 * BOX_SCALE  # a few pixels of rasterisation
            # the projected 3D box holds the silhouette (occluders only shrink the silhouette) ...
            assert (b[:2] <= truth[:2] + tol).all() and (b[2:] >= truth[2:] - tol).all(), (
                i,
                o.name,
                b,
                truth,
            )
            # ... and is not much larger than it: the centres agree within half the box
            size = b[2:] - b[:2]
            assert (np.abs((b[:2] + b[2:]) / 2 - (truth[:2] + truth[2:]) / 2) <= 0.5 * size + tol).all()
            checked += 1
    assert checked >= 15


def test_out_of_view_objects_are_not_asked():
    from handvla.synth.handworld.cameras import make_camera
    from handvla.synth.handworld.scene import sample_scene

    rng = np.random.default_rng(0)
    scene = sample_scene(rng)
    cam = make_camera("third", 256, 192, rng)
    o = scene.objects[0].to_dict()
    assert object_box_in_view(o, cam, False) is not None
    behind = dict(o, pose=np.array(o["pose"], np.float64))
    behind["pose"][:3, 3] = cam.centre_world - 0.5 * (cam.extrinsics[2, :3])  # half a metre behind the camera
    assert object_box_in_view(behind, cam, False) is None


def test_bad_scene_records_are_named():
    from handvla.errors import InputError
    from handvla.vla.grounding import scene_objects

    assert scene_objects(None, "ep") == [] and scene_objects('{"acting_hands": ["left"]}', "ep") == []
    with pytest.raises(InputError, match="ep.*ground_truth"):
        scene_objects("{not json", "ep")
    with pytest.raises(InputError, match=r"objects\[1\].*pose"):
        scene_objects(
            {
                "scene": {
                    "objects": [
                        {"object_id": 0, "shape": "box", "colour": "red", "size_m": [1, 1, 1], "pose": []},
                        {"object_id": 1, "shape": "box", "colour": "red", "size_m": [1, 1, 1]},
                    ]
                }
            },
            "ep",
        )


def test_answer_round_trip():
    a = grounding_answer("red cube", (12, 340, 56, 1000))
    assert a == "<ref>the red cube</ref><box>[[12, 340, 56, 1000]]</box>"
    assert parse_grounding_answer(a) == (12, 340, 56, 1000)
    assert parse_grounding_answer("the red cube [[1, 2, 3, 4]]") == (1, 2, 3, 4)  # tags stripped as special
    for bad in ("", "<box>[[1, 2, 3]]</box>", "<box>[[a, 2, 3, 4]]</box>", "somewhere on the left"):
        assert parse_grounding_answer(bad) is None
    assert grounding_prompt("blue ball") == "In <image>, where is the blue ball?"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    root = tmp_path_factory.mktemp("grounding")
    cfg = HandWorldConfig(width=64, height=48, seconds=2.0, shadows=False, tasks=("reach", "push", "move"))
    generate_episodes(6, root / "hw", seed=5, config=cfg, progress=False)
    return root


def test_collect_samples_adds_grounding_questions(world):
    from handvla.vla.data import VLADataConfig, collect_samples

    base = VLADataConfig(stores=[str(world / "hw")], seconds=[1])
    specs0, _, rep0 = collect_samples(base)
    assert rep0["task_types"]["grounding"] == 0 and "grounding" not in rep0
    cfg = base.model_copy(update={"grounding": 2.0})
    specs, _, rep = collect_samples(cfg)
    g = [s for s in specs if s.task_type == "grounding"]
    assert specs[: len(specs0)] == specs0  # the motion samples are untouched
    assert (
        len(g) == round(2.0 * len(specs0)) == rep["task_types"]["grounding"] == rep["grounding"]["questions"]
    )
    assert rep["samples"] == len(specs)
    distinct = {(s.episode, s.prompt) for s in g}
    assert len(distinct) == rep["grounding"]["distinct"]
    # each (image, object) once before any repeats
    first = [(s.episode, s.prompt) for s in g[: rep["grounding"]["distinct"]]]
    assert len(set(first)) == len(first)
    for s in g:
        assert s.image_s == 0.0 and s.prompt.startswith("In <image>, where is the ")
        assert parse_grounding_answer(s.answer) is not None and s.prompt[25:-1] in s.answer
    assert collect_samples(cfg)[0] == specs  # deterministic
    # the split follows the episodes
    v = collect_samples(cfg.model_copy(update={"val_fraction": 0.5}), "val")[0]
    t = collect_samples(cfg.model_copy(update={"val_fraction": 0.5}), "train")[0]
    assert {s.episode for s in v}.isdisjoint({s.episode for s in t})


def test_grounding_needs_scene_truth(tmp_path, world):
    from handvla.data.store import EpisodeStore
    from handvla.vla.data import VLADataConfig, collect_samples

    # the same episodes without their ground truth (a store of real captures has none)
    dst = tmp_path / "plain"
    shutil.copytree(world / "hw", dst)
    for f in (dst / "meta" / "episodes").rglob("*.parquet"):
        t = pq.read_table(f)
        i = t.schema.get_field_index("ground_truth")
        pq.write_table(t.set_column(i, "ground_truth", pa.nulls(len(t), "string")), f)
    assert EpisodeStore(dst).meta(0)["ground_truth"] is None
    with pytest.raises(ConfigError, match="data.grounding"):
        collect_samples(VLADataConfig(stores=[str(dst)], seconds=[1], grounding=1.0))


def test_grounding_samples_encode_and_evaluate(world):
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer
    from handvla.vla import build_vla
    from handvla.vla.data import VLADataConfig, VLAInstructionDataset, collect_samples
    from handvla.vla.grounding import evaluate_grounding
    from handvla.vla.processing import IGNORE_INDEX

    torch.manual_seed(0)
    mt = MotionTokenizer(TokenizerConfig(**PRESETS["tiny"]))
    bundle = build_vla("tiny", motion_tokenizer=mt, seed=0)
    specs, dirs, _ = collect_samples(VLADataConfig(stores=[str(world / "hw")], seconds=[1], grounding=1.0))
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, mt)
    i = next(j for j, s in enumerate(ds.specs) if s.task_type == "grounding")
    enc = ds.encode(i)
    ids, labels = np.asarray(enc.input_ids), np.asarray(enc.labels)
    answer = ids[labels != IGNORE_INDEX]
    assert not np.isin(answer, bundle.processor.vocab.special_motion_ids()).any()
    text = bundle.processor.decode(answer.tolist(), skip_special_tokens=True)
    assert parse_grounding_answer(text) == parse_grounding_answer(ds.specs[i].answer)
    assert ds.report["task_types"]["grounding"] == sum(s.task_type == "grounding" for s in ds.specs)
    r = evaluate_grounding(bundle, world / "hw", max_episodes=2, batch_size=4)
    assert r["questions"] >= 2 and 0.0 <= r["well_formed"] <= 1.0
    for arm in ("model", "constant_box"):
        lo, hi = r[arm]["centre_in_box_ci95"]
        assert lo <= r[arm]["centre_in_box"] <= hi
    # the constant box is the mean true box: its centre error is the spread of the true centres
    assert r["constant_box"]["centre_error"] > 0


def test_grounding_probe_benchmark_runs_small(tmp_path, benchmark_script):
    """benchmarks/vla_grounding_probe.py end to end at toy sizes: the curve, the constant box, the warm-up;
    with the binding loss, a motion tokenizer and --save: a checkpoint that motion pretraining can start from."""
    mod = benchmark_script("vla_grounding_probe")
    r = mod.main(["--scenes", "40", "--val-scenes", "8", "--steps", "3", "--eval-every", "3", "--batch-size", "4",
                  "--warm-steps", "2", "--one-object-steps", "2", "--render-size", "64x48"])  # fmt: skip
    assert r["steps_done"] == 3 and len(r["curve"]) == 1 and r["curve"][0]["step"] == 3
    assert r["questions"] >= 40 and 0 < r["one_object_questions"] < r["questions"]
    for arm in ("model", "constant_box"):
        assert 0.0 <= r["curve"][0][arm]["centre_in_box"] <= 1.0
    assert 0.0 < r["right_object_chance"] < 1.0
    w = r["warm_up"]
    assert w["steps_done"] == 2 and 0.0 <= w["token_f1"] <= 1.0 and 0.0 < w["all_positive_f1"] < 1.0
    # the colour map marks the cells a box overlaps, and only those
    y = mod._colour_map([(None, [("red cube", (0, 0, 300, 300)), ("blue ball", (760, 760, 1000, 1000))])], 4,
                        ["red", "blue"])  # fmt: skip
    assert y[0, :, 0].nonzero().flatten().tolist() == [0, 1, 4, 5]
    assert y[0, :, 1].nonzero().flatten().tolist() == [15]
    # with the binding loss: the head's top token scored against the named object and another one
    from conftest import calibrated_tokenizer

    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes
    from handvla.vla.modeling import load_vla

    generate_episodes(2, tmp_path / "hw", seed=3, config=HandWorldConfig(width=64, height=48, shadows=False),
                      progress=False)  # fmt: skip
    mt = calibrated_tokenizer(tmp_path / "hw")
    mt.save_pretrained(tmp_path / "mt")
    r = mod.main(["--scenes", "40", "--val-scenes", "8", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
                  "--binding", "1", "--render-size", "64x48",
                  "--motion-tokenizer", str(tmp_path / "mt"), "--save", str(tmp_path / "ckpt")])  # fmt: skip
    b = r["curve"][0]["binding"]
    assert b["questions"] > 0 and 0.0 <= b["top_token_on_named"] <= 1.0 and 0.0 <= b["top_token_on_another"] <= 1.0
    saved = load_vla(r["saved"])
    c = saved.model.config
    assert c.vision_film and c.binding_loss_weight == 1.0 and c.image_position == "after_text"
    assert saved.motion_tokenizer is not None and c.vocabulary_ready


def test_readout_probe_benchmark_runs_small(tmp_path, benchmark_script):
    """benchmarks/vla_readout_probe.py end to end on a tiny checkpoint with the binding and end-point heads:
    the truth scores 1 / 1 / never the same object, the read-out of layer 0 (the same token in every prompt,
    so the same features) always ends at one object, and every score is a rate with its interval."""
    from conftest import calibrated_tokenizer

    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes
    from handvla.vla import build_vla
    from handvla.vla.modeling import save_vla

    mod = benchmark_script("vla_readout_probe")
    generate_episodes(24, tmp_path / "hw", seed=4, config=HandWorldConfig(width=64, height=48, shadows=False),
                      progress=False)  # fmt: skip
    mt = calibrated_tokenizer(tmp_path / "hw")
    bundle = build_vla("tiny", motion_tokenizer=mt, seed=0, vision_film=True, image_position="after_text",
                       binding_loss_weight=1.0, endpoint_loss_weight=1.0)  # fmt: skip
    save_vla(tmp_path / "ckpt", bundle, motion_tokenizer=mt)
    r = mod.main(["--ckpt", str(tmp_path / "ckpt"), "--train", str(tmp_path / "hw"), "--eval", str(tmp_path / "hw"),
                  "--train-scenes", "12", "--batch-size", "4"])  # fmt: skip
    assert r["eval_scenes"] >= 3 and r["train_prompts"] > r["train_scenes"] >= 3
    o = r["oracle"]
    assert o["named_target_accuracy"] == 1.0 and o["other_object_accuracy"] == 1.0 and o["same_end_point_rate"] == 0.0
    assert set(r["readouts"]) == {"visual_tokens", "llm_layer_0", "llm_layer_1", "llm_layer_2"}
    for kind in ("ridge", "mlp"):
        assert r["readouts"]["llm_layer_0"][kind]["same_end_point_rate"] == 1.0
        for name, v in r["readouts"].items():
            assert 0.0 <= v[kind]["named_target_accuracy"] <= 1.0, name
            assert len(v[kind]["named_target_accuracy_ci95"]) == 2, name
    assert 0.0 < r["chance"] < 1.0
    c = r["visual_token_cell"]
    tpt = bundle.processor.tokens_per_tile
    assert c["chance_cell"] == 1 / tpt and c["tokens_scored"] == tpt * 2 * r["eval_scenes"]
    assert c["cell"] <= min(c["row"], c["column"]) <= 1.0
    assert 0.0 <= r["endpoint_head"]["named_target_accuracy"] <= 1.0
    assert set(r["binding_head"]) == {"factual", "counterfactual"}
