"""The flow-matching action expert (``model.head: flow``): it models a two-mode chunk distribution that a
regression head can only average, real-time chunking keeps the committed prefix exactly and continues
from it, and as a policy head it trains, saves, loads, samples reproducibly, serves and resumes exactly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_posttrain import base_config, write_dataset

from handvla.errors import CheckpointError, InputError
from handvla.policy import HandVLAPolicy, HandVLAPolicyModel
from handvla.policy.configuration import FlowSettings, PolicyConfig
from handvla.policy.flow import ActionExpert
from handvla.robot.client import ActionChunkBroker, PolicyClient, PolicyError
from handvla.robot.evaluate import as_client
from handvla.robot.posttrain import load_posttrain_config, run_posttrain
from handvla.robot.server import PolicyServer

NA, A, H = 6, 2, 16


def _toy_batch(g: torch.Generator, n: int):
    """Context class 0: every action +0.5; class 1: -0.5; class 2: the whole chunk +1 or -1 (a fair coin)."""
    cls = torch.randint(0, 3, (n,), generator=g)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    level = torch.where(cls == 0, 0.5, torch.where(cls == 1, -0.5, sign))
    ctx = torch.nn.functional.one_hot(cls, 3).float() @ _CTX
    return (
        ctx[:, None, :].expand(n, 3, H).contiguous(),
        level[:, None, None].expand(n, NA, A).contiguous(),
        cls,
    )


_CTX = torch.randn(3, H, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def toy_expert() -> ActionExpert:
    torch.manual_seed(0)
    expert = ActionExpert(A, H, NA, FlowSettings(width=32, layers=2, heads=4, num_steps=10, noise_scale=1.0))
    opt = torch.optim.Adam(expert.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        ctx, x1, _ = _toy_batch(g, 64)
        x_t, t, u = expert.training_targets(x1)
        loss = (expert(x_t, t, ctx) - u).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return expert.eval()


def _class_ctx(c: int, n: int) -> torch.Tensor:
    return _CTX[c][None, None, :].expand(n, 3, H).contiguous()


def test_flow_expert_samples_both_modes_where_regression_averages(toy_expert):
    g = torch.Generator().manual_seed(2)
    n = 200
    two_mode = toy_expert.sample(_class_ctx(2, n), generator=g).mean(dim=(1, 2))  # one value per chunk
    # the mean-squared-error optimum (what a regression head converges to) is the mean of the two modes
    _, x1, cls = _toy_batch(torch.Generator().manual_seed(3), 4000)
    regression_answer = float(x1[cls == 2].mean())
    dist_flow = (two_mode.abs() - 1.0).abs()
    assert abs(regression_answer) < 0.1  # the regression head's answer is ~0: far from both real chunks
    assert float(dist_flow.median()) < 0.15, dist_flow.median()
    frac_pos = float((two_mode > 0).float().mean())
    assert 0.3 < frac_pos < 0.7, frac_pos  # both modes, in about equal measure
    # the context decides: classes 0 and 1 give their own levels
    for c, level in ((0, 0.5), (1, -0.5)):
        s = toy_expert.sample(_class_ctx(c, 50), generator=g)
        assert abs(float(s.mean()) - level) < 0.1, (c, float(s.mean()))


def test_noise_scale_zero_is_deterministic_and_scales_the_spread(toy_expert):
    """noise_scale 0 integrates from zero: the same chunk for every generator; between 0 and 1 the
    samples of a one-mode context spread less than at 1."""
    spread, default = {}, toy_expert.settings.noise_scale
    try:
        for scale in (1.0, 0.3, 0.0):
            toy_expert.settings.noise_scale = scale
            s = toy_expert.sample(_class_ctx(0, 64), generator=torch.Generator().manual_seed(6))
            spread[scale] = float(s.std(dim=0).mean())
            if scale == 0.0:
                other = toy_expert.sample(_class_ctx(0, 1), generator=torch.Generator().manual_seed(7))
                torch.testing.assert_close(s, other.expand_as(s), atol=1e-6, rtol=0)
                assert abs(float(s.mean()) - 0.5) < 0.1  # still the class's level
    finally:
        toy_expert.settings.noise_scale = default
    assert spread[0.0] < 1e-6 < spread[0.3] < spread[1.0], spread


def test_real_time_chunking_keeps_the_prefix_and_continues_from_it(toy_expert):
    g = torch.Generator().manual_seed(4)
    n, d = 100, 2
    follows = {}
    for w in (0.0, 2.0):  # inpainting only, and with the default guidance
        for sign in (1.0, -1.0):
            prefix = torch.full((n, d, A), sign)
            s = toy_expert.sample(_class_ctx(2, n), prefix=prefix, generator=g, guidance=w)
            assert torch.equal(s[:, :d], prefix)
            rest = s[:, d:].mean(dim=(1, 2))
            follows[w, sign] = float((torch.sign(rest) == sign).float().mean())
    # unconstrained, half the chunks go each way; given the committed prefix, the rest follows its mode
    assert min(follows[2.0, 1.0], follows[2.0, -1.0]) >= 0.95, follows
    assert follows[2.0, 1.0] + follows[2.0, -1.0] > follows[0.0, 1.0] + follows[0.0, -1.0], follows
    with pytest.raises(InputError, match="prefix"):
        toy_expert.sample(_class_ctx(2, 2), prefix=torch.zeros(2, NA + 1, A))


def test_flow_settings_are_checked():
    with pytest.raises(ValueError, match="multiple of heads"):
        FlowSettings(width=30, heads=4)
    assert PolicyConfig().head == "regression"


# ---- the flow head as a policy ----------------------------------------------------------------------------


def _flow_config(ds, out, steps=40, **over):
    cfg = base_config(ds, out, train__max_steps=steps, **over)
    cfg["model"].update({"head": "flow", "flow": {"width": 32, "layers": 2, "heads": 4, "num_steps": 4}})
    return load_posttrain_config(base=cfg)


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    ds = write_dataset(tmp_path_factory.mktemp("flow_ds") / "ds", image_hw=None, episodes=3, T=16)
    out = tmp_path_factory.mktemp("flow_run") / "run"
    summary = run_posttrain(_flow_config(ds, out), progress=False)
    return ds, out, summary


def test_flow_head_trains_saves_and_loads(flow_run):
    ds, out, summary = flow_run
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 40
    # the velocity loss has a floor well above 0 (at small t the noise is unknown); learning, not
    # convergence, is what 40 steps can show here (the toy test above shows what the expert converges to)
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:5]), (losses[:5], losses[-10:])
    head = load_file(str(out / "final" / "policy_head.safetensors"))
    assert any(k.startswith("action_expert.") for k in head) and not any(
        k.startswith("action_head.") for k in head
    )
    model = HandVLAPolicyModel.from_pretrained(out / "final")
    assert model.config.head == "flow" and model.config.flow.num_steps == 4
    # a flow checkpoint whose config says regression does not load silently
    cfg_path = out / "final" / "policy_config.json"
    raw = json.loads(cfg_path.read_text())
    bad = out / "bad"
    shutil.copytree(out / "final", bad)
    (bad / "policy_config.json").write_text(json.dumps({**raw, "head": "regression"}))
    with pytest.raises(CheckpointError, match="policy_head.safetensors.*head 'regression'"):
        HandVLAPolicyModel.from_pretrained(bad)


def test_flow_train_samples_lower_the_loss_variance_at_one_backbone_pass(flow_run):
    """``flow.train_samples: k`` draws k (noise, time) pairs per chunk against the same backbone states:
    the batch keeps its size, the loss estimates the same expectation, with about 1/k of the variance."""
    _, out, _ = flow_run
    model = HandVLAPolicyModel.from_pretrained(out / "final").train()
    expert = model.action_expert
    g = torch.Generator().manual_seed(3)
    B, L = 6, 9
    hidden = torch.randn(B, L, expert.context_in[0].normalized_shape[0], generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    acts = torch.randn(B, expert.chunk_size, expert.action_dim, generator=g)
    losses = {}
    for k in (1, 8):
        expert.settings.train_samples = k
        vals = []
        for seed in range(24):
            torch.manual_seed(seed)
            with torch.no_grad():
                o = model._flow_output(hidden, mask, acts, None, None, None, None)
            assert o.actions.shape == acts.shape
            vals.append(o.loss.item())
        losses[k] = np.array(vals)
    expert.settings.train_samples = 1
    assert losses[8].std() < 0.6 * losses[1].std(), (losses[1].std(), losses[8].std())
    assert abs(losses[8].mean() - losses[1].mean()) < 3 * losses[1].std() / np.sqrt(24)


def test_flow_policy_samples_reproducibly_and_keeps_committed_actions(flow_run):
    ds, out, _ = flow_run
    policy = HandVLAPolicy.load(out / "final", device="cpu")
    state = np.linspace(-1, 1, 7).astype(np.float32)
    a = policy.infer({"state": state})
    b = policy.infer({"state": state})
    policy.reset()
    c = policy.infer({"state": state})
    assert a.shape == (4, 5) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, c)  # same seed after reset: same chunk
    assert not np.array_equal(a, b)  # the noise is really used
    assert policy.metadata()["head"] == "flow" and policy.metadata()["real_time_chunking"]
    prev = np.arange(15, dtype=np.float32).reshape(3, 5)
    d = policy.infer({"state": state, "prev_actions": prev, "inference_delay": np.int64(2)})
    np.testing.assert_array_equal(d[:2], prev[:2])
    with pytest.raises(InputError, match="inference_delay"):
        policy.infer({"state": state, "prev_actions": prev, "inference_delay": np.int64(4)})

    server = PolicyServer(policy, port=0)
    port = server.start_in_thread()
    try:
        with PolicyClient(f"ws://127.0.0.1:{port}") as client:
            got = client.infer({"state": state}, prev_actions=prev, inference_delay=3)
            np.testing.assert_array_equal(got[:3], prev)
            with pytest.raises(PolicyError, match="inference_delay"):
                client.infer({"state": state}, prev_actions=prev, inference_delay=5)
            with pytest.raises(PolicyError, match="prev_actions"):
                client.infer({"state": state}, prev_actions=np.zeros((3, 4), np.float32), inference_delay=1)
            broker = ActionChunkBroker(client, replan_every=2, commit=1)
            acts = [broker.act({"state": state}) for _ in range(3)]
            # the third action is the first of a new chunk, committed from the previous chunk's third
            np.testing.assert_array_equal(acts[2], broker._chunk[0])
    finally:
        server.stop()


def test_regression_head_keeps_committed_actions_too(tmp_path):
    ds = write_dataset(tmp_path / "ds", image_hw=None, episodes=2, T=8)
    run_posttrain(
        load_posttrain_config(base=base_config(ds, tmp_path / "run", train__max_steps=2)), progress=False
    )
    policy = HandVLAPolicy.load(tmp_path / "run" / "final", device="cpu")
    client = as_client(policy)
    prev = np.full((4, 5), 7.0, np.float32)
    got = client.infer({"state": np.zeros(7, np.float32)}, prev_actions=prev, inference_delay=2)
    np.testing.assert_array_equal(got[:2], prev[:2])
    assert not np.allclose(got[2:], 7.0)
    # one forward pass for several observations (the server's batching) answers as one at a time
    rng = np.random.default_rng(0)
    obs = [{"state": rng.normal(size=7).astype(np.float32)} for _ in range(3)]
    obs[1] |= {"prev_actions": prev, "inference_delay": 3}
    batched = policy.infer_batch(obs)
    for o, b in zip(obs, batched):
        np.testing.assert_allclose(b, policy.infer(o), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batched[1][:3], prev[:3])
    assert not np.allclose(batched[0][:3], 7.0)


def test_flow_resume_replays_the_uninterrupted_run(tmp_path):
    ds = write_dataset(tmp_path / "ds", image_hw=None, episodes=2, T=10)

    def run(out, steps, resume=False):
        cfg = _flow_config(ds, out, steps=steps, train__schedule="constant", train__warmup_steps=0)
        return run_posttrain(cfg, resume=resume, progress=False)

    run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    run(tmp_path / "b", 4, resume=True)

    def losses(d):
        return [json.loads(x).get("loss") for x in (d / "metrics.jsonl").read_text().splitlines()]

    la = [x for x in losses(tmp_path / "a") if x is not None]
    lb = [x for x in losses(tmp_path / "b") if x is not None]
    assert len(la) == 4 and la == lb


def test_context_in_norms_conditions_the_expert_on_the_context_mean():
    """``context_in_norms``: the context's (masked) mean reaches the adaptive norms. With cross-attention
    cut, the velocity still depends on the context, padding does not count, and the option starts as the
    time-only expert (its last layer is zero); without the option the same cut expert ignores the context."""
    x, t = torch.randn(2, NA, A), torch.full((2,), 0.3)
    ctx, other = torch.randn(2, 3, H), torch.randn(2, 3, H)
    out = {}
    for on in (False, True):
        torch.manual_seed(0)
        expert = ActionExpert(A, H, NA, FlowSettings(width=32, layers=2, heads=4, context_in_norms=on))
        assert (expert.context_cond is not None) == on
        with torch.no_grad():
            for p in expert.parameters():  # leave the zero-initialised start
                p.add_(torch.randn(p.shape) * 0.1)
            for blk in expert.blocks:  # cut cross-attention: the context can only act through the norms
                blk.cross_attn.out.weight.zero_()
                blk.cross_attn.out.bias.zero_()
        out[on] = (expert(x, t, ctx), expert(x, t, other))
        if on:
            mask = torch.tensor([[True, True, False]] * 2)
            padded = ctx.clone()
            padded[:, 2] += 5.0  # a padding token: ignored
            torch.testing.assert_close(expert(x, t, ctx, mask), expert(x, t, padded, mask))
    torch.testing.assert_close(out[False][0], out[False][1])
    assert (out[True][0] - out[True][1]).abs().max() > 1e-3
    fresh = ActionExpert(A, H, NA, FlowSettings(width=32, layers=2, heads=4, context_in_norms=True))
    assert fresh.context_cond[-1].weight.abs().max() == 0 and fresh.context_cond[-1].bias.abs().max() == 0


def test_residual_flow_is_regression_plus_what_the_mean_leaves_out(tmp_path):
    """``flow.residual``: a regression head gives the chunk's mean and the expert generates the rest. Both
    heads train (the expert's target detaches the mean, so its loss leaves fr alone), both save and load;
    an expert at its zero start adds nothing but its starting noise; committed actions are kept exactly."""
    ds = write_dataset(tmp_path / "ds", image_hw=None, episodes=2, T=10)
    cfg = base_config(ds, tmp_path / "run", train__max_steps=12)
    cfg["model"].update(
        {"head": "flow", "flow": {"width": 32, "layers": 2, "heads": 4, "num_steps": 4, "residual": True}}
    )
    run_posttrain(load_posttrain_config(base=cfg), progress=False)
    head = load_file(str(tmp_path / "run" / "final" / "policy_head.safetensors"))
    assert any(k.startswith("action_expert.") for k in head) and any(k.startswith("action_head.") for k in head)
    model = HandVLAPolicyModel.from_pretrained(tmp_path / "run" / "final")
    assert model.config.flow.residual and model.has_regression_head

    g = torch.Generator().manual_seed(0)
    B, L, Hd = 3, 7, model.config.hidden_size
    hidden = torch.randn(B, L, Hd, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mean = torch.randn(B, model.config.chunk_size, model.config.model_action_dim, generator=g)
    acts = mean + 0.1 * torch.randn(mean.shape, generator=g)
    # the expert's loss does not reach the mean; the regression loss does
    model.train()
    m = mean.clone().requires_grad_(True)
    out = model._flow_output(hidden, mask, acts, None, None, None, None, mean=m)
    (g_vel,) = torch.autograd.grad(out.velocity_mse, m, retain_graph=True, allow_unused=True)
    (g_all,) = torch.autograd.grad(out.loss, m)
    assert (g_vel is None or g_vel.abs().max() == 0) and g_all.abs().max() > 0
    # an expert at its zero start (v = 0) integrated from zero noise leaves the regression head's chunk
    model.eval()
    model.action_expert.reset_parameters()
    model.action_expert.settings.noise_scale = 0.0
    chunk = model._flow_output(hidden, mask, None, None, None, None, g, mean=mean).actions
    torch.testing.assert_close(chunk, mean)
    model.action_expert.settings.noise_scale = 0.5
    prefix = torch.randn(B, 2, mean.shape[2], generator=g)
    kept = model._flow_output(hidden, mask, None, None, prefix, torch.tensor([2, 1, 0]), g, mean=mean).actions
    assert torch.equal(kept[0, :2], prefix[0]) and torch.equal(kept[1, :1], prefix[1, :1])
    assert not torch.equal(kept[2, :1], prefix[2, :1])

    policy = HandVLAPolicy.load(tmp_path / "run" / "final", device="cpu")
    state = np.linspace(-1, 1, 7).astype(np.float32)
    prev = np.arange(15, dtype=np.float32).reshape(3, 5)
    d = policy.infer({"state": state, "prev_actions": prev, "inference_delay": np.int64(2)})
    np.testing.assert_array_equal(d[:2], prev[:2])
