"""Windows sharded over local devices (predict.Options.devices; sample.py / evaluate.py
--devices): a `data` mesh axis with `batch` windows per device, the chain run per device
under shard_map on both routes; the same segmentation whatever the device count, and the
windows really split over the devices in the compiled program."""

import jax
import nibabel as nib
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from msseg.inference import model as model_lib
from msseg.inference import predict


@pytest.fixture(scope="module")
def image(exported):
    """A test scan of the tiny set, every second voxel: a volume of a few dozen windows."""
    _, _, raw = exported
    scan = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]
    return np.asarray(nib.load(scan).dataobj, np.float32)[::2, ::2, ::2]


@pytest.mark.parametrize("route", ["exported", pytest.param("local", marks=pytest.mark.slow)])
def test_eight_devices_segment_like_one(exported, image, route):
    _, model_dir, _ = exported
    model = model_lib.load_model(model_dir, route=route)
    cfg = model_lib.sampler_config(model, ensemble=2)
    key = jax.random.key(3)
    one = predict.Segmenter(model, predict.Options(cfg, batch=2, overlap=0.5, devices=1))
    eight = predict.Segmenter(model, predict.Options(cfg, batch=2, overlap=0.5, devices=8))
    assert len(eight.devices) == 8 and "8 cpu device(s)" in eight.mesh_text
    p1, _, v1, n1 = one.segment_image(image, key)
    p8, _, v8, n8 = eight.segment_image(image, key)
    # not a multiple of 8 x 2 windows: the last group leaves 7 devices idle
    assert n1 == n8 and n1 % 16 != 0 and n1 > 16
    np.testing.assert_allclose(p8, p1, atol=2e-5)
    np.testing.assert_allclose(v8, v1, atol=2e-5)
    assert (p8.argmax(-1) == p1.argmax(-1)).mean() > 0.9999


def test_the_compiled_call_splits_the_windows_over_the_data_axis(exported):
    _, model_dir, _ = exported
    model = model_lib.load_model(model_dir, route="exported")
    cfg = model_lib.sampler_config(model)
    seg = predict.Segmenter(model, predict.Options(cfg, batch=2, devices=4))
    compiled = seg.lowered().compile()
    params_s, images_s, keys_s = compiled.input_shardings[0]
    assert images_s.spec == P("data") and keys_s.spec == P("data")
    assert images_s.mesh.shape == {"data": 4}
    assert all(s.spec == P() for s in jax.tree.leaves(params_s))  # params replicated
    # each device holds 2 windows of the 8
    assert images_s.shard_shape((8, *seg.patch, 1)) == (2, *seg.patch, 1)
    one = predict.Segmenter(model, predict.Options(cfg, batch=2)).lowered().compile()
    assert one.input_shardings[0][1].is_fully_replicated  # one device: the windows whole


def test_device_counts_are_checked(exported):
    _, model_dir, _ = exported
    model = model_lib.load_model(model_dir, route="exported")
    cfg = model_lib.sampler_config(model)
    with pytest.raises(ValueError, match="9 cpu|local"):
        predict.Segmenter(model, predict.Options(cfg, devices=9))
    with pytest.raises(ValueError, match="devices"):
        predict.Options(cfg, devices=-1)
    # 0: every accelerator, one device on the CPU
    assert len(predict.Segmenter(model, predict.Options(cfg, devices=0)).devices) == 1


@pytest.fixture(scope="module")
def xla_model(exported):
    """The tiny model on the local route with XLA's convolution (GSPMD partitions it along
    space; the oneDNN call would gather the split axis first)."""
    _, model_dir, _ = exported
    return model_lib.load_model(model_dir, route="local", conv_impl="xla")


@pytest.mark.slow  # about a minute on 2 cores
def test_a_2x4_data_by_space_mesh_segments_like_the_unsharded_chain(xla_model, image):
    cfg = model_lib.sampler_config(xla_model, steps=2, ensemble=2)
    key = jax.random.key(5)
    for window in ("whole", (16, 16, 16)):
        mesh = predict.Segmenter(
            xla_model, predict.Options(cfg, batch=1, window=window, devices=2, space=4)
        )
        assert "mesh data=2 x space=4" in mesh.mesh_text
        # the same windows on one device ("whole" rounds the first axis up to a multiple of
        # space there: a window of another size normalises over other voxels)
        same = mesh.window_for(image.shape)
        one = predict.Segmenter(xla_model, predict.Options(cfg, batch=1, window=same))
        p1, _, v1, n1 = one.segment_image(image, key)
        p8, _, v8, n8 = mesh.segment_image(image, key)
        assert n1 == n8 and (n1 == 1) == (window == "whole")
        np.testing.assert_allclose(p8, p1, atol=1e-4)
        np.testing.assert_allclose(v8, v1, atol=1e-4)
        assert (p8.argmax(-1) == p1.argmax(-1)).mean() > 0.999


def test_the_space_sharded_call_splits_each_window_along_its_first_axis(xla_model, image):
    cfg = model_lib.sampler_config(xla_model, steps=2)
    seg = predict.Segmenter(
        xla_model, predict.Options(cfg, batch=2, window="whole", devices=2, space=4)
    )
    window = seg.window_for(image.shape)
    assert window[0] % 8 == 0 and all(w >= s for w, s in zip(window, image.shape, strict=True))
    compiled = seg.lowered(image.shape).compile()
    params_s, images_s, keys_s = compiled.input_shardings[0]
    assert images_s.spec == P("data", None, "space") and keys_s.spec == P("data")
    assert images_s.mesh.shape == {"data": 2, "space": 4}
    assert all(s.spec == P() for s in jax.tree.leaves(params_s))
    x, y, z = window  # each device: one data shard's 2 windows, a quarter of their first axis
    assert images_s.shard_shape((2, 2, x, y, z, 1)) == (1, 2, x // 4, y, z, 1)


def test_space_sharding_settings_are_checked(exported, xla_model):
    _, model_dir, _ = exported
    cfg = model_lib.sampler_config(xla_model)
    exported_model = model_lib.load_model(model_dir, route="exported")
    with pytest.raises(ValueError, match="local route"):
        predict.Segmenter(exported_model, predict.Options(cfg, space=2))
    with pytest.raises(ValueError, match="multiple of"):  # 12 is not a multiple of 2 x space 4
        predict.Segmenter(xla_model, predict.Options(cfg, window=(12, 16, 16), space=4))
    with pytest.raises(ValueError, match="mesh of 4 x space=4"):
        predict.Segmenter(xla_model, predict.Options(cfg, devices=4, space=4))
    with pytest.raises(ValueError, match="window"):
        predict.Options(cfg, window=(16, 16))
    with pytest.raises(ValueError, match="space"):
        predict.Options(cfg, space=0)


def test_other_windows_need_the_local_route(exported):
    _, model_dir, _ = exported
    model = model_lib.load_model(model_dir, route="exported")
    cfg = model_lib.sampler_config(model)
    predict.Segmenter(model, predict.Options(cfg, window=model.patch))  # its own patch: fine
    for window in ("whole", tuple(2 * p for p in model.patch)):
        with pytest.raises(ValueError, match="local route"):
            predict.Segmenter(model, predict.Options(cfg, window=window))


def test_the_window_flag_reads_sizes_or_whole():
    from types import SimpleNamespace

    from msseg.inference import cli

    def read(text):
        return cli.window(SimpleNamespace(window=text))

    assert read(None) is None and read("whole") == predict.WHOLE
    assert read("64") == (64, 64, 64) and read("64,32,48") == (64, 32, 48)
    with pytest.raises(ValueError, match="--window"):
        read("big")


@pytest.mark.slow  # about a minute on 2 cores
def test_the_throughput_benchmark_reports_the_chain_memory_per_device_by_mesh(exported):
    from msseg.inference import throughput

    _, model_dir, _ = exported
    model = model_lib.load_model(model_dir, route="exported")
    rows = {
        d: throughput.measure(
            model, sampler="ddim", steps=2, ensemble=1, size=24, batch=2, devices=d, run=False
        )
        for d in (1, 4)
    }
    for d, r in rows.items():
        assert r["devices"] == d and r["space"] == 1 and "median_s" not in r
        assert r["windows"] > 1 and r["chain_memory_mb"]["total"] > 0
    # 4 devices: each holds its own 2 windows, as one device does its 2
    one, four = rows[1]["chain_memory_mb"], rows[4]["chain_memory_mb"]
    assert four["argument"] == pytest.approx(one["argument"], rel=0.05)
    ran = throughput.measure(
        model, sampler="ddim", steps=2, ensemble=1, size=24, batch=2, devices=2, repeats=1
    )
    assert ran["windows"] == rows[1]["windows"] and ran["median_s"] > 0
    assert "2x1" in throughput.format_table([ran, rows[4]])
