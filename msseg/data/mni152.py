"""The embedded `mni152` dataset: synthetic T1 subjects warped from the ICBM152 2009a template.

The template files are the ones the installed nilearn package ships (T1 and the GM/WM
probability maps, 1 mm, uint8); they are located on disk and read with nibabel, never
fetched. The label map follows the mni-tissue rule exactly (`tissue_labels`). Each subject is the
template under a random rotation/scaling/translation and a smooth elastic deformation, with
T1-like intensity changes (tissue contrast, gamma, bias field, Rician noise), written as
real NIfTI files (int16 image, uint8 labels) plus an MSD-style dataset.json into a cache
folder. The folder is built once in a temporary directory and renamed into place; its
manifest.json holds the sha256 of every file, so a damaged or half-written cache is found
(`verify`) and rebuilt.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import importlib.util
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from absl import logging
from scipy import ndimage

from msseg.data import augment, heads
from msseg.files import sha256_file

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
SPLITS = ("train", "val", "test")
BASE_SEED = 20250507  # fixed: every cache built anywhere holds the same subjects
FORMAT_VERSION = 1
CACHE_ENV = "MSSEG_CACHE"
LABEL_NAMES = {
    0: "background",
    1: "left CSF",
    2: "left GM",
    3: "left WM",
    4: "right CSF",
    5: "right GM",
    6: "right WM",
}


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """How subjects are generated. Changing any field gives a different cache folder."""

    counts: tuple[int, int, int] = (24, 4, 8)  # train, val, test
    spacing: float = 1.0  # mm, isotropic; the template's native resolution
    max_rotation_deg: float = 10.0  # per axis, uniform in [-max, max]
    scale_range: tuple[float, float] = (0.9, 1.1)  # per axis
    max_translation_mm: float = 5.0
    elastic_std_mm: float = 2.5  # std of control-point displacements
    elastic_grid_mm: float = 32.0  # control-point spacing of the B-spline deformation
    tissue_contrast: float = 0.1  # GM/WM intensity jitter, relative
    gamma_range: tuple[float, float] = (0.75, 1.35)
    bias_std: float = 0.2  # std of the log bias field
    noise_range: tuple[float, float] = (0.01, 0.04)  # Rician sigma, relative to max intensity
    head: heads.HeadConfig | None = None  # synthetic heads around the brains (None: stripped)

    def fields(self) -> dict:
        """The settings as JSON-ready values (no `head` for skull-stripped sets, as before it
        existed, so their keys and dataset.json are unchanged)."""
        fields = dataclasses.asdict(self)
        if fields["head"] is None:
            del fields["head"]
        return fields

    def key(self) -> str:
        blob = json.dumps(self.fields(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


# the embedded sets by SPEC name: skull-stripped brains, and the same kind of brains (other
# subjects) inside synthetic heads with random contrasts and resolutions
EMBEDDED = {"mni152": SynthConfig(), "mni152-heads": SynthConfig(head=heads.HeadConfig())}


def set_name(cfg: SynthConfig) -> str:
    """The SPEC name of a set: its folder, file and case-id prefix."""
    return "mni152" if cfg.head is None else "mni152-heads"


@dataclasses.dataclass(frozen=True)
class Template:
    """The ICBM152 2009a template: maps in [0, 1], each [X, Y, Z] float32, 1 mm RAS."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    affine: np.ndarray


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: the override, else $MSSEG_CACHE, else ~/.cache/msseg."""
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "msseg")


def template_dir() -> Path:
    """The folder of the installed nilearn package that holds the MNI152 files."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded mni152 set needs the nilearn package (pip install nilearn)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [f for f in TEMPLATE_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise RuntimeError(f"{folder}: this nilearn does not ship the MNI152 files {missing}")
    return folder


@functools.cache
def load_template() -> Template:
    """Reads the template maps (cached per process)."""
    folder = template_dir()
    maps, affine = {}, None
    for key, name in TEMPLATE_FILES.items():
        img = nib.load(folder / name)
        maps[key] = np.asarray(img.dataobj, np.float32) / 255.0
        if affine is not None and not np.allclose(img.affine, affine):
            raise RuntimeError(f"{folder / name}: grid differs from the T1 template")
        affine = img.affine
    return Template(maps["t1"], maps["gm"], maps["wm"], np.asarray(affine, np.float64))


def tissue_labels(
    t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, x_world: np.ndarray
) -> np.ndarray:
    """The mni-tissue rule on maps in [0, 1]. Returns uint8 values 0..6.

    brain = t1 > 0.2; p_csf = clip(1 - gm - wm, 0, 1); tissue = argmax(p_csf, gm, wm) with
    ties going to the first; left where world x < 0. The maps are uint8/255 on the template,
    so the rule is evaluated in units of 1/255 rounded to 1e-4: exact there (T1 = 51 is not
    brain; GM = 126, WM = 3 is a CSF/GM tie, so CSF), and still defined between grid values
    on interpolated maps.
    """
    q = lambda a: np.round(np.asarray(a, np.float64) * 255.0, 4)
    gm, wm = q(gm), q(wm)
    p = np.stack([np.clip(255.0 - gm - wm, 0.0, 255.0), gm, wm])
    tissue = np.argmax(p, axis=0).astype(np.uint8)  # argmax returns the first maximum
    side = np.where(np.asarray(x_world) < 0, 0, 3).astype(np.uint8)
    return np.where(q(t1) > 51.0, 1 + tissue + side, 0).astype(np.uint8)


def template_labels(template: Template) -> np.ndarray:
    """The rule applied on the template's own grid."""
    x = template.affine[0, 0] * np.arange(template.t1.shape[0]) + template.affine[0, 3]
    if not np.allclose(template.affine[:3, :3], np.diag(np.diag(template.affine[:3, :3]))):
        raise RuntimeError("template affine is not axis-aligned")
    return tissue_labels(template.t1, template.gm, template.wm, x[:, None, None])


def _bspline_matrix(n_out: int, n_ctrl: int) -> np.ndarray:
    """[n_out, n_ctrl] cubic B-spline weights spreading n_ctrl control points over n_out."""
    u = np.linspace(1.0, n_ctrl - 2.0, n_out)
    i = np.minimum(np.floor(u).astype(int), n_ctrl - 2)
    t = u - i
    basis = (
        np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3])
        / 6
    )
    w = np.zeros((n_out, n_ctrl))
    for k in range(4):
        np.add.at(w, (np.arange(n_out), np.clip(i - 1 + k, 0, n_ctrl - 1)), basis[k])
    return w


def smooth_field(shape, extent_mm, grid_mm: float, rng: np.random.Generator) -> np.ndarray:
    """[X, Y, Z] float32 smooth random field, unit-variance control points every grid_mm."""
    n_ctrl = [max(4, int(np.ceil(e / grid_mm)) + 3) for e in extent_mm]
    field = rng.standard_normal(n_ctrl)
    for axis, (n, c) in enumerate(zip(shape, n_ctrl, strict=True)):
        field = np.moveaxis(np.tensordot(_bspline_matrix(n, c), field, axes=(1, axis)), 0, axis)
    return field.astype(np.float32)


def subject_grid(template: Template, spacing: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Output shape and affine: the template's field of view at `spacing` mm (same edges)."""
    shape = tuple(max(1, round(n / spacing)) for n in template.t1.shape)
    scale = np.diag([spacing, spacing, spacing, 1.0])
    scale[:3, 3] = (spacing - 1.0) / 2.0
    return shape, template.affine @ scale


def synthesize_subject(
    template: Template, cfg: SynthConfig, rng: np.random.Generator, *, identity: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One subject: (int16 image [X, Y, Z], uint8 labels [X, Y, Z], affine 4x4).

    With identity=True the spatial transform and intensity changes are off, so at 1 mm the
    labels equal `template_labels` exactly (used by the tests to check the rule). With
    `cfg.head` the grid grows around the template's (heads.pad_grid) and the brain is
    rendered inside a synthetic head (heads.head_regions, heads.render), then seen at a random
    resolution.
    """
    shape, affine = subject_grid(template, cfg.spacing)
    if cfg.head is not None:
        shape, affine = heads.pad_grid(shape, affine, cfg.spacing, cfg.head)
    extent = np.asarray(shape) * cfg.spacing
    inv_t = np.linalg.inv(template.affine)
    brain = np.argwhere(template.t1 > 0.2).mean(axis=0)
    centre = template.affine[:3, :3] @ brain + template.affine[:3, 3]
    if identity:
        m, shift = np.eye(3), np.zeros(3)
    else:
        m = augment.random_rotation_scaling(rng, cfg.max_rotation_deg, cfg.scale_range)
        shift = rng.uniform(-cfg.max_translation_mm, cfg.max_translation_mm, 3)
    # source voxel = inv_t @ (centre + m @ (world_out - centre) + shift + displacement)
    lin = inv_t[:3, :3] @ m @ affine[:3, :3]
    off = inv_t[:3, :3] @ (centre - m @ centre + m @ affine[:3, 3] + shift) + inv_t[:3, 3]
    idx = [np.arange(n, dtype=np.float32) for n in shape]
    coords = []
    for k in range(3):
        c = (lin[k, 0] * idx[0])[:, None, None] + (lin[k, 1] * idx[1])[None, :, None]
        coords.append(c + (lin[k, 2] * idx[2] + off[k])[None, None, :])
    if not identity and cfg.elastic_std_mm > 0:
        disp = [
            cfg.elastic_std_mm * smooth_field(shape, extent, cfg.elastic_grid_mm, rng)
            for _ in range(3)
        ]
        for k in range(3):
            coords[k] += sum(inv_t[k, j] * disp[j] for j in range(3))
    # Interpolate only where the source point lies in the template's non-zero box (~1/3 of
    # the grid); everything else is 0 in all three maps.
    nz = np.argwhere(template.t1 > 0)
    lo, hi = nz.min(axis=0) - 1, nz.max(axis=0) + 1
    inside = np.ones(shape, bool)
    for k in range(3):
        inside &= (coords[k] >= lo[k]) & (coords[k] <= hi[k])
    pts = np.stack([c[inside] for c in coords])
    del coords

    def warp(volume: np.ndarray) -> np.ndarray:
        out = np.zeros(shape, np.float32)
        out[inside] = ndimage.map_coordinates(volume, pts, order=1, mode="constant", cval=0.0)
        return out

    t1, gm, wm = warp(template.t1), warp(template.gm), warp(template.wm)
    x_src = template.affine[0, :3] @ pts + template.affine[0, 3]
    labels = np.zeros(shape, np.uint8)  # outside the box the labels are 0 whatever x is
    labels[inside] = tissue_labels(t1[inside], gm[inside], wm[inside], x_src)
    del x_src
    if identity:
        return np.round(t1 * 1000).astype(np.int16), labels, affine
    if cfg.head is None:
        img = t1 * (1 + rng.uniform(-1, 1) * cfg.tissue_contrast * gm)
        img *= 1 + rng.uniform(-1, 1) * cfg.tissue_contrast * wm
        img = np.clip(img, 0, None) ** rng.uniform(*cfg.gamma_range)
    else:
        field = lambda grid_mm: smooth_field(shape, extent, grid_mm, rng)  # noqa: E731
        regions = heads.head_regions(labels > 0, cfg.spacing, cfg.head, rng, field)
        img = heads.render(regions, t1, gm, wm, cfg.spacing, cfg.head, rng)
        del regions
    img *= np.exp(cfg.bias_std * smooth_field(shape, extent, 64.0, rng))
    if cfg.head is not None and rng.random() < cfg.head.lowres_prob:
        img = augment.random_resolution(img, rng, cfg.head.max_slice_mm / cfg.spacing)
    sigma = rng.uniform(*cfg.noise_range) * float(img.max())
    n1, n2 = (sigma * rng.standard_normal(shape, dtype=np.float32) for _ in range(2))
    img = np.sqrt((img + n1) ** 2 + n2**2)
    img *= rng.uniform(700.0, 1300.0) / float(np.percentile(img[labels > 0], 99))
    return np.clip(np.round(img), 0, 32767).astype(np.int16), labels, affine


def _subject_seed(cfg: SynthConfig, split: str, index: int) -> np.random.SeedSequence:
    """Each subject's own stream; the sets with heads draw other subjects than mni152."""
    key = (SPLITS.index(split), index) if cfg.head is None else (SPLITS.index(split), index, 1)
    return np.random.SeedSequence(BASE_SEED, spawn_key=key)


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def _build_subject(root: Path, cfg: SynthConfig, split: str, index: int) -> dict:
    """Writes one subject's image and label files; returns its dataset.json entry."""
    rng = np.random.default_rng(_subject_seed(cfg, split, index))
    image, labels, affine = synthesize_subject(load_template(), cfg, rng)
    sub = "Tr" if split != "test" else "Ts"
    name = f"{set_name(cfg)}_{split}_{index:03d}.nii.gz"
    entry = {"image": f"./images{sub}/{name}", "label": f"./labels{sub}/{name}"}
    _write_nifti(root / entry["image"], image, affine)
    _write_nifti(root / entry["label"], labels, affine)
    return entry


def dataset_dir(cfg: SynthConfig = SynthConfig(), cache: str | os.PathLike | None = None) -> Path:
    """Where the set for `cfg` lives (built or not)."""
    tag = f"{cfg.spacing:g}mm-{'-'.join(map(str, cfg.counts))}"
    return cache_root(cache) / f"{set_name(cfg)}-v{FORMAT_VERSION}-{tag}-{cfg.key()}"


def verify(root: Path) -> str | None:
    """None if the set at `root` is complete and intact, else what is wrong with it."""
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return "no manifest.json (never finished)"
    try:
        files = json.loads(manifest.read_text())["sha256"]
    except (ValueError, KeyError) as e:
        return f"unreadable manifest.json ({e})"
    for rel, digest in files.items():
        path = root / rel
        if not path.is_file():
            return f"missing {rel}"
        if sha256_file(path) != digest:
            return f"checksum mismatch for {rel}"
    return None


def build(
    cfg: SynthConfig = SynthConfig(),
    cache: str | os.PathLike | None = None,
    workers: int | None = None,
) -> Path:
    """Returns the folder of the embedded set, generating it first if it is absent or damaged."""
    final = dataset_dir(cfg, cache)
    for stale in final.parent.glob(final.name + ".tmp-*"):
        if not _pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build
    if final.exists():
        problem = verify(final)
        if problem is None:
            return final
        logging.warning("mni152 cache %s is damaged (%s): rebuilding it", final, problem)
        shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (tmp / sub).mkdir(parents=True)
    jobs = [(s, i) for s, n in zip(SPLITS, cfg.counts, strict=True) for i in range(n)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    start = time.time()
    entries: dict[tuple[str, int], dict] = {}
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold jax threads
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(_build_subject, tmp, cfg, s, i): (s, i) for s, i in jobs}
        for n, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            entries[futures[fut]] = fut.result()
            logging.info("mni152: %d/%d subjects (%.0f s)", n, len(jobs), time.time() - start)
    ordered = {
        s: [entries[(s, i)] for i in range(n)] for s, n in zip(SPLITS, cfg.counts, strict=True)
    }
    what = " (nilearn)" if cfg.head is None else " (nilearn), inside synthetic heads"
    meta = {
        "name": set_name(cfg),
        "description": f"Synthetic T1 subjects warped from the ICBM152 2009a template{what}.",
        "protocol": "mni-tissue",
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "tensorImageSize": "3D",
        "spacing_mm": cfg.spacing,
        "synth_config": cfg.fields(),
        "training": ordered["train"],
        "validation": ordered["val"],
        "test": ordered["test"],
    }
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=1))
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    manifest = {"version": FORMAT_VERSION, "sha256": {f: sha256_file(tmp / f) for f in files}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    try:
        tmp.rename(final)
    except OSError:  # another process finished first; keep its copy if it is intact
        shutil.rmtree(tmp, ignore_errors=True)
        if verify(final) is not None:
            raise
    logging.info("mni152: built %s in %.0f s", final, time.time() - start)
    return final


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
