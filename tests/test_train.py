"""msseg.train: sharded steps, the NaN guard, exact resume, validation Dice, the train binary."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import dataset_of

from msseg.diffusion import losses
from msseg.diffusion import schedule as sch
from msseg.labels import IGNORE, get_protocol
from msseg.models.unet import MultiscaleUNet, UNetConfig
from msseg.train import checkpoint, sharding, step, validate
from msseg.train.loop import NonFiniteError, train
from msseg.train.setup import build_setup, entry_depth, used_ids
from msseg.train.state import TrainConfig, create_state, make_optimizer

ROOT = Path(__file__).parents[1]


def tiny_config(cache, **train):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.data.cache = str(cache)
    c.data.spec = dataset_of(cache)
    c.train.val_depths = (0,)
    c.train.mesh_data = 2  # the batch of 2 over 2 of the 8 fake devices
    for k, v in train.items():
        c.train[k] = v
    return c


def _setup(batch=8, size=16):
    cfg = UNetConfig(num_classes=3, channels=(4, 8), num_res_blocks=1, norm_groups=2)
    model = MultiscaleUNet(cfg)
    s = sch.make_schedule("linear", 100)
    tcfg = TrainConfig(steps=10, lr=1e-2, warmup_steps=0)
    tx = make_optimizer(tcfg)
    k = jax.random.key(0)
    x = jnp.zeros((1, size, size, size, cfg.in_channels))
    params = jax.jit(model.init)(k, x, jnp.zeros((1,), jnp.int32))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (batch, size, size, size))
    batch = {
        "image": rng.normal(size=(batch, size, size, size, 1)).astype(np.float32),
        "label": labels.astype(np.uint8),
    }
    fn = step.make_train_step(model, s, losses.LossConfig(dice_weight=0.5), tx, tcfg)
    return fn, create_state(params, tx), batch


def _run(fn, state, batch, mesh, steps=3, entry=0):
    rep = sharding.replicated(mesh)
    st_sh = jax.tree.map(lambda _: rep, state)
    bs = {k: sharding.batch_sharding(mesh) for k in batch}
    jitted = step.jit_train_step(fn, st_sh, bs, donate=False)
    state = jax.device_put(state, rep)
    losses_ = []
    for _ in range(steps):
        state, m = jitted(state, sharding.shard_batch(batch, mesh), jax.random.key(1), entry)
        losses_.append(float(m["loss"]))
    return state, losses_


def test_data_parallel_step_equals_the_single_device_step():
    fn, state, batch = _setup()
    one, l1 = _run(fn, state, batch, sharding.make_mesh(devices=jax.devices()[:1]))
    eight, l8 = _run(fn, state, batch, sharding.make_mesh(8, 1))
    assert len(eight.params["params"]["stem0"]["kernel"].sharding.device_set) == 8
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(eight.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert int(eight.step) == 3


def test_spatial_sharding_gives_the_same_loss_as_none():
    fn, state, batch = _setup(batch=2)
    _, ref = _run(fn, state, batch, sharding.make_mesh(devices=jax.devices()[:1]), steps=2)
    _, spatial = _run(fn, state, batch, sharding.make_mesh(2, 4), steps=2)
    np.testing.assert_allclose(spatial, ref, rtol=1e-5)
    _, at1 = _run(fn, state, batch, sharding.make_mesh(2, 4), steps=1, entry=1)
    assert np.isfinite(at1).all()


def test_a_non_finite_step_leaves_the_state_unchanged():
    fn, state, batch = _setup(batch=2)
    batch["image"][0, 0, 0, 0, 0] = np.nan
    new, m = jax.jit(fn, static_argnums=3)(state, batch, jax.random.key(0), 0)
    assert not bool(m["finite"])
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_eval_step_is_the_train_objective_without_the_update():
    fn, state, batch = _setup(batch=2)
    model = MultiscaleUNet(
        UNetConfig(num_classes=3, channels=(4, 8), num_res_blocks=1, norm_groups=2)
    )
    eval_step = step.make_eval_step(
        model, sch.make_schedule("linear", 100), losses.LossConfig(dice_weight=0.5)
    )
    key = jax.random.key(1)
    _, trained = jax.jit(fn, static_argnums=3)(state, batch, key, 1)
    evaluated = jax.jit(eval_step, static_argnums=3)(
        state.params, batch, jax.random.fold_in(key, 0), 1
    )
    assert set(evaluated) == set(trained) - {"grad_norm", "lr", "finite"}
    assert "mse/depth1" in evaluated and "mse/depth0" not in evaluated  # absolute depths
    np.testing.assert_allclose(evaluated["loss"], trained["loss"], rtol=1e-5)


def test_mesh_and_batch_checks():
    with pytest.raises(ValueError, match="divide"):
        sharding.make_mesh(data=-1, space=3)
    with pytest.raises(ValueError, match="batch_size=3"):
        sharding.check_batch(3, sharding.make_mesh(8, 1))


def test_entry_depth_is_a_pure_function_of_seed_and_step():
    cfg = TrainConfig(entry_depths=(0, 1), entry_probs=(0.5, 0.5))
    draws = [entry_depth(cfg, 3, i) for i in range(200)]
    assert draws == [entry_depth(cfg, 3, i) for i in range(200)]
    assert 60 < sum(draws) < 140
    assert {entry_depth(TrainConfig(), 3, i) for i in range(20)} == {0}


def test_dice_scores_per_leaf_and_level_match_a_plain_count():
    protocol = get_protocol("mni-tissue")
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 7, (2, 6, 6, 6))
    pred = np.where(rng.random(ref.shape) < 0.8, ref, rng.integers(0, 7, ref.shape))
    ref[0, 0] = IGNORE  # unscored
    scores = validate.dice_scores(pred, ref, protocol)
    names = protocol.id_names()
    member = protocol.membership()
    for i in range(1, len(member) - len(protocol.sets)):
        vals = []
        for p, r in zip(pred, ref, strict=True):
            ok = r != IGNORE
            pm = np.isin(p, np.flatnonzero(member[i])) & ok
            rm = np.isin(r, np.flatnonzero(member[i])) & ok
            vals.append(
                1.0 if pm.sum() + rm.sum() == 0 else 2 * (pm & rm).sum() / (pm.sum() + rm.sum())
            )
        assert scores[names[i]] == pytest.approx(np.mean(vals)), names[i]
    assert "level0" in scores and scores["level0"] >= scores[f"level{len(protocol.levels()) - 1}"]
    assert scores["leaves"] == pytest.approx(
        np.mean([scores[n] for n in names[1 : protocol.num_leaves]])
    )


def _params(workdir):
    params, ema, n = checkpoint.restore_params(workdir)
    return params, ema, n


def _losses(workdir):
    rows = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.slow
def test_resume_equals_a_straight_run_and_nan_stops_cleanly(tiny_mni_cache, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = train(tiny_config(tiny_mni_cache, steps=4, checkpoint_every=0), straight)
    train(tiny_config(tiny_mni_cache, steps=2, checkpoint_every=0), resumed)
    assert _params(resumed)[2] == 2
    # rows a killed run logged after its last checkpoint: the resumed run drops them
    with (resumed / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "loss": 999.0}) + "\n" + '{"step": 4, "lo')
    b = train(tiny_config(tiny_mni_cache, steps=4, checkpoint_every=0), resumed)
    pa, ea, na = _params(straight)
    pb, eb, nb = _params(resumed)
    assert na == nb == 4
    for x, y in zip(jax.tree.leaves((pa, ea)), jax.tree.leaves((pb, eb)), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    la, lb = _losses(straight), _losses(resumed)
    assert [la[s] for s in (3, 4)] == [lb[s] for s in (3, 4)]  # same data and noise after resume
    rows = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == [1, 2, 3, 4]  # each step once, in order
    assert a["val_dice"] == pytest.approx(b["val_dice"], abs=1e-6)
    assert (straight / "config.json").is_file() and (straight / "curves.png").is_file()
    assert {"val/depth0/level0", "val/depth0/Brain", "val_dice"} <= set(a)

    # a diverging run stops before saving anything from a broken state
    broken = tmp_path / "broken"
    with pytest.raises(NonFiniteError, match="NaN/Inf at step"):
        train(tiny_config(tiny_mni_cache, steps=6, lr=1e30, checkpoint_every=1), broken)
    params, _, n = _params(broken)
    assert 1 <= n < 6
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_a_resumed_metrics_log_keeps_each_step_once(tmp_path):
    """Resumed at the checkpoint of step 2, the log drops the rows a killed run wrote after
    it (and a row the kill cut off), so the steps it logs again appear once."""
    from msseg.train.metrics import MetricsLog, read_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)] + [{"step": 2, "val_dice": 0.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')
    log = MetricsLog(tmp_path, total_steps=6, start_step=2)
    kept = [json.loads(x) for x in path.read_text().splitlines()]
    assert kept == [rows[0], rows[1], rows[4]]
    for s in (3, 4, 5, 6):
        log.write(s, {"loss": 0.25})
    steps = [json.loads(x)["step"] for x in path.read_text().splitlines()]
    assert steps == [1, 2, 2, 3, 4, 5, 6]  # step 2: its training row and its validation row
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 2, 3, 4, 5, 6]
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.jsonl"]  # no temp files
    MetricsLog(tmp_path, total_steps=6, start_step=0)  # a fresh run starts the file anew
    assert not path.exists()


def test_train_binary_says_what_is_wrong_with_a_bad_override(tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "train.py"), "--config=configs/tiny.py"]
    cmd += [f"--workdir={tmp_path}", "--config.train.stepz=3"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "stepz" in r.stderr and 'Did you mean "steps"' in r.stderr


def test_validating_a_depth_the_model_never_enters_at_is_refused_before_training(
    tiny_mni_cache,
):

    c = tiny_config(tiny_mni_cache, entry_depths=(0,), val_depths=(0, 1))
    with pytest.raises(ValueError, match=r"val_depths \(0, 1\) includes depths \[1\]"):
        build_setup(c, str(tiny_mni_cache))
    c.train.entry_depths = (0, 1)
    assert build_setup(c, str(tiny_mni_cache)).train.val_depths == (0, 1)


@pytest.mark.slow
def test_datasets_with_different_label_sets_train_together(tiny_mni_cache, tmp_path):
    """A leaf-labelled dataset and a tissue-only one (declared by name in dataset.json) make
    one cache, mixed batches and one finite training run."""
    import nibabel as nib

    full = dataset_of(tiny_mni_cache)
    meta = json.loads((Path(full) / "dataset.json").read_text())
    coarse = tmp_path / "coarse"
    coarse.mkdir()
    entries = []
    to_tissue = np.array([0, 1, 2, 3, 1, 2, 3], np.uint8)  # sides dropped: 1 CSF, 2 GM, 3 WM
    for i, e in enumerate(meta["training"]):
        img, lab = nib.load(Path(full) / e["image"]), nib.load(Path(full) / e["label"])
        nib.save(img, coarse / f"coarse_{i:03d}.nii.gz")  # a new case id, same scan
        codes = to_tissue[np.asarray(lab.dataobj).astype(int)]
        nib.save(nib.Nifti1Image(codes, lab.affine), coarse / f"coarse_{i:03d}_seg.nii.gz")
        entries.append({"image": f"coarse_{i:03d}.nii.gz", "label": f"coarse_{i:03d}_seg.nii.gz"})
    (coarse / "dataset.json").write_text(
        json.dumps(
            {
                "protocol": "mni-tissue",
                "labels": {"0": "Background", "1": "CSF", "2": "GM", "3": "WM"},
                "training": entries,
            }
        )
    )
    c = tiny_config(tiny_mni_cache, steps=3, checkpoint_every=0)
    c.data.cache = str(tmp_path / "cache")
    c.data.spec = f"{full},{coarse}"
    c.data.val_fraction = 0.0
    c.data.pipeline.batch_size = 4
    c.train.mesh_data = 4
    out = train(c, tmp_path / "run")
    assert out["step"] == 3 and np.isfinite(out["val_dice"])
    assert all(np.isfinite(v) for v in _losses(tmp_path / "run").values())
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    protocol = get_protocol("mni-tissue")
    nodes = {protocol.id_of(n) for n in ("CSF", "GM", "WM")}
    coarse_ids = set()
    for cid, rec in manifest["cases"].items():
        ids = set(np.unique(np.load(tmp_path / "cache" / rec["files"]["label"])).tolist())
        if cid.startswith("coarse_"):
            coarse_ids |= ids
            assert ids <= nodes | {0}
        else:
            assert ids <= set(range(7))
    assert coarse_ids == nodes | {0}
    # the loss works in the ids the data uses: the leaves and the three tissue nodes
    assert used_ids(str(tmp_path / "cache"), protocol) == sorted(set(range(7)) | nodes)
    assert used_ids(str(tiny_mni_cache), protocol) == list(range(7))
    # the stream mixes both label sets in its batches
    from msseg.data import pipeline

    cfg = pipeline.PipelineConfig(patch_size=(16, 16, 16), batch_size=4)
    it = iter(
        pipeline.make_dataset(
            str(tmp_path / "cache"),
            "train",
            cfg,
            seed=0,
            shard=pipeline.grain.sharding.NoSharding(),
        )
    )
    mixed = [next(it)["label"] for _ in range(3)]
    assert any(
        any(set(np.unique(p)) & nodes for p in b) and any(set(np.unique(p)) & {2, 5} for p in b)
        for b in mixed
    )
