"""Established segmenters trained and run on msseg's preprocessed cache, in the peer
environment (peers/setup.sh: PyTorch and MONAI, never msseg's own dependencies).

  python peers/peer.py train --model=dynunet --cache=CACHE --workdir=W \
      --time_s=time_main:534,time_suite:1100 --steps=steps_main:1400,steps_suite:3000
  python peers/peer.py predict --workdir=W --snapshot=time_main --cache=CACHE --split=test \
      --output=W/pred/time_main

Models (`--model`):
- `dynunet`: nnU-Net's network as MONAI ships it (DynUNet), planned as nnU-Net plans a 3D
  full-resolution U-Net for this patch and spacing (isotropic 3^3 kernels, a stride-2 stage
  while the feature map stays >= 4 voxels, 32 filters doubling to at most 320, instance norm,
  leaky ReLU), deep supervision on the two next-coarsest outputs (weights 1, 1/2, 1/4,
  normalised), Dice + cross-entropy, SGD with Nesterov momentum 0.99 and lr 0.01, sliding
  windows with overlap 0.5 and Gaussian blending;
- `monai_diffusion`: a diffusion segmenter from MONAI's generative components:
  DiffusionModelUNet on the image concatenated to the noisy one-hot mask (scaled to [-1, 1]),
  DDPMScheduler (1000 steps, linear betas) for training at uniform timesteps, the network's
  output read as the clean mask's logits (Diff-UNet's x0 target, with Dice + cross-entropy),
  sampled with DDIMScheduler at `--sampler_steps` (msseg's DDIM steps);
- `monai_unet`: MONAI's UNet as its 3D segmentation example builds it (channels 16-256,
  strides 2, two residual units, batch norm), Dice + cross-entropy, Adam lr 1e-3.

All train on the cache's train split with msseg's patch, batch and foreground share (a patch
centred on a random voxel of a random foreground label with p = 0.67, else anywhere) and
msseg's left/right flip (the leaf ids swapped by the protocol's mirror), at a constant learning
rate: a snapshot taken after time T is the model a run of length T ends with. Training is
resumable (`W/state.pt`, saved every minute and at each snapshot): a later call with more
snapshots or a larger `--max_s` goes on from where the last one stopped. Snapshots are taken
when the training time (the loop's wall clock, including the first steps' warm-up and the
saves) reaches each `--time_s` and the step count each `--steps`; the run ends when all are
taken or at `--max_s` of training time. `W/snapshots.json` records each snapshot's step and
training seconds, `W/progress.json` where the run stopped.

`predict` writes, per case of the split, `<case>.npz` with `probs` [X, Y, Z, K] (float16) on
the cache's grid and the inference `seconds`, `windows` and `network_evals`, and
`probabilities.json` (the cache's preprocessing, the protocol, the snapshot, the versions):
what `tools/evaluate.py --probs` scores exactly as msseg's own segmentations.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss

MODELS = ("dynunet", "monai_diffusion", "monai_unet")
FOREGROUND_RATIO = 0.67  # msseg's data.pipeline.foreground_ratio
FLIP_PROB = 0.5  # msseg's data.pipeline.flip_lr_prob
STATE_EVERY_S = 60.0
NUM_TIMESTEPS = 1000


# ----------------------------------------------------------------------------- the cache


class Cache:
    """msseg's preprocessed cache: manifest.json and per case image / label / fg arrays."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise SystemExit(f"peer: {path}: no manifest (build the cache with msseg first)")
        self.manifest = json.loads(path.read_text())
        protocol = self.manifest["protocol"]
        self.num_classes = len(protocol["leaves"])
        self.mirror = np.asarray(protocol["leaf_mirror"], np.int64)
        self.config = self.manifest["config"]

    def cases(self, split: str) -> list[str]:
        # the manifest's order: the dataset's, which evaluate.py's --max_cases follows
        names = [n for n, c in self.manifest["cases"].items() if c["split"] == split]
        if not names:
            raise SystemExit(f"peer: {self.root}: no cases in split {split!r}")
        return names

    def array(self, case: str, kind: str) -> np.ndarray:
        return np.load(self.root / self.manifest["cases"][case]["files"][kind])

    def pad_value(self, case: str) -> float:
        return float(self.manifest["cases"][case]["pad_value"])

    def training_set(self) -> list[dict]:
        out = []
        for name in self.cases("train"):
            label = self.array(name, "label")
            bad = np.unique(label[label >= self.num_classes])
            if bad.size:  # IGNORE (partial labels): the peers' losses have no ignore value
                raise SystemExit(
                    f"peer: {name}: label values {bad.tolist()} outside 0..{self.num_classes - 1}"
                    " (partially labelled cases are not supported by the peers)"
                )
            fg = self.array(name, "fg").astype(np.int64)
            out.append(
                {
                    "image": self.array(name, "image").astype(np.float32),
                    "label": label.astype(np.int64),
                    "fg": {int(i): fg[fg[:, 0] == i, 1:] for i in np.unique(fg[:, 0])},
                    "pad": self.pad_value(name),
                }
            )
        return out


def crop(array: np.ndarray, start: np.ndarray, size: tuple[int, ...], fill: float) -> np.ndarray:
    """array[start : start + size], the part outside the array filled with `fill`."""
    out = np.full(size, fill, array.dtype)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.asarray(size), array.shape)
    src = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
    out[dst] = array[src]
    return out


def sample_batch(cases, rng, patch, batch, mirror) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for _ in range(batch):
        case = cases[rng.integers(len(cases))]
        shape = np.asarray(case["image"].shape)
        if case["fg"] and rng.random() < FOREGROUND_RATIO:
            ids = sorted(case["fg"])
            rows = case["fg"][ids[rng.integers(len(ids))]]
            centre = rows[rng.integers(len(rows))]
        else:
            centre = rng.integers(0, shape)
        start = centre - np.asarray(patch) // 2
        image = crop(case["image"], start, patch, case["pad"])
        label = crop(case["label"], start, patch, 0)
        if rng.random() < FLIP_PROB:  # left/right (axis 0 of RAS+), the leaf ids swapped
            image, label = image[::-1], mirror[label[::-1]]
        images.append(image)
        labels.append(label)
    return np.stack(images)[:, None].copy(), np.stack(labels)[:, None].copy()


# ----------------------------------------------------------------------------- the models


def nnunet_plan(patch: tuple[int, ...], max_filters: int = 320) -> dict:
    """nnU-Net's plan for isotropic spacing: stride-2 stages while every axis of the feature
    map stays >= 4 voxels (at most 5 poolings), 3^3 kernels, 32 filters doubling to 320."""
    size = np.asarray(patch)
    strides = [[1, 1, 1]]
    while len(strides) < 6 and np.all(size // 2 >= 4) and np.all(size % 2 == 0):
        strides.append([2, 2, 2])
        size = size // 2
    filters = [min(32 * 2**i, max_filters) for i in range(len(strides))]
    return {
        "kernel_size": [[3, 3, 3]] * len(strides),
        "strides": strides,
        "upsample_kernel_size": strides[1:],
        "filters": filters,
    }


def build(name: str, num_classes: int, patch: tuple[int, ...]) -> torch.nn.Module:
    if name == "dynunet":
        from monai.networks.nets import DynUNet

        plan = nnunet_plan(patch)
        supervised = min(2, len(plan["strides"]) - 2)  # none for a 2-stage network
        return DynUNet(
            3,
            1,
            num_classes,
            **plan,
            norm_name=("INSTANCE", {"affine": True}),
            deep_supervision=supervised > 0,
            deep_supr_num=max(supervised, 1),
        )
    if name == "monai_unet":
        from monai.networks.nets import UNet

        return UNet(
            3,
            1,
            num_classes,
            channels=(16, 32, 64, 128, 256),
            strides=(2, 2, 2, 2),
            num_res_units=2,
            norm="batch",
        )
    if name == "monai_diffusion":
        from monai.networks.nets import DiffusionModelUNet

        return DiffusionModelUNet(
            3,
            1 + num_classes,
            num_classes,
            num_res_blocks=1,
            channels=(16, 32, 64, 64),
            attention_levels=(False, False, False, False),
            norm_num_groups=8,
        )
    raise SystemExit(f"peer: unknown model {name!r} (one of {', '.join(MODELS)})")


def optimiser(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if name == "dynunet":  # nnU-Net's optimiser, at its initial learning rate
        return torch.optim.SGD(
            model.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5
        )
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def one_hot(labels: torch.Tensor, k: int) -> torch.Tensor:
    """[B, 1, ...] ids -> [B, K, ...] float one-hot."""
    return torch.nn.functional.one_hot(labels[:, 0], k).movedim(-1, 1).float()


class Loss:
    def __init__(self, name: str, num_classes: int):
        self.name, self.k = name, num_classes
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        if name == "monai_diffusion":
            from monai.networks.schedulers import DDPMScheduler

            self.scheduler = DDPMScheduler(NUM_TIMESTEPS, prediction_type="sample")

    def __call__(self, model, image, label, generator) -> torch.Tensor:
        if self.name == "dynunet":  # [B, 1 + supervised, K, ...], the coarser ones upsampled
            out = model(image)
            outputs = out.unbind(1) if out.ndim == 6 else (out,)
            weights = torch.tensor([0.5**i for i in range(len(outputs))])
            weights = weights / weights.sum()
            return sum(w * self.dice_ce(o, label) for w, o in zip(weights, outputs, strict=True))
        if self.name == "monai_unet":
            return self.dice_ce(model(image), label)
        x0 = one_hot(label, self.k) * 2 - 1
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, NUM_TIMESTEPS, (x0.shape[0],), generator=generator)
        noisy = self.scheduler.add_noise(x0, noise, t)
        return self.dice_ce(model(torch.cat([noisy, image], 1), t), label)


# ----------------------------------------------------------------------------- training


def parse_pairs(text: str, kind) -> dict:
    out = {}
    for item in filter(None, (text or "").split(",")):
        name, _, value = item.partition(":")
        if not value:
            raise SystemExit(f"peer: {item!r}: expected NAME:VALUE")
        out[name] = kind(value)
    return out


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def train(args) -> None:
    torch.set_num_threads(args.threads)
    cache = Cache(args.cache)
    patch = tuple(args.patch)
    work = Path(args.workdir)
    (work / "snapshots").mkdir(parents=True, exist_ok=True)
    times, steps = parse_pairs(args.time_s, float), parse_pairs(args.steps, int)
    settings = {
        "model": args.model,
        "cache": str(Path(args.cache).resolve()),
        "patch": list(patch),
        "batch": args.batch,
        "seed": args.seed,
        "num_classes": cache.num_classes,
    }
    settings_path = work / "settings.json"
    if settings_path.exists():
        old = json.loads(settings_path.read_text())
        if old != settings:
            raise SystemExit(f"peer: {work} was trained with other settings: {old}")
    else:
        atomic_json(settings, settings_path)
    torch.manual_seed(args.seed)
    model = build(args.model, cache.num_classes, patch)
    opt = optimiser(args.model, model)
    loss_fn = Loss(args.model, cache.num_classes)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    step, elapsed = 0, 0.0
    record_path = work / "snapshots.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if (work / "state.pt").exists():
        state = torch.load(work / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = state["rng"]
        gen.set_state(state["gen"])
        step, elapsed = state["step"], state["elapsed"]
        print(f"peer: resumed {work} at step {step} ({elapsed:.0f} s)", flush=True)
    late = [n for n, v in times.items() if n not in record and elapsed > v]
    late += [n for n, v in steps.items() if n not in record and step > v]
    if late:  # budgets run out of order: such a snapshot would carry the wrong label
        raise SystemExit(
            f"peer: {work} is at step {step} ({elapsed:.0f} s), past snapshot(s) "
            f"{', '.join(late)}: run the budgets in order"
        )
    data = cache.training_set()
    params = sum(p.numel() for p in model.parameters())
    print(f"peer: {args.model}, {params} parameters, {len(data)} training cases", flush=True)

    def save_state():
        state = {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "rng": rng.bit_generator.state,
            "gen": gen.get_state(),
            "step": step,
            "elapsed": elapsed,
        }
        atomic_save(state, work / "state.pt")

    def due() -> list[str]:
        names = [n for n, t in times.items() if n not in record and elapsed >= t]
        return names + [n for n, s in steps.items() if n not in record and step >= s]

    def pending() -> bool:
        return any(n not in record for n in (*times, *steps))

    log = open(work / "log.jsonl", "a")
    model.train()
    last_state = elapsed
    while pending() and elapsed < args.max_s:
        start = time.perf_counter()
        image, label = sample_batch(data, rng, patch, args.batch, cache.mirror)
        loss = loss_fn(model, torch.from_numpy(image), torch.from_numpy(label), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if not math.isfinite(loss.item()):
            raise SystemExit(f"peer: {args.model}: loss is {loss.item()} at step {step}")
        if step % 20 == 0:
            log.write(json.dumps({"step": step, "train_s": round(elapsed, 2), "loss": loss.item()}))
            log.write("\n")
            log.flush()
        names = due()
        for name in names:  # the save counts in the training time, as msseg's checkpoints do
            atomic_save(model.state_dict(), work / "snapshots" / f"{name}.pt")
        elapsed += time.perf_counter() - start
        if names or elapsed - last_state >= STATE_EVERY_S:
            t0 = time.perf_counter()
            for name in names:
                record[name] = {"step": step, "train_s": round(elapsed, 2)}
            # the record first: a run stopped between the two resumes from the older state
            # and goes past the snapshot again, instead of finding it passed and unrecorded
            atomic_json(record, record_path)
            save_state()
            elapsed += time.perf_counter() - t0
            last_state = elapsed
            if names:
                print(
                    f"peer: snapshot {', '.join(names)} at step {step}, {elapsed:.0f} s", flush=True
                )
    save_state()
    atomic_json(record, record_path)
    # where the run stands: a later call with longer budgets resumes from here
    atomic_json({"step": step, "train_s": round(elapsed, 2)}, work / "progress.json")
    if missed := [n for n in (*times, *steps) if n not in record]:
        print(f"peer: stopped at --max_s={args.max_s} before {', '.join(missed)}", flush=True)


# ----------------------------------------------------------------------------- inference


def predictor(name: str, model, num_classes: int, steps: int, generator):
    """A window batch [B, 1, ...] -> probabilities [B, K, ...], and network evaluations per
    window."""
    if name != "monai_diffusion":
        return (lambda x: torch.softmax(model(x), 1)), 1
    from monai.networks.schedulers import DDIMScheduler

    scheduler = DDIMScheduler(NUM_TIMESTEPS, prediction_type="sample")
    scheduler.set_timesteps(steps)
    # MONAI 1.6.1's set_timesteps spaces the steps by linspace(999, 0, n) while step() goes
    # back by 1000 // n: the network would be told another noise level than x carries.
    # Evenly spaced steps (800, 600, ..., 0 for 5) agree with step().
    scheduler.timesteps = torch.arange(steps - 1, -1, -1) * (NUM_TIMESTEPS // steps)

    def chain(image):
        x = torch.randn((image.shape[0], num_classes, *image.shape[2:]), generator=generator)
        probs = None
        for t in scheduler.timesteps:
            logits = model(torch.cat([x, image], 1), torch.full((image.shape[0],), int(t)))
            probs = torch.softmax(logits, 1)
            x, _ = scheduler.step(probs * 2 - 1, int(t), x)
        return probs

    return chain, steps


@torch.no_grad()
def predict(args) -> None:
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    settings = json.loads((work / "settings.json").read_text())
    record = json.loads((work / "snapshots.json").read_text()).get(args.snapshot)
    weights = work / "snapshots" / f"{args.snapshot}.pt"
    if record is None or not weights.exists():
        raise SystemExit(f"peer: {work}: no snapshot {args.snapshot!r}")
    cache = Cache(args.cache)
    name, k, patch = settings["model"], settings["num_classes"], tuple(settings["patch"])
    model = build(name, k, patch)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    overlap = args.overlap if args.overlap is not None else (0.5 if name == "dynunet" else 0.25)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    cases = cache.cases(args.split)[: args.max_cases or None]
    for case in cases:
        target = out / f"{case}.npz"
        if target.exists():
            continue
        gen = torch.Generator().manual_seed(args.seed)
        fn, evals = predictor(name, model, k, args.sampler_steps, gen)
        image = torch.from_numpy(cache.array(case, "image").astype(np.float32))[None, None]
        windows = []

        def counted(x, fn=fn, windows=windows):
            windows.append(x.shape[0])
            return fn(x)

        start = time.perf_counter()
        probs = sliding_window_inference(
            image,
            patch,
            args.batch,
            counted,
            overlap=overlap,
            mode="gaussian",
            cval=cache.pad_value(case),
        )
        seconds = time.perf_counter() - start
        probs = probs[0].movedim(0, -1).numpy().astype(np.float16)
        tmp = out / f"{case}.tmp.npz"
        np.savez(
            tmp,
            probs=probs,
            seconds=seconds,
            windows=sum(windows),
            network_evals=sum(windows) * evals,
        )
        os.replace(tmp, target)
        print(f"peer: {case}: {seconds:.1f} s, {sum(windows)} windows", flush=True)
    diffusion = name == "monai_diffusion"
    info = {  # what tools/evaluate.py --probs reads (msseg.inference.probabilities.ProbabilityMaps)
        "preprocess": cache.config,
        "protocol": cache.manifest["protocol"]["name"],
        "network_evals_per_window": args.sampler_steps if diffusion else 1,
        "sampler": {"kind": "ddim", "steps": args.sampler_steps} if diffusion else {},
        "overlap": overlap,
        "producer": {
            "model": name,
            "snapshot": args.snapshot,
            **record,
            "blend": "gaussian",
            "windows_per_call": args.batch,
            "seed": args.seed,
            "threads": args.threads,
            "versions": versions(),
        },
    }
    atomic_json(info, out / "probabilities.json")


def versions() -> dict:
    from importlib import metadata

    return {p: metadata.version(p) for p in ("torch", "monai", "numpy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", required=True, choices=MODELS)
    t.add_argument("--cache", required=True)
    t.add_argument("--workdir", required=True)
    t.add_argument("--patch", type=int, nargs=3, default=(48, 48, 48))
    t.add_argument("--batch", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--time_s", default="", help="NAME:SECONDS,... snapshots at training times")
    t.add_argument("--steps", default="", help="NAME:STEPS,... snapshots at step counts")
    t.add_argument("--max_s", type=float, default=float("inf"), help="stop here regardless")
    t.add_argument("--threads", type=int, default=os.cpu_count())
    p = sub.add_parser("predict")
    p.add_argument("--workdir", required=True)
    p.add_argument("--snapshot", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--output", required=True)
    p.add_argument("--overlap", type=float, default=None, help="default: 0.5 dynunet, else 0.25")
    p.add_argument("--batch", type=int, default=2, help="windows per network call")
    p.add_argument("--sampler_steps", type=int, default=5, help="DDIM steps (monai_diffusion)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_cases", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    train(args) if args.command == "train" else predict(args)


if __name__ == "__main__":
    main()
