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
    assert predict.Segmenter(model, predict.Options(cfg)).lowered() is None  # one device


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
