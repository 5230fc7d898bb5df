"""VLA pretraining on a few small HandWorld episodes with tiny models: samples of the three task types match
an independent encoding (tokenizer.encode_motion on the window, warp_to_canonical on the frame), packing
gives the same loss as separate samples, a short run learns, a killed-and-resumed run replays the
uninterrupted loss curve exactly, the instruction manifest is read, and bad configs fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import calibrated_tokenizer

from handvla.camera import warp_to_canonical
from handvla.errors import ConfigError, InputError
from handvla.vla.data import (
    VLADataConfig,
    VLAInstructionDataset,
    collect_samples,
    prepare_image,
    sample_texts,
    tokenizer_fingerprint,
)
from handvla.vla.processing import IGNORE_INDEX, hands_for_mode


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    root = tmp_path_factory.mktemp("vla_pretrain")
    store = root / "hw"
    cfg = HandWorldConfig(width=64, height=48, seconds=3.0, shadows=False)
    generate_episodes(4, store, seed=3, config=cfg, progress=False)
    mt = calibrated_tokenizer(store)
    mt.save_pretrained(root / "mt")
    return root, store, mt


def _bundle(mt, specs):
    from handvla.vla import build_vla
    from handvla.vla.text_tokenizer import DEFAULT_CORPUS, build_text_tokenizer

    tok = build_text_tokenizer(list(DEFAULT_CORPUS) + sample_texts(specs), vocab_size=400)
    return build_vla("tiny", tokenizer=tok, motion_tokenizer=mt, seed=0)


def test_samples_match_an_independent_encoding(world):
    root, store, mt = world
    from handvla.data.store import EpisodeStore

    cfg = VLADataConfig(stores=[str(store)], seconds=[1, 2], history_seconds=[1])
    specs, dirs, report = collect_samples(cfg, "all")
    assert report["task_types"]["generation"] > 0 and report["task_types"]["prediction"] > 0
    bundle = _bundle(mt, specs)
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, mt, align=True)
    assert ds.report["absent_hand"] + len(ds) == len(specs)
    st = EpisodeStore(store)
    vocab = bundle.processor.vocab
    checked = set()
    for i, s in enumerate(ds.specs):
        if s.task_type in checked and i % 7:
            continue
        checked.add(s.task_type)
        enc = ds.encode(i)
        assert len(enc.input_ids) == ds.lengths[i]  # lengths computed without images are exact
        # motion blocks of the target span: the tokenizer on the window's own motion (a second code path)
        ep = st.load_episode(s.episode, s.start_s, s.end_s, with_video=False)
        want = np.stack([mt.encode_motion(ep.hands[h]).ids for h in hands_for_mode(s.hand_mode)], 1)
        ids = enc.input_ids.numpy()
        blocks = ids[
            np.flatnonzero(ids == vocab.mot_start_id)[:, None] + 1 + np.arange(vocab.layout.tokens_per_block)
        ]
        got = blocks - vocab.motion_offset  # every <mot> block of the sequence, in order
        target = got[-want.shape[0] * want.shape[1] :] if s.task_type != "translation" else got
        # same ids up to ties between duplicate k-means centres (batch-size rounding picks either), so
        # compare what the ids mean: the decoded features
        got_ids = torch.as_tensor(target.reshape(want.shape).reshape(-1, want.shape[-1]))
        want_ids = torch.as_tensor(want.reshape(-1, want.shape[-1]))
        torch.testing.assert_close(mt.decode(got_ids), mt.decode(want_ids), atol=1e-5, rtol=0)
        assert (got_ids == want_ids).float().mean() > 0.8
        # labels: exactly the answer (motion for generation/prediction, text for translation) + <|im_end|>
        lab = enc.labels.numpy()
        scored = ids[lab != IGNORE_INDEX]
        assert scored[-1] == vocab.eos_id
        n_motion = int(
            (
                (scored >= vocab.motion_offset) & (scored < vocab.motion_offset + vocab.layout.vocab_size)
            ).sum()
        )
        assert n_motion == (0 if s.task_type == "translation" else want.size)
        # the image: the frame at image_s warped to the canonical camera
        f = round(s.image_s * st.fps)
        frame = st.load_episode(s.episode, f / st.fps, (f + 1) / st.fps).video[0]
        ref = warp_to_canonical(frame, ep.camera.K, out_size=ds.image_size)
        np.testing.assert_array_equal(np.asarray(ds.image(s)), np.asarray(ref))
        np.testing.assert_allclose(enc.pixel_values, bundle.processor.tile_image(ref))
    assert checked == {"generation", "translation", "prediction"}
    # without alignment: the same frame, only resized
    plain = prepare_image(frame, ep.camera.K, False, ds.image_size)
    assert plain.size == ds.image_size and not np.array_equal(np.asarray(plain), np.asarray(ref))


def test_lengths_are_exact_with_the_image_after_the_text(world):
    """``image_position="after_text"`` rewrites the prompt; the lengths computed without images follow it."""
    root, store, mt = world
    cfg = VLADataConfig(stores=[str(store)], seconds=[1], history_seconds=[1])
    specs, dirs, _ = collect_samples(cfg, "all")
    bundle = _bundle(mt, specs)
    bundle.model.config.image_position = "after_text"
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, mt, align=True)
    seen = set()
    for i, s in enumerate(ds.specs):
        if s.task_type in seen:
            continue
        seen.add(s.task_type)
        ids = ds.encode(i).input_ids.tolist()
        assert len(ids) == ds.lengths[i]
        v = bundle.processor.vocab
        assert ids[ids.index(v.img_end_id) + 1] == v.eos_id  # the image ends the user turn
    assert {"generation", "translation", "prediction"} <= seen


def test_packing_gives_the_loss_of_separate_samples(world):
    root, store, mt = world
    cfg = VLADataConfig(stores=[str(store)], seconds=[1], task_mix={"generation": 1.0, "translation": 1.0})
    specs, dirs, _ = collect_samples(cfg, "all")
    bundle = _bundle(mt, specs)
    packed = VLAInstructionDataset(specs, dirs, bundle.processor, mt, max_length=700, pack=True, seed=1)
    plain = VLAInstructionDataset(specs, dirs, bundle.processor, mt)
    assert len(packed) < len(plain) and all(sum(packed.lengths[j] for j in p) <= 700 for p in packed.packs)
    assert sorted(j for p in packed.packs for j in p) == list(range(len(plain)))
    model = bundle.model.eval()
    with torch.no_grad():
        batch = packed.collate([packed[0], packed[1]])
        assert "attention_mask" not in batch
        got = model(**batch, use_cache=False).loss
        tot = n = 0.0
        for j in packed.packs[0] + packed.packs[1]:
            b = plain.collate([plain[j]])
            k = float((b["labels"][:, 1:] != IGNORE_INDEX).sum())
            tot += float(model(**b).loss) * k
            n += k
    assert abs(float(got) - tot / n) < 1e-4


def _pretrain_cfg(root, store, name, extra=(), **train):
    from handvla.vla.pretrain import load_pretrain_config

    t = dict(max_steps=12, batch_size=3, lr=3e-3, warmup_steps=2, log_every=1, save_every=4,
             tensorboard=False, progress=False, eval_every=6, seed=5)  # fmt: skip
    t.update(train)
    sets = [f"train.{k}={v}" for k, v in t.items()] + [
        f"data.stores=[{store}]",
        "data.seconds=[1, 2]",
        "data.val_fraction=0.3",
        "data.seed=2",
        f"model.motion_tokenizer={root / 'mt'}",
        "model.text_vocab_size=400",
        "model.loss_quantiles=[0.05, 0.98]",
        "model.quantile_start_step=6",
        f"train.output_dir={root / name}",
        "eval.val_samples=4",
        *extra,
    ]
    return load_pretrain_config(None, sets)


def _losses(run: Path) -> list[float]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


def test_pretrain_learns_and_resumes_exactly(world, monkeypatch):
    root, store, mt = world
    import handvla.vla.pretrain as P
    from handvla.vla.modeling import load_vla

    full = P.run_pretrain(_pretrain_cfg(root, store, "full"), progress=False)
    a = _losses(root / "full")
    assert len(a) == 12 and full["train"]["step"] == 12
    assert np.mean(a[-3:]) < 0.85 * np.mean(a[:3])  # it learns
    assert full["final_val"]["val_loss"] < a[0]
    bundle = load_vla(full["final"])  # the exported VLA carries its motion tokenizer
    assert bundle.motion_tokenizer is not None and bundle.model.config.image_alignment == "canonical"
    assert bundle.model.config.place_view == "model"  # the view motion-from-places prompts state boxes in
    assert tokenizer_fingerprint(bundle.motion_tokenizer) == tokenizer_fingerprint(mt)

    calls = {"n": 0}
    real = P.vla_loss

    def dying(model, batch, quantiles=None):  # the process dies in step 7, after the step-4 checkpoint
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("killed")
        return real(model, batch, quantiles)

    monkeypatch.setattr(P, "vla_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        P.run_pretrain(_pretrain_cfg(root, store, "cut"), progress=False)
    monkeypatch.setattr(P, "vla_loss", real)
    assert (root / "cut" / "checkpoints" / "latest").read_text() == "step-00000004"
    torch.manual_seed(1234)  # whatever state the new process starts in
    resumed = P.run_pretrain(_pretrain_cfg(root, store, "cut"), resume=True, progress=False)
    assert resumed["train"]["step"] == 12
    assert _losses(root / "cut") == a  # bit-exact: same batches, masking draws and quantile curriculum


def test_pretrain_with_the_instruction_modulation_and_binding_loss(world):
    """``model.vision_film`` + ``model.binding_loss_weight``: the run logs the binding loss (HandWorld
    episodes know their target objects), the exported VLA has both, with the image after the instruction;
    the options are checked before any work."""
    root, store, _ = world
    import handvla.vla.pretrain as P
    from handvla.vla.modeling import load_vla

    film = ["model.vision_film=true", "model.binding_loss_weight=0.5"]
    out = P.run_pretrain(_pretrain_cfg(root, store, "film", film, max_steps=3, eval_every=100), progress=False)
    recs = [json.loads(line) for line in (root / "film" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss/binding"] > 0 for r in recs if "loss" in r] == [True] * 3
    cfg = load_vla(out["final"]).model.config
    assert cfg.vision_film and cfg.binding_loss_weight == 0.5 and cfg.image_position == "after_text"
    with pytest.raises(ConfigError, match="binding_loss_weight"):
        _pretrain_cfg(root, store, "x", ["model.binding_loss_weight=1"])
    with pytest.raises(ConfigError, match="vision_film"):
        _pretrain_cfg(root, store, "x", ["model.vision_film=true", "model.image_position=in_prompt"])
    other = [f"model.init_checkpoint={out['final']}", "model.preset=null", *film[:1], "model.binding_loss_weight=1"]
    with pytest.raises(ConfigError, match="binding_loss_weight"):
        P.run_pretrain(_pretrain_cfg(root, store, "y", other, max_steps=1), progress=False)


def test_pretrain_freezes_named_parameters(world):
    """``model.freeze``: continuing a checkpoint with its vision path fixed changes only the rest; a prefix
    that names no parameter is a config error that lists the model's parts."""
    root, store, _ = world
    import handvla.vla.pretrain as P
    from handvla.vla.modeling import load_vla

    film = ["model.vision_film=true", "model.binding_loss_weight=0.5"]
    start = P.run_pretrain(_pretrain_cfg(root, store, "f0", film, max_steps=1, eval_every=100), progress=False)
    frozen = ["model.vision_tower", "model.multi_modal_projector", "model.instruction_film", "binding_head"]
    cont = [f"model.init_checkpoint={start['final']}", "model.preset=null", *film, f"model.freeze=[{', '.join(frozen)}]"]
    out = P.run_pretrain(_pretrain_cfg(root, store, "f1", cont, max_steps=3, eval_every=100), progress=False)
    a = load_vla(start["final"]).model.state_dict()
    b = load_vla(out["final"]).model.state_dict()
    moved = {k for k in a if not torch.equal(a[k], b[k])}
    assert moved and all(k.startswith(("model.language_model.", "lm_head.")) for k in moved)
    assert any(k.startswith("model.vision_tower.") for k in a) and any(k.startswith("binding_head.") for k in a)
    with pytest.raises(ConfigError, match="model.freeze: 'model.vision'.*model.vision_tower"):
        P.run_pretrain(_pretrain_cfg(root, store, "f2", ["model.freeze=[model.vision]"], max_steps=1), progress=False)


def test_reinit_draws_the_named_parts_afresh(world):
    """``model.reinit``: the named modules' weights are drawn as a new model's (normal with the text config's
    initializer_range, norms 1); everything else keeps the checkpoint's values; a prefix that names nothing
    and a run with nothing to re-initialise are config errors."""
    root, store, mt = world
    import handvla.vla.pretrain as P
    from handvla.vla import build_vla

    model = build_vla("tiny", motion_tokenizer=mt, seed=0).model
    with torch.no_grad():  # a "trained" checkpoint: every weight away from any initialisation
        for p in model.parameters():
            p.add_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parts = ["model.language_model.layers", "model.language_model.norm"]
    n = P.reinitialize_parameters(model, parts, "model.reinit", seed=1)
    after = model.state_dict()
    drawn = [k for k in before if k.startswith(tuple(parts))]
    assert n == len(drawn) > 0
    assert all(torch.equal(before[k], after[k]) for k in before if k not in drawn)
    std = model.config.get_text_config().initializer_range
    lin = torch.cat([after[k].flatten() for k in drawn if k.endswith("proj.weight")])
    assert abs(float(lin.std()) - std) < 0.1 * std and abs(float(lin.mean())) < 0.1 * std
    assert all(torch.all(after[k] == 1) for k in drawn if "norm" in k and k.endswith("weight"))
    assert all(torch.all(after[k] == 0) for k in drawn if k.endswith("bias"))
    with pytest.raises(ConfigError, match="model.reinit: 'model.language'"):
        P.reinitialize_parameters(model, ["model.language"], "model.reinit")
    with pytest.raises(ConfigError, match="init_checkpoint"):
        _pretrain_cfg(root, store, "r", ["model.reinit=[model.language_model.layers]"])


def test_pretrain_command_joins_the_process_group_once(world, tmp_path, monkeypatch, capsys):
    """``handvla pretrain``: the job sets up distributed once and hands it to the trainer; the command
    decides whether to print from that state, without setting it up again."""
    root, store, mt = world
    import handvla.train.trainer as trainer
    import handvla.vla.pretrain as P
    from handvla.cli import main

    calls = []
    real = P.init_distributed

    def counted(device):
        calls.append(device)
        return real(device)

    monkeypatch.setattr(P, "init_distributed", counted)
    monkeypatch.setattr(trainer, "init_distributed", counted)
    cfg = _pretrain_cfg(root, store, "once", max_steps=2, warmup_steps=1, eval_every=100, device="cpu")
    config = tmp_path / "pretrain.json"
    config.write_text(cfg.model_dump_json())
    assert main(["pretrain", "--config", str(config), "--set", "eval.val_samples=0", "--quiet"]) == 0
    assert calls == ["cpu"]
    out = json.loads(capsys.readouterr().out)
    assert out["train"]["step"] == 2 and Path(out["final"]).is_dir()


def test_manifest_samples(world, tmp_path):
    root, store, mt = world
    from handvla.language.instructions import build_instructions

    manifest = tmp_path / "m.jsonl"
    build_instructions([store], manifest, size=24, seed=0, progress=False)
    cfg = VLADataConfig(manifest=str(manifest))
    specs, dirs, report = collect_samples(cfg, "all")
    assert report["samples"] == len(specs) > 0
    bundle = _bundle(mt, specs)
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, mt, align=False)
    kinds = {s.task_type for s in ds.specs}
    assert "generation" in kinds and len(kinds) >= 2
    for i in range(len(ds)):
        enc = ds[i]
        assert len(enc.input_ids) == ds.lengths[i]
    # a broken record names the file, the record and the field
    rec = json.loads(manifest.read_text().splitlines()[0])
    del rec["prompt"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rec) + "\n")
    with pytest.raises(InputError, match="record 1.*prompt"):
        collect_samples(VLADataConfig(manifest=str(bad)), "all")


def test_config_errors(tmp_path):
    from handvla.vla.pretrain import load_pretrain_config

    base = ["data.stores=[x]", f"train.output_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="data.task_mix"):
        load_pretrain_config(None, base + ["data.task_mix={dancing: 1}"])
    with pytest.raises(ConfigError, match="model.nope"):
        load_pretrain_config(None, base + ["model.nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_pretrain_config(None, base + ["train.lr"])
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_pretrain_config(None, base + ["train.max_steps=0"])
    f = tmp_path / "c.yaml"
    f.write_text("data: {stores: [a]}\ntrain: {output_dir: o, lr: 0.5}\n")
    cfg = load_pretrain_config(f, ["train.lr=1e-3", "data.hand_modes=[right]"])
    assert cfg.train.lr == 1e-3 and cfg.data.hand_modes == ["right"] and cfg.data.align


def test_endpoint_targets_and_loss(world):
    """``endpoint_loss_weight``: every motion answer's tokens carry where its wrists end (the last valid frame
    of the answer span, read here from the episode slice itself), text answers carry NaN, padded and packed
    batches line them up with the tokens, and the loss adds to the token loss and trains the head."""
    root, store, mt = world
    from handvla.data.store import EpisodeStore
    from handvla.vla.modeling import endpoint_loss, set_endpoint_loss

    cfg = VLADataConfig(stores=[str(store)], seconds=[1, 2], history_seconds=[1])
    specs, dirs, _ = collect_samples(cfg, "all")
    bundle = _bundle(mt, specs)
    set_endpoint_loss(bundle.model, 1.0, seed=0)
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, mt, align=False)
    st = EpisodeStore(store)
    kinds = set()
    for i, s in enumerate(ds.specs):
        enc = ds.encode(i)
        if s.task_type == "translation":
            assert torch.isnan(enc.answer_endpoint).all()
            continue
        kinds.add(s.task_type)
        ep = st.load_episode(s.episode, s.start_s, s.end_s, with_video=False)
        for j, h in enumerate(("left", "right")):
            got = enc.answer_endpoint[3 * j : 3 * j + 3]
            valid = np.flatnonzero(ep.hands[h].valid)
            if h in hands_for_mode(s.hand_mode) and len(valid):
                np.testing.assert_allclose(got.numpy(), ep.hands[h].wrist_pos[valid[-1]], atol=1e-6)
            else:
                assert torch.isnan(got).all()
    assert kinds == {"generation", "prediction"}
    items = [ds[i] for i in range(4)]
    batch = ds.collate(items)
    assert batch["endpoint_targets"].shape == (*batch["input_ids"].shape, 6)
    for b, enc in enumerate(items):
        n = len(enc.input_ids)
        torch.testing.assert_close(batch["endpoint_targets"][b, :n], enc.answer_endpoint.expand(n, 6), equal_nan=True)
        assert torch.isnan(batch["endpoint_targets"][b, n:]).all()
    packed = VLAInstructionDataset(specs, dirs, bundle.processor, mt, align=False, max_length=900, pack=True)
    pb = packed.collate([packed[0]])
    rows = torch.cat([packed.encode(j).answer_endpoint.expand(len(packed.encode(j).input_ids), 6) for j in packed.packs[0]])
    torch.testing.assert_close(pb["endpoint_targets"][0, : len(rows)], rows, equal_nan=True)

    model = bundle.model.train()
    out = model(**batch, use_cache=False, answer_logits_only=True)
    plain = {k: v for k, v in batch.items() if k != "endpoint_targets"}
    base = model(**plain, use_cache=False, answer_logits_only=True)
    assert getattr(base, "endpoint_loss", None) is None and float(out.endpoint_loss) > 0
    torch.testing.assert_close(out.loss, base.loss + out.endpoint_loss, rtol=1e-5, atol=1e-6)
    # the loss is the head's smooth L1 on the states that predict labelled tokens (a second path)
    h = model.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                    attention_mask=batch["attention_mask"], use_cache=False)[0]  # fmt: skip
    valid = batch["labels"][:, 1:] != IGNORE_INDEX
    want = endpoint_loss(model.endpoint_head(h[:, :-1][valid]), batch["endpoint_targets"][:, 1:][valid])
    torch.testing.assert_close(out.endpoint_loss, want.detach(), rtol=1e-5, atol=1e-6)
    out.loss.backward()
    assert model.endpoint_head.weight.grad.abs().sum() > 0
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(out.endpoint_loss)
    for _ in range(30):
        opt.zero_grad()
        o = model(**batch, use_cache=False, answer_logits_only=True)
        o.loss.backward()
        opt.step()
    assert float(o.endpoint_loss) < 0.5 * first
    set_endpoint_loss(model, 0.0)
    assert not hasattr(model, "endpoint_head") and model.config.endpoint_loss_weight == 0.0


def test_pretrain_with_the_endpoint_loss_continues_a_checkpoint_without_it(world):
    """``model.endpoint_loss_weight``: a checkpoint trained without the head gains one, the loss is logged,
    the saved checkpoint keeps the head, and continuing it with the loss off drops it."""
    root, store, _ = world
    import handvla.vla.pretrain as P
    from handvla.vla.modeling import load_vla

    start = P.run_pretrain(_pretrain_cfg(root, store, "e0", max_steps=1, eval_every=100), progress=False)
    cont = [f"model.init_checkpoint={start['final']}", "model.preset=null", "model.endpoint_loss_weight=2.0"]
    out = P.run_pretrain(_pretrain_cfg(root, store, "e1", cont, max_steps=2, eval_every=100), progress=False)
    recs = [json.loads(line) for line in (root / "e1" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/endpoint" in r for r in recs)
    b = load_vla(out["final"]).model
    assert b.config.endpoint_loss_weight == 2.0 and b.endpoint_head.weight.shape == (6, b.config.text_config.hidden_size)
    off = [f"model.init_checkpoint={out['final']}", "model.preset=null"]
    out2 = P.run_pretrain(_pretrain_cfg(root, store, "e2", off, max_steps=1, eval_every=100), progress=False)
    assert not hasattr(load_vla(out2["final"]).model, "endpoint_head")


def test_pretrain_moves_a_checkpoints_binding_head_into_the_mark(world):
    """``model.binding_mark``: continuing a checkpoint trained with the binding head, the head becomes the
    mark's score (kept fixed here by ``model.freeze``) and only the mark's direction and the rest train."""
    root, store, _ = world
    import handvla.vla.pretrain as P
    from handvla.vla.modeling import load_vla

    film = ["model.vision_film=true", "model.binding_loss_weight=0.5"]
    start = P.run_pretrain(_pretrain_cfg(root, store, "m0", film, max_steps=1, eval_every=100), progress=False)
    frozen = "model.freeze=[model.vision_tower, model.multi_modal_projector, model.instruction_film, model.binding_mark.score]"
    cont = [f"model.init_checkpoint={start['final']}", "model.preset=null", *film, "model.binding_mark=true", frozen]
    out = P.run_pretrain(_pretrain_cfg(root, store, "m1", cont, max_steps=3, eval_every=100), progress=False)
    a = load_vla(start["final"]).model.state_dict()
    b = load_vla(out["final"]).model.state_dict()
    assert "binding_head.weight" in a and "binding_head.weight" not in b
    torch.testing.assert_close(b["model.binding_mark.score.weight"], a["binding_head.weight"])
    assert b["model.binding_mark.direction"].abs().max() > 0  # started at zero, trained
    moved = {k for k in a if k in b and not torch.equal(a[k], b[k])}
    assert moved and all(k.startswith(("model.language_model.", "lm_head.")) for k in moved)


def test_pretrain_adds_a_pool_to_a_checkpoints_mark(world):
    """``model.binding_pool``: continuing a checkpoint with a mark but no pool, the mark gains one (zero at
    the start) that trains while the rest of the mark is kept fixed. The continuation also switches on
    ``model.motion_answer_prefix`` (the checkpoint keeps it; its periodic evaluation scores the prefix)."""
    root, store, _ = world
    import handvla.vla.pretrain as P
    from handvla.vla.modeling import load_vla

    film = ["model.vision_film=true", "model.binding_loss_weight=0.5", "model.binding_mark=true"]
    start = P.run_pretrain(_pretrain_cfg(root, store, "p0", film, max_steps=1, eval_every=100), progress=False)
    frozen = "model.freeze=[model.vision_tower, model.multi_modal_projector, model.instruction_film, model.binding_mark.score]"
    cont = [f"model.init_checkpoint={start['final']}", "model.preset=null", *film, "model.binding_pool=true", frozen,
            "model.motion_answer_prefix=target_boxes", f"eval.handworld={{hw: {store}}}", "eval.final_episodes=2",
            "eval.max_seconds=1"]  # fmt: skip
    out = P.run_pretrain(_pretrain_cfg(root, store, "p1", cont, max_steps=3, eval_every=100), progress=False)
    a = load_vla(start["final"]).model.state_dict()
    loaded = load_vla(out["final"]).model
    b = loaded.state_dict()
    assert "model.binding_mark.pool.weight" not in a and loaded.config.binding_pool
    assert load_vla(start["final"]).model.config.motion_answer_prefix == "none"
    assert loaded.config.motion_answer_prefix == "target_boxes"
    final = out["final_eval"]["hw"]  # the final evaluation generates and scores the stated boxes
    assert final["valid_output_rate"] == 1.0 and "prefix_target_accuracy" in final
    with pytest.raises(Exception, match="motion_answer_prefix"):
        _pretrain_cfg(root, store, "p2", ["model.motion_answer_prefix=boxes"])
    assert b["model.binding_mark.pool.weight"].abs().max() > 0  # started at zero, trained
    torch.testing.assert_close(b["model.binding_mark.score.weight"], a["model.binding_mark.score.weight"])
