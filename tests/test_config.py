"""Settings from files and dictionaries: merged field by field, type-checked, one-line errors naming the key."""

import json

import pytest

from vitcompress.config import load_config, merge_config, read_config_file
from vitcompress.errors import VitCompressError
from vitcompress.recipe import PipelineConfig
from vitcompress.token_search import SearchConfig
from vitcompress.training import TrainConfig


def test_merge_writes_nested_settings_and_keeps_the_rest():
    base = PipelineConfig(calib_images=32)
    cfg = merge_config(
        base, {"flops_reduction": 0.4, "width_granularity": ["heads", "qk"], "train": {"epochs": 3, "lr": 1}}
    )
    assert cfg.flops_reduction == 0.4 and cfg.calib_images == 32
    assert cfg.width_granularity == ("heads", "qk")  # a list becomes the field's tuple
    assert cfg.train.epochs == 3 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.batch_size == TrainConfig().batch_size and cfg.distill == base.distill
    assert base.flops_reduction is None and base.train.epochs == TrainConfig().epochs  # the input is not changed
    assert merge_config(base, {"width_granularity": "heads, mlp"}).width_granularity == ("heads", "mlp")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"speed": 3}, "unknown pipeline config key 'speed'; known: calib_images,"),
        ({"train": {"epoch": 3}}, "unknown pipeline config key 'train.epoch'; known: amp,"),
        ({"train": {"epochs": "3"}}, "pipeline config key 'train.epochs' must be an integer, got '3'"),
        ({"train": {"epochs": True}}, "pipeline config key 'train.epochs' must be an integer, got True"),
        ({"depth_share": "a lot"}, "pipeline config key 'depth_share' must be a number, got 'a lot'"),
        ({"depth_blocks": 1.5}, "pipeline config key 'depth_blocks' must be an integer, got 1.5"),
        ({"distill": 2}, "pipeline config key 'distill' must be a mapping of its own settings, got 2"),
        ({"width_granularity": [1, 2]}, "pipeline config key 'width_granularity' must be a string, got 1"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(values, message):
    with pytest.raises(VitCompressError) as e:
        merge_config(PipelineConfig(), values, "pipeline")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_optional_fields_take_none_and_choices_are_checked():
    assert merge_config(PipelineConfig(flops_reduction=0.3), {"flops_reduction": None}).flops_reduction is None
    assert merge_config(SearchConfig(), {"metric": "agreement"}).metric == "agreement"
    with pytest.raises(VitCompressError, match="search config key 'metric' must be one of top1, agreement, got 'f1'"):
        merge_config(SearchConfig(), {"metric": "f1"}, "search")


def test_json_and_yaml_files(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"params_reduction": 0.3, "train": {"data": "digits"}}))
    (tmp_path / "p.yaml").write_text("params_reduction: 0.3\ntrain:\n  data: digits\n")
    a, b = (
        load_config(PipelineConfig, tmp_path / "p.json", "pipeline"),
        load_config(PipelineConfig, tmp_path / "p.yaml", "pipeline"),
    )
    assert a == b and a.params_reduction == 0.3 and a.train.data == "digits"
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(
        VitCompressError, match=r"cannot read pipeline config '.*bad.json': .*; pass a JSON or YAML file"
    ):
        read_config_file(tmp_path / "bad.json", "pipeline")
    with pytest.raises(VitCompressError, match="holds a list, not a mapping"):
        read_config_file(tmp_path / "list.yaml", "pipeline")
    with pytest.raises(VitCompressError, match="cannot read config '.*missing.json': No such file or directory"):
        read_config_file(tmp_path / "missing.json")


def test_weight_decay_is_capped_where_training_would_diverge():
    """The fuzz run's finding: weight_decay=1e308 trained one epoch, then the loss became NaN and the
    run stopped with a checkpoint written; such values are refused before any work."""
    with pytest.raises(VitCompressError, match="weight_decay") as e:
        TrainConfig(weight_decay=1e308).validate()
    assert "\n" not in str(e.value)
    TrainConfig(weight_decay=10).validate()  # the cap itself is allowed


def test_lr_is_capped_before_the_optimizer_overflows():
    """The fuzz run's finding: lr=1e308 reached the optimizer and failed there with a traceback
    (``value cannot be converted to type float without overflow``); it is refused before any work."""
    with pytest.raises(VitCompressError, match="lr must be") as e:
        TrainConfig(lr=1e308).validate()
    assert "\n" not in str(e.value)
    TrainConfig(lr=10).validate()
