"""sample.py's output folder: reruns, failures, volumes.csv, unusable --output paths, the
ensemble's variance file, the label colour tables (output folder and model directory) and the
progress lines.

Tiny models with random params (configs/tiny.py, built as `msseg.train.setup.random_model`
does) segment tiny real NIfTI scans through `cohort.run`: the outputs are what matters here,
not their quality.
"""

import dataclasses
import io as _io
import json
import os
import re
import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from msseg import io, labels, names
from msseg.data.prepare import PreprocessConfig
from msseg.diffusion import segment as seg
from msseg.errors import InputError
from msseg.export import format as fmt
from msseg.inference import cohort, postprocess, predict, progress
from msseg.inference import model as model_lib
from msseg.models.unet import MultiscaleUNet
from msseg.train import setup as setup_lib

ROOT = Path(__file__).parents[1]


def _random_model(diffusion: bool) -> model_lib.LoadedModel:
    """configs/tiny.py's model as `setup_lib.random_model` builds it, its params drawn with
    numpy on the shapes `jax.eval_shape` gives: no compiled initialiser (~20 s on 2 cores)."""
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.model.diffusion = diffusion
    s = setup_lib.setup_for(c, labels.get_protocol("mni-tissue"))
    prep = PreprocessConfig(spacing=tuple(float(v) for v in c.data.spacing))
    facts = setup_lib.model_facts(s, dataclasses.asdict(prep))
    loaded = model_lib.in_memory(facts, s.protocol, None)
    unet = dataclasses.replace(s.model.cfg, remat=False)
    x = jnp.zeros((1, *loaded.patch, unet.in_channels))
    t = jnp.zeros((1,), jnp.int32) if diffusion else None
    shapes = jax.eval_shape(MultiscaleUNet(unet).init, jax.random.key(0), x, t)
    rng = np.random.default_rng(0)

    def draw(a):
        fan_in = int(np.prod(a.shape[:-1])) if len(a.shape) > 1 else 100
        return jnp.asarray(rng.normal(0, fan_in**-0.5, a.shape), a.dtype)

    return dataclasses.replace(loaded, params=jax.tree.map(draw, shapes))


@pytest.fixture(scope="module")
def model():
    return _random_model(diffusion=False)  # one forward pass per window


@pytest.fixture(scope="module")
def diffusion_model():
    return _random_model(diffusion=True)


def _scan(path: Path) -> Path:
    """A 4 mm head-like blob, 20x22x18 voxels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    g = np.indices((20, 22, 18)).astype(np.float32)
    blob = 100 * np.exp(-((g - np.array([10, 11, 9])[:, None, None, None]) ** 2).sum(0) / 30)
    nib.save(nib.Nifti1Image(blob.astype(np.float32), np.diag([4.0, 4.0, 4.0, 1.0])), path)
    return path


def _opts(model, level="leaves") -> predict.Options:
    return predict.Options(model_lib.sampler_config(model), level=level)


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_rerun_keeps_the_earlier_outputs(model, tmp_path):
    scan = _scan(tmp_path / "in" / "case.nii.gz")
    out = tmp_path / "out"
    r = cohort.run(model, [scan], out, _opts(model, "all"))
    done, failures = r.done, r.failures
    assert [d.name for d in done] == ["case"] and not failures
    before = _contents(out)
    levels = [f"case_seg_level{lev}.nii.gz" for lev in range(len(model.protocol.levels()))]
    assert set(before) == {
        "case_seg.nii.gz",
        *levels,
        "case_uncertainty.nii.gz",  # a deterministic model: no ensemble, no variance file
        "case_qc.png",
        "volumes.csv",
        "labels_lut.txt",
        "labels_itksnap.txt",
    }

    blob = scan.read_bytes()
    scan.write_bytes(blob[: len(blob) // 2])  # the input replaced by a truncated copy
    r = cohort.run(model, [scan], out, _opts(model))  # leaves: no level files
    done, failures = r.done, r.failures
    assert not done and [p for p, _ in failures] == [scan]
    assert "truncated or corrupt" in failures[0][1]
    assert _contents(out) == before  # byte-identical, level files too; no temporary files

    scan.write_bytes(blob)
    done = cohort.run(model, [scan], out, _opts(model)).done  # a good rerun replaces them
    assert done
    assert sorted(p.name for p in out.iterdir()) == sorted(set(before) - set(levels))


def test_staging_renames_only_when_every_file_was_written(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")
    (tmp_path / "stale.txt").write_text("stale")
    with pytest.raises(RuntimeError, match="disk full"):
        with predict.Staging() as stage:
            stage.stale.append(tmp_path / "stale.txt")
            stage.path(tmp_path / "a.txt").write_text("new a")
            stage.path(tmp_path / "b.txt")
            raise RuntimeError("disk full")  # b never written
    assert _contents(tmp_path) == {"a.txt": b"old a", "b.txt": b"old b", "stale.txt": b"stale"}
    with predict.Staging() as stage:
        stage.stale.append(tmp_path / "stale.txt")
        stage.path(tmp_path / "a.txt").write_text("new a")
        stage.path(tmp_path / "b.txt")
        with pytest.raises(RuntimeError, match="b.txt"):
            stage.commit()  # a staged file missing: nothing is replaced
    assert _contents(tmp_path) == {"a.txt": b"old a", "b.txt": b"old b", "stale.txt": b"stale"}
    with predict.Staging() as stage:
        stage.stale.append(tmp_path / "stale.txt")
        tmp = stage.path(tmp_path / "x_seg.nii.gz")
        assert tmp.name.startswith(".x_seg.") and tmp.name.endswith(".tmp.nii.gz")
        tmp.write_bytes(b"new")
        stage.commit()
    assert _contents(tmp_path) == {"a.txt": b"old a", "b.txt": b"old b", "x_seg.nii.gz": b"new"}


@pytest.mark.parametrize(
    "content,fragments",
    [
        ("case,Left-Thing,Right-Thing\nx,1.0,2.0\n", ["another label protocol", "Left-Thing"]),
        (b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00binary", ["unreadable volumes.csv"]),
        ("name,volume\nx,3\n", ["no 'case' column"]),
        ("case,a\nx,1,2,3\n", ["garbled volumes.csv", "line 2"]),
    ],
)
def test_a_foreign_volumes_csv_is_refused_before_any_file(model, tmp_path, content, fragments):
    scan = _scan(tmp_path / "in" / "case.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    table = out / "volumes.csv"
    if isinstance(content, str):
        table.write_text(content)
    else:
        table.write_bytes(content)
    before = _contents(out)
    with pytest.raises(InputError) as err:
        cohort.run(model, [scan], out, _opts(model))
    message = str(err.value)
    assert message.startswith(f"{table}: ")
    assert "choose another --output or move the file away" in message
    for fragment in fragments:
        assert fragment in message
    assert _contents(out) == before  # nothing segmented, nothing written


def test_volumes_csv_rows_are_replaced_per_case(model, tmp_path):
    a, b = _scan(tmp_path / "in" / "a.nii.gz"), _scan(tmp_path / "in" / "b.nii.gz")
    out = tmp_path / "out"
    cohort.run(model, [a, b], out, _opts(model))
    rows = (out / "volumes.csv").read_text().splitlines()
    assert rows[0].split(",") == ["case", *model.protocol.id_names()]
    assert [r.split(",")[0] for r in rows[1:]] == ["a", "b"]
    cohort.run(model, [b], out, _opts(model))
    assert (out / "volumes.csv").read_text().splitlines() == rows


def test_an_unusable_output_folder_is_refused_before_any_file(model, tmp_path):
    scan = _scan(tmp_path / "in" / "case.nii.gz")
    plain = tmp_path / "file.txt"
    plain.write_text("mine")
    for output, problem in [
        (plain / "out", f"cannot create the output folder: {plain} is not a folder"),
        (plain / "a" / "b", f"cannot create the output folder: {plain} is not a folder"),
        (plain, "cannot create the output folder: a file of that name exists"),
    ]:
        with pytest.raises(InputError) as err:
            cohort.run(model, [scan], output, _opts(model))
        assert str(err.value) == f"{output}: {problem}"
    assert plain.read_text() == "mine"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="locked/out: cannot create the output folder"):
            cohort.run(model, [scan], locked / "out", _opts(model))


def test_find_inputs_skips_hidden_files(tmp_path):
    for name in ("case.nii.gz", ".case_seg.nii.gz.0123abcd.tmp.nii.gz", "._case.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in predict.find_inputs(str(tmp_path))] == ["case.nii.gz"]


def test_flip_tta_averages_in_the_mirror_images_probabilities_with_sides_swapped(model):
    """tta=flip: the mirror image is segmented too (its own noise stream), its probabilities
    mirrored back with left and right leaves swapped and averaged in; windows count both
    passes. A volume of one window makes the result mirror-equivariant."""
    cfg = model_lib.sampler_config(model)
    plain = predict.Segmenter(model, predict.Options(cfg))
    flip = predict.Segmenter(model, predict.Options(cfg, tta="flip"))
    mirror = np.asarray(model.protocol.leaf_mirror)
    assert (
        sorted(mirror) == list(range(model.num_classes))
        and (mirror != np.arange(len(mirror))).any()
    )
    image = np.random.default_rng(0).normal(size=(19, 17, 15)).astype(np.float32)
    key = jax.random.key(0)
    a, _, n = plain.segment_array(image, key)
    b, _, _ = plain.segment_array(image[::-1].copy(), jax.random.fold_in(key, predict._FLIP_STREAM))
    probs, entropy, windows = flip.segment_array(image, key)
    np.testing.assert_allclose(probs, (a + b[::-1][..., mirror]) / 2, atol=1e-6)
    assert windows == 2 * n
    np.testing.assert_allclose(
        entropy, -(probs * np.log(np.maximum(probs, 1e-12))).sum(-1), atol=1e-5
    )

    one = np.random.default_rng(1).normal(size=model.patch).astype(np.float32)
    p, _, _ = flip.segment_array(one, key)
    q, _, _ = flip.segment_array(one[::-1].copy(), key)
    np.testing.assert_allclose(q, p[::-1][..., mirror], atol=1e-6)


def test_largest_component_keeps_the_brains_largest_piece_with_its_labels():
    labels = np.zeros((12, 10, 8), np.uint8)
    labels[1:6, 1:6, 1:6] = 2  # 125 voxels, two labels in one piece
    labels[3, 3, 3] = 3
    labels[6, 3, 3] = 1  # face-connected to the big piece
    labels[9:11, 8:10, 6:8] = 5  # 8 voxels, apart
    labels[8, 1, 1] = 4  # 1 voxel, touching the big piece only at a corner
    out = postprocess.largest_component(labels)
    assert out.dtype == np.uint8
    kept = labels.copy()
    kept[9:11, 8:10, 6:8] = 0
    kept[8, 1, 1] = 0
    np.testing.assert_array_equal(out, kept)
    np.testing.assert_array_equal(postprocess.largest_component(kept), kept)  # one piece
    empty = np.zeros((3, 3, 3), np.uint8)
    np.testing.assert_array_equal(postprocess.largest_component(empty), empty)
    np.testing.assert_array_equal(postprocess.apply(labels, "none"), labels)


def _fragmented(model: model_lib.LoadedModel, by: float = 1.8) -> model_lib.LoadedModel:
    """`model` with its background logit raised by `by`: by 1.8 its foreground (on
    `_noise_scan`) breaks into many pieces."""

    def raise_background(path, a):
        head_bias = a.shape == (model.num_classes,) and "bias" in jax.tree_util.keystr(path)
        return a.at[0].add(by) if head_bias else a

    return dataclasses.replace(
        model, params=jax.tree_util.tree_map_with_path(raise_background, model.params)
    )


def _noise_scan(path: Path) -> Path:
    noise = np.random.default_rng(0).gamma(2.0, 50.0, (20, 22, 18)).astype(np.float32)
    nib.save(nib.Nifti1Image(noise, np.diag([4.0, 4.0, 4.0, 1.0])), path)
    return path


def test_brain_mask_cuts_what_hangs_on_the_brain_by_a_thin_bridge_and_fills_holes():
    """A ball (the brain, with a hole) and a blob (false brain in the neck) joined by a tube
    one voxel wide, plus a speck apart: the opening keeps the ball, hole filled; without it
    the blob stays (it is connected)."""
    g = np.indices((40, 30, 30)).astype(np.float32)
    ball = ((g - np.array([12, 15, 15])[:, None, None, None]) ** 2).sum(0) <= 9**2
    blob = ((g - np.array([32, 15, 15])[:, None, None, None]) ** 2).sum(0) <= 5**2
    labels = np.zeros((40, 30, 30), np.uint8)
    labels[ball] = 2
    labels[blob] = 3
    labels[20:28, 15, 15] = 1  # the bridge
    labels[12, 15, 15] = 0  # a hole
    labels[0, 0, 0] = 4  # a speck
    brain = postprocess.brain_mask(labels, (1.0, 1.0, 1.0), open_mm=2.0)
    # an opening smooths the surface: a digital ball loses a few corner voxels, nothing more
    assert not (brain & ~ball).any() and brain[ball].mean() > 0.97 and brain[12, 15, 15]
    kept = postprocess.brain_mask(labels, (1.0, 1.0, 1.0), open_mm=0.0)
    assert kept[blob].all() and kept[ball].all() and not kept[0, 0, 0]
    # in mm: the same scene on a 2 mm grid needs a radius of 2 mm, not 2 voxels
    coarse = postprocess.brain_mask(labels[::2, ::2, ::2], (2.0, 2.0, 2.0), open_mm=2.0)
    assert not coarse[blob[::2, ::2, ::2]].any() and coarse[ball[::2, ::2, ::2]].mean() > 0.95


def test_postprocess_largest_leaves_one_piece_of_what_none_labels(model, tmp_path):
    """Through the Segmenter: `postprocess=largest` returns the labels of `none` on their
    largest face-connected foreground piece and background elsewhere."""
    from scipy import ndimage

    model = _fragmented(model)
    volume = io.load_image(_noise_scan(tmp_path / "scan.nii.gz"))
    cfg = model_lib.sampler_config(model)
    key = jax.random.key(0)
    plain = predict.Segmenter(model, predict.Options(cfg)).segment_volume(volume, key)
    largest = predict.Segmenter(model, predict.Options(cfg, postprocess="largest")).segment_volume(
        volume, key
    )
    pieces, n = ndimage.label(plain.labels > 0)
    assert n > 1  # the case is worth testing
    assert ndimage.label(largest.labels > 0)[1] == 1
    np.testing.assert_array_equal(largest.labels, postprocess.largest_component(plain.labels))
    np.testing.assert_array_equal(largest.entropy, plain.entropy)


def test_bounded_keeps_the_brain_only_near_the_bounding_brain_in_mm():
    """A fine brain (a ball and, joined to it by a thick neck, a blob) bounded by a coarse
    brain (a smaller ball): the blob goes, the ball is kept where it lies within 2 mm of the
    coarse ball, on any grid spacing."""
    g = np.indices((40, 30, 30)).astype(np.float32)
    d = np.sqrt(((g - np.array([12, 15, 15])[:, None, None, None]) ** 2).sum(0))
    ball, small = d <= 9, d <= 8
    neck = np.zeros_like(ball)
    neck[12:, 10:20, 10:20] = True
    fine = ball | neck
    for spacing, grow in (((1.0, 1.0, 1.0), 2.0), ((0.5, 0.5, 0.5), 1.0)):
        kept = postprocess.bounded(fine, small, spacing, grow)
        assert kept[ball].all()  # within 1 voxel of the small ball: 2 mm at 1 mm, 1 mm at 0.5
        assert not kept[30:].any() and not (kept & ~fine).any()
    assert not postprocess.bounded(fine, small, (1.0, 1.0, 1.0), 0.0)[ball & ~small].any()


def test_a_strip_model_segments_the_scan_with_everything_outside_its_brain_set_to_0(
    model, tmp_path
):
    """strip_model: the stripping model's brain (opened by strip_open_mm, largest piece, holes
    filled; its own noise stream) zeroes the rest of the scan, then the model segments that;
    windows add up and the result keeps the original scan (for the QC picture)."""

    volume = io.load_image(_noise_scan(tmp_path / "scan.nii.gz"))
    key = jax.random.key(3)
    cfg = model_lib.sampler_config(model)
    plain = predict.Segmenter(model, predict.Options(cfg)).segment_volume(volume, key)
    brains = []
    # a stripper whose foreground is in pieces (the default opening), and one whose single
    # piece an 8 mm opening trims
    for by, open_mm in ((1.8, None), (1.0, 0.0), (1.0, 8.0)):
        stripper = _fragmented(model, by)
        strip = predict.Segmenter(stripper, predict.Options(cfg)).segment_volume(
            volume, jax.random.fold_in(key, predict._STRIP_STREAM)
        )
        args = () if open_mm is None else (open_mm,)
        brain = postprocess.brain_mask(strip.labels, volume.spacing, *args)
        brains.append(brain)
        assert 0 < brain.sum() < brain.size
        stripped = dataclasses.replace(volume, data=np.where(brain, volume.data, 0))
        want = predict.Segmenter(model, predict.Options(cfg)).segment_volume(stripped, key)
        extra = {} if open_mm is None else {"strip_open_mm": open_mm}
        opts = predict.Options(cfg, strip_model=stripper, **extra)
        got = predict.Segmenter(model, opts).segment_volume(volume, key)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert got.windows == want.windows + strip.windows
        assert got.volume is volume
        assert (plain.labels != got.labels).any()
    assert (brains[1] != brains[2]).any()  # the opening radius is the one asked for


def test_a_bounding_strip_model_keeps_the_strip_model_brain_within_its_own(model, tmp_path):
    """strip_bound_model: the strip model's brain is kept within post.BOUND_MM of the second
    model's brain (its own noise stream, opened likewise); the scan is segmented after that,
    and the windows of all three models add up."""
    volume = io.load_image(_noise_scan(tmp_path / "scan.nii.gz"))
    key = jax.random.key(5)
    cfg = model_lib.sampler_config(model)
    strip, bound = _fragmented(model, 1.0), _fragmented(model, 1.8)
    masks, windows = [], 0
    for m, stream in ((strip, predict._STRIP_STREAM), (bound, predict._BOUND_STREAM)):
        r = predict.Segmenter(m, predict.Options(cfg)).segment_volume(
            volume, jax.random.fold_in(key, stream)
        )
        masks.append(postprocess.brain_mask(r.labels, volume.spacing))
        windows += r.windows
    brain = postprocess.bounded(*masks, volume.spacing)
    assert 0 < brain.sum() < masks[0].sum()  # the bound removes part of the brain
    stripped = dataclasses.replace(volume, data=np.where(brain, volume.data, 0))
    want = predict.Segmenter(model, predict.Options(cfg)).segment_volume(stripped, key)
    opts = predict.Options(cfg, strip_model=strip, strip_bound_model=bound)
    got = predict.Segmenter(model, opts).segment_volume(volume, key)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert got.windows == want.windows + windows
    with pytest.raises(ValueError, match="strip_bound_model bounds a strip_model's brain"):
        predict.Options(cfg, strip_bound_model=bound)


def test_a_strip_model_that_finds_no_brain_is_a_clear_error(model, tmp_path):
    blind = dataclasses.replace(
        model,
        params=jax.tree_util.tree_map_with_path(
            lambda path, a: (
                a.at[0].add(100.0)
                if a.shape == (model.num_classes,) and "bias" in jax.tree_util.keystr(path)
                else a
            ),
            model.params,
        ),
    )
    path = _noise_scan(tmp_path / "scan.nii.gz")
    opts = predict.Options(model_lib.sampler_config(model), strip_model=blind)
    with pytest.raises(InputError, match=r"scan\.nii\.gz: the strip model found no brain"):
        predict.Segmenter(model, opts).segment_volume(io.load_image(path), jax.random.key(0))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "6"])
def test_a_strip_opening_that_is_not_a_distance_is_refused(bad):
    with pytest.raises(ValueError, match=r"strip_open_mm must be a number >= 0"):
        predict.Options(seg.SamplerConfig(), strip_open_mm=bad)


def test_an_unknown_postprocess_is_refused():
    with pytest.raises(ValueError, match=r"postprocess must be one of \('none', 'largest'\)"):
        predict.Options(seg.SamplerConfig(), postprocess="holes")


def test_an_unknown_tta_is_refused():
    with pytest.raises(ValueError, match=r"tta must be one of \('none', 'flip'\), got 'rotate'"):
        predict.Options(seg.SamplerConfig(), tta="rotate")


# ------------------------------------------------------------------ the ensemble's variance


def test_total_variance_is_the_summed_population_variance_and_exactly_0_where_members_agree():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=(3, 6, 4)).astype(np.float32)  # [E=3, 6, 4, K=5]

    def total(p):  # the members' probabilities as fuse receives them (x0 = 2p - 1)
        fused = seg.fuse(jnp.asarray(2 * p - 1)[:, None], "mean")["variance"][0]
        return np.asarray(predict.total_variance(fused, p.shape[-1], p.shape[0]))

    expected = p.astype(np.float64).var(axis=0, ddof=0).sum(-1)
    np.testing.assert_allclose(total(p), expected, rtol=1e-4, atol=1e-6)
    p[:, :3] = p[:1, :3]  # the members agree on half the voxels, bit for bit
    v = total(p)
    assert (v[:3] == 0).all() and (v[3:] > 0).all()  # exactly 0, whatever E (jnp.var is not)
    one_hot = np.eye(5, dtype=np.float32)[[0, 1, 2]][:, None]  # 3 members on 3 leaves
    np.testing.assert_allclose(total(one_hot), [1 - 1 / 3], rtol=1e-5)


def _volume(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_an_ensemble_writes_its_variance_on_the_scans_grid(diffusion_model, tmp_path, capsys):
    model = diffusion_model
    cfg = model_lib.sampler_config(model, steps=1, ensemble=4)
    segmenter = predict.Segmenter(model, predict.Options(cfg))
    # one window: the variance blended from the window is the one the sampling call returns,
    # as the members' total variance (fuse's is the sample variance, ddof 1, mean over leaves)
    image = np.random.default_rng(2).normal(size=model.patch).astype(np.float32)
    key = jax.random.key(5)
    _, _, var, n = segmenter.segment_image(image, key)
    out = segmenter.fn(model.params, image[None, ..., None], jax.random.fold_in(key, 0))
    total = predict.total_variance(np.asarray(out["variance"][0]), model.num_classes, 4)
    np.testing.assert_allclose(var, total, rtol=1e-5, atol=1e-8)
    assert n == 1 and total.max() > 0

    scan = _scan(tmp_path / "in" / "case.nii.gz")
    out_dir = tmp_path / "out"
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(progress, "EVERY", 0.0)  # a line per batch of windows
        r = cohort.run(model, [scan], out_dir, predict.Options(cfg), progress=True)
        done, failures = r.done, r.failures
    assert [d.name for d in done] == ["case"] and not failures
    lines = [x for x in capsys.readouterr().err.splitlines() if "windows, " in x]
    windows = done[0].windows
    assert lines[-1].startswith(f"sample: [1/1] case: {windows}/{windows} windows, ")
    assert len(lines) == windows  # batch 1: one line per window
    variance = nib.load(names.variance(out_dir, "case"))
    seg_img = nib.load(names.segmentation(out_dir, "case"))
    assert variance.shape == seg_img.shape == nib.load(scan).shape
    np.testing.assert_allclose(variance.affine, seg_img.affine)
    v, unc = _volume(names.variance(out_dir, "case")), _volume(names.uncertainty(out_dir, "case"))
    assert v.dtype == np.float32 and np.isfinite(v).all() and v.min() >= 0
    assert v.max() > 0  # the members differ inside the head
    outside = unc == 0  # beyond the head crop: no window, no member, nothing to disagree on
    assert outside[0, 0, 0] and outside[-1, -1, -1]
    assert (v[outside] == 0).all()

    cfg1 = model_lib.sampler_config(model, steps=1, ensemble=1)
    cohort.run(model, [scan], out_dir, predict.Options(cfg1))  # progress off: no lines
    assert "windows, " not in capsys.readouterr().err
    assert not names.variance(out_dir, "case").exists()  # the stale variance file is gone
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "case_qc.png",
        "case_seg.nii.gz",
        "case_uncertainty.nii.gz",
        "labels_itksnap.txt",
        "labels_lut.txt",
        "volumes.csv",
    ]


# ------------------------------------------------------------------ the label colour tables


def _itksnap(path: Path) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """An ITK-SNAP label description file: `IDX -R- -G- -B- -A-- VIS MSH "LABEL"` lines,
    comments from #."""
    row = re.compile(
        r'\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([01])\s+([01])\s+"([^"]*)"\s*'
    )
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = row.fullmatch(line)
        assert m, f"not an ITK-SNAP label line: {line!r}"
        idx, r, g, b = map(int, m.groups()[:4])
        assert max(r, g, b) <= 255 and 0 <= float(m[5]) <= 1 and idx not in out
        out[idx] = (m[8], (r, g, b))
    return out


def _freesurfer(path: Path) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """A FreeSurfer colour LUT: `code name R G B A` lines, comments from #."""
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        code, name, *rgba = line.split()
        assert len(rgba) == 4 and int(code) not in out, line
        out[int(code)] = (name, tuple(int(c) for c in rgba[:3]))
    return out


def _check_tables(folder: Path, protocol: labels.Protocol) -> None:
    expected = {
        int(code): (name, tuple(int(c) for c in rgb))
        for code, name, rgb in zip(
            protocol.raw_codes(), protocol.id_names(), protocol.colours(), strict=True
        )
    }
    lut, itksnap = names.label_tables(folder)
    assert (lut.name, itksnap.name) == ("labels_lut.txt", "labels_itksnap.txt")
    assert _itksnap(itksnap) == expected
    assert _freesurfer(lut) == expected


def test_the_output_folder_holds_the_protocols_colour_tables(model, tmp_path):
    scan = _scan(tmp_path / "in" / "case.nii.gz")
    out = tmp_path / "out"
    cohort.run(model, [scan], out, _opts(model))
    _check_tables(out, model.protocol)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files
    aseg = labels.get_protocol("aseg")  # FreeSurfer's codes: not ids, up to four digits
    predict.write_label_tables(tmp_path / "aseg", aseg)
    _check_tables(tmp_path / "aseg", aseg)


def test_evaluate_keeps_the_colour_tables_with_its_samples_and_reports_progress(
    model, tmp_path, capsys
):
    from msseg.data import mni152
    from msseg.inference import evaluate

    data = mni152.build(mni152.SynthConfig(counts=(0, 0, 1), spacing=4.0), tmp_path, workers=1)
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(progress, "EVERY", 0.0)
        opts = predict.Options(model_lib.sampler_config(model), batch=8)
        evaluate.evaluate_model(
            model, str(data), "test", tmp_path / "report", opts, worst=0, progress=True
        )
    samples = tmp_path / "report" / "samples"
    assert names.segmentation(samples, "mni152_test_000").is_file()
    _check_tables(samples, model.protocol)
    lines = [x for x in capsys.readouterr().err.splitlines() if "windows, " in x]
    assert lines and all(x.startswith("evaluate: depth 0 [1/1] mni152_test_000: ") for x in lines)
    done, total = re.search(r": (\d+)/(\d+) windows", lines[-1]).groups()
    assert done == total


def test_a_model_directory_lists_its_colour_tables_and_loads_without_them(tmp_path):
    from msseg.export import exporter

    protocol = labels.get_protocol("mni-tissue")

    def write(tables: bool):
        def fill(tmp: Path) -> dict:
            for name in (fmt.PARAMS, fmt.CONFIG, fmt.function_file(0)):
                (tmp / name).write_bytes(b"stand-in")
            if tables:
                exporter.write_protocol(protocol, tmp)
            else:  # a directory exported before the tables
                (tmp / fmt.LABELS).write_text(json.dumps(protocol.to_json()))
            return {"functions": {"0": fmt.function_file(0)}}

        return fill

    new = fmt.write_directory(tmp_path / "new", write(True))
    meta = fmt.verify(new)
    assert {fmt.LABELS_LUT, fmt.LABELS_ITKSNAP} <= set(meta["files"])  # checksummed
    _check_tables(new, protocol)
    old = fmt.write_directory(tmp_path / "old", write(False))
    assert fmt.LABELS_LUT not in fmt.verify(old)["files"]  # an older directory still verifies
    (new / fmt.LABELS_ITKSNAP).write_text("edited")
    with pytest.raises(InputError, match="labels_itksnap.txt.*checksum"):
        fmt.verify(new)


# ------------------------------------------------------------------ progress


class _Clock:
    def __init__(self, *times: float):
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def test_progress_lines_come_at_most_every_interval_with_an_eta():
    out = _io.StringIO()
    clock = _Clock(100.0, 103.0, 109.9, 110.0, 112.0, 125.0, 400.0)
    ticker = progress.Ticker("sample: [2/5] case", 8, every=10, stream=out, clock=clock)
    for done in (1, 2, 4, 5, 6):  # at 3, 9.9, 10, 12 and 25 s
        ticker.update(done)
    ticker.update(8, 8)  # at 300 s
    assert out.getvalue().splitlines() == [
        "sample: [2/5] case: 4/8 windows, 10s, eta 10s",
        "sample: [2/5] case: 6/8 windows, 25s, eta 8s",
        "sample: [2/5] case: 8/8 windows, 5m00s",  # all done: no ETA
    ]
    assert clock.times == []


def test_progress_off_prints_nothing_and_auto_follows_the_terminal():
    def no_clock() -> float:
        raise AssertionError("an off ticker reads no clock")

    out = _io.StringIO()
    ticker = progress.Ticker("x", 10, on=False, every=0, stream=out, clock=no_clock)
    for done in range(11):
        ticker.update(done)
    assert out.getvalue() == ""

    class Terminal(_io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress.enabled("auto", Terminal()) and not progress.enabled("auto", _io.StringIO())
    assert progress.enabled("on", _io.StringIO()) and not progress.enabled("off", Terminal())
    with pytest.raises(ValueError):
        progress.enabled("sometimes")


def test_file_etas_and_durations():
    assert progress.eta(60.0, 2, 10) == ", eta 4m00s"  # 30 s a file, 8 left
    assert progress.eta(0.0, 0, 10) == "" and progress.eta(99.0, 10, 10) == ""
    assert [progress.duration(s) for s in (0, 42.4, 310, 3599.6, 7500)] == [
        "0s",
        "42s",
        "5m10s",
        "1h00m",
        "2h05m",
    ]
