"""Being-H0's released VLA: a tiny checkpoint written here in the release's layout (the InternVL chat model's
tensor names with a fused ``attn.qkv`` and ``ls1`` / ``ls2``, ``mlp1.{0,1,3}``, ``language_model.model.*``;
its config.json fields; two safetensors shards + index; a Qwen2-style tokenizer extended with ``<mot>``,
``<motion_id_i>``, ``<MOT_NOOP>``, ``</mot>``, built with ``tokenizers``) is converted with ``handvla convert
being-h0`` and compared with two independent paths on one prompt with an image: transformers'
``InternVLForConditionalGeneration`` with the original weights key-mapped in this file, and a direct
re-implementation of the chat model's forward (InternViT on the raw tensors, pixel shuffle v2, ``mlp1``, then
the release's own Qwen2 LM module). Same logits, same greedy ids. Then: the converted folder is a
``model.init_checkpoint`` for pretraining and runs under ``handvla generate``; bad inputs are one-line errors
naming the file and the field."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_mano import write_fake_mano_pickle  # noqa: E402

from handvla.cli import main  # noqa: E402
from handvla.tokenizer.being_h0 import BeingH0Tokenizer, BeingH0TokenizerConfig  # noqa: E402
from handvla.vla.modeling import load_vla  # noqa: E402

# the fixture's sizes: InternViT + Qwen2 at toy widths
VD, VI, VL, VH, IMG, PATCH = 32, 64, 2, 2, 56, 14
LD, LI, LL, LH, LKV = 64, 128, 2, 4, 2
RATIO = 0.5
PAD_ROWS = 7  # embedding rows beyond the tokenizer, as released checkpoints have
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
INTERNVL_TOKENS = [
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
]
CORPUS = ["In the image, pick up the red cube, what is the 15-step motion sequence for the right hand?",
          "You are Being-H0, a helpful and harmless AI assistant developed by BeingBeyond."]  # fmt: skip
TOKENS_PER_TILE = int((IMG // PATCH * RATIO) ** 2)


def motion_tokenizer_dir(root: Path) -> tuple[Path, int]:
    """A tiny GRVQ tokenizer in the release's structure (handvla's converted form) and its id count."""
    torch.manual_seed(3)
    cfg = BeingH0TokenizerConfig(width=16, code_dim=8, codebook_size=16, res_depth=3)
    tok = BeingH0Tokenizer(cfg)
    tok.save_pretrained(root / "motion_tok")
    return root / "motion_tok", tok.layout.vocab_size


def release_tokenizer(num_motion: int) -> PreTrainedTokenizerFast:
    """Qwen-style byte-level BPE + InternVL's tokens + Being-H0's motion tokens at contiguous ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(CORPUS, trainer)
    motion = ["<mot>", *(f"<motion_id_{i}>" for i in range(num_motion)), "<MOT_NOOP>", "</mot>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in INTERNVL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in motion])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )


def llm_config(vocab: int, tied: bool = False) -> dict:
    """The release's llm_config: a Qwen2 config as the remote code writes it (legacy rope fields)."""
    return {
        "_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "architectures": ["Qwen2ForCausalLM"],
        "attn_implementation": "flash_attention_2", "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": LD, "intermediate_size": LI, "num_hidden_layers": LL, "num_attention_heads": LH,
        "num_key_value_heads": LKV, "vocab_size": vocab, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "rope_scaling": {"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"},
        "tie_word_embeddings": tied, "torch_dtype": "bfloat16", "use_bfloat16": True, "use_cache": True,
        "use_sliding_window": False, "sliding_window": 32768, "bos_token_id": 0, "eos_token_id": 2,
    }  # fmt: skip


def qwen2_config(vocab: int, tied: bool = False) -> Qwen2Config:
    """The same LLM for the reference paths, in float32 with eager attention (the release asks for bf16 and
    flash attention)."""
    drop = ("attn_implementation", "torch_dtype", "use_bfloat16")
    return Qwen2Config(**{k: v for k, v in llm_config(vocab, tied).items() if k not in drop})


def chat_config(vocab: int, tied: bool = False) -> dict:
    return {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        "downsample_ratio": RATIO, "dynamic_image_size": True, "force_image_size": IMG, "max_dynamic_patch": 4,
        "min_dynamic_patch": 1, "ps_version": "v2", "select_layer": -1, "template": "being_h0",
        "use_thumbnail": True, "use_backbone_lora": 0, "use_llm_lora": 0, "torch_dtype": "bfloat16",
        "vision_config": {
            "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": VD,
            "intermediate_size": VI, "num_hidden_layers": VL, "num_attention_heads": VH, "image_size": IMG,
            "patch_size": PATCH, "num_channels": 3, "qkv_bias": True, "qk_normalization": False,
            "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "hidden_act": "gelu", "drop_path_rate": 0.0,
            "dropout": 0.0, "attention_dropout": 0.0, "initializer_factor": 1.0, "use_flash_attn": False,
        },
        "llm_config": llm_config(vocab, tied),
    }  # fmt: skip


def release_weights(vocab: int, seed: int = 0, tied: bool = False) -> dict[str, torch.Tensor]:
    """Random tensors under the chat model's names (float32; the release stores bf16)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=0.2: scale * torch.randn(*s, generator=g)  # noqa: E731
    sd = {
        "vision_model.embeddings.class_embedding": r(1, 1, VD),
        "vision_model.embeddings.patch_embedding.weight": r(VD, 3, PATCH, PATCH, scale=0.05),
        "vision_model.embeddings.patch_embedding.bias": r(VD),
        "vision_model.embeddings.position_embedding": r(1, (IMG // PATCH) ** 2 + 1, VD),
    }
    for i in range(VL):
        p = f"vision_model.encoder.layers.{i}."
        sd |= {p + "norm1.weight": 1 + r(VD), p + "norm1.bias": r(VD), p + "norm2.weight": 1 + r(VD),
               p + "norm2.bias": r(VD), p + "ls1": 0.5 + r(VD), p + "ls2": 0.5 + r(VD),
               p + "attn.qkv.weight": r(3 * VD, VD), p + "attn.qkv.bias": r(3 * VD),
               p + "attn.proj.weight": r(VD, VD), p + "attn.proj.bias": r(VD),
               p + "mlp.fc1.weight": r(VI, VD), p + "mlp.fc1.bias": r(VI),
               p + "mlp.fc2.weight": r(VD, VI), p + "mlp.fc2.bias": r(VD)}  # fmt: skip
    c = VD * int(1 / RATIO) ** 2
    sd |= {"mlp1.0.weight": 1 + r(c), "mlp1.0.bias": r(c), "mlp1.1.weight": r(LD, c), "mlp1.1.bias": r(LD),
           "mlp1.3.weight": r(LD, LD), "mlp1.3.bias": r(LD)}  # fmt: skip
    torch.manual_seed(seed)
    lm = Qwen2ForCausalLM(qwen2_config(vocab, tied))
    for k, v in lm.state_dict().items():
        if tied and k == "lm_head.weight":
            continue
        sd[f"language_model.{k}"] = v + r(*v.shape, scale=0.05)
    return sd


def write_release_vla(root: Path, num_motion: int, seed: int = 0, tied: bool = False) -> dict:
    """``root`` in the release's layout: config.json, two safetensors shards + index, the tokenizer files."""
    root.mkdir(parents=True, exist_ok=True)
    tok = release_tokenizer(num_motion)
    vocab = len(tok) + PAD_ROWS
    sd = release_weights(vocab, seed, tied)
    (root / "config.json").write_text(json.dumps(chat_config(vocab, tied), indent=2))
    keys = list(sd)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    cut = len(keys) // 2
    weight_map = {}
    for name, part in zip(names, (keys[:cut], keys[cut:])):
        save_file({k: sd[k].contiguous() for k in part}, str(root / name), metadata={"format": "pt"})
        weight_map |= {k: name for k in part}
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    tok.save_pretrained(str(root))
    return {"sd": sd, "tok": tok, "vocab": vocab}


# ---- independent path 1: transformers' InternVL with the weights key-mapped here ---------------------------


def hf_internvl(
    sd: dict, vocab: int, image_token_id: int, tied: bool = False
) -> InternVLForConditionalGeneration:
    vc = InternVLVisionConfig(hidden_size=VD, intermediate_size=VI, num_hidden_layers=VL, num_attention_heads=VH,
                              image_size=IMG, patch_size=PATCH, attention_bias=True, use_qk_norm=False,
                              norm_type="layer_norm", layer_norm_eps=1e-6, hidden_act="gelu",
                              use_mean_pooling=True, use_absolute_position_embeddings=True)  # fmt: skip
    cfg = InternVLConfig(vision_config=vc, text_config=qwen2_config(vocab, tied),
                         image_token_id=image_token_id, downsample_ratio=RATIO, vision_feature_layer=-1,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu",
                         tie_word_embeddings=tied)  # fmt: skip
    model = InternVLForConditionalGeneration(cfg).eval()
    mapped = {}
    for k, v in sd.items():
        if k.startswith("language_model.model."):
            mapped["model.language_model." + k[len("language_model.model.") :]] = v
            continue
        if k == "language_model.lm_head.weight":
            mapped["lm_head.weight"] = v
            continue
        if k.startswith("mlp1."):
            part = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}[k.split(".")[1]]
            mapped[f"model.multi_modal_projector.{part}.{k.split('.')[2]}"] = v
            continue
        n = k.replace("vision_model.", "model.vision_tower.").replace(".layers.", ".layer.")
        n = n.replace("class_embedding", "cls_token").replace("position_embedding", "position_embeddings")
        n = n.replace("patch_embedding.", "patch_embeddings.projection.").replace(".ls1", ".lambda_1")
        n = n.replace(".ls2", ".lambda_2").replace("attn.proj.", "attention.projection_layer.")
        n = n.replace("norm1.", "layernorm_before.").replace("norm2.", "layernorm_after.")
        if "attn.qkv." in n:
            for name, t in zip(("q_proj", "k_proj", "v_proj"), v.split(VD, dim=0)):
                mapped[n.replace("attn.qkv.", f"attention.{name}.")] = t
        else:
            mapped[n] = v
    if tied:
        mapped["lm_head.weight"] = mapped["model.language_model.embed_tokens.weight"]
    model.load_state_dict(mapped, strict=True)
    return model


# ---- independent path 2: the chat model's forward, re-implemented on the raw tensors ------------------------


def _vit(sd: dict, pixels: torch.Tensor) -> torch.Tensor:
    """InternViT: patch conv + class token + position embedding, then pre-norm blocks with layer scale
    (x += ls1 * attn(norm1 x); x += ls2 * mlp(norm2 x)), the attention from one fused qkv projection."""
    e = "vision_model.embeddings."
    x = F.conv2d(pixels, sd[e + "patch_embedding.weight"], sd[e + "patch_embedding.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = (
        torch.cat([sd[e + "class_embedding"].expand(x.shape[0], 1, VD), x], dim=1)
        + sd[e + "position_embedding"]
    )
    hd = VD // VH
    for i in range(VL):
        p = f"vision_model.encoder.layers.{i}."
        h = F.layer_norm(x, (VD,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(x.shape[0], x.shape[1], 3, VH, hd).permute(2, 0, 3, 1, 4)
        a = ((q * hd**-0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        a = F.linear(a.transpose(1, 2).reshape(x.shape), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        x = x + sd[p + "ls1"] * a
        h = F.layer_norm(x, (VD,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"],
                     sd[p + "mlp.fc2.bias"])  # fmt: skip
        x = x + sd[p + "ls2"] * h
    return x


def _pixel_shuffle_v2(x: torch.Tensor, s: float) -> torch.Tensor:
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * s), int(c / s)).permute(0, 2, 1, 3)
    x = x.reshape(n, int(h * s), int(w * s), int(c / (s * s)))
    return x.permute(0, 2, 1, 3)


def image_embeds(sd: dict, pixels: torch.Tensor) -> torch.Tensor:
    v = _vit(sd, pixels)[:, 1:]
    side = int(v.shape[1] ** 0.5)
    v = _pixel_shuffle_v2(v.reshape(v.shape[0], side, side, -1), RATIO)
    v = v.reshape(v.shape[0], -1, v.shape[-1])
    c = v.shape[-1]
    v = F.layer_norm(v, (c,), sd["mlp1.0.weight"], sd["mlp1.0.bias"], 1e-5)
    v = F.gelu(F.linear(v, sd["mlp1.1.weight"], sd["mlp1.1.bias"]))
    return F.linear(v, sd["mlp1.3.weight"], sd["mlp1.3.bias"])


class ChatModel:
    """The release's forward: the LM is its own module (a Qwen2ForCausalLM under ``language_model``), the
    image embeddings replace the ``<IMG_CONTEXT>`` positions of the input embeddings."""

    def __init__(self, sd: dict, vocab: int, ctx_id: int, tied: bool = False):
        self.sd, self.ctx_id = sd, ctx_id
        self.lm = Qwen2ForCausalLM(qwen2_config(vocab, tied)).eval()
        lm_sd = {k[len("language_model.") :]: v for k, v in sd.items() if k.startswith("language_model.")}
        if tied:
            lm_sd["lm_head.weight"] = lm_sd["model.embed_tokens.weight"]
        self.lm.load_state_dict(lm_sd, strict=True)

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        emb = self.lm.get_input_embeddings()(ids).clone()
        vit = image_embeds(self.sd, pixels).reshape(-1, LD)
        emb[ids == self.ctx_id] = vit
        return self.lm(inputs_embeds=emb, use_cache=False).logits

    def greedy(self, ids: torch.Tensor, pixels: torch.Tensor, n: int, eos: int) -> torch.Tensor:
        for _ in range(n):
            nxt = self.logits(ids, pixels)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            if int(nxt) == eos:
                break
        return ids


# ---- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("being_h0_vla")
    mt_dir, k = motion_tokenizer_dir(root)
    rel = write_release_vla(root / "release", k)
    out = root / "converted"
    assert main(["convert", "being-h0", "--src", str(root / "release"), "--tokenizer", str(mt_dir),
                 "--out", str(out), "--quiet", "--max-shard-mb", "0.5"]) == 0  # fmt: skip
    return root, rel, out, k


def _prompt(tok, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    text = ("<|im_start|>system\nYou are Being-H0, a helpful and harmless AI assistant developed by BeingBeyond."
            "<|im_end|>\n<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * TOKENS_PER_TILE + "</img>\npick up the red "
            f"cube <mot><motion_id_0><motion_id_{k - 1}><motion_id_{k // 2}><MOT_NOOP></mot><|im_end|>\n"
            "<|im_start|>assistant\n<mot>")  # fmt: skip
    ids = torch.tensor([tok(text)["input_ids"]])
    pixels = torch.randn(1, 3, IMG, IMG, generator=torch.Generator().manual_seed(5))
    return ids, pixels


def test_converted_model_gives_the_releases_logits_and_greedy_ids(converted):
    root, rel, out, k = converted
    bundle = load_vla(out)
    tok, sd, vocab = rel["tok"], rel["sd"], rel["vocab"]
    ctx = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    ids, pixels = _prompt(bundle.tokenizer, k)
    assert torch.equal(ids, torch.tensor([tok(bundle.tokenizer.decode(ids[0]))["input_ids"]]))
    assert int((ids == ctx).sum()) == TOKENS_PER_TILE
    model = bundle.model
    with torch.no_grad():
        got = model(input_ids=ids, pixel_values=pixels).logits
        hf = hf_internvl(sd, vocab, ctx)(input_ids=ids, pixel_values=pixels).logits
    ref = ChatModel(sd, vocab, ctx).logits(ids, pixels)
    assert got.shape == ref.shape == (1, ids.shape[1], vocab)
    torch.testing.assert_close(got, hf, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    # the image matters (so the vision path was compared), and motion-id columns are the release's rows
    with torch.no_grad():
        other = model(input_ids=ids, pixel_values=pixels.flip(-1)).logits
    assert (other - got).abs().max() > 1e-3
    start = tok.convert_tokens_to_ids("<mot>")
    motion_cols = torch.arange(start + 1, start + 1 + k)
    torch.testing.assert_close(got[..., motion_cols], ref[..., motion_cols], rtol=1e-4, atol=1e-4)
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb[motion_cols], sd["language_model.model.embed_tokens.weight"][motion_cols])
    assert torch.equal(model.get_output_embeddings().weight, sd["language_model.lm_head.weight"])
    vocab_ids = model.config
    assert vocab_ids.motion_token_offset == start + 1 and vocab_ids.mot_start_token_id == start
    assert vocab_ids.mot_noop_token_id == start + k + 1 and vocab_ids.mot_end_token_id == start + k + 2
    # greedy decoding: transformers' generate on the converted model == the re-implementation's loop
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        gen = model.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                             max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=eos)  # fmt: skip
    want = ChatModel(sd, vocab, ctx).greedy(ids, pixels, 6, eos)
    assert torch.equal(gen, want), (gen[0, ids.shape[1] :], want[0, ids.shape[1] :])


def test_converted_folder_layout(converted):
    root, rel, out, k = converted
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    stored = {}
    for s in shards:
        stored |= load_file(str(out / s))
    assert set(stored) == set(index["weight_map"])
    q = stored["model.vision_tower.encoder.layer.1.attention.k_proj.weight"]
    assert torch.equal(q, rel["sd"]["vision_model.encoder.layers.1.attn.qkv.weight"][VD : 2 * VD])
    assert torch.equal(stored["model.vision_tower.encoder.layer.0.lambda_2"],
                       rel["sd"]["vision_model.encoder.layers.0.ls2"])  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "handvla" and cfg["has_motion_tokenizer"] and cfg["max_tiles"] == 4
    assert cfg["system_prompt"].startswith("You are Being-H0")
    assert (out / "motion_tokenizer" / "config.json").is_file()
    bundle = load_vla(out)
    assert bundle.motion_tokenizer.layout.vocab_size == k


def test_tied_head_and_the_release_part_folders_as_tokenizer(tmp_path):
    """A tied LLM (Qwen2.5-0.5B ties its head) converts without an lm_head tensor; --tokenizer may name the
    release's wrist/finger folders, converted on the way."""
    from test_being_h0_tokenizer import write_release

    write_release(tmp_path / "grvq")
    from handvla.tokenizer.being_h0 import convert_release

    k = convert_release(tmp_path / "grvq").layout.vocab_size
    rel = write_release_vla(tmp_path / "release", k, seed=1, tied=True)
    assert main(["convert", "being-h0", "--src", str(tmp_path / "release"), "--tokenizer",
                 str(tmp_path / "grvq"), "--out", str(tmp_path / "out"), "--quiet"]) == 0  # fmt: skip
    bundle = load_vla(tmp_path / "out")
    ctx = rel["tok"].convert_tokens_to_ids("<IMG_CONTEXT>")
    ids, pixels = _prompt(bundle.tokenizer, k)
    with torch.no_grad():
        got = bundle.model(input_ids=ids, pixel_values=pixels).logits
    ref = ChatModel(rel["sd"], rel["vocab"], ctx, tied=True).logits(ids, pixels)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_pretrain_and_generate_start_from_the_converted_folder(converted, tmp_path, capsys):
    root, rel, out, k = converted
    from handvla.vla.loading import load_initial_vla
    from handvla.vla.pretrain import ModelConfig

    source = ModelConfig(init_checkpoint=str(out), preset=None)
    bundle = load_initial_vla(source, [], tmp_path, True, lambda: None, need_motion_tokenizer=True)
    assert bundle.motion_tokenizer is not None and bundle.model.config.motion_token_offset is not None
    # one optimiser step from the converted weights: the answer-only loss is finite and moves
    model = bundle.model.train()
    ids, pixels = _prompt(bundle.tokenizer, k)
    labels = ids.clone()
    labels[:, : ids.shape[1] - 4] = -100
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    loss0 = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
    loss0.backward()
    opt.step()
    loss1 = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
    assert torch.isfinite(loss0) and float(loss1.detach()) < float(loss0.detach())
    # handvla generate runs the converted checkpoint (MANO from a fake MANO folder)
    mano = tmp_path / "mano"
    for seed, side in enumerate(("left", "right")):
        write_fake_mano_pickle(mano / f"MANO_{side.upper()}.pkl", side, seed)
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(tmp_path / "frame.png")
    rc = main(["generate", "--ckpt", str(out), "--image", str(tmp_path / "frame.png"), "--instruction",
               "pick up the red cube", "--hands", "right", "--seconds", "1", "--out", str(tmp_path / "gen"),
               "--no-video", "--mano-dir", str(mano)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    with np.load(tmp_path / "gen.npz") as d:
        assert d["right.motion_ids"].shape == (1, bundle.motion_tokenizer.layout.tokens_per_block)


def _pretrain_from(init: Path, tmp_path: Path, capsys, run: str = "pre", **model) -> int:
    """``handvla pretrain`` for 2 steps from the checkpoint ``init`` on two small HandWorld episodes (made
    once per test folder), output ``tmp_path / run``; ``model``: more fields of the model section. Returns
    the exit status with the captured output cleared before the run."""
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    if not (tmp_path / "hw").is_dir():
        generate_episodes(2, tmp_path / "hw", seed=3, progress=False,
                          config=HandWorldConfig(width=64, height=48, seconds=2.0, shadows=False))  # fmt: skip
    pre = {"data": {"stores": [str(tmp_path / "hw")], "seconds": [1], "align": False},
           "model": {"preset": None, "init_checkpoint": str(init), **model},
           "train": {"output_dir": str(tmp_path / run), "max_steps": 2, "batch_size": 2, "lr": 1e-4,
                     "warmup_steps": 0, "log_every": 1, "save_every": 100}}  # fmt: skip
    (tmp_path / f"{run}.yaml").write_text(json.dumps(pre))
    capsys.readouterr()
    return main(["pretrain", "--config", str(tmp_path / f"{run}.yaml"), "--quiet"])


def test_pretrain_and_posttrain_commands_run_from_a_converted_folder(tmp_path, capsys):
    """``model.init_checkpoint: DIR`` of ``handvla pretrain`` (on HandWorld episodes) and ``handvla posttrain``
    (on a robot dataset), two optimiser steps each, from a converted release. The motion tokenizer here is
    a tiny handvla one with the built-in hand model: pretraining data through Being-H0's tokenizer needs the
    MANO files, which the test cannot ship."""
    from test_posttrain import base_config, write_dataset

    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer

    torch.manual_seed(0)
    mt = MotionTokenizer(TokenizerConfig(**PRESETS["tiny"]))
    mt.save_pretrained(tmp_path / "mt")
    write_release_vla(tmp_path / "release", mt.layout.vocab_size, seed=2)
    conv = tmp_path / "converted"
    assert main(["convert", "being-h0", "--src", str(tmp_path / "release"), "--tokenizer", str(tmp_path / "mt"),
                 "--out", str(conv), "--quiet"]) == 0  # fmt: skip
    assert _pretrain_from(conv, tmp_path, capsys) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"]["steps_done"] == 2 and np.isfinite(summary["train"]["loss"])
    trained = load_vla(tmp_path / "pre" / "final")
    start = load_vla(conv)
    w = "model.language_model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(trained.model.state_dict()[w], start.model.state_dict()[w])  # trained on from it
    ds = write_dataset(tmp_path / "robot", image_hw=None, episodes=2, T=12)
    post = base_config(ds, tmp_path / "post", model__init_checkpoint=str(conv), model__preset=None,
                       train__max_steps=2, data__chunk_size=3)  # fmt: skip
    (tmp_path / "post.yaml").write_text(json.dumps(post))
    assert main(["posttrain", "--config", str(tmp_path / "post.yaml"), "--quiet"]) == 0
    assert (tmp_path / "post" / "final" / "motion_tokenizer").is_dir()


# ---- bad input: one line naming the file and the field -----------------------------------------------------


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _shard_with(src: Path, key: str) -> Path:
    wm = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    return src / wm[key]


def _rewrite(src: Path, edit) -> None:
    """Apply ``edit(state dict)`` to every shard and rewrite the index to match."""
    index_path = src / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    wm = {}
    for name in sorted(set(index["weight_map"].values())):
        sd = load_file(str(src / name))
        edit(sd)
        save_file(sd, str(src / name))
        wm |= {k: name for k in sd}
    index["weight_map"] = wm
    index_path.write_text(json.dumps(index))


def _break_wrong_key(src, k):
    key = "vision_model.encoder.layers.1.ls1"
    path = _shard_with(src, key)
    _rewrite(
        src, lambda sd: sd.update({"vision_model.encoder.layers.1.ls_1": sd.pop(key)}) if key in sd else None
    )
    return path, ["vision_model.encoder.layers.1.ls_1"]


def _break_missing_key(src, k):
    _rewrite(src, lambda sd: sd.pop("mlp1.1.bias", None))
    return src / "model.safetensors.index.json", ["mlp1.1.bias", "missing"]


def _break_shape(src, k):
    key = "language_model.model.layers.0.mlp.up_proj.weight"
    path = _shard_with(src, key)
    _rewrite(src, lambda sd: sd.update({key: sd[key][:-1]}) if key in sd else None)
    return path, [key, "shape"]


def _break_missing_shard(src, k):
    (src / "model-00002-of-00002.safetensors").unlink()
    return src / "model.safetensors.index.json", ["weight_map.", "model-00002-of-00002.safetensors"]


def _break_missing_tokenizer(src, k):
    for f in src.glob("*token*"):
        f.unlink()
    return src, ["tokenizer"]


def _break_motion_range(src, k):
    for f in src.glob("*token*"):
        f.unlink()
    release_tokenizer(k - 4).save_pretrained(str(src))  # 4 motion ids short of the motion tokenizer's count
    return src / "tokenizer.json", ["<motion_id_*>", str(k)]


def _break_config_field(src, k):
    cfg = json.loads((src / "config.json").read_text())
    del cfg["vision_config"]["qkv_bias"]
    (src / "config.json").write_text(json.dumps(cfg))
    return src / "config.json", ["vision_config.qkv_bias"]


def _break_pickle_code(src, k):
    for f in list(src.glob("model*")):
        f.unlink()
    torch.save({"language_model.model.norm.weight": torch.ones(LD), "hook": _RunsCode(src / "pwned")},
               src / "pytorch_model.bin")  # fmt: skip
    return src / "pytorch_model.bin", ["state_dict", "os.makedirs"]


BREAKERS = [_break_wrong_key, _break_missing_key, _break_shape, _break_missing_shard, _break_missing_tokenizer,
            _break_motion_range, _break_config_field, _break_pickle_code]  # fmt: skip


@pytest.mark.parametrize("breaker", BREAKERS)
def test_bad_release_checkpoints_are_one_line_errors(breaker, converted, tmp_path, capsys):
    root, rel, out, k = converted
    src = tmp_path / "release"
    shutil.copytree(root / "release", src)
    named, fields = breaker(src, k)
    rc = main(["convert", "being-h0", "--src", str(src), "--tokenizer", str(root / "motion_tok"),
               "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert str(named) in err[0] and all(f in err[0] for f in fields), err[0]
    assert not (tmp_path / "o").exists() and not (src / "pwned").exists()


def test_weights_only_pickles_convert(converted, tmp_path):
    """A torch pickle of plain tensors (``pytorch_model.bin``) is read with weights_only=True."""
    root, rel, out, k = converted
    src = tmp_path / "release"
    shutil.copytree(root / "release", src)
    for f in list(src.glob("model*")):
        f.unlink()
    torch.save(rel["sd"], src / "pytorch_model.bin")
    assert main(["convert", "being-h0", "--src", str(src), "--tokenizer", str(root / "motion_tok"),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0  # fmt: skip
    a, b = load_vla(tmp_path / "o").model.state_dict(), load_vla(out).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_the_releases_adapter_names_read_as_the_chat_models(converted, tmp_path):
    """Weights saved from the release's modular model (``vlm_adapter._vision_model.`` ..., DeepSpeed's
    ``module.``) convert to the same checkpoint; its motion-model tensors are skipped."""
    root, rel, out, k = converted
    src = tmp_path / "release"
    shutil.copytree(root / "release", src)

    def rename(sd):
        for key in list(sd):
            for old, new in (("vision_model.", "vlm_adapter._vision_model."), ("mlp1.", "module.vlm_adapter.mlp1."),
                             ("language_model.", "vlm_adapter._language_model.")):  # fmt: skip
                if key.startswith(old):
                    sd[new + key[len(old) :]] = sd.pop(key)
        if "vlm_adapter._vision_model.embeddings.class_embedding" in sd:  # in one shard only
            sd["motion_adapter.vq_model.wrist.model.encoder.model.0.weight"] = torch.zeros(4, 3, 3)

    _rewrite(src, rename)
    assert main(["convert", "being-h0", "--src", str(src), "--tokenizer", str(root / "motion_tok"),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0  # fmt: skip
    a, b = load_vla(tmp_path / "o").model.state_dict(), load_vla(out).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize(
    "name, llm",
    [
        ("1B", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2)),
        ("8B", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4)),
        ("14B", dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                     num_key_value_heads=8)),
    ],
)  # fmt: skip
def test_released_shapes_come_from_the_config(name, llm, tmp_path):
    """The 1B / 8B / 14B chat-model configs (InternViT-300M + Qwen2.5-0.5B / 7B / 14B) give the model whose
    tensors the conversion expects, built on the meta device: its parameter count equals the closed-form
    count of ``estimate_num_parameters``, and the fused qkv rows are three times the ViT width."""
    from handvla.tokenizer.layout import token_layout
    from handvla.vla.being_h0 import expected_tensors, handvla_config, map_tensor
    from handvla.vla.configuration import estimate_num_parameters
    from handvla.vla.text_tokenizer import add_motion_tokens

    layout = token_layout(BeingH0TokenizerConfig())
    tok = release_tokenizer(layout.vocab_size)
    vocab = add_motion_tokens(tok, layout)
    raw = chat_config(151674 + layout.vocab_size + 3)
    raw["force_image_size"] = 448
    raw["vision_config"] |= dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                 num_attention_heads=16, image_size=448)  # fmt: skip
    raw["llm_config"] |= llm
    cfg = handvla_config(raw, tmp_path / "config.json", vocab, 15)
    assert cfg.text_config.hidden_size == llm["hidden_size"] and cfg.tokens_per_tile == 256
    assert cfg.system_prompt.startswith("You are Being-H0") and cfg.motion_token_offset == vocab.motion_offset
    exp = expected_tensors(cfg)
    n = sum(int(np.prod(s)) for s, _opt in exp.values())
    assert n == estimate_num_parameters(cfg)["total"], name
    qkv = torch.empty(3 * 1024, 1024, device="meta")
    pairs = map_tensor("vision_model.encoder.layers.23.attn.qkv.weight", qkv)
    assert [(k, tuple(t.shape)) for k, t in pairs] == [
        (f"model.vision_tower.encoder.layer.23.attention.{p}_proj.weight", exp[f"model.vision_tower.encoder.layer.23.attention.{p}_proj.weight"][0])
        for p in "qkv"
    ]  # fmt: skip


def test_pretrain_encodes_data_with_the_releases_tokenizer_given_mano(converted, tmp_path, capsys):
    """``model.mano_dir``: pretraining data goes through the converted release's own GRVQ tokenizer, whose
    D162 features need MANO's joints (a fake MANO folder here); without it, a one-line error."""
    root, rel, out, k = converted
    mano = tmp_path / "mano"
    for seed, side in enumerate(("left", "right")):
        write_fake_mano_pickle(mano / f"MANO_{side.upper()}.pkl", side, seed)
    assert _pretrain_from(out, tmp_path, capsys, mano_dir=str(mano)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"]["steps_done"] == 2 and np.isfinite(summary["train"]["loss"])
    from handvla.tokenizer.being_h0 import BEING_H0_MODEL_TYPE

    assert load_vla(tmp_path / "pre" / "final").motion_tokenizer.config.model_type == BEING_H0_MODEL_TYPE
    # without the MANO folder: one line saying what is missing, before any training step
    assert _pretrain_from(out, tmp_path, capsys, run="pre2") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("handvla")]
    assert len(err) == 1 and "model.mano_dir" in err[0], err
