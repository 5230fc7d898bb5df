"""The flow-matching action expert (``PolicyConfig.head: flow``): a small transformer with its own weights
that turns noise into an action chunk, reading the VLA's last-layer hidden states through cross-attention.

Why cross-attention to the VLA's output (as GR00T N1 does) rather than attention shared layer by layer
with the LLM (pi0's mixture of transformers): the backbone runs once per chunk, unchanged, whatever its
mode (full / frozen / LoRA / FSDP2-sharded); the expert's integration steps then only re-run the expert
(the context's keys and values are projected once per chunk), so inference costs one backbone pass plus
``num_steps`` passes of a network a few hundred times smaller; and the expert is a separate module that
checkpoints, loads and trains like the regression head it sits beside.

Flow matching (rectified flow), in normalised action units::

    x0 ~ N(0, I)  noise,   x1  the action chunk (Na, A),   t in [0, 1]
    x_t = t * x1 + (1 - t) * x0,     target velocity  u = x1 - x0
    loss = mean over real chunk steps and action dims of |v(x_t, t, context) - u|^2

``t = time_max * (1 - s)`` with ``s ~ Beta(a, b)`` (``FlowSettings.time_beta``, (1.5, 1) by default): more
weight on the noisier (small t) half, where the context decides the most. Each training chunk gets
``FlowSettings.train_samples`` draws of (noise, t) against the same backbone states (the backbone runs once
per chunk; only the expert runs per draw), which lowers the variance of the loss's gradient. Inference
integrates ``dx/dt = v`` from noise (standard deviation ``noise_scale``) at t = 0 to t = 1 with
``num_steps`` Euler steps.

Real-time chunking (`ActionExpert.sample` with ``prefix``): while the robot executes the previous chunk
the next one is computed; its first ``d`` actions (``d`` = the inference delay in control steps) will be
executed before it arrives, so they are committed: the caller passes them as ``prefix`` (B, d, A). At every
integration step the prefix positions of ``x_t`` are set to their exact interpolant ``t * prefix + (1 - t)
* x0`` (inpainting), so the rest of the chunk is generated consistent with them; the result's first ``d``
actions equal the prefix exactly. Inpainting alone lets the early, noisy steps decide the rest of the chunk
before the prefix shows through, so each step also follows the gradient that brings the one-step estimate
of the clean chunk, ``x + (1 - t) v``, onto the prefix (``FlowSettings.rtc_guidance`` scales it; the
guidance idea of real-time chunking by Black et al., with a constant weight): one extra backward pass of
the expert per step, only when a prefix is given.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from handvla.errors import InputError
from handvla.policy.configuration import FlowSettings


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of ``t`` (B,) in [0, 1] (scaled by 1000 so that neighbouring steps differ), (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def committed_mask(batch: int, d: int, prefix_len: torch.Tensor | None, device) -> torch.Tensor:
    """(batch, d, 1) bool: True where a committed prefix action is kept, row b's first ``prefix_len[b]``
    of ``d`` (default all d)."""
    lens = torch.full((batch,), d) if prefix_len is None else prefix_len.to("cpu").long()
    return (torch.arange(d)[None] < lens[:, None]).to(device)[..., None]


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class _Attention(nn.Module):
    """Multi-head attention with separate query and key/value inputs (self- or cross-attention)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def project_kv(self, kv_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, _ = kv_in.shape
        k, v = self.kv(kv_in).view(B, L, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return k, v  # (B, heads, L, dh) each

    def forward(self, x, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None):
        B, N, D = x.shape
        q = self.q(x).view(B, N, self.heads, -1).transpose(1, 2)
        k, v = kv
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # mask (B, 1, 1, L) bool: True attends
        return self.out(y.transpose(1, 2).reshape(B, N, D))


class _Block(nn.Module):
    """Self-attention over the chunk, cross-attention to the context, MLP; pre-norm, with the flow time
    modulating the self-attention and MLP norms (adaptive LayerNorm with zero-initialised gates)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim, elementwise_affine=False)
        self.self_attn = _Attention(dim, heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = _Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim, elementwise_affine=False)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Linear(dim, 6 * dim)  # shift, scale, gate for self-attention and for the MLP

    def forward(self, x, temb, ctx_kv, ctx_mask):
        s1, c1, g1, s2, c2, g2 = self.ada(F.silu(temb)).chunk(6, dim=-1)
        h = _modulate(self.norm_self(x), s1, c1)
        x = x + g1[:, None] * self.self_attn(h, self.self_attn.project_kv(h))
        x = x + self.cross_attn(self.norm_cross(x), ctx_kv, ctx_mask)
        h = _modulate(self.norm_mlp(x), s2, c2)
        return x + g2[:, None] * self.mlp(h)


class ActionExpert(nn.Module):
    """v(x_t, t, context): the velocity of an action chunk (B, Na, A) at flow time t (B,), given the VLA's
    hidden states ``context`` (B, L, H) with ``context_mask`` (B, L) (True: a real token)."""

    def __init__(self, action_dim: int, context_dim: int, chunk_size: int, settings: FlowSettings):
        super().__init__()
        D = settings.width_for(context_dim)
        self.settings = settings
        self.action_dim, self.chunk_size = action_dim, chunk_size
        self.action_in = nn.Linear(action_dim, D)
        self.position = nn.Parameter(torch.zeros(chunk_size, D))
        self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.context_in = nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, D))
        # FlowSettings.context_in_norms: the context's mean joins the time in every adaptive norm
        self.context_cond = (
            nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D)) if settings.context_in_norms else None
        )
        self.blocks = nn.ModuleList(
            _Block(D, settings.heads, settings.mlp_ratio) for _ in range(settings.layers)
        )
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False)
        self.ada_out = nn.Linear(D, 2 * D)
        self.action_out = nn.Linear(D, action_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """PyTorch's default Linear init (from the global generator: seed it around the call), small
        position embeddings, and zero on every adaptive gate and on the output, so the expert starts as
        v = 0 and each block starts as the identity."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.reset_parameters()
        nn.init.normal_(self.position, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.ada.weight)
            nn.init.zeros_(blk.ada.bias)
        zero = [self.ada_out, self.action_out]
        if self.context_cond is not None:
            zero.append(self.context_cond[-1])  # starts as the time-only expert
        for lin in zero:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # -- the network --------------------------------------------------------------------------------------
    def encode_context(self, context: torch.Tensor, context_mask: torch.Tensor | None):
        """Per block, the context's (keys, values), the attention mask and (``context_in_norms``) the
        context's conditioning vector: computed once per chunk."""
        ctx = self.context_in(context.float())
        kvs = [blk.cross_attn.project_kv(ctx) for blk in self.blocks]
        mask = None if context_mask is None else context_mask.bool()[:, None, None, :]
        cond = None
        if self.context_cond is not None:
            w = torch.ones(ctx.shape[:2], device=ctx.device) if context_mask is None else context_mask.float()
            mean = (ctx * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1.0)
            cond = self.context_cond(mean)
        return kvs, mask, cond

    def velocity(self, x: torch.Tensor, t: torch.Tensor, encoded) -> torch.Tensor:
        kvs, mask, cond = encoded
        temb = self.time_mlp(timestep_embedding(t, self.position.shape[1]))
        if cond is not None:
            temb = temb + cond
        h = self.action_in(x.float()) + self.position[None, : x.shape[1]]
        for blk, kv in zip(self.blocks, kvs):
            h = blk(h, temb, kv, mask)
        shift, scale = self.ada_out(F.silu(temb)).chunk(2, dim=-1)
        return self.action_out(_modulate(self.norm_out(h), shift, scale))

    def forward(self, x_t, t, context, context_mask=None) -> torch.Tensor:
        return self.velocity(x_t, t, self.encode_context(context, context_mask))

    # -- training -----------------------------------------------------------------------------------------
    def sample_time(self, batch: int, device) -> torch.Tensor:
        """Flow times (B,): ``time_max * (1 - Beta(a, b))`` (see the module doc), from the global generator
        (the trainer saves and restores it, so a resumed run draws the same times)."""
        a, b = self.settings.time_beta
        s = torch.distributions.Beta(torch.tensor(float(a)), torch.tensor(float(b))).sample((batch,))
        return (self.settings.time_max * (1.0 - s)).to(device)

    def training_targets(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, u) for a batch of clean chunks ``actions`` (B, Na, A)."""
        B = actions.shape[0]
        noise = torch.randn(actions.shape).to(actions.device, torch.float32)
        t = self.sample_time(B, actions.device)
        x1 = actions.float()
        x_t = t[:, None, None] * x1 + (1 - t[:, None, None]) * noise
        return x_t, t, x1 - noise

    # -- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        num_steps: int | None = None,
        prefix: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        guidance: float | None = None,
        prefix_len: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """An action chunk (B, Na, A) by ``num_steps`` Euler steps from noise (default: the settings').
        ``prefix`` (B, d, A), d <= Na: committed first actions, kept exactly (real-time chunking), with
        ``guidance`` (default ``settings.rtc_guidance``; 0: inpainting only) pulling the rest towards them.
        ``prefix_len`` (B,): row b commits only its first ``prefix_len[b]`` prefix actions (default: all d)."""
        B, Na, A = context.shape[0], self.chunk_size, self.action_dim
        n = int(num_steps or self.settings.num_steps)
        if n < 1:
            raise InputError("ActionExpert.sample", "num_steps", "at least 1", str(n))
        device = context.device
        x0 = torch.randn((B, Na, A), generator=generator, device="cpu").to(device) * self.settings.noise_scale
        d = 0
        if prefix is not None:
            d = prefix.shape[1]
            if prefix.shape[0] != B or prefix.shape[2] != A or d > Na:
                raise InputError(
                    "ActionExpert.sample", "prefix", f"(B={B}, d <= {Na}, A={A})", str(tuple(prefix.shape))
                )
            prefix = prefix.to(device, torch.float32)
            keep = committed_mask(B, d, prefix_len, device)
        encoded = self.encode_context(context, context_mask)
        w = float(self.settings.rtc_guidance if guidance is None else guidance)
        x, dt = x0.clone(), 1.0 / n
        for i in range(n):
            t = i * dt
            tt = torch.full((B,), t, device=device)
            if not d:
                x = x + dt * self.velocity(x, tt, encoded)
                continue
            x[:, :d] = torch.where(keep, t * prefix + (1 - t) * x0[:, :d], x[:, :d])
            if w > 0:
                # guidance: move x so that the one-step estimate of the clean chunk agrees with the prefix
                with torch.enable_grad():
                    xg = x.detach().requires_grad_(True)
                    v = self.velocity(xg, tt, encoded)
                    miss = ((xg + (1 - t) * v)[:, :d] - prefix) * keep
                    grad = torch.autograd.grad(miss.square().sum(), xg)[0]
                v = v.detach() - w * grad
            else:
                v = self.velocity(x, tt, encoded)
            x = x + dt * v
        if d:
            x[:, :d] = torch.where(keep, prefix, x[:, :d])
        return x
