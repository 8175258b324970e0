"""configs/base.py declares exactly the fields of the dataclasses it configures, with defaults."""

import dataclasses
import importlib.util
import runpy
from pathlib import Path

import pytest

from msseg.data.pipeline import PipelineConfig
from msseg.diffusion import losses, segment
from msseg.diffusion import schedule as sch
from msseg.models.unet import UNetConfig
from msseg.train.state import TrainConfig


def base_config():
    path = Path(__file__).parents[1] / "configs" / "base.py"
    spec = importlib.util.spec_from_file_location("base_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize(
    ("section", "cls", "extra"),
    [
        ("data.pipeline", PipelineConfig, {}),
        ("model", UNetConfig, {"num_classes": 7}),
        ("sampler", segment.SamplerConfig, {}),
        ("train", TrainConfig, {}),
    ],
)
def test_sections_match_their_dataclasses(section, cls, extra):
    node = base_config()
    for part in section.split("."):
        node = node[part]
    keys = node.to_dict()
    assert set(keys) | set(extra) == {f.name for f in dataclasses.fields(cls)}
    assert cls(**keys, **extra) == cls(**extra)


def test_diffusion_section_matches_loss_config():
    d = base_config().diffusion.to_dict()
    loss_keys = {f.name for f in dataclasses.fields(losses.LossConfig)}
    # train_timesteps ("all" | "sampler") becomes LossConfig.timesteps in loop.build_setup
    assert loss_keys - {"timesteps"} <= set(d)
    assert set(d) - loss_keys == {"schedule", "num_timesteps", "train_timesteps"}
    cfg = losses.LossConfig(
        **{k: v for k, v in d.items() if k in loss_keys and k != "target"},
        target=sch.Target(d["target"]),
    )
    # the base config trains the screened recipe; LossConfig's defaults are the original one
    recipe = {"mse_weight": 0.0, "ce_weight": 1.0, "dice_weight": 1.0, "recycle_prob": 1.0}
    assert cfg == losses.LossConfig(target=sch.Target.LOGITS, **recipe)
    assert d["train_timesteps"] == "sampler"


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "configs").glob("*.py")), ids=lambda p: p.name
)
def test_every_shipped_config_passes_the_checks_and_names_known_data(path):
    from msseg.data import datasets
    from msseg.train import setup

    c = runpy.run_path(str(path))["get_config"]()
    setup.check_config(c)
    PipelineConfig(**c.data.pipeline.to_dict())
    for spec in datasets.split_spec(c.data.spec):
        assert spec in datasets.EMBEDDED or "/" in spec or spec == "", spec
    weights = c.data.pipeline.dataset_weights
    assert not weights or len(weights) == len(datasets.split_spec(c.data.spec))
