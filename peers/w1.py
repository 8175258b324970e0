"""Speed workload W1 in PyTorch, the peers' side of tools/benchmark.py --workload=w1.

  python peers/w1.py --model=monai [--bf16]    # MONAI's DiffusionModelUNet
  python peers/w1.py --model=lean [--bf16]     # a lean channels-last U-Net of the same shape

W1: one 64³ patch (batch 1), 1 image + 7 mask channels in, 7 out, channels 32/64/128, two
residual blocks per level on both paths, GroupNorm 8, SiLU, a sinusoidal timestep embedding,
no attention, AdamW on an MSE loss. Prints one JSON line: the median seconds of a train step
and of a denoiser evaluation (after a warm-up), the parameters, torch's version and threads.
`--bf16` runs the network under CPU autocast.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2) / (dim // 2))
    angles = t[:, None].float() * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], -1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv3d(cin, cout, 3, padding=1)
        self.time = nn.Linear(tdim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv3d(cout, cout, 3, padding=1)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.time(F.silu(emb))[:, :, None, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class LeanUNet(nn.Module):
    """The best case a PyTorch user would write for W1: residual blocks, strided-convolution
    downsampling, nearest upsampling + convolution, concatenated skips."""

    def __init__(self, cin=8, cout=7, channels=(32, 64, 128), blocks=2):
        super().__init__()
        tdim = 4 * channels[0]
        self.base = channels[0]
        self.embed = nn.Sequential(nn.Linear(self.base, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.stem = nn.Conv3d(cin, channels[0], 3, padding=1)
        self.encoder, self.down = nn.ModuleList(), nn.ModuleList()
        c = channels[0]
        for i, co in enumerate(channels):
            self.encoder.append(
                nn.ModuleList(ResBlock(c if j == 0 else co, co, tdim) for j in range(blocks))
            )
            c = co
            if i < len(channels) - 1:
                self.down.append(nn.Conv3d(c, c, 3, stride=2, padding=1))
        self.up, self.decoder = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(channels) - 1)):
            co = channels[i]
            self.up.append(nn.Conv3d(c, co, 3, padding=1))
            self.decoder.append(
                nn.ModuleList(ResBlock(2 * co if j == 0 else co, co, tdim) for j in range(blocks))
            )
            c = co
        self.norm, self.head = nn.GroupNorm(8, c), nn.Conv3d(c, cout, 3, padding=1)

    def forward(self, x, t):
        emb = self.embed(timestep_embedding(t, self.base))
        h, skips = self.stem(x), []
        for i, level in enumerate(self.encoder):
            for block in level:
                h = block(h, emb)
            if i < len(self.down):
                skips.append(h)
                h = self.down[i](h)
        for up, level in zip(self.up, self.decoder, strict=True):
            h = torch.cat([up(F.interpolate(h, scale_factor=2, mode="nearest")), skips.pop()], 1)
            for block in level:
                h = block(h, emb)
        return self.head(F.silu(self.norm(h)))


def build(name: str, classes: int) -> nn.Module:
    if name == "lean":
        return LeanUNet(1 + classes, classes)
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        3,
        1 + classes,
        classes,
        num_res_blocks=2,
        channels=(32, 64, 128),
        attention_levels=(False, False, False),
        norm_num_groups=8,
    )


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("monai", "lean"), default="monai")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = build(args.model, args.classes).to(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    shape = (1, 1 + args.classes, args.size, args.size, args.size)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d)
    target = torch.randn(1, args.classes, args.size, args.size, args.size)
    t = torch.randint(0, 1000, (1,))

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = net(x, t)
        F.mse_loss(out.float(), target).backward()
        opt.step()

    def denoise():
        with torch.inference_mode(), autocast():
            net(x, t)

    result = {
        "peer": {"monai": "monai.DiffusionModelUNet", "lean": "lean-torch-unet"}[args.model],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "bf16": args.bf16,
        "params": sum(p.numel() for p in net.parameters()),
        "train_step_s": median_seconds(train_step, args.repeats),
        "denoise_s": median_seconds(denoise, args.repeats),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
