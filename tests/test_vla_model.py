"""The motion VLA model, vocabulary, checkpoints, loss and processing (tiny preset, CPU).

References used: exact parameter counts of models built on the meta device (for the analytic estimate),
the untouched InternVL model (for from_backbone), F.cross_entropy on hand-picked positions (for the loss),
numpy quantiles (for the curriculum), plain string tokenisation (for the piecewise sequence builder),
a brute-force tiling rule and a PIL resize (for the tiles), and the homography itself (for the warp).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import InternVLConfig, InternVLForConditionalGeneration

from handvla.camera import CANONICAL_K, canonical_homography, intrinsics_matrix, warp_to_canonical
from handvla.errors import CheckpointError, ConfigError, InputError, MissingResourceError
from handvla.tokenizer.layout import TokenLayout
from handvla.vla import (
    HandVLAConfig,
    HandVLAForConditionalGeneration,
    MotionVocab,
    build_text_tokenizer,
    build_vla,
    estimate_num_parameters,
    extend_vocabulary,
    generation_prompt,
    load_vla,
    motion_lm_loss,
    save_vla,
    vla_from_backbone,
)
from handvla.vla.configuration import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN, motion_token
from handvla.vla.processing import IGNORE_INDEX, chat_text, place_images
from handvla.vla.text_tokenizer import add_motion_tokens

# 32 motion ids: 4 wrist ids in [0, 16) then 4 finger ids in [16, 32) per block
SMALL_LAYOUT = TokenLayout(("wrist", "finger"), groups=1, latent_steps=4, layers=1, codebook_size=16)


@pytest.fixture(scope="module")
def tiny():
    return build_vla("tiny", seed=0)


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _motion(rng: np.random.Generator, layout: TokenLayout, seconds: int, hands: int) -> np.ndarray:
    w = rng.integers(*layout.id_range("wrist"), size=(seconds, hands, layout.tokens_per_part))
    f = rng.integers(*layout.id_range("finger"), size=(seconds, hands, layout.tokens_per_part))
    return np.concatenate([w, f], -1)


# ---- configuration ---------------------------------------------------------------------------------------


def test_presets_shapes_and_parameter_counts():
    tiny = HandVLAConfig.from_preset("tiny")
    assert tiny.vision_config.hidden_size == 32 and tiny.vision_config.num_hidden_layers == 2
    assert tiny.text_config.hidden_size == 64 and tiny.text_config.num_hidden_layers == 2
    assert tiny.tokens_per_tile == (56 // 14 // 2) ** 2 == 4
    model = HandVLAForConditionalGeneration(tiny)  # the tiny preset instantiates on CPU
    assert estimate_num_parameters(tiny)["total"] == sum(p.numel() for p in model.parameters())

    expected = {  # (text hidden, layers, heads, kv heads, intermediate), total params (B) bounds
        "internvl3-1b": ((896, 24, 14, 2, 4864), (0.90, 0.97)),
        "internvl3-2b": ((1536, 28, 12, 2, 8960), (2.0, 2.2)),
        "internvl3-8b": ((3584, 28, 28, 4, 18944), (7.8, 8.1)),
        "internvl3-14b": ((5120, 48, 40, 8, 13824), (14.9, 15.3)),
    }
    for name, (text, (lo, hi)) in expected.items():
        cfg = HandVLAConfig.from_preset(name)
        v, t = cfg.vision_config, cfg.text_config
        assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size) == (
            1024,
            24,
            16,
            4096,
        )
        assert tuple(v.image_size) == (448, 448) and tuple(v.patch_size) == (14, 14)
        assert cfg.tokens_per_tile == 256 and cfg.downsample_ratio == 0.5 and cfg.max_tiles == 12
        got = (
            t.hidden_size,
            t.num_hidden_layers,
            t.num_attention_heads,
            t.num_key_value_heads,
            t.intermediate_size,
        )
        assert got == text
        est = estimate_num_parameters(cfg)
        assert est["vision"] == pytest.approx(0.304e9, rel=0.01)  # InternViT-300M
        assert lo < est["total"] / 1e9 < hi, (name, est)
    # the analytic estimate equals the exact count of the real module tree (built on the meta device: no memory)
    for name in ("internvl3-1b", "internvl3-8b"):
        cfg = HandVLAConfig.from_preset(name)
        with torch.device("meta"):
            m = HandVLAForConditionalGeneration(cfg)
        assert estimate_num_parameters(cfg)["total"] == sum(p.numel() for p in m.parameters())
        # with the motion vocabulary: K + 3 delimiter rows, in the embeddings and the untied LM head
        grown = estimate_num_parameters(cfg, vocab_size=151674 + 8192 + 3)["total"]
        assert grown - estimate_num_parameters(cfg)["total"] == 2 * (8192 + 3) * cfg.text_config.hidden_size


def test_config_validation_and_roundtrip(tmp_path):
    with pytest.raises(ConfigError, match="groups: expected a positive integer"):
        HandVLAConfig.from_preset("tiny", motion_token_layout={**SMALL_LAYOUT.to_dict(), "groups": 0})
    with pytest.raises(ConfigError, match="id_layout"):
        HandVLAConfig.from_preset("tiny", motion_token_layout={**SMALL_LAYOUT.to_dict(), "id_layout": "flat"})
    with pytest.raises(ConfigError, match="preset"):
        HandVLAConfig.from_preset("huge")
    with pytest.raises(ConfigError, match="motion_logit_mask_prob"):
        HandVLAConfig.from_preset("tiny", motion_logit_mask_prob=1.5)
    with pytest.raises(ConfigError, match="loss_quantile"):
        HandVLAConfig.from_preset("tiny", loss_quantile_low=0.9, loss_quantile_high=0.5)
    cfg = HandVLAConfig.from_preset(
        "tiny",
        layout=SMALL_LAYOUT,
        motion_logit_mask_prob=0.5,
        loss_quantile_low=0.15,
        loss_quantile_high=0.95,
        system_prompt=None,
    )
    cfg.save_pretrained(tmp_path)
    back = HandVLAConfig.from_pretrained(tmp_path)
    assert back.system_prompt is None
    assert back.motion_layout == SMALL_LAYOUT
    assert (back.motion_logit_mask_prob, back.loss_quantile_low, back.loss_quantile_high) == (0.5, 0.15, 0.95)
    assert back.preset == "tiny" and back.tokens_per_tile == 4


# ---- vocabulary ------------------------------------------------------------------------------------------


def test_vocabulary_extension_contiguous(tiny):
    tok, cfg = tiny.tokenizer, tiny.model.config
    vocab = MotionVocab.from_config(cfg)
    K = cfg.motion_layout.vocab_size
    assert K == 8192
    ids = tok.convert_tokens_to_ids([motion_token(i) for i in range(K)])
    assert ids == list(range(vocab.motion_offset, vocab.motion_offset + K))
    assert tok.convert_ids_to_tokens(vocab.motion_offset + 4097) == "<motion_id_4097>"
    assert vocab.wrist_token_range == (vocab.motion_offset, vocab.motion_offset + 4096)
    assert vocab.finger_token_range == (vocab.motion_offset + 4096, vocab.motion_offset + 8192)
    # embeddings cover every token; the tied LM head is the same matrix
    assert tiny.model.get_input_embeddings().weight.shape[0] == len(tok) == cfg.text_config.vocab_size
    assert tiny.model.get_output_embeddings().weight is tiny.model.get_input_embeddings().weight
    # id <-> motion index maps are inverse and reject foreign ids
    m = np.array([[0, 5, 4095, 4096, 8191]])
    assert np.array_equal(vocab.to_motion_ids(vocab.to_token_ids(m)), m)
    with pytest.raises(InputError):
        vocab.to_token_ids([8192])
    with pytest.raises(InputError):
        vocab.to_motion_ids([vocab.mot_start_id])
    # motion tokens are atomic in text and dropped by skip_special_tokens
    enc = tok("go <mot><motion_id_7></mot>", add_special_tokens=False)["input_ids"]
    assert enc[-3:] == [vocab.mot_start_id, vocab.motion_offset + 7, vocab.mot_end_id]
    assert tok.decode(enc, skip_special_tokens=True) == "go "
    # extending again changes nothing
    n = len(tok)
    assert extend_vocabulary(tiny.model, tok) == vocab and len(tok) == n


def test_new_embedding_rows_initialised_near_mean():
    tok = build_text_tokenizer()
    cfg = HandVLAConfig.from_preset(
        "tiny", layout=SMALL_LAYOUT, tie_word_embeddings=False, text_config={"vocab_size": len(tok)}
    )
    model = HandVLAForConditionalGeneration(cfg)
    old_n = len(tok)
    old = model.get_input_embeddings().weight[:old_n].detach().clone()
    extend_vocabulary(model, tok, noise=0.02)
    for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        new = w[old_n:].detach()
        assert new.shape[0] == len(tok) - old_n == 3 + 3 + 32  # image tokens, delimiters, motion ids
        ref_old = old if w is model.get_input_embeddings().weight else w[:old_n].detach()
        assert torch.allclose(new.mean(0), ref_old.mean(0), atol=0.02 * ref_old.std(0).max().item() + 1e-6)
        assert new.std(0).max() < 0.1 * ref_old.std(0).min()  # small noise around the mean...
        assert torch.unique(new, dim=0).shape[0] == new.shape[0]  # ...but no two rows equal
    assert torch.equal(model.get_input_embeddings().weight[:old_n], old)  # old rows untouched
    with pytest.raises(ConfigError, match="embedding"):  # a tokenizer larger than the model's vocabulary
        extend_vocabulary(
            HandVLAForConditionalGeneration(HandVLAConfig.from_preset("tiny")), build_text_tokenizer()
        )


def test_text_tokenizer_roundtrip(tmp_path):
    tok = build_text_tokenizer(["pick up the red cube", "wave the left hand"], vocab_size=300)
    text = "pick up the blue ball, zebra!"  # unseen words still encode (byte-level)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    add_motion_tokens(tok, SMALL_LAYOUT)
    tok.save_pretrained(tmp_path)
    from handvla.vla import load_text_tokenizer

    back = load_text_tokenizer(tmp_path)
    assert back(text, add_special_tokens=False)["input_ids"] == ids
    assert MotionVocab.from_tokenizer(back, SMALL_LAYOUT) == MotionVocab.from_tokenizer(tok, SMALL_LAYOUT)
    with pytest.raises(MissingResourceError):
        load_text_tokenizer(tmp_path / "nope")


def test_text_tokenizer_splits_digits():
    # merges learned from coordinates would otherwise split "440" as "4" "40" and "425" as "42" "5"
    tok = build_text_tokenizer(["<box>[[425, 310, 465, 389]]</box>"] * 5 + ["a 30-step motion"], vocab_size=400)
    for number in ("440", "425", "1000"):
        pieces = [tok.decode([i]) for i in tok(f"[[{number}, 7]]", add_special_tokens=False)["input_ids"]]
        assert [p for p in pieces if p.strip().isdigit()] == list(number) + ["7"], pieces
    assert tok.decode(tok("the 30-step motion", add_special_tokens=False)["input_ids"]) == "the 30-step motion"


def test_random_vision_tower_knows_where_patches_are():
    import math

    from handvla.vla.modeling import sincos_position_table

    bundle = build_vla("tiny", seed=0, vision_config={"image_size": 112})
    tower = bundle.model.model.vision_tower
    pe = tower.embeddings.position_embeddings.detach()[0].clone()
    assert torch.equal(pe[0], torch.zeros_like(pe[0]))  # the class token
    grid, dim = 8, pe.shape[1]  # 112 / 14 patches a side
    n = dim // 4
    for r, c in [(0, 0), (3, 5), (7, 2)]:
        row = pe[1 + r * grid + c]
        for k in range(n):
            f = 100.0 ** (-k / n)
            assert row[k] == pytest.approx(math.sin(r * f), abs=1e-6)
            assert row[n + k] == pytest.approx(math.cos(r * f), abs=1e-6)
            assert row[dim // 2 + k] == pytest.approx(math.sin(c * f), abs=1e-6)
            assert row[dim // 2 + n + k] == pytest.approx(math.cos(c * f), abs=1e-6)
    assert torch.unique(pe[1:], dim=0).shape[0] == grid * grid  # every patch its own code
    assert torch.equal(sincos_position_table(grid, 6)[:, 2:3], torch.zeros(grid * grid, 1))  # leftover channel

    # Swap two 14-px patches of an image: with zero position embeddings (transformers' init) the tower's
    # patch outputs just swap too (it cannot tell where a patch is); with the table they do not.
    px = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    sw = px.clone()
    sw[..., 0:14, 0:14], sw[..., 42:56, 70:84] = px[..., 42:56, 70:84], px[..., 0:14, 0:14]
    a_i, b_i = 1 + 0, 1 + 3 * grid + 5

    def swapped_back(pos):
        with torch.no_grad():
            tower.embeddings.position_embeddings[0] = pos
            out, out_sw = (tower(pixel_values=x).last_hidden_state[0] for x in (px, sw))
        out_sw[[a_i, b_i]] = out_sw[[b_i, a_i]]
        return float((out - out_sw).abs().max())

    assert swapped_back(torch.zeros_like(pe)) < 1e-5
    assert swapped_back(pe) > 1e-2
    # transformers' zero start stays available (an ablation), and travels in the config
    zero = build_vla("tiny", seed=0, vision_config={"image_size": 112}, vision_position_init="zero")
    assert not zero.model.model.vision_tower.embeddings.position_embeddings.detach().any()
    assert zero.model.config.vision_position_init == "zero"
    with pytest.raises(ConfigError, match="vision_position_init"):
        build_vla("tiny", vision_position_init="learned")


# ---- checkpoints -----------------------------------------------------------------------------------------


def _sample_batch(bundle, rng, seconds=1, mode="both"):
    layout = bundle.model.config.motion_layout
    hands = 2 if mode == "both" else 1
    s = bundle.processor.motion_generation_sample(
        _image(112, 56), "pick up the cube", _motion(rng, layout, seconds, hands), mode
    )
    return bundle.processor.collate([s])


def test_save_load_roundtrip_identical_logits(tiny, tmp_path):
    batch = _sample_batch(tiny, np.random.default_rng(0))
    with torch.no_grad():
        ref = tiny.model(**batch).logits
    out = save_vla(tmp_path / "ckpt", tiny)
    assert (
        (out / "config.json").is_file()
        and (out / "model.safetensors").is_file()
        and (out / "tokenizer.json").is_file()
    )
    back = load_vla(out)
    assert isinstance(back.model, HandVLAForConditionalGeneration) and back.motion_tokenizer is None
    assert back.processor.vocab == tiny.processor.vocab
    with torch.no_grad():
        got = back.model(**batch).logits
    assert torch.equal(got, ref)
    assert back.processor.system_prompt == tiny.model.config.system_prompt == "You are a helpful assistant."
    # the loaded processor builds the same sequences
    batch2 = _sample_batch(back, np.random.default_rng(0))
    assert all(torch.equal(batch[k], batch2[k]) for k in batch)
    # saving over an existing checkpoint replaces it whole (no stale files, no temp folders left)
    (out / "stale.txt").write_text("x")
    save_vla(out, back)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_checkpoint_errors(tiny, tmp_path):
    with pytest.raises(MissingResourceError):
        load_vla(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_vla(tmp_path / "empty")
    ck = save_vla(tmp_path / "ck", tiny)
    # a config that declares a motion tokenizer but a folder without one
    cfg = json.loads((ck / "config.json").read_text())
    cfg["has_motion_tokenizer"] = True
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="motion_tokenizer"):
        load_vla(ck)
    cfg["has_motion_tokenizer"] = False
    cfg["model_type"] = "internvl"
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="vla_from_backbone"):
        load_vla(ck)


def test_motion_tokenizer_travels_with_checkpoint(tmp_path):
    tk_conf = pytest.importorskip("handvla.tokenizer.configuration")
    tk_mod = pytest.importorskip("handvla.tokenizer.modeling")
    mt = tk_mod.MotionTokenizer(
        tk_conf.TokenizerConfig(
            width=16, code_dim=8, groups=2, residual_layers=2, codebook_size=16, kmeans_init=False
        )
    )
    bundle = build_vla("tiny", motion_tokenizer=mt)
    layout = bundle.model.config.motion_layout
    assert layout == mt.layout and layout.vocab_size == 32 and layout.tokens_per_block == 32
    assert list(layout.position_layers()) == [0, 1] * 16  # 2 groups x 4 latent steps x 2 layers, layers fastest
    ck = save_vla(tmp_path / "ck", bundle)
    assert (ck / "motion_tokenizer" / "config.json").is_file()
    back = load_vla(ck)
    assert isinstance(back.motion_tokenizer, tk_mod.MotionTokenizer)
    sd_a, sd_b = mt.inference_state_dict(), back.motion_tokenizer.inference_state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    # a VLA whose layout differs from the motion tokenizer's is refused
    with pytest.raises(ConfigError):
        save_vla(tmp_path / "bad", build_vla("tiny", layout=SMALL_LAYOUT), motion_tokenizer=mt)


def _save_tiny_internvl(path, tie: bool = True):
    tok = build_text_tokenizer()
    tok.add_tokens([IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN], special_tokens=True)
    spec = HandVLAConfig.from_preset("tiny")  # reuse the tiny shapes for a plain InternVL config
    base = InternVLConfig(
        vision_config=spec.vision_config.to_dict(),
        text_config={**spec.text_config.to_dict(), "vocab_size": len(tok)},
        image_token_id=tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN),
        image_seq_length=4,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(1)
    model = InternVLForConditionalGeneration(base).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "max_patches": 3,
                "min_patches": 1,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.25, 0.25, 0.25],
            }
        )
    )
    return model, tok


@pytest.mark.parametrize("tie", [True, False])
def test_from_backbone_loads_internvl_weights(tmp_path, tie):
    base, tok = _save_tiny_internvl(tmp_path, tie)
    n_text = len(tok)
    bundle = HandVLAForConditionalGeneration.from_backbone(tmp_path, layout=SMALL_LAYOUT)
    model = bundle.model
    cfg = model.config
    assert cfg.motion_layout == SMALL_LAYOUT and cfg.max_tiles == 3 and list(cfg.image_mean) == [0.5] * 3
    assert cfg.image_token_id == base.config.image_token_id and cfg.tie_word_embeddings == tie
    # every backbone tensor arrives unchanged (embeddings: the first n_text rows)
    ref = base.state_dict()
    got = model.state_dict()
    for k, v in ref.items():
        if v.shape[0] == n_text and ("embed_tokens" in k or "lm_head" in k):
            assert torch.equal(got[k][:n_text], v), k
        else:
            assert torch.equal(got[k], v), k
    assert model.get_input_embeddings().weight.shape[0] == len(bundle.tokenizer) == n_text + 3 + 32
    # same logits as the plain InternVL on an image + text input that uses no new token
    s = bundle.processor.encode("In <image>, pick up the cube", "ok", images=[_image(112, 56)])
    batch = bundle.processor.collate([s])
    batch.pop("labels")
    with torch.no_grad():
        a = base(**batch).logits
        b = model(**batch).logits
    assert torch.allclose(b[..., :n_text], a, atol=1e-5)
    with pytest.raises(MissingResourceError):
        vla_from_backbone(tmp_path / "nothing")


def test_from_backbone_with_vision_film_starts_as_the_backbone(tmp_path):
    """``vision_film`` on a pretrained backbone: the new modulation is not in its weights, is not reported
    as missing, and starts at no modulation (the same logits as the plain InternVL)."""
    base, tok = _save_tiny_internvl(tmp_path)
    bundle = vla_from_backbone(tmp_path, layout=SMALL_LAYOUT, vision_film=True, image_position="after_text")
    film = bundle.model.model.instruction_film
    assert not film.out.weight.any() and not film.out.bias.any()
    s = bundle.processor.encode("In <image>, pick up the cube", "ok", images=[_image(112, 56)])
    batch = bundle.processor.collate([s])
    batch.pop("labels")
    with torch.no_grad():
        a = base(**batch).logits
        b = bundle.model(**batch).logits
    assert torch.allclose(b[..., : len(tok)], a, atol=1e-5)


def test_from_backbone_rejects_foreign_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ConfigError, match="internvl"):
        vla_from_backbone(tmp_path)


# ---- loss ------------------------------------------------------------------------------------------------


def test_loss_only_on_answer_tokens(tiny):
    rng = np.random.default_rng(3)
    batch = _sample_batch(tiny, rng, seconds=1, mode="left")
    labels = batch["labels"][0]
    ids = batch["input_ids"][0]
    n_ans = tiny.model.config.motion_layout.tokens_per_block + 3  # <mot> ids </mot> <|im_end|>
    assert (labels != IGNORE_INDEX).sum() == n_ans
    assert torch.equal(labels[-n_ans:], ids[-n_ans:]) and (labels[:-n_ans] == IGNORE_INDEX).all()
    assert ids[-1] == tiny.processor.vocab.eos_id

    tiny.model.eval()
    out = tiny.model(**batch)
    logits = out.logits
    pos = torch.nonzero(labels != IGNORE_INDEX)[:, 0]
    ref = F.cross_entropy(logits[0, pos - 1], labels[pos])  # independent: pick the predicting positions
    assert torch.allclose(out.loss, ref, atol=1e-6)

    # the gradient of the loss w.r.t. logits is zero at every position that predicts a prompt token
    lg = logits.detach().requires_grad_(True)
    motion_lm_loss(lg, batch["labels"]).backward()
    g = lg.grad[0].abs().sum(-1)
    predicts_answer = torch.zeros_like(g, dtype=torch.bool)
    predicts_answer[pos - 1] = True
    assert (g[~predicts_answer] == 0).all() and (g[predicts_answer] > 0).all()


def test_motion_logit_masking():
    torch.manual_seed(0)
    V, lo, hi = 50, 20, 40
    logits = torch.randn(2, 30, V)
    labels = torch.randint(0, V, (2, 30))
    labels[:, :5] = IGNORE_INDEX
    target = labels[:, 1:]
    valid = target != IGNORE_INDEX
    motion = valid & (target >= lo) & (target < hi)
    assert motion.any() and (valid & ~motion).any()

    plain = motion_lm_loss(logits, labels)
    assert torch.allclose(
        plain, F.cross_entropy(logits[:, :-1].reshape(-1, V), target.reshape(-1)), atol=1e-6
    )
    # p = 1: the reference sets non-motion logits to -inf at motion targets, then plain cross-entropy
    masked_logits = logits[:, :-1].clone()
    outside = torch.ones(V, dtype=torch.bool)
    outside[lo:hi] = False
    masked_logits[motion] = masked_logits[motion].masked_fill(outside, float("-inf"))
    ref = F.cross_entropy(masked_logits.reshape(-1, V), target.reshape(-1))
    full = motion_lm_loss(logits, labels, (lo, hi), motion_logit_mask_prob=1.0)
    assert torch.allclose(full, ref, atol=1e-6) and full < plain
    # p = 0.5: about half of the motion targets are masked, text targets never
    _, tl_plain, _ = motion_lm_loss(logits, labels, return_token_losses=True)
    gen = torch.Generator().manual_seed(0)
    fracs = []
    for _ in range(20):
        _, tl, _ = motion_lm_loss(logits, labels, (lo, hi), 0.5, generator=gen, return_token_losses=True)
        changed = ~torch.isclose(tl, tl_plain)
        is_mot = motion[valid]
        assert not changed[~is_mot].any()
        fracs.append(changed[is_mot].float().mean().item())
    assert 0.35 < np.mean(fracs) < 0.65
    # the model applies the config's p in training mode only
    model = build_vla("tiny", layout=SMALL_LAYOUT, motion_logit_mask_prob=1.0).model
    rng = np.random.default_rng(0)
    bundle_batch = None
    proc_bundle = build_vla("tiny", layout=SMALL_LAYOUT)
    bundle_batch = _sample_batch(proc_bundle, rng)
    model.load_state_dict(proc_bundle.model.state_dict())
    model.eval()
    eval_loss = model(**bundle_batch).loss
    model.train()
    train_loss = model(**bundle_batch).loss
    assert train_loss < eval_loss
    assert torch.allclose(model(**bundle_batch, motion_logit_mask_prob=0.0).loss, eval_loss, atol=1e-5)


def test_loss_quantile_curriculum():
    torch.manual_seed(1)
    logits = torch.randn(3, 40, 30) * 3
    labels = torch.randint(0, 30, (3, 40))
    loss, tl, keep = motion_lm_loss(logits, labels, loss_quantiles=(0.15, 0.95), return_token_losses=True)
    t = tl.detach().numpy()
    lo, hi = np.quantile(t, 0.15), np.quantile(t, 0.95)
    ref_keep = (t >= lo - 1e-6) & (t <= hi + 1e-6)
    assert np.array_equal(keep.numpy(), ref_keep)
    assert abs(ref_keep.mean() - 0.80) < 0.03
    assert np.isclose(loss.item(), t[ref_keep].mean(), atol=1e-5)
    # gradient flows only through the kept tokens
    lg = logits.clone().requires_grad_(True)
    motion_lm_loss(lg, labels, loss_quantiles=(0.15, 0.95)).backward()
    predicting = lg.grad[:, :-1].abs().sum(-1).reshape(-1) > 0
    assert np.array_equal(predicting.numpy(), ref_keep)


# ---- processing ------------------------------------------------------------------------------------------


def test_sequence_equals_tokenising_the_expanded_string(tiny):
    proc, tok = tiny.processor, tiny.tokenizer
    rng = np.random.default_rng(5)
    hist = _motion(rng, tiny.model.config.motion_layout, 1, 2)
    ans = _motion(rng, tiny.model.config.motion_layout, 2, 1)
    img = _image(168, 56)
    prompt = "In <image>, the hands did <motion>. Next?"
    s = proc.encode(prompt, "Then: <motion> done.", images=[img], prompt_motions=[hist], answer_motions=[ans])
    n_tiles = s.num_tiles[0]
    assert n_tiles == 4 and s.pixel_values.shape == (4, 3, 56, 56)  # 3x1 grid + thumbnail

    def blocks(m):
        out = ""
        for blk in m.reshape(-1, m.shape[-1]):
            out += "<mot>" + "".join(motion_token(int(i)) for i in blk) + "</mot>"
        return out

    img_str = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * (4 * n_tiles) + IMG_END_TOKEN
    text = chat_text(
        prompt.replace("<image>", img_str).replace("<motion>", blocks(hist)),
        system="You are a helpful assistant.",
        answer="Then: " + blocks(ans) + " done.",
    )
    ref = tok(text, add_special_tokens=False)["input_ids"]
    assert s.input_ids.tolist() == ref
    # counts: image tokens, blocks in order second-major then hand (left before right)
    v = proc.vocab
    assert (s.input_ids == v.img_context_id).sum() == 4 * n_tiles
    assert (s.input_ids == v.mot_start_id).sum() == 2 + 2
    with pytest.raises(InputError):
        proc.encode("In <image> and <image>", images=[img])
    with pytest.raises(InputError):
        proc.encode("no image here", images=[img])
    with pytest.raises(InputError):
        proc.motion_token_ids(np.full((1, 1, 128), 8192))


def test_image_after_text_puts_the_instruction_before_the_image(tiny):
    """``image_position="after_text"``: the prompt's <image> reads "the image" and the image tokens follow
    the whole user text (so, causally, they can attend to the instruction); the reference order is the
    default and a wrong value is a config error."""
    prompt = "In <image>, pick up the cube, what?"
    assert place_images(prompt, "in_prompt") == prompt
    assert place_images("In <image>, pick up the cube, what?", "after_text") == (
        "In the image, pick up the cube, what?\n<image>"
    )
    assert place_images("In <image> and <image>, go", "after_text") == (
        "In image 1 and image 2, go\nimage 1: <image>\nimage 2: <image>"
    )
    assert place_images("no image", "after_text") == "no image"
    with pytest.raises(InputError, match="image_position"):
        place_images("In <image>", "first")
    assert HandVLAConfig.from_preset("tiny").image_position == "in_prompt"
    with pytest.raises(ConfigError, match="image_position"):
        HandVLAConfig.from_preset("tiny", image_position="before")

    proc, tok, cfg = tiny.processor, tiny.tokenizer, tiny.model.config
    rng = np.random.default_rng(6)
    hist = _motion(rng, cfg.motion_layout, 1, 1)
    img = _image(56, 56)
    prompt = "In <image>, pick up the red cube. Given <motion>, what next?"
    ref_first = proc.encode(prompt, "ok", images=[img], prompt_motions=[hist])
    cfg.image_position = "after_text"
    try:
        s = proc.encode(prompt, "ok", images=[img], prompt_motions=[hist])
    finally:
        cfg.image_position = "in_prompt"
    img_str = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * (4 * s.num_tiles[0]) + IMG_END_TOKEN
    blocks = "".join(
        "<mot>" + "".join(motion_token(int(i)) for i in blk) + "</mot>"
        for blk in hist.reshape(-1, hist.shape[-1])
    )
    text = chat_text(
        "In the image, pick up the red cube. Given " + blocks + ", what next?\n" + img_str,
        system="You are a helpful assistant.",
        answer="ok",
    )
    assert s.input_ids.tolist() == tok(text, add_special_tokens=False)["input_ids"]
    ids = s.input_ids.tolist()
    v = proc.vocab
    # every instruction and motion token now precedes the image; the reference order has them after it
    assert ids.index(v.img_start_id) > ids.index(v.mot_end_id)
    first = ref_first.input_ids.tolist()
    assert first.index(v.img_start_id) < first.index(v.mot_start_id)
    assert torch.equal(s.pixel_values, ref_first.pixel_values)
    assert s.labels[-2:].tolist() == ref_first.labels[-2:].tolist()


def _expected_tiles(w: int, h: int, lo: int, hi: int) -> int:
    """InternVL's rule, written out: the grid (cols, rows) with lo <= cols*rows <= hi whose aspect ratio is
    closest to w/h (ties: the larger grid while the image area exceeds half the grid area); + thumbnail."""
    grids = sorted(
        {(c, r) for c in range(1, hi + 1) for r in range(1, hi + 1) if lo <= c * r <= hi},
        key=lambda g: g[0] * g[1],
    )
    best, best_diff = (1, 1), float("inf")
    for c, r in grids:
        d = abs(w / h - c / r)
        if d < best_diff:
            best, best_diff = (c, r), d
        elif d == best_diff and w * h > 0.5 * 56 * 56 * c * r:
            best = (c, r)
    n = best[0] * best[1]
    return n + 1 if n > 1 else 1


def test_tiling_counts_and_thumbnail(tiny):
    proc = tiny.processor  # tile 56 px, 1..4 tiles, 4 visual tokens per tile
    for w, h in [
        (56, 56),
        (112, 56),
        (56, 112),
        (168, 56),
        (112, 112),
        (224, 56),
        (300, 40),
        (90, 200),
        (640, 480),
    ]:
        n = proc.num_tiles(w, h)
        assert n == _expected_tiles(w, h, 1, 4), (w, h)
        px = proc.tile_image(_image(w, h, seed=w))
        assert px.shape == (n, 3, 56, 56)
        ids = proc.image_token_ids(n)
        assert len(ids) == 4 * n + 2
    # the thumbnail (last tile) is the whole image resized to one tile, normalised with the config's stats
    img = _image(168, 56, seed=1)
    px = proc.tile_image(img)
    thumb = np.asarray(img.resize((56, 56), Image.BICUBIC), dtype=np.float32) / 255.0
    mean, std = np.array(tiny.model.config.image_mean), np.array(tiny.model.config.image_std)
    ref = torch.from_numpy(((thumb - mean) / std).transpose(2, 0, 1)).float()
    assert torch.allclose(px[-1], ref, atol=0.03)
    # the first tile is the left third of the image resized to the 3x1 canvas
    first = np.asarray(img.resize((168, 56), Image.BICUBIC), dtype=np.float32)[:, :56] / 255.0
    assert torch.allclose(
        px[0], torch.from_numpy(((first - mean) / std).transpose(2, 0, 1)).float(), atol=0.03
    )


def test_prompts():
    assert generation_prompt("pick up the cube", 2, "both") == (
        "In <image>, pick up the cube, what is the 30-step motion sequence for the both hands?"
    )
    assert generation_prompt("wave.", 1, "left").endswith("15-step motion sequence for the left hand?")
    assert "the right hand" in generation_prompt("wave", 3, "right")
    with pytest.raises(InputError, match="hand_mode"):
        generation_prompt("wave", 1, "third")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="seconds"):
            generation_prompt("wave", bad, "both")


# ---- canonical camera ------------------------------------------------------------------------------------


def test_warp_to_canonical_maps_pixels_by_H():
    K = intrinsics_matrix(500.0, 480.0, 300.0, 250.0)
    out_size = (480, 270)  # the canonical 1920x1080 at 1/4 scale
    H = canonical_homography(K, out_size=out_size)
    # H = S K' K^-1: check against the definition on the principal point and one focal length away
    S = np.diag([0.25, 0.25, 1.0])
    assert np.allclose(H, S @ CANONICAL_K @ np.linalg.inv(K))
    pp = H @ np.array([300.0, 250.0, 1.0])
    assert np.allclose(pp[:2], [960 * 0.25, 540 * 0.25])
    yy, xx = np.mgrid[0:500, 0:640] + 0.5  # pixel centres
    for u, v in [(300.5, 250.5), (100.2, 80.7), (550.0, 400.0), (40.0, 440.0)]:
        # a Gaussian blob centred at (u, v) (continuous pixel coordinates), sigma 6 px
        img = (255 * np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 6.0**2))).astype(np.uint8)
        sizes = (out_size, None) if u == 300.5 else (out_size,)  # shrinking (antialiased path) and full size
        for size in sizes:
            out = warp_to_canonical(img, K, out_size=size).astype(np.float64)
            ys, xs = np.nonzero(out)
            w = out[ys, xs]
            got = np.array([(xs * w).sum() / w.sum() + 0.5, (ys * w).sum() / w.sum() + 0.5])
            want = (canonical_homography(K, out_size=size) @ np.array([u, v, 1.0]))[:2]
            assert np.allclose(got, want, atol=0.1), (u, v, size, got, want)
    # PIL in, PIL out, of the requested size
    pil = warp_to_canonical(Image.fromarray(np.zeros((500, 640, 3), np.uint8)), K, out_size=out_size)
    assert isinstance(pil, Image.Image) and pil.size == out_size
    # identity when the input camera is already canonical
    src = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    same = warp_to_canonical(src, CANONICAL_K)
    assert np.abs(same.astype(int) - src.astype(int)).max() <= 1
    for bad in ([[1, 2], [3, 4]], [[0, 0, 1], [0, 1, 1], [0, 0, 1]], [[-5, 0, 1], [0, 5, 1], [0, 0, 1]]):
        with pytest.raises(InputError):
            warp_to_canonical(src, bad)
