"""Conversion time and peak memory of ``handvla convert being-h0`` for the Being-H0-1B shape.

    python benchmarks/convert_being_h0.py [--out /tmp/handvla_bh0_bench] [--shards 2] [--scale 1.0] [--verify]

Builds, at random init and shard by shard (never the whole model in memory), a checkpoint in the release's
layout with Being-H0-1B's shapes: InternViT-300M-448px (24 layers, width 1024, fused ``attn.qkv``,
``ls1`` / ``ls2``) + ``mlp1`` + Qwen2.5-0.5B (24 layers, width 896, 14 heads / 2 KV heads, untied head) with
151674 + 8195 vocabulary rows (Qwen2.5 + InternVL tokens + Being-H0's motion vocabulary), bf16, in
``--shards`` safetensors files + index; its config.json in the chat-model format; a small Qwen-style text
tokenizer carrying InternVL's tokens and the 8192 motion tokens at contiguous ids (the real tokenizer's
151k BPE merges change nothing in the conversion); and a random GRVQ-8K motion tokenizer (preset
``being-h0-grvq-8k``). ``--scale`` < 1 shrinks every width and the vocabulary for a quick run.

The conversion then runs in a fresh child process; its peak resident memory (``VmHWM`` of the child) is
compared with a child that only imports the same modules and loads the motion tokenizer (the baseline),
the checkpoint size and the largest shard. ``--verify`` also loads the result with ``load_vla`` in another
child and runs one forward pass. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handvla.tokenizer.being_h0 import BeingH0Tokenizer, BeingH0TokenizerConfig  # noqa: E402

QWEN_ROWS = 151674  # Qwen2.5's 151665 tokens + InternVL's 9


def shapes(scale: float) -> tuple[dict, dict]:
    s = lambda x, m=64: max(m, int(round(x * scale / m)) * m)  # noqa: E731
    vision = dict(hidden_size=s(1024), intermediate_size=s(4096), num_hidden_layers=24, num_attention_heads=16,
                  image_size=448, patch_size=14)  # fmt: skip
    llm = dict(hidden_size=s(896), intermediate_size=s(4864), num_hidden_layers=24, num_attention_heads=14,
               num_key_value_heads=2)  # fmt: skip
    if scale < 1:
        vision["num_attention_heads"] = max(1, vision["hidden_size"] // 64)
        llm["num_attention_heads"] = max(2, llm["hidden_size"] // 64)
    return vision, llm


def tensor_specs(vision: dict, llm: dict, rows: int, ratio: float = 0.5) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of the chat model, in the release's names."""
    D, VI, P = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    n = (vision["image_size"] // P) ** 2 + 1
    out = [("vision_model.embeddings.class_embedding", (1, 1, D)),
           ("vision_model.embeddings.patch_embedding.weight", (D, 3, P, P)),
           ("vision_model.embeddings.patch_embedding.bias", (D,)),
           ("vision_model.embeddings.position_embedding", (1, n, D))]  # fmt: skip
    for i in range(vision["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        out += [(p + "norm1.weight", (D,)), (p + "norm1.bias", (D,)), (p + "norm2.weight", (D,)),
                (p + "norm2.bias", (D,)), (p + "ls1", (D,)), (p + "ls2", (D,)),
                (p + "attn.qkv.weight", (3 * D, D)), (p + "attn.qkv.bias", (3 * D,)),
                (p + "attn.proj.weight", (D, D)), (p + "attn.proj.bias", (D,)),
                (p + "mlp.fc1.weight", (VI, D)), (p + "mlp.fc1.bias", (VI,)),
                (p + "mlp.fc2.weight", (D, VI)), (p + "mlp.fc2.bias", (D,))]  # fmt: skip
    c, H = D * int(1 / ratio) ** 2, llm["hidden_size"]
    out += [("mlp1.0.weight", (c,)), ("mlp1.0.bias", (c,)), ("mlp1.1.weight", (H, c)), ("mlp1.1.bias", (H,)),
            ("mlp1.3.weight", (H, H)), ("mlp1.3.bias", (H,))]  # fmt: skip
    hd = H // llm["num_attention_heads"]
    kv, LI = llm["num_key_value_heads"] * hd, llm["intermediate_size"]
    out.append(("language_model.model.embed_tokens.weight", (rows, H)))
    for i in range(llm["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (H, H)), (p + "self_attn.q_proj.bias", (H,)),
                (p + "self_attn.k_proj.weight", (kv, H)), (p + "self_attn.k_proj.bias", (kv,)),
                (p + "self_attn.v_proj.weight", (kv, H)), (p + "self_attn.v_proj.bias", (kv,)),
                (p + "self_attn.o_proj.weight", (H, H)), (p + "mlp.gate_proj.weight", (LI, H)),
                (p + "mlp.up_proj.weight", (LI, H)), (p + "mlp.down_proj.weight", (H, LI)),
                (p + "input_layernorm.weight", (H,)), (p + "post_attention_layernorm.weight", (H,))]  # fmt: skip
    out += [("language_model.model.norm.weight", (H,)), ("language_model.lm_head.weight", (rows, H))]
    return out


def text_tokenizer(num_motion: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["In the image, pick up the red cube, what is the 15-step motion sequence for the right hand?"],
        trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )  # fmt: skip
    internvl = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in internvl])
    motion = ["<mot>", *(f"<motion_id_{i}>" for i in range(num_motion)), "<MOT_NOOP>", "</mot>"]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in motion])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def build_release(root: Path, scale: float, shards: int) -> dict:
    """The release-layout checkpoint in ``root``, written shard by shard; returns sizes."""
    root.mkdir(parents=True)
    mt = BeingH0Tokenizer(BeingH0TokenizerConfig())
    mt.save_pretrained(root / "motion_tokenizer")
    k = mt.layout.vocab_size
    vision, llm = shapes(scale)
    rows = QWEN_ROWS + k + 3 if scale >= 1 else max(2048, int(QWEN_ROWS * scale)) + k + 3
    specs = tensor_specs(vision, llm, rows)
    nbytes = [2 * int(torch.Size(s).numel()) for _, s in specs]
    per = sum(nbytes) / shards
    groups: list[list[int]] = [[]]
    acc = 0
    for i, b in enumerate(nbytes):
        if acc >= per * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(i)
        acc += b
    weight_map, sizes = {}, []
    g = torch.Generator().manual_seed(0)
    model_dir = root / "release"
    model_dir.mkdir()
    for n, idx in enumerate(groups):
        name = f"model-{n + 1:05d}-of-{len(groups):05d}.safetensors"
        sd = {specs[i][0]: (0.02 * torch.randn(specs[i][1], generator=g)).to(torch.bfloat16) for i in idx}
        save_file(sd, str(model_dir / name), metadata={"format": "pt"})
        weight_map |= {k_: name for k_ in sd}
        sizes.append((model_dir / name).stat().st_size)
        del sd
    (model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": sum(nbytes)}, "weight_map": weight_map})
    )
    config = {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "downsample_ratio": 0.5,
        "dynamic_image_size": True, "force_image_size": 448, "max_dynamic_patch": 12, "min_dynamic_patch": 1,
        "ps_version": "v2", "select_layer": -1, "template": "being_h0", "use_thumbnail": True,
        "vision_config": {**vision, "model_type": "intern_vit_6b", "num_channels": 3, "qkv_bias": True,
                          "qk_normalization": False, "norm_type": "layer_norm", "layer_norm_eps": 1e-6,
                          "hidden_act": "gelu", "dropout": 0.0, "attention_dropout": 0.0},
        "llm_config": {**llm, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": rows,
                       "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                       "rope_theta": 1000000.0, "rope_scaling": {"factor": 2.0, "rope_type": "dynamic"},
                       "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 151643,
                       "eos_token_id": 151645},
    }  # fmt: skip
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    text_tokenizer(k).save_pretrained(str(model_dir))
    params = sum(n_ // 2 for n_ in nbytes)
    return {"params": params, "checkpoint_mb": sum(sizes) / 2**20, "largest_shard_mb": max(sizes) / 2**20,
            "shards": len(groups), "vocab_rows": rows, "vision": vision, "llm": llm}  # fmt: skip


def child(code: str) -> tuple[dict, float]:
    """Run ``code`` in a fresh interpreter; it leaves its result in the dict ``res``. Returns that and the
    child's own peak resident memory in MB: ``VmHWM`` of /proc/self/status, the high-water mark of the
    address space exec gave it (``ru_maxrss`` would also count the parent's pages at fork)."""
    tail = (
        "; import json, re; res['_rss_mb'] = int(re.search(r'VmHWM:\\s+(\\d+)', "
        "open('/proc/self/status').read()).group(1)) / 1024; "
    )
    r = subprocess.run([sys.executable, "-c", code + tail + "print(json.dumps(res))"], capture_output=True,
                       text=True, cwd=ROOT)  # fmt: skip
    if r.returncode:
        raise SystemExit(f"child failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    return res, res.pop("_rss_mb")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/handvla_bh0_bench")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="width/vocabulary scale (1 = the 1B shape)")
    ap.add_argument("--max-shard-mb", type=float, default=512, help="the conversion's output shard size")
    ap.add_argument("--verify", action="store_true", help="also load the result and run one forward pass")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    info = build_release(out, args.scale, args.shards)
    build_s = time.perf_counter() - t0
    del_mt = str(out / "motion_tokenizer")
    base, base_rss = child(
        "import json, time; from handvla.vla.being_h0 import read_motion_tokenizer; "
        f"read_motion_tokenizer({del_mt!r}); res = {{}}"
    )
    conv, conv_rss = child(
        "import json, time; from handvla.vla.being_h0 import convert_being_h0; t = time.perf_counter(); "
        f"r = convert_being_h0({str(out / 'release')!r}, {del_mt!r}, {str(out / 'converted')!r}, "
        f"max_shard_bytes={int(args.max_shard_mb * 2**20)}); "
        "res = dict(r, wall_s=time.perf_counter() - t)"
    )
    result = {
        "shape": "Being-H0-1B (InternViT-300M + Qwen2.5-0.5B)"
        if args.scale >= 1
        else f"scaled x{args.scale}",
        **info,
        "build_random_release_s": build_s,
        "convert_s": conv["wall_s"],
        "convert_tensors": conv["tensors"],
        "converted_shards": conv["shards"],
        "max_shard_mb": args.max_shard_mb,
        "peak_rss_convert_mb": conv_rss,
        "peak_rss_baseline_mb": base_rss,
        "peak_rss_over_baseline_mb": conv_rss - base_rss,
        "converted_mb": sum(f.stat().st_size for f in (out / "converted").glob("*.safetensors")) / 2**20,
        "torch_threads": torch.get_num_threads(),
    }
    if args.verify:
        code = (
            "import json, time, torch; from handvla.vla.modeling import load_vla; t = time.perf_counter(); "
            f"b = load_vla({str(out / 'converted')!r}); load_s = time.perf_counter() - t; "
            "c = b.model.config; n = c.tokens_per_tile; ids = torch.tensor([[c.img_start_token_id] + "
            "[c.image_token_id] * n + [c.img_end_token_id, c.motion_token_offset, c.mot_end_token_id]]); "
            "px = torch.randn(1, 3, c.tile_size, c.tile_size, dtype=b.model.dtype); t = time.perf_counter(); "
            "lg = b.model(input_ids=ids, pixel_values=px).logits; "
            "res = {'load_s': load_s, 'forward_s': time.perf_counter() - t, 'dtype': str(b.model.dtype), "
            "'logits_finite': bool(torch.isfinite(lg).all())}"
        )
        ver, ver_rss = child(code)
        result |= {"verify": ver, "peak_rss_load_mb": ver_rss}
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
