"""The part-level GRQ-VAE motion tokenizer: hand motion features <-> discrete motion ids.

Per part (wrist, finger; or one whole-hand part) a 1D conv encoder downsamples a block of
``window_frames`` (16) frames by ``alpha`` (4) to ``latent_steps`` (4) latent vectors of ``code_dim``
(512); a grouped residual vector quantiser splits each vector into ``groups`` (2) groups and quantises
each with ``residual_layers`` (8) codebooks of ``codebook_size`` (4096) codes; a mirrored decoder
(nearest upsampling) maps the summed codes back to features.

Codes become motion ids through the layout in `handvla.tokenizer.layout` (``token_layout(config)``).
Defaults: 64 wrist ids in [0, 4096) then 64 finger ids in [4096, 8192): 128 ids per hand-second.

Left hands: the tokenizer works in the right-hand frame. ``encode_motion`` mirrors a left hand through
the x = 0 plane (axis-angle (x, y, z) -> (x, -y, -z) per joint, wrist position x -> -x) before encoding
and ``decode_motion(..., side='left')`` mirrors back, so left and right hands share every code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import nn

from handvla.atomic import atomic_write_bytes, read_json
from handvla.config import load_config
from handvla.errors import CheckpointError, ConfigError, InputError, MissingResourceError
from handvla.hand import registry
from handvla.hand.features import (
    FeatureNormalizer,
    features_to_params,
    merge_parts,
    motion_to_features,
    split_parts,
)
from handvla.hand.model import HandModel
from handvla.hand.motion import HandMotion
from handvla.tokenizer.configuration import FORMAT_VERSION, TokenizerConfig
from handvla.tokenizer.layout import token_layout

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# ---------------------------------------------------------------------------------------------------------
# Encoder / decoder
# ---------------------------------------------------------------------------------------------------------


class ResBlock1d(nn.Module):
    """Pre-activation residual block: x + conv1x1(relu(dilated conv3(relu(x))))."""

    def __init__(self, width: int, dilation: int, zero_init: bool = False):
        super().__init__()
        self.conv = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.proj = nn.Conv1d(width, width, 1)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x)
        if self.conv.dilation[0] >= x.shape[-1]:
            # Both side taps only ever see zero padding (dilation 9 on 8 or 4 latent steps): the
            # convolution is exactly its centre tap, at a third of the cost.
            h = F.conv1d(h, self.conv.weight[:, :, 1:2], self.conv.bias)
        else:
            h = self.conv(h)
        return x + self.proj(F.relu(h))


class Encoder(nn.Module):
    """(B, in_dim, W) -> (B, code_dim, W / alpha): conv, then per stride-2 stage a strided conv and
    residual blocks (dilations 9/3/1), then a conv to the code dimension.

    With ``linear_skip`` a linear patch projection runs beside it: a conv with kernel = stride = alpha
    that maps each latent step's alpha frames straight to the latent (see ``PartAutoencoder``)."""

    def __init__(
        self,
        in_dim: int,
        width: int,
        code_dim: int,
        stages: int,
        dilations: tuple[int, ...],
        zero_init: bool = False,
        linear_skip: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(in_dim, width, 3, padding=1), nn.ReLU()]
        for _ in range(stages):
            layers.append(nn.Conv1d(width, width, 4, stride=2, padding=1))
            layers.extend(ResBlock1d(width, d, zero_init) for d in dilations)
        layers.append(nn.Conv1d(width, code_dim, 3, padding=1))
        self.net = nn.Sequential(*layers)
        alpha = 2**stages
        self.skip = nn.Conv1d(in_dim, code_dim, alpha, stride=alpha) if linear_skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip is not None and _silent(self.net[-1]):
            return self.skip(x)
        z = self.net(x)
        return z if self.skip is None else z + self.skip(x)


class Decoder(nn.Module):
    """The encoder mirrored: (B, code_dim, W / alpha) -> (B, out_dim, W), nearest x2 upsampling per stage.

    With ``linear_skip`` a linear patch reconstruction (transposed conv, kernel = stride = alpha) is added."""

    def __init__(
        self,
        out_dim: int,
        width: int,
        code_dim: int,
        stages: int,
        dilations: tuple[int, ...],
        zero_init: bool = False,
        linear_skip: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(code_dim, width, 3, padding=1), nn.ReLU()]
        for _ in range(stages):
            layers.extend(ResBlock1d(width, d, zero_init) for d in dilations)
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers.append(nn.Conv1d(width, width, 3, padding=1))
        layers += [nn.Conv1d(width, width, 3, padding=1), nn.ReLU(), nn.Conv1d(width, out_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)
        alpha = 2**stages
        self.skip = nn.ConvTranspose1d(code_dim, out_dim, alpha, stride=alpha) if linear_skip else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.skip is not None and _silent(self.net[-1]):
            return self.skip(z)
        x = self.net(z)
        return x if self.skip is None else x + self.skip(z)


def _silent(last: nn.Conv1d) -> bool:
    """True when a conv stack's output is exactly zero (its last layer is all zeros) and no gradient
    is wanted for it, so running the stack can be skipped without changing anything."""
    if torch.is_grad_enabled() and last.weight.requires_grad:
        return False
    return not bool(last.weight.any()) and not bool(last.bias.any())


# ---------------------------------------------------------------------------------------------------------
# Grouped residual vector quantiser
# ---------------------------------------------------------------------------------------------------------


def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(M, d), (K, d) -> (M,) index of the nearest code in Euclidean distance."""
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is the same for every code, so it is left out.
    dist = torch.addmm((codebook * codebook).sum(-1)[None], x, codebook.t(), beta=1.0, alpha=-2.0)
    return dist.argmin(-1)


def kmeans(x: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on (N, d) -> centres (k, d) and cluster shares (k,) (fractions of N).

    Starts from k random data points (drawn with replacement when N < k); empty clusters keep their
    centre; stops early once no assignment changes. Uses the global torch RNG (reproducible under a seed).
    """
    N = x.shape[0]
    idx = torch.randperm(N)[:k] if N >= k else torch.randint(0, N, (k,))
    centres = x[idx].clone()
    assign = _assign_chunked(x, centres)
    for _ in range(max(iters, 0)):
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
        new_assign = _assign_chunked(x, centres)
        converged = torch.equal(new_assign, assign)
        assign = new_assign
        if converged:
            break
    shares = torch.bincount(assign, minlength=k).to(x.dtype) / N
    return centres, shares


def lattice_codebook(x: torch.Tensor, k: int, max_points: int = 50_000, lloyd_iters: int = 10) -> torch.Tensor:
    """A structured codebook of ``k`` codes for data x (N, d): a product grid along principal directions.

    The directions are the principal axes of x (about its mean). Bits go greedily, one doubling of a
    direction's level count at a time, to the direction whose quantisation error (variance / levels^2)
    is largest, until the grid has the largest power of 2 <= k points; each direction's levels are a 1-D
    Lloyd-Max quantiser of x's coordinate along it (started at equal-mass quantiles). Nearest-code search
    in the full space picks the nearest level per direction, so the grid is searched by the same matmul
    as any codebook. Codes past the grid (k not a power of 2) repeat grid points; they are never chosen
    and the dead-code reset reuses them in training. Uses at most ``max_points`` rows (random, global
    torch RNG). Returns (k, d) float32.
    """
    N, d = x.shape
    if N == 0:
        raise ValueError("lattice_codebook: no data")
    x = x[torch.randperm(N)[:max_points]].double()
    mean = x.mean(0)
    xc = x - mean
    _, S, Vh = torch.linalg.svd(xc, full_matrices=False)
    var = (S.square() / xc.shape[0]).tolist()
    levels = [1] * len(var)
    size = 1
    while size * 2 <= k:
        j = max(range(len(var)), key=lambda i: var[i] / levels[i] ** 2)
        levels[j] *= 2
        size *= 2
    dirs = [j for j, n in enumerate(levels) if n > 1]
    if not dirs:  # k < 2: the mean is the only code
        return mean.float()[None].expand(k, d).clone()
    grids = []
    for j in dirs:
        c, n = xc @ Vh[j], levels[j]
        g = torch.quantile(c, (torch.arange(n, dtype=torch.float64) + 0.5) / n)
        for _ in range(lloyd_iters):
            a = (c[:, None] - g[None]).abs().argmin(1)
            cnt = torch.bincount(a, minlength=n)
            sums = torch.zeros(n, dtype=torch.float64).index_add_(0, a, c)
            g = torch.where(cnt > 0, sums / cnt.clamp(min=1), g)
        grids.append(g)
    mesh = torch.cartesian_prod(*grids) if len(grids) > 1 else grids[0][:, None]
    codes = mean + mesh @ Vh[dirs]
    if codes.shape[0] < k:
        codes = codes[torch.arange(k) % codes.shape[0]]
    return codes.float()


def _assign_chunked(x: torch.Tensor, centres: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    return torch.cat([nearest_code(x[i : i + chunk], centres) for i in range(0, x.shape[0], chunk)])


def beam_search_codes(x: torch.Tensor, codebooks: torch.Tensor, beam: int, chunk: int = 512) -> torch.Tensor:
    """Residual codes that jointly approximate x: (M, d) vectors, (L, K, d) codebooks -> (M, L) int64.

    Greedy residual quantisation picks each layer's nearest code to what the previous layers left, which
    is not the best sum of L codes: a code slightly worse at layer l can leave a residual the later
    layers represent much better. This keeps the ``beam`` best partial sums (smallest squared error of
    the residual left) after every layer and returns the best full one; ``beam`` 1 is the greedy search.
    The decoder is unchanged (codes are still summed layer by layer), so only encoding changes. A beam can
    prune the greedy path (its partial sums ranked below others that end worse), so the greedy codes are
    computed too and kept where they are better: the squared error is never larger than greedy's.
    Cost: about ``beam + 1`` times greedy's distance computations."""
    L, K, d = codebooks.shape
    codes, residual = [], x
    for layer in range(L):
        idx = nearest_code(residual, codebooks[layer])
        residual = residual - codebooks[layer][idx]
        codes.append(idx)
    greedy = torch.stack(codes, -1) if codes else x.new_zeros((x.shape[0], 0), dtype=torch.long)
    if beam <= 1:
        return greedy
    greedy_err = (residual * residual).sum(-1)
    norms = (codebooks * codebooks).sum(-1)  # (L, K)
    out = []
    for i in range(0, x.shape[0], chunk):
        residual = x[i : i + chunk, None, :]  # (m, b, d): the residual each kept candidate leaves
        err = (residual * residual).sum(-1)  # (m, b) its squared norm
        codes = residual.new_zeros((residual.shape[0], 1, 0), dtype=torch.long)
        for layer in range(L):
            cb = codebooks[layer]
            # ||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2 for every (candidate, code) pair
            cand = err[..., None] - 2.0 * (residual @ cb.t()) + norms[layer]  # (m, b, K)
            m, b = cand.shape[:2]
            best = cand.reshape(m, b * K).topk(min(beam, b * K), dim=1, largest=False)
            parent, code = best.indices // K, best.indices % K
            residual = torch.gather(residual, 1, parent[..., None].expand(-1, -1, d)) - cb[code]
            err = (residual * residual).sum(-1)  # recomputed, not carried: no drift from cancellation
            codes = torch.cat(
                [torch.gather(codes, 1, parent[..., None].expand(-1, -1, layer)), code[..., None]], 2
            )
        best_err, best = err.min(1)
        found = codes.gather(1, best[:, None, None].expand(-1, 1, L))[:, 0]
        out.append(
            torch.where((best_err <= greedy_err[i : i + chunk])[:, None], found, greedy[i : i + chunk])
        )
    return torch.cat(out) if out else greedy


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, N, dim), straight-through gradient to the input
    codes: torch.Tensor  # (B, N, groups, layers) int64 in [0, codebook_size)
    commit_loss: torch.Tensor  # scalar: mean over groups and layers of ||residual - code||^2 / dim


class GroupedResidualQuantizer(nn.Module):
    """Grouped residual VQ with k-means initialisation, EMA codebooks and dead-code reset.

    The input's channels are split into ``groups`` equal groups; each group is quantised by
    ``layers`` codebooks in turn, each quantising what the previous ones left (the residual).

    Codebooks are not trained by gradients: each is the ratio of two exponential moving averages, of
    the mean of the vectors assigned to every code (``ema_sum``) and of every code's share of the
    assignments (``ema_usage``, which sums to 1 and does not depend on the batch size). A code whose
    share falls below ``dead_threshold / codebook_size`` is replaced by a random vector of the current
    batch. Same semantics as vector-quantize-pytorch's ``GroupedResidualVQ(kmeans_init=True, decay,
    threshold_ema_dead_code)`` and the same codes for the same codebooks (tests compare the two), but
    one matmul per layer instead of a distance, a one-hot product and an EMA einsum, which makes a
    training step several times faster on CPU at 4096 codes; and a batch-size-free dead-code rule.
    """

    def __init__(
        self,
        dim: int,
        groups: int,
        layers: int,
        codebook_size: int,
        decay: float = 0.99,
        dead_threshold: float = 0.05,
        kmeans_iters: int = 10,
        eps: float = 1e-5,
        init_method: str = "kmeans",
        beam: int = 1,
    ):
        super().__init__()
        if dim % groups:
            raise ValueError(f"dim {dim} is not a multiple of groups {groups}")
        self.dim, self.groups, self.layers, self.codebook_size = dim, groups, layers, codebook_size
        self.group_dim = dim // groups
        self.decay, self.dead_threshold, self.kmeans_iters, self.eps = (
            decay,
            dead_threshold,
            kmeans_iters,
            eps,
        )
        if init_method not in ("kmeans", "lattice"):
            raise ValueError(f"init_method must be 'kmeans' or 'lattice', got {init_method!r}")
        self.init_method = init_method
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        #: candidates kept per layer when choosing codes (``beam_search_codes``; 1 = greedy); passes that
        #: update the codebooks (EMA) choose greedily
        self.beam = beam
        G, L, K, d = groups, layers, codebook_size, self.group_dim
        self.register_buffer("codebook", torch.zeros(G, L, K, d))
        #: codebook maintenance in training mode (``TokenizerTrainConfig.codebook_updates``): 'ema_reseed'
        #: (EMA means and dead codes re-seeded from the batch), 'ema' (means only) or 'off'
        self.training_updates = "ema_reseed"
        self.register_buffer("ema_usage", torch.full((G, L, K), 1.0 / K))
        self.register_buffer("ema_sum", torch.zeros(G, L, K, d))
        self.register_buffer("initted", torch.zeros((), dtype=torch.bool))

    # --- codebook maintenance ------------------------------------------------------------------------
    def _smoothed_usage(self, usage: torch.Tensor) -> torch.Tensor:
        # Laplace smoothing keeps the division finite for codes that were never used.
        K = self.codebook_size
        return (usage + self.eps) / (usage.sum(-1, keepdim=True) + K * self.eps)

    @torch.no_grad()
    def init_codebooks(self, z: torch.Tensor, method: str | None = None) -> None:
        """Initialisation from latents (..., dim), layer by layer on the residuals, by k-means or a
        principal-axis grid (``method``, default ``self.init_method``; see ``lattice_codebook``)."""
        method = method or self.init_method
        x_all = z.detach().reshape(-1, self.dim).float()
        for g in range(self.groups):
            residual = x_all[:, g * self.group_dim : (g + 1) * self.group_dim].clone()
            for layer in range(self.layers):
                if method == "lattice" and self.kmeans_iters > 0:
                    centres = lattice_codebook(residual, self.codebook_size)
                else:
                    centres, _ = kmeans(residual, self.codebook_size, self.kmeans_iters)
                idx = _assign_chunked(residual, centres)
                shares = torch.bincount(idx, minlength=self.codebook_size).to(residual.dtype) / residual.shape[0]
                # codes nobody chose start at the uniform share so they are not all reset at once
                shares = torch.where(shares > 0, shares, torch.full_like(shares, 1.0 / self.codebook_size))
                shares = shares / shares.sum()
                self.codebook[g, layer] = centres
                self.ema_usage[g, layer] = shares
                self.ema_sum[g, layer] = centres * self._smoothed_usage(shares)[:, None]
                residual = residual - centres[idx]
        self.initted.fill_(True)

    @torch.no_grad()
    def _update(self, g: int, layer: int, x: torch.Tensor, idx: torch.Tensor, reseed: bool = True) -> None:
        K, M, decay = self.codebook_size, x.shape[0], self.decay
        share = torch.bincount(idx, minlength=K).to(x.dtype) / M
        mean_sum = torch.zeros(K, x.shape[1], dtype=x.dtype).index_add_(0, idx, x) / M
        usage, sums = self.ema_usage[g, layer], self.ema_sum[g, layer]
        usage.mul_(decay).add_(share, alpha=1 - decay)
        sums.mul_(decay).add_(mean_sum, alpha=1 - decay)
        self.codebook[g, layer] = sums / self._smoothed_usage(usage)[:, None]
        if self.dead_threshold <= 0 or not reseed:
            return
        dead = (usage < self.dead_threshold / K).nonzero()[:, 0]
        if dead.numel() == 0:
            return
        n = min(dead.numel(), M)
        dead = dead[torch.randperm(dead.numel())[:n]]
        samples = x[torch.randperm(M)[:n]] if M >= n else x[torch.randint(0, M, (n,))]
        self.codebook[g, layer, dead] = samples
        usage[dead] = 1.0 / K
        sums[dead] = samples * self._smoothed_usage(usage)[dead, None]

    # --- quantisation --------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor, update: bool | None = None) -> QuantizerOutput:
        """z (B, N, dim) -> quantised (B, N, dim), codes (B, N, groups, layers), commitment loss.

        ``update`` runs the EMA / dead-code maintenance on this batch (and the k-means initialisation
        first, if the codebooks were never initialised); by default, in training mode as
        ``training_updates`` says.
        """
        reseed = update is not None or self.training_updates == "ema_reseed"
        if update is None:
            update = self.training and self.training_updates != "off"
        B, N, _ = z.shape
        if update and not bool(self.initted):
            self.init_codebooks(z)
        zf = z.reshape(B * N, self.dim)
        outs, codes, commit = [], [], z.new_zeros(())
        for g in range(self.groups):
            x = zf[:, g * self.group_dim : (g + 1) * self.group_dim]
            residual, total, gcodes = x, torch.zeros_like(x), []
            # passes that maintain the codebooks assign greedily, as k-means does (and 1 / (beam + 1) the cost)
            beam = self.beam if not update else 1
            chosen = beam_search_codes(x.detach(), self.codebook[g], beam) if beam > 1 else None
            for layer in range(self.layers):
                cb = self.codebook[g, layer]
                idx = chosen[:, layer] if chosen is not None else nearest_code(residual.detach(), cb)
                q = cb[idx]  # (M, d), no gradient: codebooks follow the EMA, not the loss
                commit = commit + F.mse_loss(residual, q)
                if update:
                    self._update(g, layer, residual.detach(), idx, reseed)
                residual = residual - q
                total = total + q
                gcodes.append(idx)
            outs.append(x + (total - x).detach())  # straight-through estimator
            codes.append(torch.stack(gcodes, -1))
        quantized = torch.cat(outs, -1).reshape(B, N, self.dim)
        codes_t = torch.stack(codes, 1).reshape(B, N, self.groups, self.layers)
        return QuantizerOutput(quantized, codes_t, commit / (self.groups * self.layers))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, N, groups, layers) codes -> (B, N, dim) quantised latents (sum of the layers' codes)."""
        B, N = codes.shape[:2]
        outs = []
        for g in range(self.groups):
            total = 0
            for layer in range(self.layers):
                total = total + self.codebook[g, layer][codes[:, :, g, layer]]
            outs.append(total)
        return torch.cat(outs, -1).reshape(B, N, self.dim)

    @torch.no_grad()
    def usage_stats(self, codes: torch.Tensor | None = None) -> dict[str, float]:
        """Codebook health. From the EMA: fraction of live codes (share above the dead threshold).
        From ``codes`` (..., groups, layers) if given: mean perplexity and fraction of codes used."""
        K = self.codebook_size
        live = (self.ema_usage >= max(self.dead_threshold, 1e-3) / K).float().mean().item()
        out = {"live_codes": live}
        if codes is not None:
            c = codes.reshape(-1, self.groups, self.layers)
            perps, used = [], []
            for g in range(self.groups):
                for layer in range(self.layers):
                    counts = torch.bincount(c[:, g, layer], minlength=K).float()
                    p = counts / counts.sum()
                    ent = -(p[p > 0] * p[p > 0].log()).sum()
                    perps.append(ent.exp().item())
                    used.append((counts > 0).float().mean().item())
            out["perplexity"] = float(np.mean(perps))
            out["batch_used_codes"] = float(np.mean(used))
        return out


# ---------------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------------


class PartAutoencoder(nn.Module):
    """Encoder + grouped residual quantiser + decoder for one part (wrist, finger or whole hand).

    ``linear_skip``: encoder and decoder each carry a linear path beside the conv stack (patches of
    alpha frames <-> latent vectors), initialised by ``init_linear_skip`` to PCA of training windows
    while the conv stacks' last layers start at zero. The model then starts as a PCA auto-encoder
    (near-exact reconstruction for the continuous latent) and the conv stacks learn what is left, which
    gets millimetre errors in hundreds instead of tens of thousands of steps."""

    def __init__(self, in_dim: int, config: TokenizerConfig, part: str = "hand"):
        super().__init__()
        stages = int(round(math.log2(config.alpha)))
        zi, ls = config.zero_init_residual, config.linear_skip
        self.alpha, self.groups = config.alpha, config.groups
        self.encoder = Encoder(in_dim, config.width, config.code_dim, stages, config.dilations, zi, ls)
        self.quantizer = GroupedResidualQuantizer(
            config.code_dim,
            config.groups,
            config.residual_layers,
            config.codebook_size,
            decay=config.ema_decay,
            dead_threshold=config.dead_code_threshold,
            kmeans_iters=config.kmeans_iters if config.kmeans_init else 0,
            init_method=config.codebook_init.get(part, "kmeans"),
            beam=config.encode_beam,
        )
        self.decoder = Decoder(in_dim, config.width, config.code_dim, stages, config.dilations, zi, ls)
        if config.init == "kaiming":
            for m in (*self.encoder.net.modules(), *self.decoder.net.modules()):
                if isinstance(m, nn.Conv1d) and not (zi and _is_zero(m)):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        if ls:
            # the conv stacks start silent: the linear paths alone make the first reconstruction
            for last in (self.encoder.net[-1], self.decoder.net[-1]):
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    @torch.no_grad()
    def init_linear_skip(self, x: torch.Tensor) -> None:
        """PCA of the patches of normalised windows x (N, W, Dp): the encoder's linear path projects a
        patch (alpha frames, frame-major) onto the principal directions, the decoder's maps back.
        Components go round-robin over the quantiser's groups so each group gets its share of variance.
        The patches are not centred (normalised features have zero mean already, and a transposed conv's
        bias cannot hold a different mean per frame of the patch), so no biases are needed and the
        reconstruction is exact whenever a patch has no more dimensions than the latent."""
        enc, dec = self.encoder.skip, self.decoder.skip
        code_dim, Dp, a = enc.weight.shape
        N, W, _ = x.shape
        patches = x.reshape(N, W // a, a * Dp).reshape(-1, a * Dp).double()  # frame-major patches
        _, _, Vh = torch.linalg.svd(patches, full_matrices=False)
        k = min(code_dim, Vh.shape[0])
        comps = torch.zeros(code_dim, a * Dp, dtype=torch.float64)
        # latent channel c = g * (code_dim / groups) + j holds component j * groups + g
        per_group = code_dim // self.groups
        for c in range(code_dim):
            comp = (c % per_group) * self.groups + c // per_group
            if comp < k:
                comps[c] = Vh[comp]
        w = comps.reshape(code_dim, a, Dp).permute(0, 2, 1)  # (code_dim, Dp, a): tap t, channel ch
        enc.weight.copy_(w.float())
        dec.weight.copy_(w.float())  # ConvTranspose1d weight (in=code_dim, out=Dp, k=a)
        enc.bias.zero_()
        dec.bias.zero_()


def _is_zero(conv: nn.Conv1d) -> bool:
    return not bool(conv.weight.any())


@dataclass
class TokenizerOutput:
    recon: torch.Tensor  # (B, W, D) normalised features
    codes: dict[str, torch.Tensor]  # part -> (B, latent_steps, groups, layers); empty when not quantised
    commit_loss: torch.Tensor  # scalar, summed over parts


@dataclass
class MotionTokens:
    """The tokens of one hand's motion: ``ids`` (blocks, tokens_per_block) int64 plus what decoding
    needs to give back the same clip (its true length, side and frame rate)."""

    ids: np.ndarray
    num_frames: int
    side: str = "right"
    fps: float = 15.0


def fill_invalid(motion: HandMotion) -> HandMotion:
    """Replace frames with ``valid == False`` by the nearest valid frame (values there are meaningless)."""
    valid = np.asarray(motion.valid, bool)
    if valid.all():
        return motion
    if not valid.any():
        raise InputError("HandMotion", "valid", "at least one valid frame", "none")
    idx = np.flatnonzero(valid)
    T = len(valid)
    pos = np.searchsorted(idx, np.arange(T))
    left = idx[np.clip(pos - 1, 0, len(idx) - 1)]
    right = idx[np.clip(pos, 0, len(idx) - 1)]
    src = np.where(np.abs(np.arange(T) - left) <= np.abs(right - np.arange(T)), left, right)
    return replace(
        motion,
        global_orient=motion.global_orient[src],
        hand_pose=motion.hand_pose[src],
        wrist_pos=motion.wrist_pos[src],
    )


def pad_frames(x: torch.Tensor, n: int) -> torch.Tensor:
    """(T, ...) -> (n, ...) by repeating the last frame (n >= T >= 1)."""
    if x.shape[0] >= n:
        return x[:n]
    return torch.cat([x, x[-1:].expand((n - x.shape[0],) + x.shape[1:])], 0)


class MotionTokenizer(nn.Module):
    """Part-level GRQ-VAE. Features are given raw (un-normalised); normalisation stats are buffers
    saved with the weights."""

    #: the config class ``from_pretrained`` reads config.json into (its ``model_type`` says the class)
    config_class: type[TokenizerConfig] = TokenizerConfig

    def __init__(self, config: TokenizerConfig, normalizer: FeatureNormalizer | None = None):
        super().__init__()
        self.config = config
        self.spec = config.spec
        self.layout = token_layout(config)
        D = self.spec.dim
        norm = normalizer or FeatureNormalizer(torch.zeros(D), torch.ones(D))
        self.register_buffer("feature_mean", norm.mean.clone().float())
        self.register_buffer("feature_std", norm.std.clone().float())
        self.parts = nn.ModuleDict({p: PartAutoencoder(config.part_dim(p), config, p) for p in config.parts})
        self._hand_models: dict[str, HandModel] = {}

    # --- normalisation -------------------------------------------------------------------------------
    @property
    def normalizer(self) -> FeatureNormalizer:
        return FeatureNormalizer(self.feature_mean, self.feature_std, min_std=0.0)

    def set_normalizer(self, normalizer: FeatureNormalizer) -> None:
        D = self.spec.dim
        if normalizer.mean.shape != (D,) or normalizer.std.shape != (D,):
            raise InputError("normalizer", "mean/std", f"shape ({D},)", str(tuple(normalizer.mean.shape)))
        self.feature_mean.copy_(normalizer.mean)
        self.feature_std.copy_(normalizer.std)

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.feature_mean) / self.feature_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.feature_std + self.feature_mean

    def _split(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"hand": x} if not self.config.part_level else split_parts(self.spec, x)

    def _merge(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return parts["hand"] if not self.config.part_level else merge_parts(self.spec, parts)

    @torch.no_grad()
    def init_linear_skip(self, feats: torch.Tensor) -> None:
        """PCA-initialise every part's linear paths from raw training windows (N, window_frames, D)."""
        if not self.config.linear_skip:
            return
        x = self.normalize(self._check_window(feats, "init_linear_skip"))
        for part, xp in self._split(x).items():
            self.parts[part].init_linear_skip(xp)

    # --- hand model ------------------------------------------------------------------------------------
    def hand_model(self, side: str = "right", mano_dir: str | None = None) -> HandModel:
        """The hand model of ``side``: the one given to ``set_hand_model``, else the process-wide model named
        by the config (``handvla.hand.registry.shared_hand_model``)."""
        model = self._hand_models.get(side)
        if model is None:
            model = registry.shared_hand_model(self.config.hand_model, side, mano_dir)
        return model

    def set_hand_model(self, model: HandModel) -> None:
        self._hand_models[model.side] = model

    # --- core ------------------------------------------------------------------------------------------
    def _check_window(self, feats: torch.Tensor, where: str) -> torch.Tensor:
        W, D = self.config.window_frames, self.spec.dim
        if not isinstance(feats, torch.Tensor):
            feats = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
        if feats.dim() != 3 or feats.shape[1:] != (W, D):
            raise InputError(
                where,
                "features",
                f"shape (batch, {W}, {D}) ({self.spec.name}, one block)",
                str(tuple(feats.shape)),
            )
        if not torch.isfinite(feats).all():
            raise InputError(where, "features", "finite values", "NaN or inf")
        return feats.float()

    def forward(self, feats: torch.Tensor, quantize: bool = True) -> TokenizerOutput:
        """Training pass. feats (B, W, D) raw -> reconstruction (normalised), codes, commitment loss.

        With ``quantize=False`` the latents bypass the quantiser (auto-encoder warm-up)."""
        x = self.normalize(self._check_window(feats, "MotionTokenizer.forward"))
        recon, codes, commit = {}, {}, x.new_zeros(())
        for part, xp in self._split(x).items():
            m = self.parts[part]
            z = m.encoder(xp.transpose(1, 2)).transpose(1, 2)  # (B, latent_steps, code_dim)
            if quantize:
                q = m.quantizer(z)
                z, codes[part] = q.quantized, q.codes
                commit = commit + q.commit_loss
            recon[part] = m.decoder(z.transpose(1, 2)).transpose(1, 2)  # (B, W, Dp)
        return TokenizerOutput(self._merge(recon), codes, commit)

    @torch.no_grad()
    def encode_codes(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw features (B, W, D) -> {part: (B, latent_steps, groups, layers) codes}. Never updates codebooks."""
        x = self.normalize(self._check_window(feats, "MotionTokenizer.encode"))
        codes = {}
        for part, xp in self._split(x).items():
            m = self.parts[part]
            z = m.encoder(xp.transpose(1, 2)).transpose(1, 2)
            codes[part] = m.quantizer(z, update=False).codes
        return codes

    @torch.no_grad()
    def encode(self, feats: torch.Tensor, side: str | Sequence[str] = "right") -> torch.Tensor:
        """Raw features (B, window_frames, D) of B blocks of ``side``'s hand (the tokenizer's frame: left hands
        mirrored) -> motion ids (B, tokens_per_block) int64 (with end points, the bins of each block's wrist
        at its last real frame, ``frames_per_block - 1``, first; the side matters only to end points in the
        camera frame, ``config.end_point_frame``)."""
        codes = self.encode_codes(feats)
        ends = None
        if self.layout.end_point_bins:
            wrist = feats[:, self.config.frames_per_block - 1, self.spec.slices()["wrist_pos"]]
            ends = self.end_point_bins(torch.as_tensor(wrist, dtype=torch.float32), side)
        return self.layout.pack(codes, ends)

    # --- end points (config.end_point_space, config.end_point_frame) ---------------------------------
    def _to_end_point_frame(self, wrist: torch.Tensor, side: str | Sequence[str]) -> torch.Tensor:
        """`in_end_point_frame` in this tokenizer's ``config.end_point_frame``."""
        return in_end_point_frame(wrist, side, self.config.end_point_frame)

    def end_point_bins(self, wrist: torch.Tensor, side: str | Sequence[str] = "right") -> torch.Tensor:
        """(..., 3) wrist positions of ``side``'s hand in the tokenizer's frame (metres, left hands mirrored;
        ``side`` one for all or one per leading row) -> (..., 3) bins of ``config.end_point_space`` in
        ``config.end_point_frame`` (values outside ``end_point_span`` go to the first / last bin). A
        camera-frame point as "right": its place, the ids any hand ending there states in the camera frame."""
        lo, hi = (torch.tensor(v, dtype=torch.float32) for v in self.config.end_point_span)
        n = self.config.end_point_bins
        w = self._to_end_point_frame(wrist.float(), side)
        b = torch.floor((end_point_coded(self.config.end_point_space, w) - lo) / (hi - lo) * n)
        return b.clamp(0, n - 1).long()

    def end_point_targets(self, decoded: torch.Tensor, bins: Any, side: str | Sequence[str] = "right") -> torch.Tensor:
        """Where blocks end once moved to their end-point ids: (..., 3) decoded block ends of ``side``'s hand
        (tokenizer frame) and their (..., 3) bins -> the point of each bin's cell nearest the decoded end, per
        axis of the space, in the tokenizer's frame (the decoded end itself when it lies in the cell: the bins
        say which cell, the codes where inside it; the first and last bins reach out to infinity, as encoding
        clips values beyond the span into them)."""
        lo, hi = (torch.tensor(v, dtype=torch.float64) for v in self.config.end_point_span)
        n = self.config.end_point_bins
        b = torch.as_tensor(bins).double()
        w = (hi - lo) / n
        inset = 1e-3 * w  # inside the cell, so that encoding the moved end gives the same bin back
        cell_lo = torch.where(b <= 0, torch.full_like(b, -torch.inf), lo + b * w + inset)
        cell_hi = torch.where(b >= n - 1, torch.full_like(b, torch.inf), lo + (b + 1) * w - inset)
        space = self.config.end_point_space
        c = end_point_coded(space, self._to_end_point_frame(torch.as_tensor(decoded).double(), side))
        moved = end_point_uncoded(space, torch.maximum(torch.minimum(c, cell_hi), cell_lo))
        return self._to_end_point_frame(moved, side)

    def _move_to_end_points(self, feats: torch.Tensor, ids: torch.Tensor, n: int, side: str = "right") -> torch.Tensor:
        """Shift the decoded wrist path (T, D) so that each block ends in its stated end point's cell
        (`end_point_targets`): the shift is the target minus the decoded position at each block's last kept
        frame, linear in time between those frames and from zero at the first frame (the decoded start is
        kept)."""
        F_ = self.config.frames_per_block
        nb = math.ceil(n / F_)
        knots = [min((b + 1) * F_, n) - 1 for b in range(nb)]
        ws = self.spec.slices()["wrist_pos"]
        ends = self.end_point_targets(feats[knots, ws], self.layout.end_point_bins_of(ids[:nb]), side).float()
        shift = ends - feats[knots, ws]
        xs = ([0] if knots[0] > 0 else []) + knots
        ys = torch.cat([shift.new_zeros(1, 3), shift]) if knots[0] > 0 else shift
        t = torch.arange(n, dtype=torch.float32)
        out = feats.clone()
        for a in range(3):
            out[:n, ws.start + a] += torch.as_tensor(np.interp(t.numpy(), xs, ys[:, a].numpy()), dtype=feats.dtype)
        return out

    @torch.no_grad()
    def decode(self, ids: Any) -> torch.Tensor:
        """Motion ids (B, tokens_per_block) -> raw features (B, window_frames, D) (the last
        window_frames - frames_per_block frames are padding). The codes' reconstruction: end-point ids move
        the wrist only where blocks are joined (`decode_sequence`)."""
        codes = self.layout.unpack(self.layout.validate(ids, "MotionTokenizer.decode"))
        parts = {}
        for part, c in codes.items():
            m = self.parts[part]
            z = m.quantizer.decode_codes(c)
            parts[part] = m.decoder(z.transpose(1, 2)).transpose(1, 2)
        return self.denormalize(self._merge(parts))

    # --- sequences -------------------------------------------------------------------------------------
    def blocks_from_sequence(self, feats: torch.Tensor) -> torch.Tensor:
        """(T, D) -> (blocks, window_frames, D): cut into blocks of frames_per_block frames; the last
        partial block and every block's padding repeat the block's last frame."""
        F_, W = self.config.frames_per_block, self.config.window_frames
        T = feats.shape[0]
        if T == 0:
            raise InputError("features", "frames", "at least one frame", "0")
        n = math.ceil(T / F_)
        return torch.stack([pad_frames(feats[i * F_ : (i + 1) * F_], W) for i in range(n)])

    @torch.no_grad()
    def encode_sequence(self, feats: torch.Tensor, batch_size: int = 256, side: str = "right") -> torch.Tensor:
        """Raw features (T, D) of ``side``'s hand (tokenizer frame) at the tokenizer's fps -> ids
        (ceil(T / frames_per_block), tokens_per_block)."""
        if not isinstance(feats, torch.Tensor):
            feats = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
        if feats.dim() != 2 or feats.shape[1] != self.spec.dim:
            raise InputError(
                "encode_sequence", "features", f"shape (T, {self.spec.dim})", str(tuple(feats.shape))
            )
        blocks = self.blocks_from_sequence(feats.float())
        return torch.cat([self.encode(blocks[i : i + batch_size], side) for i in range(0, len(blocks), batch_size)])

    @torch.no_grad()
    def decode_sequence(
        self, ids: Any, num_frames: int | None = None, batch_size: int = 256, side: str = "right"
    ) -> torch.Tensor:
        """ids (blocks, tokens_per_block) of ``side``'s hand -> raw features (T, D) in the tokenizer's frame:
        each block's padding frames are dropped, the blocks joined, then cut to ``num_frames`` (default: blocks
        x frames_per_block); with end points the wrist path is then moved to end each block where its
        end-point ids say (`_move_to_end_points`; the side matters only to ids in the camera frame)."""
        ids = self.layout.validate(ids, "decode_sequence")
        F_ = self.config.frames_per_block
        total = ids.shape[0] * F_
        if num_frames is not None and not (1 <= num_frames <= total):
            raise InputError(
                "decode_sequence",
                "num_frames",
                f"between 1 and {total} for {ids.shape[0]} blocks",
                str(num_frames),
            )
        feats = torch.cat([self.decode(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)])
        feats = feats[:, :F_].reshape(total, -1)[: num_frames or total]
        if self.layout.end_point_bins:
            feats = self._move_to_end_points(feats, ids, len(feats), side)
        return feats

    # --- motion ----------------------------------------------------------------------------------------
    def _check_fps(self, fps: float, where: str) -> None:
        if abs(float(fps) - self.config.fps) > 1e-3 * self.config.fps:
            raise InputError(
                where,
                "fps",
                f"{self.config.fps:g} frames per second (resample first, see handvla.hand.io)",
                f"{fps:g}",
            )

    def motion_features(self, motion: HandMotion) -> torch.Tensor:
        """A motion (either side) -> raw features (T, D) in the right-hand frame (left hands mirrored)."""
        motion = fill_invalid(motion)
        if motion.side == "left":
            motion = motion.mirrored()
        return motion_to_features(self.spec, motion, self.hand_model("right"))

    @torch.no_grad()
    def encode_motion(self, motion: HandMotion) -> MotionTokens:
        """One hand's motion at the tokenizer's fps -> ``MotionTokens`` (ids (blocks, 128) int64).

        Invalid frames are filled from the nearest valid frame; the last partial second is padded by
        repeating its last frame and the true length is recorded in ``num_frames``."""
        if not isinstance(motion, HandMotion):
            raise InputError("encode_motion", "motion", "a HandMotion", type(motion).__name__)
        self._check_fps(motion.fps, "encode_motion")
        ids = self.encode_sequence(self.motion_features(motion), side=motion.side)
        return MotionTokens(ids.numpy().astype(np.int64), len(motion), motion.side, self.config.fps)

    @torch.no_grad()
    def decode_motion(
        self,
        ids: Any,
        side: str | None = None,
        betas: np.ndarray | None = None,
        fps: float | None = None,
        num_frames: int | None = None,
    ) -> HandMotion:
        """Motion ids (blocks, 128) or ``MotionTokens`` -> ``HandMotion`` of ``side`` (default right, or
        the tokens' side) with shape ``betas`` (default zeros), at the tokenizer's fps."""
        if isinstance(ids, MotionTokens):
            side = side or ids.side
            num_frames = num_frames if num_frames is not None else ids.num_frames
            ids = ids.ids
        side = side or "right"
        if side not in ("left", "right"):
            raise InputError("decode_motion", "side", "'left' or 'right'", repr(side))
        if fps is not None:
            self._check_fps(fps, "decode_motion")
        betas = np.zeros(10, np.float32) if betas is None else np.asarray(betas, np.float32)
        if betas.shape != (10,):
            raise InputError("decode_motion", "betas", "shape (10,)", str(betas.shape))
        feats = self.decode_sequence(ids, num_frames, side=side)
        p = features_to_params(self.spec, feats)
        motion = HandMotion(
            global_orient=p["global_orient"].numpy(),
            hand_pose=p["hand_pose"].numpy(),
            wrist_pos=p["wrist_pos"].numpy(),
            betas=betas,
            side="right",
            fps=self.config.fps,
            hand_model=self.config.hand_model,
        )
        return motion.mirrored() if side == "left" else motion

    @torch.no_grad()
    def final_wrist_positions(self, last_blocks: Any, sides: Sequence[str], batch_size: int = 1024) -> np.ndarray:
        """(N, tokens_per_block) motion ids, each the LAST block of a motion -> (N, 3) float64: where that
        motion's wrist ends (the block's last frame, metres, the frame of ``sides[i]``: left hands mirrored
        back), as `decode_motion` of the whole motion would give it. Blocks decode independently, so only
        the last one is decoded; many motions decode as one batch (e.g. to choose among sampled answers)."""
        ids = self.layout.validate(last_blocks, "final_wrist_positions")
        sides = list(sides)
        if len(sides) != len(ids) or not set(sides) <= {"left", "right"}:
            raise InputError("final_wrist_positions", "sides", f"{len(ids)} of 'left' / 'right'", repr(sides)[:80])
        F_ = self.config.frames_per_block
        feats = torch.cat([self.decode(ids[i : i + batch_size])[:, F_ - 1] for i in range(0, len(ids), batch_size)])
        wrist = features_to_params(self.spec, feats)["wrist_pos"]
        if self.layout.end_point_bins:  # moved into the stated end point's cell, as decode_motion moves it
            wrist = self.end_point_targets(wrist, self.layout.end_point_bins_of(ids), sides)
        wrist = wrist.numpy().astype(np.float64)
        wrist[:, 0] *= np.where(np.asarray(sides) == "left", -1.0, 1.0)
        return wrist

    def motion_joints(self, motion: HandMotion) -> np.ndarray:
        """Joints (T, 21, 3) in metres of a motion through the tokenizer's hand model (its side, betas)."""
        return registry.motion_joints(motion, self.hand_model(motion.side))

    # --- save / load -----------------------------------------------------------------------------------
    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights for ``save_pretrained``: everything but the EMA sums (rebuilt from codebook x usage)."""
        return {
            k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.endswith(".ema_sum")
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (weights, codebooks, normalisation stats)."""

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": str(FORMAT_VERSION),
            "model_type": self.config.model_type,
            "features": self.config.features,
        }
        atomic_write_bytes(directory / WEIGHTS_NAME, st_save(self.inference_state_dict(), metadata=meta))
        self.config.save(directory / CONFIG_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MotionTokenizer:
        """Load a folder written by ``save_pretrained``. Missing or corrupted files -> CheckpointError."""

        directory = Path(directory)
        if not directory.is_dir():
            raise MissingResourceError(f"{directory}: tokenizer checkpoint folder not found")
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise CheckpointError(
                    f"{p}: missing (a tokenizer checkpoint needs {CONFIG_NAME} and {WEIGHTS_NAME})"
                )
        raw = read_json(cfg_path, dict, CheckpointError)
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{cfg_path}: field 'format_version': expected {FORMAT_VERSION}, got {version!r}"
            )
        # folders saved before ``encode_beam`` existed encoded greedily: their ids (and any model trained on
        # them) stay the same
        raw.setdefault("encode_beam", 1)
        try:
            config = load_config(cls.config_class, base=raw, what=str(cfg_path))
        except ConfigError as e:  # it names the file and the field
            raise CheckpointError(str(e)) from None
        try:
            state = load_file(str(w_path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{w_path}: not a readable safetensors file ({e})") from None
        model = cls(config)
        model._load_checkpoint_state(state, w_path)
        return model.eval()

    def _load_checkpoint_state(self, state: dict[str, torch.Tensor], w_path: Path) -> None:
        """Check ``state`` (read from ``w_path``) against this model and load it (CheckpointError naming the
        file and tensor otherwise)."""
        model = self
        expected = model.inference_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{w_path}: tensors do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for k, v in expected.items():
            if state[k].shape != v.shape or state[k].dtype != v.dtype:
                raise CheckpointError(
                    f"{w_path}: tensor '{k}': expected {tuple(v.shape)} {v.dtype}, got "
                    f"{tuple(state[k].shape)} {state[k].dtype}"
                )
            if v.dtype.is_floating_point and not torch.isfinite(state[k]).all():
                raise CheckpointError(f"{w_path}: tensor '{k}' holds NaN or inf")
        model.load_state_dict(state, strict=False)
        with torch.no_grad():
            for part in model.parts.values():
                q = part.quantizer
                q.ema_sum.copy_(q.codebook * q._smoothed_usage(q.ema_usage)[..., None])


def in_end_point_frame(wrist: torch.Tensor, side: str | Sequence[str], frame: str) -> torch.Tensor:
    """(..., 3) positions in the tokenizer's frame of ``side``'s hand (one side, or one per leading row) -> the
    frame of end-point ids ``frame`` (``TokenizerConfig.end_point_frame``), and back (the map is its own
    inverse): unchanged in the 'hand' frame; in the 'camera' frame a left hand's x is negated (un-mirrored)."""
    if frame != "camera":
        return wrist
    per_row = not isinstance(side, str)
    sides = list(side) if per_row else [side]
    if not set(sides) <= {"left", "right"} or (per_row and (wrist.dim() < 2 or len(sides) != len(wrist))):
        raise InputError("end points", "side", f"'left' / 'right', or one per row of {tuple(wrist.shape)}",
                         repr(side)[:80])  # fmt: skip
    sign = torch.tensor([-1.0 if s == "left" else 1.0 for s in sides], dtype=wrist.dtype)
    if per_row:
        sign = sign.reshape(-1, *([1] * (wrist.dim() - 1)))
    return torch.cat([wrist[..., :1] * sign, wrist[..., 1:]], -1)


def end_point_coded(space: str, wrist: torch.Tensor) -> torch.Tensor:
    """(..., 3) wrist positions (metres) -> the values end-point bins divide: themselves ('xyz'), or
    x / z, y / z, z ('ray': where the point is in the image, then its depth; z floored at 1 mm)."""
    if space == "xyz":
        return wrist
    z = wrist[..., 2].clamp_min(1e-3)
    return torch.stack([wrist[..., 0] / z, wrist[..., 1] / z, wrist[..., 2]], -1)


def end_point_uncoded(space: str, c: torch.Tensor) -> torch.Tensor:
    """The inverse of `end_point_coded`: (..., 3) values of ``space`` -> positions in metres."""
    if space == "xyz":
        return c
    z = c[..., 2]
    return torch.stack([c[..., 0] * z, c[..., 1] * z, z], -1)


def with_end_points(
    mt: MotionTokenizer, space: str = "ray", bins: int = 64, span: Sequence[Sequence[float]] | None = None,
    motions: Sequence[HandMotion] = (), margin: float = 0.05, frame: str = "hand",
) -> MotionTokenizer:
    """A copy of ``mt`` whose blocks also state where they end (``TokenizerConfig.end_point_space``, in
    ``frame``: ``TokenizerConfig.end_point_frame``): the same weights and codes, ``3 x bins`` more ids. The
    bins divide ``span`` ([[lo x3], [hi x3]]), else the span of the block ends of ``motions`` in ``frame``
    (0.5th to 99.5th percentile, widened by ``margin`` of it on each side), else the space's default
    (`END_POINT_RANGES`)."""
    if space not in ("xyz", "ray"):
        raise InputError("with_end_points", "space", "'xyz' or 'ray'", repr(space))
    if frame not in ("hand", "camera"):
        raise InputError("with_end_points", "frame", "'hand' or 'camera'", repr(frame))
    if span is None and motions:
        F_ = mt.config.frames_per_block
        ws = mt.spec.slices()["wrist_pos"]
        ends = [in_end_point_frame(mt.blocks_from_sequence(mt.motion_features(m))[:, F_ - 1, ws], m.side, frame)
                for m in motions]  # fmt: skip
        coded = end_point_coded(space, torch.cat(ends)).numpy()
        lo, hi = np.percentile(coded, 0.5, axis=0), np.percentile(coded, 99.5, axis=0)
        pad = margin * np.maximum(hi - lo, 1e-3)
        span = [(lo - pad).tolist(), (hi + pad).tolist()]
    update = {"end_point_space": space, "end_point_bins": int(bins), "end_point_frame": frame,
              "end_point_range": None if span is None else [[float(v) for v in span[0]], [float(v) for v in span[1]]]}
    config = TokenizerConfig(**{**mt.config.model_dump(), **update})
    out = MotionTokenizer(config)
    out.load_state_dict(mt.state_dict())
    out._hand_models = dict(mt._hand_models)
    return out.eval()


@torch.no_grad()
def calibrated_tokenizer(motions: list[HandMotion], config: TokenizerConfig, seed: int = 0) -> MotionTokenizer:
    """An UNTRAINED tokenizer whose feature normaliser and codebooks (k-means on its random encoder's latents)
    are fitted to ``motions``: blocks get distinct, deterministic ids at once (an all-zero codebook would give
    every block the same ids), but its decoder does not reconstruct motion. For tests and throughput
    benchmarks, where the ids' structure matters and their meaning does not."""
    torch.manual_seed(seed)
    mt = MotionTokenizer(config)
    feats = [mt.motion_features(m) for m in motions if np.asarray(m.valid).any()]
    if not feats:
        raise InputError("calibrated_tokenizer", "motions", "at least one motion with a valid frame", "none")
    mt.set_normalizer(FeatureNormalizer.fit(feats))
    blocks = torch.cat([mt.blocks_from_sequence(f) for f in feats])
    for part, xp in mt._split(mt.normalize(blocks)).items():
        m = mt.parts[part]
        m.quantizer.init_codebooks(m.encoder(xp.transpose(1, 2)).transpose(1, 2))
    return mt.eval()


__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "GroupedResidualQuantizer",
    "MotionTokenizer",
    "MotionTokens",
    "calibrated_tokenizer",
    "fill_invalid",
    "with_end_points",
]
