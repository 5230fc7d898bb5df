"""Robot post-training with tiny models on small LeRobot v3 datasets written here: the loss goes down, the
exported checkpoint predicts what the trainer's own checkpoint predicts, (un)normalisation uses exactly
the dataset's statistics (checked against numpy on the raw parquet), frozen / LoRA modes train only what
they should, resume replays the uninterrupted run, any state/action size works, bad datasets fail clearly.
One policy config: the posttrain YAML's ``model`` section is the checkpoint's ``PolicyConfig``, checkpoints
written before the merge still load, and a run joins the process group once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from handvla.data.lerobot import vector_feature, video_feature
from handvla.errors import CheckpointError, ConfigError, InputError, MissingResourceError
from handvla.policy import HandVLAPolicy, HandVLAPolicyModel, Normalizer, PolicyConfig, load_policy_config
from handvla.robot.lerobot_format import ActionChunkDataset, RobotDataset, RobotDatasetWriter
from handvla.robot.posttrain import (
    PolicyTrainDataset,
    PosttrainConfig,
    build_normalizer,
    build_policy,
    load_posttrain_config,
    policy_loss,
    run_posttrain,
    validation_error,
)
from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
from handvla.tokenizer.modeling import MotionTokenizer
from handvla.train.trainer import Trainer
from handvla.vla import build_vla, save_vla

CAM = "observation.images.cam"


def write_dataset(root: Path, state_dim=7, action_dim=5, episodes=4, T=24, image_hw=(20, 20), seed=0) -> Path:
    """Smooth state trajectories; action = W state (+ an offset and scale so normalisation matters); the
    camera shows a colour driven by the first state dimension; one action dimension is constant."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(action_dim, state_dim))
    feats = {"observation.state": vector_feature(state_dim), "action": vector_feature(action_dim)}
    if image_hw:
        feats[CAM] = video_feature(*image_hw, 10)
    with RobotDatasetWriter(root, fps=10, features=feats, episodes_per_file=2, robot_type="test") as w:
        for _ in range(episodes):
            t = np.linspace(0, 1, T)[:, None]
            phase, freq = rng.uniform(0, 6, state_dim), rng.uniform(1, 3, state_dim)
            state = np.sin(freq * 3 * t + phase) + rng.uniform(-1, 1, state_dim)
            actions = 3.0 * state @ W.T + 5.0
            actions[:, -1] = 2.5  # a joint that never moves
            frames = {"observation.state": state.astype(np.float32), "action": actions.astype(np.float32)}
            if image_hw:
                level = (127 + 100 * np.tanh(state[:, 0])).astype(np.uint8)
                img = np.zeros((T, *image_hw, 3), np.uint8)
                img[..., 0] = level[:, None, None]
                img[..., 1] = 255 - level[:, None, None]
                frames[CAM] = img
            w.add_episode(frames, task="move the block to the left")
    return root


def raw_column(root: Path, name: str) -> np.ndarray:
    """A per-frame column read straight from the parquet files (independent of the reader)."""
    parts = [pq.read_table(f).to_pydict() for f in sorted((root / "data").glob("chunk-*/file-*.parquet"))]
    rows = sorted((i, v) for p in parts for i, v in zip(p["index"], p[name]))
    return np.asarray([v for _, v in rows], np.float64)


def base_config(ds: Path, out: Path, **over) -> dict:
    cfg = {
        "data": {"dataset": str(ds), "chunk_size": 4},
        "model": {"preset": "tiny"},
        "train": {
            "output_dir": str(out),
            "max_steps": 100,
            "batch_size": 8,
            "lr": 3e-3,
            "warmup_steps": 2,
            "log_every": 1,
            "save_every": 1000,
            "tensorboard": False,
            "progress": False,
            "device": "cpu",
            "weight_decay": 0.0,
        },
        "eval": {"val_samples": 0, "open_loop_samples": 0},
    }
    for key, value in over.items():
        sec, field = key.split("__")
        cfg[sec][field] = value
    return cfg


@pytest.fixture(scope="module")
def image_ds(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pt") / "ds")


@pytest.fixture(scope="module")
def state_ds(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pt_state") / "ds", image_hw=None, episodes=3, T=16)


def _samples(model, ds_root: Path, normalizer, n=24):
    c = model.config
    chunks = ActionChunkDataset(RobotDataset(ds_root), c.chunk_size, c.image_keys, normalizer=normalizer)
    return PolicyTrainDataset(chunks, model.processor)


@pytest.fixture(scope="module")
def trained(image_ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("pt_run") / "run"
    cfg = PosttrainConfig.model_validate(
        base_config(image_ds, out, data__val_episodes=1, eval__val_samples=16)
    )
    summary = run_posttrain(cfg, progress=False)
    return cfg, out, summary


def test_posttrain_reduces_loss_and_exports(trained, image_ds):
    cfg, out, summary = trained
    assert summary["state_dim"] == 7 and summary["action_dim"] == 5 and summary["cameras"] == [CAM]
    assert summary["episodes"] == {"train": 3, "val": 1}
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 100 and np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10]), (
        losses[:10],
        losses[-10:],
    )
    # the same frames before (the run's deterministic initial model) and after training
    norm = Normalizer.load(out / "normalization")
    init = build_policy(cfg, RobotDataset(image_ds), norm, out, True, lambda: None)
    final = HandVLAPolicyModel.from_pretrained(out / "final")
    data = _samples(final, image_ds, norm)
    before = validation_error(init, data, 48, 16)["val_l1"]
    after = validation_error(final, data, 48, 16)["val_l1"]
    assert after < 0.7 * before, (before, after)
    # a self-contained checkpoint
    names = {p.name for p in (out / "final").iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "policy_config.json",
        "policy_head.safetensors",
        "tokenizer.json",
        "normalization.json",
        "normalization.safetensors",
    } <= names


def test_export_predicts_like_trainer_checkpoint(trained, image_ds):
    """Second path: the trainer's own checkpoint loaded into a freshly built model."""
    cfg, out, _ = trained
    norm = Normalizer.load(out / "normalization")
    ref = build_policy(cfg, RobotDataset(image_ds), norm, out, True, lambda: None)
    ckpt = sorted((out / "checkpoints").glob("step-*"))[-1]
    ref.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    ref.eval()
    final = HandVLAPolicyModel.from_pretrained(out / "final")
    data = _samples(final, image_ds, norm)
    batch = data.collate([data[i] for i in (0, 5, 30, 60)])
    with torch.no_grad():
        a, b = ref(**batch).actions, final(**batch).actions
    assert a.shape == (4, 4, 5)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_unnormalisation_uses_exactly_the_dataset_stats(trained, image_ds):
    _, out, _ = trained
    policy = HandVLAPolicy.load(out / "final", device="cpu")
    # numpy reference statistics over every frame of the raw parquet (the run used data.stats = dataset)
    S, A = raw_column(image_ds, "observation.state"), raw_column(image_ds, "action")
    s_mean, s_std, a_mean, a_std = S.mean(0), S.std(0), A.mean(0), A.std(0)
    a_std_safe = np.where(a_std < 1e-6, 1.0, a_std)  # the constant joint is only shifted
    ds = RobotDataset(image_ds)
    obs = {"state": S[10].astype(np.float32), "image": ds.frame(CAM, 10)}
    batch = policy.preprocess(obs)
    np.testing.assert_allclose(batch["state"][0].numpy(), (S[10] - s_mean) / s_std, rtol=1e-5, atol=1e-5)
    norm_pred = policy.predict_normalized(obs)
    raw = policy.infer(obs)
    assert raw.shape == (4, 5) and raw.dtype == np.float32
    np.testing.assert_allclose(raw, norm_pred * a_std_safe + a_mean, rtol=1e-5, atol=1e-4)
    # the constant joint (std 0) is only shifted: no division by ~0 on the way in, none on the way out
    np.testing.assert_allclose(raw[:, -1], norm_pred[:, -1] + 2.5, atol=1e-6)
    meta = policy.metadata()
    assert meta["observation"] == {
        "state": {"shape": [7], "dtype": "float32"},
        "image": {"shape": [20, 20, 3], "dtype": "uint8"},
    }
    assert (
        meta["chunk_size"] == 4 and meta["action_dim"] == 5 and meta["task"] == "move the block to the left"
    )


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_backbone_modes_train_only_what_they_should(mode, state_ds, tmp_path):
    cfg = PosttrainConfig.model_validate(
        base_config(state_ds, tmp_path / "run", model__backbone_mode=mode, train__max_steps=3)
    )
    (tmp_path / "run").mkdir()
    ds = RobotDataset(state_ds)
    norm = build_normalizer(ds, cfg.data, [0, 1, 2])
    model = build_policy(cfg, ds, norm, tmp_path / "run", True, lambda: None)
    trainable = set(model.trainable_parameter_names())
    heads = {"action_queries"} | {n for n in trainable if n.startswith(("proprio.", "action_head."))}
    assert len(heads) == 9
    if mode == "frozen":
        assert trainable == heads
    else:
        lora = trainable - heads
        assert lora and all(".lora_A." in n or ".lora_B." in n for n in lora)
        assert all(n.startswith("backbone.language_model.") for n in lora)
    before_backbone = model.backbone_state_dict()
    before = _params(model)
    data = PolicyTrainDataset(ActionChunkDataset(ds, 4, [], normalizer=norm), model.processor)
    Trainer(model, data, cfg.train, collate_fn=data.collate, loss_fn=policy_loss).train()
    after = _params(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == trainable  # every trainable tensor moved, nothing else did
    merged = model.backbone_state_dict()
    assert set(merged) == set(before_backbone)
    moved = {k for k in merged if not torch.equal(merged[k], before_backbone[k])}
    if mode == "frozen":
        assert moved == set()
    else:  # LoRA changes exactly the adapted linear weights once merged
        targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        assert moved and all(k.endswith(".weight") and k.split(".")[-2] in targets for k in moved)
        assert not any("embed_tokens" in k or "vision_tower" in k for k in moved)


def test_lora_checkpoint_loads_without_adapters(state_ds, tmp_path):
    cfg = PosttrainConfig.model_validate(base_config(state_ds, tmp_path / "run", model__backbone_mode="lora"))
    (tmp_path / "run").mkdir()
    ds = RobotDataset(state_ds)
    model = build_policy(
        cfg, ds, build_normalizer(ds, cfg.data, [0, 1, 2]), tmp_path / "run", True, lambda: None
    )
    with torch.no_grad():  # make the adapters matter (lora_B starts at zero)
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.5)
    model.eval()
    batch = model.processor.collate([model.processor.encode(None, [], torch.randn(7)) for _ in range(2)])
    with torch.no_grad():
        a = model(**batch).actions
    model.save_pretrained(tmp_path / "ckpt")
    loaded = HandVLAPolicyModel.from_pretrained(tmp_path / "ckpt")
    assert not any(".lora_" in n for n, _ in loaded.named_parameters())
    with torch.no_grad():
        b = loaded(**batch).actions
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_resume_replays_the_uninterrupted_run(state_ds, tmp_path):
    def run(out, steps, resume=False, **kw):
        base = base_config(
            state_ds, out, train__max_steps=steps, train__schedule="constant", train__warmup_steps=0, **kw
        )
        return run_posttrain(load_posttrain_config(base=base), resume=resume, progress=False)

    run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    run(tmp_path / "b", 6, resume=True)

    def losses(d):  # the trainer ends metrics.jsonl with an "event": "end" summary record, which has no loss
        recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in recs if "loss" in r]

    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(la) == 6 and la == lb
    wa = load_file(str(tmp_path / "a" / "final" / "policy_head.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final" / "policy_head.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("state_dim, action_dim, chunk", [(3, 2, 1), (11, 17, 6)])
def test_arbitrary_state_and_action_sizes(state_dim, action_dim, chunk, tmp_path):
    root = write_dataset(
        tmp_path / "ds", state_dim=state_dim, action_dim=action_dim, episodes=2, T=8, image_hw=None
    )
    cfg = PosttrainConfig.model_validate(
        base_config(
            root, tmp_path / "run", data__chunk_size=chunk, data__stats="compute", data__action_norm="min_max"
        )
    )
    (tmp_path / "run").mkdir()
    ds = RobotDataset(root)
    model = build_policy(
        cfg, ds, build_normalizer(ds, cfg.data, [0, 1]), tmp_path / "run", True, lambda: None
    )
    assert (model.config.state_dim, model.config.action_dim, model.config.chunk_size) == (
        state_dim,
        action_dim,
        chunk,
    )
    assert model.config.image_keys == []
    policy = HandVLAPolicy(model)
    out = policy.infer({"state": np.zeros(state_dim, np.float32)})
    assert out.shape == (chunk, action_dim) and np.isfinite(out).all()
    assert policy.metadata()["observation"] == {"state": {"shape": [state_dim], "dtype": "float32"}}
    with pytest.raises(InputError, match=f"{state_dim} values"):
        policy.infer({"state": np.zeros(state_dim + 1, np.float32)})


def test_missing_stats_or_video_fail_clearly(image_ds, tmp_path):
    no_stats = tmp_path / "no_stats"
    shutil.copytree(image_ds, no_stats)
    (no_stats / "meta" / "stats.json").unlink()
    cfg = PosttrainConfig.model_validate(base_config(no_stats, tmp_path / "r1"))
    with pytest.raises(MissingResourceError, match=r"stats\.json.*data\.stats=compute"):
        run_posttrain(cfg, progress=False)

    no_video = tmp_path / "no_video"
    shutil.copytree(image_ds, no_video)
    mp4 = sorted((no_video / "videos").rglob("*.mp4"))[0]
    mp4.unlink()
    cfg = PosttrainConfig.model_validate(base_config(no_video, tmp_path / "r2"))
    with pytest.raises(MissingResourceError, match=str(mp4.name)):
        run_posttrain(cfg, progress=False)

    cfg = PosttrainConfig.model_validate(
        base_config(image_ds, tmp_path / "r3", data__image_keys="observation.images.nope")
    )
    with pytest.raises(InputError, match="observation.images.nope"):
        run_posttrain(cfg, progress=False)


def test_checkpoint_errors_name_the_file(trained, tmp_path):
    _, out, _ = trained
    broken = tmp_path / "broken"
    shutil.copytree(out / "final", broken)
    (broken / "normalization.safetensors").unlink()
    with pytest.raises(CheckpointError, match="normalization.safetensors"):
        HandVLAPolicyModel.from_pretrained(broken)
    (broken / "policy_config.json").unlink()
    with pytest.raises(CheckpointError, match="policy_config.json"):
        HandVLAPolicyModel.from_pretrained(broken)
    with pytest.raises(MissingResourceError):
        HandVLAPolicyModel.from_pretrained(tmp_path / "nothing")


def test_init_from_a_motion_pretrained_checkpoint(state_ds, tmp_path):
    """``model.init_checkpoint``: the policy starts from the VLA's weights (only the embedding table grows
    by the policy tokens) and its checkpoint carries the VLA's motion tokenizer."""
    mt = MotionTokenizer(TokenizerConfig(**PRESETS["tiny"]))
    vla = build_vla("tiny", motion_tokenizer=mt, seed=5)
    save_vla(tmp_path / "vla", vla)
    cfg = PosttrainConfig.model_validate(
        base_config(
            state_ds, tmp_path / "run", model__init_checkpoint=str(tmp_path / "vla"), data__chunk_size=3
        )
    )
    (tmp_path / "run").mkdir()
    ds = RobotDataset(state_ds)
    model = build_policy(
        cfg, ds, build_normalizer(ds, cfg.data, [0, 1, 2]), tmp_path / "run", True, lambda: None
    )
    assert model.config.init == {"type": "checkpoint", "path": str(tmp_path / "vla")}
    ref, got = vla.model.model.state_dict(), model.backbone.state_dict()
    assert set(ref) == set(got)
    emb = "language_model.embed_tokens.weight"
    n_vocab = len(vla.tokenizer)
    assert got[emb].shape[0] == n_vocab + 1 + 3  # <PROP_CONTEXT> and three action queries
    torch.testing.assert_close(got[emb][:n_vocab], ref[emb], rtol=0, atol=0)
    assert all(torch.equal(ref[k], got[k]) for k in ref if k != emb)
    model.save_pretrained(tmp_path / "policy")
    loaded = HandVLAPolicyModel.from_pretrained(tmp_path / "policy")
    assert loaded.motion_tokenizer_dir == tmp_path / "policy" / "motion_tokenizer"
    mt2 = MotionTokenizer.from_pretrained(loaded.motion_tokenizer_dir)
    assert mt2.layout == mt.layout
    assert json.loads((tmp_path / "policy" / "config.json").read_text())["has_motion_tokenizer"] is True


def test_policy_on_a_vision_film_backbone(image_ds, tmp_path):
    """A VLA pretrained with ``vision_film`` keeps its instruction modulation as a policy's backbone: the
    policy carries it, saves it and loads it back (the same actions)."""
    vla = build_vla("tiny", seed=5, vision_film=True, image_position="after_text")
    with torch.no_grad():  # an active modulation (a new one starts at zero)
        vla.model.model.instruction_film.out.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    save_vla(tmp_path / "vla", vla)
    cfg = PosttrainConfig.model_validate(
        base_config(image_ds, tmp_path / "run", model__init_checkpoint=str(tmp_path / "vla"))
    )
    (tmp_path / "run").mkdir()
    ds = RobotDataset(image_ds)
    norm = build_normalizer(ds, cfg.data, [0, 1, 2, 3])
    model = build_policy(cfg, ds, norm, tmp_path / "run", True, lambda: None).eval()
    assert model.backbone.instruction_film is not None
    data = _samples(model, image_ds, norm)
    batch = data.collate([data[i] for i in (0, 5, 30)])
    with torch.no_grad():
        ref = model(**batch).actions
    model.save_pretrained(tmp_path / "policy")
    back = HandVLAPolicyModel.from_pretrained(tmp_path / "policy")
    assert back.backbone.instruction_film is not None
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).actions, ref, rtol=0, atol=1e-6)


def test_shipped_relocate_config_loads_both_arms():
    path = Path(__file__).resolve().parents[1] / "configs" / "posttrain_relocate.yaml"
    b = load_posttrain_config(path)
    a = load_posttrain_config(
        path, ["model.init_checkpoint=runs/demo/vla/final", "train.output_dir=runs/relocate_a"]
    )
    assert b.model.preset == "tiny" and b.model.init_checkpoint is None
    assert a.model.init_checkpoint == "runs/demo/vla/final"
    # equal budgets: the two arms differ only in the initialisation and the output folder
    assert (a.train.max_steps, a.train.batch_size, a.train.lr) == (
        b.train.max_steps,
        b.train.batch_size,
        b.train.lr,
    )
    assert a.data == b.data


# the fields of policy_config.json before PolicyConfig and posttrain's model config were merged
PRE_MERGE_KEYS = (
    "format_version state_dim action_dim chunk_size hidden_size proprio_hidden_size head_hidden_size loss "
    "prompt_template default_task image_keys image_shapes state_key action_key state_names action_names fps "
    "prop_token_id action_token_offset backbone_mode init"
).split()


def test_checkpoint_written_before_the_config_merge_loads(trained, tmp_path):
    _, out, _ = trained
    new = json.loads((out / "final" / "policy_config.json").read_text())
    assert new["init"] == {"type": "preset", "preset": "tiny", "seed": 0} and new["max_tiles"] == 1
    old_dir = tmp_path / "old"
    shutil.copytree(out / "final", old_dir)
    for init, want in [
        ({"type": "checkpoint", "path": "runs/vla/final"}, {"init_checkpoint": "runs/vla/final"}),
        ({"type": "backbone", "path": "/models/InternVL3-1B-hf"}, {"backbone": "/models/InternVL3-1B-hf"}),
        ({"type": "preset", "preset": "tiny", "seed": 3}, {"preset": "tiny", "seed": 3}),
        ({}, {"preset": None}),
    ]:
        old = {k: new[k] for k in PRE_MERGE_KEYS} | {"init": init}
        (old_dir / "policy_config.json").write_text(json.dumps(old))
        cfg = load_policy_config(old_dir / "policy_config.json")
        assert cfg.init == init and all(getattr(cfg, k) == v for k, v in want.items())
        assert cfg.model_dump(include=set(PRE_MERGE_KEYS)) == old
    policy = HandVLAPolicy.load(old_dir, device="cpu")
    assert policy.metadata()["init"] == {}
    ref = HandVLAPolicy.load(out / "final", device="cpu")
    obs = {"state": np.zeros(7, np.float32), "image": np.zeros((20, 20, 3), np.uint8)}
    np.testing.assert_array_equal(policy.infer(obs), ref.infer(obs))
    del old["state_dim"]
    (old_dir / "policy_config.json").write_text(json.dumps(old))
    with pytest.raises(CheckpointError, match="policy_config.json: field 'state_dim'"):
        load_policy_config(old_dir / "policy_config.json")


def test_the_model_section_is_the_policy_config(state_ds, tmp_path):
    base = base_config(state_ds, tmp_path / "run")
    cfg = PosttrainConfig.model_validate(base)
    assert isinstance(cfg.model, PolicyConfig)
    for field, value, match in [
        ("state_dim", 7, "model.state_dim: set from the dataset"),
        ("chunk_size", 8, "model.chunk_size: set from the dataset"),
        ("dtype", "float64", "expected float32, bfloat16 or float16"),
        ("proprio_hidden_size", 0, "greater than 0"),
        ("max_tiles", 0, "greater than or equal to 1"),
        ("text_vocab_size", 100, "greater than or equal to 259"),
        ("backbone_mode", "half", "full"),
        ("init", {"type": "preset"}, "init"),
    ]:
        bad = base_config(state_ds, tmp_path / "run", **{f"model__{field}": value})
        with pytest.raises(ValidationError, match=match):
            PosttrainConfig.model_validate(bad)
    both = base_config(state_ds, tmp_path / "run", model__init_checkpoint="a", model__backbone="b")
    with pytest.raises(ConfigError, match="one of init_checkpoint and backbone"):
        build_policy(
            PosttrainConfig.model_validate(both), RobotDataset(state_ds), None, tmp_path, True, lambda: None
        )


def test_posttrain_joins_the_process_group_once(state_ds, tmp_path, monkeypatch):
    import handvla.robot.posttrain as posttrain
    import handvla.train.trainer as trainer

    calls = []
    real = posttrain.init_distributed

    def counted(device):
        calls.append(device)
        return real(device)

    monkeypatch.setattr(posttrain, "init_distributed", counted)
    monkeypatch.setattr(trainer, "init_distributed", counted)
    cfg = PosttrainConfig.model_validate(base_config(state_ds, tmp_path / "run", train__max_steps=2))
    run_posttrain(cfg, progress=False)
    assert calls == ["cpu"]


def test_posttrain_command_joins_the_process_group_once(state_ds, tmp_path, monkeypatch, capsys):
    """``handvla posttrain`` decides whether to print from the job's process-group state, without setting
    it up again."""
    import handvla.robot.posttrain as posttrain
    import handvla.train.trainer as trainer
    from handvla.cli import main

    calls = []
    real = posttrain.init_distributed

    def counted(device):
        calls.append(device)
        return real(device)

    monkeypatch.setattr(posttrain, "init_distributed", counted)
    monkeypatch.setattr(trainer, "init_distributed", counted)
    config = tmp_path / "posttrain.json"
    config.write_text(json.dumps(base_config(state_ds, tmp_path / "run", train__max_steps=2)))
    assert main(["posttrain", "--config", str(config), "--quiet"]) == 0
    assert calls == ["cpu"]
    out = json.loads(capsys.readouterr().out)
    assert out["train"]["step"] == 2 and Path(out["final"]).is_dir()
