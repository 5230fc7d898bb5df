"""``HandVLAConfig.vision_film``: the vision tower's output modulated by the instruction before the image.

References: the same model without the option (a new modulation must change nothing), each sample encoded
alone (packing and left padding must not let one sample's text reach another's image), and text after the
image (must not reach it: the modulation is causal)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from handvla.errors import ConfigError
from handvla.vla import HandVLAConfig, build_vla, load_vla, save_vla
from handvla.vla.generation import answer_questions
from handvla.vla.modeling import image_features, instruction_text_mask


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8))


def _build(film: bool):
    return build_vla("tiny", seed=0, vision_film=film, image_position="after_text")


def _activate(model, seed: int = 0) -> None:
    """Give the modulation's output layer weights (it starts at zero) so that the text matters."""
    g = torch.Generator().manual_seed(seed)
    out = model.model.instruction_film.out
    with torch.no_grad():
        out.weight.copy_(torch.randn(out.weight.shape, generator=g) * 0.5)
        out.bias.copy_(torch.randn(out.bias.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def film():
    bundle = _build(True)
    _activate(bundle.model)
    return bundle


def _features(bundle, batch) -> torch.Tensor:
    with torch.no_grad():
        return image_features(
            bundle.model.model,
            batch["pixel_values"],
            batch["input_ids"],
            batch.get("attention_mask"),
            batch.get("position_ids"),
        )


def test_option_needs_the_instruction_before_the_image():
    assert HandVLAConfig.from_preset("tiny").vision_film is False  # the reference: off
    with pytest.raises(ConfigError, match="vision_film.*after_text"):
        HandVLAConfig.from_preset("tiny", vision_film=True)


def test_a_new_modulation_changes_nothing():
    plain, film = _build(False), _build(True)
    missing, unexpected = film.model.load_state_dict(plain.model.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".instruction_film." in f".{k}" for k in missing)
    s = plain.processor.encode("In <image>, where is the red cube?", "on the left", images=[_image()])
    batch = plain.processor.collate([s])
    with torch.no_grad():
        a = plain.model(**batch).logits
        b = film.model(**batch).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_features_follow_the_text_before_the_image_only(film):
    proc = film.processor
    enc = [
        proc.encode("In <image>, where is the red cube?", "on the left", images=[_image()]),
        proc.encode("In <image>, where is the blue ball?", "on the left", images=[_image()]),
        proc.encode("In <image>, where is the red cube?", "somewhere else entirely", images=[_image()]),
    ]
    red, blue, red_other_answer = (_features(film, proc.collate([s])) for s in enc)
    assert (red - blue).abs().max() > 1e-2  # another object named: other visual tokens
    assert torch.equal(red, red_other_answer)  # the answer comes after the image: it cannot reach it
    rows, mask = instruction_text_mask(
        proc.collate([enc[0]])["input_ids"], film.model.config.image_token_id, 4
    )
    ids = enc[0].input_ids.tolist()
    first_image = ids.index(film.model.config.image_token_id)
    assert rows.tolist() == [0] and mask[0, :first_image].all() and not mask[0, first_image:].any()


def test_packing_and_left_padding_keep_samples_apart(film):
    proc = film.processor
    enc = [
        proc.encode("In <image>, where is the red cube?", "left", images=[_image(1)]),
        proc.encode(
            "In <image>, in the kitchen, where is the small green ball now?", "right", images=[_image(2)]
        ),
    ]
    alone = [_features(film, proc.collate([s])) for s in enc]
    packed = {
        "input_ids": torch.cat([s.input_ids for s in enc])[None],
        "position_ids": torch.cat([torch.arange(len(s.input_ids)) for s in enc])[None],
        "pixel_values": torch.cat([s.pixel_values for s in enc]),
    }
    left = proc.collate(enc, padding_side="left")
    assert (left["attention_mask"] == 0).any()  # the first sample is padded on the left
    for batch in (packed, left):
        got = _features(film, batch)
        n = alone[0].shape[0]
        assert torch.allclose(got[:n], alone[0], atol=1e-5) and torch.allclose(got[n:], alone[1], atol=1e-5)


def test_checkpoint_roundtrip_and_generation(film, tmp_path):
    s = film.processor.encode("In <image>, where is the red cube?", "on the left", images=[_image()])
    batch = film.processor.collate([s])
    with torch.no_grad():
        ref = film.model(**batch).logits
    back = load_vla(save_vla(tmp_path / "ckpt", film))
    assert back.model.config.vision_film and back.model.model.instruction_film is not None
    saved, loaded = film.model.state_dict(), back.model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    with torch.no_grad():  # the same weights; the logits may differ in the last bits (3e-7, transformers 5.25)
        assert torch.allclose(back.model(**batch).logits, ref, rtol=0, atol=1e-5)
    texts = answer_questions(
        back.model,
        back.processor,
        [_image(), _image(1)],
        ["In <image>, where?", "In <image>, where is it?"],
        max_new_tokens=4,
    )
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_the_modulation_trains():
    """One optimiser step on the answer loss moves the modulation's weights (the gradient reaches them
    through the visual tokens)."""
    bundle = _build(True)
    model = bundle.model.train()
    s = bundle.processor.encode("In <image>, where is the red cube?", "on the left", images=[_image()])
    loss = model(**bundle.processor.collate([s])).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.model.instruction_film.named_parameters()}
    assert grads["out.weight"] is not None and grads["out.weight"].abs().max() > 0


# ---- the binding loss (HandVLAConfig.binding_loss_weight) ------------------------------------------------


def test_binding_loss_needs_the_modulation():
    with pytest.raises(ConfigError, match="binding_loss_weight"):
        HandVLAConfig.from_preset("tiny", binding_loss_weight=1.0)
    with pytest.raises(ConfigError, match="binding_loss_weight"):
        HandVLAConfig.from_preset(
            "tiny", vision_film=True, image_position="after_text", binding_loss_weight=-1
        )


def test_box_token_map_follows_the_visual_token_order():
    """With every tower layer switched off (layer scales 0: each layer is the identity), a visual token
    depends only on its own patches, so changing the pixels inside a box changes exactly the tokens that
    `box_token_map` marks: the map's row-major cells are the model's token order after pixel shuffle."""
    from handvla.vla.grounding import box_token_map

    bundle = build_vla(
        "tiny", seed=0, vision_film=True, image_position="after_text", vision_config={"image_size": 112}
    )
    model = bundle.model
    with torch.no_grad():
        for layer in model.model.vision_tower.encoder.layer:
            layer.lambda_1.zero_()
            layer.lambda_2.zero_()
    _activate(model)
    base = np.full((112, 112, 3), 90, np.uint8)
    proc = bundle.processor
    for box in [(300, 0, 520, 240), (760, 600, 990, 990), (10, 260, 240, 740)]:
        x1, y1 = (int(np.ceil(v * 112 / 1000)) for v in box[:2])  # pixels inside the box only
        x2, y2 = (int(v * 112 // 1000) for v in box[2:])
        img = base.copy()
        img[y1:y2, x1:x2] = (250, 20, 20)
        batches = [
            proc.collate([proc.encode("In <image>, where?", "x", images=[Image.fromarray(a)])])
            for a in (base, img)
        ]
        a, b = (_features(bundle, bt)[0] for bt in batches)
        changed = ((a - b).abs().amax(-1) > 1e-5).float().numpy()
        np.testing.assert_array_equal(changed, box_token_map([box], 4), err_msg=str(box))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    root = tmp_path_factory.mktemp("binding")
    cfg = HandWorldConfig(width=64, height=48, seconds=2.0, shadows=False, tasks=("reach", "push", "move"))
    generate_episodes(6, root / "hw", seed=5, config=cfg, progress=False)
    return root / "hw"


def test_binding_targets_mark_the_instructed_object_and_train(world):
    """HandWorld samples carry, per visual token, whether it overlaps the object the instruction acts on:
    the cell holding the target's projected centre (HandWorld's own ``initial_pixel``, taken to the
    canonical view) is marked; grounding questions mark their named object. In training the loss gains
    the weighted binding loss, and the binding head and the modulation get gradients."""
    from handvla.camera import CANONICAL_IMAGE_SIZE, canonical_homography
    from handvla.data.schema import camera_from_row
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer
    from handvla.vla.data import VLADataConfig, VLAInstructionDataset, collect_samples
    from handvla.vla.grounding import box_token_map, parse_grounding_answer

    torch.manual_seed(0)
    mt = MotionTokenizer(TokenizerConfig(**PRESETS["tiny"]))
    bundle = build_vla(
        "tiny", motion_tokenizer=mt, seed=0, vision_film=True, image_position="after_text",
        binding_loss_weight=2.0, vision_config={"image_size": 112},
    )  # fmt: skip
    specs, dirs, _ = collect_samples(VLADataConfig(stores=[str(world)], seconds=[1], grounding=0.5))
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, mt)
    assert ds.binding
    marked = 0
    for i, s in enumerate(ds.specs):
        enc = ds.encode(i)
        t = enc.image_token_targets
        if s.task_type == "grounding":
            np.testing.assert_array_equal(t[-1].numpy(), box_token_map([parse_grounding_answer(s.answer)], 4))
            continue
        if t is None:
            continue
        assert t.shape == (enc.pixel_values.shape[0], 16) and set(t[-1].tolist()) <= {0.0, 1.0}
        row = ds.stores[s.dataset].meta(s.episode)
        gt = json.loads(row["ground_truth"])
        cam = camera_from_row(row)
        for tg in gt["targets"]:
            uv = canonical_homography(cam.K) @ np.array([*tg["initial_pixel"], 1.0])
            u, v = uv[:2] / uv[2] / np.asarray(CANONICAL_IMAGE_SIZE)
            if 0 < u < 1 and 0 < v < 1:
                assert t[-1, int(v * 4) * 4 + int(u * 4)] == 1.0, (i, tg)
                marked += 1
    assert marked >= 3
    batch = ds.collate([ds[i] for i in range(4)])
    assert batch["image_token_targets"].shape == (batch["pixel_values"].shape[0], 16)
    model = bundle.model.train()
    out = model(**batch)
    assert out.binding_loss > 0
    model.config.binding_loss_weight = 0.0
    try:
        plain = model(**batch).loss
    finally:
        model.config.binding_loss_weight = 2.0
    torch.testing.assert_close(out.loss, plain + 2.0 * out.binding_loss, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    assert model.binding_head.weight.grad.abs().max() > 0
    assert model.model.instruction_film.out.weight.grad.abs().max() > 0
    # generation ignores the training-only head; a checkpoint keeps it
    texts = answer_questions(
        model.eval(), bundle.processor, [_image()], ["In <image>, where?"], max_new_tokens=3
    )
    assert len(texts) == 1


def test_binding_mark_moves_the_head_into_the_vision_path(world, tmp_path):
    """``binding_mark``: the binding head becomes the mark's score (same binding loss), a new mark changes
    nothing, a trained direction is added to each visual token times its binding probability, the loss
    trains it, a checkpoint keeps it and a policy's backbone counts it among the vision parts."""
    from handvla.policy.modeling import _vision_parts
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer
    from handvla.vla.data import VLADataConfig, VLAInstructionDataset, collect_samples
    from handvla.vla.modeling import set_binding_mark

    with pytest.raises(ConfigError, match="binding_mark.*vision_film"):
        HandVLAConfig.from_preset("tiny", binding_mark=True)
    torch.manual_seed(0)
    mt = MotionTokenizer(TokenizerConfig(**PRESETS["tiny"]))
    bundle = build_vla("tiny", motion_tokenizer=mt, seed=0, vision_film=True, image_position="after_text",
                       binding_loss_weight=1.0, vision_config={"image_size": 112})  # fmt: skip
    _activate(bundle.model)
    specs, dirs, _ = collect_samples(VLADataConfig(stores=[str(world)], seconds=[1]))
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, mt)
    batch = ds.collate([ds[i] for i in range(4)])
    model = bundle.model.train()
    torch.manual_seed(1)
    before = model(**batch)
    head = model.binding_head.weight.detach().clone()
    set_binding_mark(model, seed=0)
    assert model.config.binding_mark and not hasattr(model, "binding_head")
    torch.testing.assert_close(model.model.binding_mark.score.weight, head)
    torch.manual_seed(1)
    after = model(**batch)
    torch.testing.assert_close(after.loss, before.loss)  # zero direction: the same model
    torch.testing.assert_close(after.binding_loss, before.binding_loss)
    after.loss.backward()
    mark = model.model.binding_mark
    assert mark.direction.grad.abs().max() > 0 and mark.score.weight.grad.abs().max() > 0
    with torch.no_grad():
        mark.direction.copy_(torch.randn(mark.direction.shape))
    with torch.no_grad():
        feats, logits = image_features(model.model, batch["pixel_values"], batch["input_ids"],
                                       batch["attention_mask"], return_binding_logits=True)  # fmt: skip
        model.model.binding_mark = None
        plain = image_features(model.model, batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        model.model.binding_mark = mark
    torch.testing.assert_close(logits, (mark.score(plain))[..., 0])
    torch.testing.assert_close(feats, plain + torch.sigmoid(logits)[..., None] * mark.direction)
    save_vla(tmp_path / "ckpt", bundle, motion_tokenizer=mt)
    loaded = load_vla(tmp_path / "ckpt").model
    assert loaded.config.binding_mark and not hasattr(loaded, "binding_head")
    torch.testing.assert_close(loaded.model.binding_mark.direction, mark.direction)
    assert any(m is loaded.model.binding_mark for m in _vision_parts(loaded.model))


def test_binding_pool_adds_the_marked_tokens_to_every_token(world, tmp_path):
    """``binding_pool``: needs the mark; a new pool changes nothing; a trained one adds its map of the tile's
    tokens weighted by the softmax of the mark's logits to every token (checked a second way); the loss
    trains it; a mark without a pool gains one (continuing a checkpoint) and a checkpoint keeps it."""
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer
    from handvla.vla.data import VLADataConfig, VLAInstructionDataset, collect_samples
    from handvla.vla.modeling import set_binding_mark
    from handvla.vla.pretrain import ModelConfig

    with pytest.raises(ConfigError, match="binding_pool.*binding_mark"):
        HandVLAConfig.from_preset("tiny", vision_film=True, image_position="after_text", binding_pool=True)
    with pytest.raises(ConfigError, match="binding_pool.*binding_mark"):
        ModelConfig(preset="tiny", vision_film=True, binding_pool=True)
    torch.manual_seed(0)
    mt = MotionTokenizer(TokenizerConfig(**PRESETS["tiny"]))
    bundle = build_vla("tiny", motion_tokenizer=mt, seed=0, vision_film=True, image_position="after_text",
                       binding_loss_weight=1.0, binding_mark=True, vision_config={"image_size": 112})  # fmt: skip
    _activate(bundle.model)
    model = bundle.model.train()
    mark = model.model.binding_mark
    assert mark.pool is None
    with torch.no_grad():
        mark.direction.copy_(torch.randn(mark.direction.shape))
    specs, dirs, _ = collect_samples(VLADataConfig(stores=[str(world)], seconds=[1]))
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, mt)
    batch = ds.collate([ds[i] for i in range(4)])
    torch.manual_seed(1)
    before = model(**batch)
    set_binding_mark(model, seed=0, pool=True)  # a mark without a pool gains one, zero at the start
    assert model.config.binding_pool and mark.pool is not None and model.model.binding_mark is mark
    torch.manual_seed(1)
    after = model(**batch)
    torch.testing.assert_close(after.loss, before.loss)
    after.loss.backward()
    assert mark.pool.weight.grad.abs().max() > 0
    with torch.no_grad():
        mark.pool.weight.copy_(torch.randn(mark.pool.weight.shape) * 0.1)
        mark.pool.bias.copy_(torch.randn(mark.pool.bias.shape) * 0.1)
        feats, logits = image_features(model.model, batch["pixel_values"], batch["input_ids"],
                                       batch["attention_mask"], return_binding_logits=True)  # fmt: skip
        model.model.binding_mark = None
        plain = image_features(model.model, batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        model.model.binding_mark = mark
    # the second way: per tile, a loop over its tokens
    for t in range(plain.shape[0]):
        w = torch.softmax(logits[t], 0)
        pooled = sum(w[i] * plain[t, i] for i in range(plain.shape[1]))
        want = plain[t] + torch.sigmoid(logits[t])[:, None] * mark.direction + mark.pool(pooled)
        torch.testing.assert_close(feats[t], want)
    save_vla(tmp_path / "ckpt", bundle, motion_tokenizer=mt)
    loaded = load_vla(tmp_path / "ckpt").model
    assert loaded.config.binding_pool
    torch.testing.assert_close(loaded.model.binding_mark.pool.weight, mark.pool.weight)
