"""The multiscale 3D U-Net: an entry stem per depth, one prediction head per decoder depth.

Depth d works at 2^-d of the full input grid. An input given at depth e (already
downsampled by 2^e) enters through `stem{e}`; the encoder runs from depth e to the
bottleneck at depth D-1, and the decoder climbs back to depth e, emitting a prediction at
every depth it passes. `__call__` returns a tuple `preds` with `preds[i]` at depth e + i,
shaped [B, X/2^i, Y/2^i, Z/2^i, K] for an input [B, X, Y, Z, C] (finest first; preds[0]
is the prediction at the input's own resolution).

Sizes: the input is edge-padded up to a multiple of 2^(D-1-e) and every output is cropped
back to ceil(size / 2^i), so any size works; patch sizes that divide are exact.

Skips: "unet" concatenates the upsampled decoder with the encoder of the same depth;
"unet3plus" feeds each decoder depth from every encoder depth at or above it (average
pooled down) and every deeper decoder depth (upsampled), each through its own conv,
summed (UNet 3+ full-scale aggregation; a sum keeps the channel count independent of the
entry depth); "unetpp" (UNet++, Zhou et al. 2018) replaces the plain skip with nested dense
skip pathways: node X^{i,j} (`x{i}_{j}`, depth i, j = 1..D-1-i; X^{i,0} is the encoder) is a
decoder stage of depth i over concat(X^{i,0}, .., X^{i,j-1}, up(X^{i+1,j-1})), and the
decoder output of depth i (its prediction head) is the last node of its row, X^{i,D-1-i}, so
the heads stay one per depth. A row reads only itself and the row below: entering at depth
e computes the rows e..D-1 with the same nodes and parameters, none above. Cost, measured
(diffusion, K=4, forward FLOPs of one 64^3 patch from XLA's cost analysis):

  channels, res blocks   unet             unet3plus        unetpp
  (4, 8, 8), 1           24.1k, 2.7 GF    25.7k, 3.1 GF    27.0k, 4.0 GF
  (32, 64, 128), 2       3.80M, 252 GF    3.95M, 310 GF    4.04M, 367 GF
  (16, 32, 64, 128), 1   2.29M, 46 GF     2.57M, 96 GF     2.56M, 104 GF

With D = 2 "unetpp" has one nested node, the decoder: "unet"'s network (other parameter names).

Modes: `diffusion=True` takes concat(noisy mask [K], image) and a timestep;
`diffusion=False` is the deterministic segmenter (image only, no timestep, logits out).
Submodules carry explicit names, so remat on or off loads the same parameters.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from msseg.models import conv
from msseg.models.layers import (
    AttentionBlock,
    Conv3D,
    Norm,
    ResBlock,
    timestep_embedding,
)
from msseg.models.resize import downsample, upsample

SKIPS = ("unet", "unet3plus", "unetpp")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    num_classes: int  # K, the protocol's leaves
    image_channels: int = 1
    channels: tuple[int, ...] = (32, 64, 128)  # per depth; D = len(channels)
    # one count for every depth (an int or a 1-tuple) or one per depth; 0 at a depth leaves
    # it the stem (or the skip concat) and the resampling convs: a cheap full-resolution depth
    num_res_blocks: int | tuple[int, ...] = (2,)
    norm_groups: int = 8
    dropout: float = 0.0
    attention_depths: tuple[int, ...] = ()
    attention_heads: int = 4
    skip: str = "unet"  # "unet" | "unet3plus" | "unetpp"
    dtype: str = "float32"  # compute dtype of activations (and of convolutions by default)
    param_dtype: str = "float32"
    # dtype of the convolutions' inputs/outputs; "bfloat16" with dtype "float32" is mixed
    # precision like autocast: bf16 convolutions, fp32 GroupNorm/SiLU/residuals/params.
    conv_dtype: str | None = None
    remat: bool = False
    diffusion: bool = True
    conv_impl: str = "auto"  # "auto" | "xla" | "slices2d" | "onednn" (msseg.models.conv)

    def __post_init__(self):
        if not self.channels or any(
            not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in self.channels
        ):
            raise ValueError(f"channels must be positive integers per depth, got {self.channels}")
        if self.skip not in SKIPS:
            raise ValueError(f"skip must be one of {SKIPS}, got {self.skip!r}")
        blocks = self.num_res_blocks
        if isinstance(blocks, int):
            blocks = (blocks,)
        elif len(blocks) not in (1, len(self.channels)):
            raise ValueError(
                f"num_res_blocks {self.num_res_blocks} must be one count or one per depth "
                f"({len(self.channels)})"
            )
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in blocks):
            raise ValueError(f"num_res_blocks must be counts >= 0, got {self.num_res_blocks}")
        if any(not 0 <= d < len(self.channels) for d in self.attention_depths):
            raise ValueError(
                f"attention_depths {self.attention_depths} outside 0..{len(self.channels) - 1}"
            )

    @property
    def num_depths(self) -> int:
        return len(self.channels)

    def blocks(self, depth: int) -> int:
        """Residual blocks at `depth` (on the encoder and on the decoder path)."""
        n = self.num_res_blocks
        return n if isinstance(n, int) else n[depth if len(n) > 1 else 0]

    @property
    def in_channels(self) -> int:
        return self.image_channels + (self.num_classes if self.diffusion else 0)


class MultiscaleUNet(nn.Module):
    cfg: UNetConfig

    def _kw(self) -> dict:
        return {"dtype": jnp.dtype(self.cfg.dtype), "param_dtype": jnp.dtype(self.cfg.param_dtype)}

    def _ckw(self) -> dict:
        cdt = None if self.cfg.conv_dtype is None else jnp.dtype(self.cfg.conv_dtype)
        return {**self._kw(), "conv_impl": conv.resolve(self.cfg.conv_impl), "conv_dtype": cdt}

    def _res(self, name: str, features: int):
        cls = nn.remat(ResBlock, static_argnums=(3,)) if self.cfg.remat else ResBlock
        return cls(features, self.cfg.norm_groups, self.cfg.dropout, name=name, **self._ckw())

    def _stage(self, name: str, depth: int, h, temb, train: bool):
        """The residual blocks (and attention) of `depth`, named `{name}_res{i}`/`_attn{i}`."""
        for i in range(self.cfg.blocks(depth)):
            h = self._res(f"{name}_res{i}", self.cfg.channels[depth])(h, temb, train)
            if depth in self.cfg.attention_depths:
                h = AttentionBlock(
                    self.cfg.attention_heads,
                    self.cfg.norm_groups,
                    name=f"{name}_attn{i}",
                    **self._kw(),
                )(h)
        return h

    def _decoder(self, enc: dict, e: int, temb, train: bool) -> dict:
        """The "unet" / "unet3plus" decoder: {depth d: its output} for d = e..D-1."""
        cfg, kw, ckw = self.cfg, self._kw(), self._ckw()
        n_depths = cfg.num_depths
        dec = {n_depths - 1: enc[n_depths - 1]}
        for d in range(n_depths - 2, e - 1, -1):
            if cfg.skip == "unet":
                up = Conv3D(cfg.channels[d], name=f"up{d}", **ckw)(upsample(dec[d + 1], 2))
                h = jnp.concatenate([up, enc[d]], axis=-1)
            else:
                h = 0
                for s in range(e, n_depths):
                    src = (
                        downsample(enc[s], 2 ** (d - s))
                        if s <= d
                        else upsample(dec[s], 2 ** (s - d))
                    )
                    tag = "enc" if s <= d else "dec"
                    h = h + Conv3D(cfg.channels[d], name=f"dec{d}_from_{tag}{s}", **ckw)(src)
                h = Norm(cfg.norm_groups, name=f"dec{d}_fuse_norm", **kw)(h, silu=True)
            dec[d] = self._stage(f"dec{d}", d, h, temb, train)
        return dec

    def _nested(self, enc: dict, e: int, temb, train: bool) -> dict:
        """UNet++ nodes X^{i,j} (`x{i}_{j}`) for depths i >= e, j = 1..D-1-i; {i: X^{i,D-1-i}}.

        X^{i,0} = enc[i]; X^{i,j} = stage_i(concat[X^{i,0}, .., X^{i,j-1}, up(X^{i+1,j-1})])
        with up = nearest x2 then a 3x3x3 conv to channels[i] (`x{i}_{j}_up`). A depth with
        no residual blocks projects the concat back to channels[i] with a 1x1x1 conv
        (`x{i}_{j}_proj`), so widths stay bounded. Row i only reads rows i and i+1, so the
        nodes (and their parameters) at depths >= e are the same for every entry depth e.
        """
        cfg, ckw = self.cfg, self._ckw()
        n_depths = cfg.num_depths
        rows = {i: [enc[i]] for i in range(e, n_depths)}
        for j in range(1, n_depths - e):  # column by column: X^{i+1,j-1} before X^{i,j}
            for i in range(e, n_depths - j):
                name, width = f"x{i}_{j}", cfg.channels[i]
                up = Conv3D(width, name=f"{name}_up", **ckw)(upsample(rows[i + 1][j - 1], 2))
                h = jnp.concatenate([*rows[i], up], axis=-1)
                if cfg.blocks(i) == 0:
                    h = Conv3D(width, kernel=1, name=f"{name}_proj", **ckw)(h)
                rows[i].append(self._stage(name, i, h, temb, train))
        return {i: row[-1] for i, row in rows.items()}

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array | None = None, *, entry_depth: int = 0, train: bool = False
    ) -> tuple[jax.Array, ...]:
        """x [B, X, Y, Z, in_channels] at depth `entry_depth`; t [B] timesteps (diffusion only)."""
        cfg, kw, ckw = self.cfg, self._kw(), self._ckw()
        n_depths, e = cfg.num_depths, entry_depth
        if not 0 <= e < n_depths:
            raise ValueError(f"entry_depth {e} outside 0..{n_depths - 1}")
        if x.shape[-1] != cfg.in_channels:
            raise ValueError(f"expected {cfg.in_channels} input channels, got {x.shape[-1]}")
        if cfg.diffusion and t is None:
            raise ValueError("the diffusion model needs a timestep t")
        if self.is_initializing() and e != 0:
            raise ValueError("initialise with entry_depth=0: it creates every depth's parameters")
        spatial = x.shape[1:4]
        mult = 2 ** (n_depths - 1 - e)
        pad = [(0, -n % mult) for n in spatial]
        x = jnp.pad(x, [(0, 0), *pad, (0, 0)], mode="edge").astype(kw["dtype"])

        temb = None
        if cfg.diffusion:
            dim = 4 * cfg.channels[0]
            temb = timestep_embedding(t, cfg.channels[0])
            temb = nn.Dense(dim, name="time_mlp0", **kw)(temb)
            temb = nn.Dense(dim, name="time_mlp1", **kw)(nn.silu(temb))

        stems = [Conv3D(cfg.channels[d], name=f"stem{d}", **ckw) for d in range(n_depths)]
        if self.is_initializing():  # create every stem's parameters whatever the entry depth
            for d in range(n_depths):
                if d != e:
                    stems[d](x)
        h = stems[e](x)
        enc = {}
        for d in range(e, n_depths):
            h = self._stage(f"enc{d}", d, h, temb, train)
            enc[d] = h
            if d < n_depths - 1:
                h = Conv3D(cfg.channels[d + 1], stride=2, name=f"down{d}", **ckw)(h)

        if cfg.skip == "unetpp":
            dec = self._nested(enc, e, temb, train)
        else:
            dec = self._decoder(enc, e, temb, train)

        heads = [Conv3D(cfg.num_classes, kernel=1, name=f"head{d}", **ckw) for d in range(n_depths)]
        norms = [Norm(cfg.norm_groups, name=f"head{d}_norm", **kw) for d in range(n_depths)]
        preds = []
        for d in range(e, n_depths):
            out = heads[d](norms[d](dec[d], silu=True)).astype(jnp.float32)
            size = [math.ceil(n / 2 ** (d - e)) for n in spatial]
            preds.append(out[:, : size[0], : size[1], : size[2]])
        return tuple(preds)
