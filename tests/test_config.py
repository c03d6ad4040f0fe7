"""Settings from files and dictionaries: merged field by field, type-checked, one-line errors naming the key."""

import json
from pathlib import Path

import pytest

from vitcompress.commands.train import model_options
from vitcompress.config import load_config, merge_config, parse_pairs, read_config_file, with_options
from vitcompress.errors import VitCompressError
from vitcompress.exporters import BuildConfig, ExportConfig, Profile, export_onnx
from vitcompress.exporters.export import export
from vitcompress.methods import parse_option_pairs
from vitcompress.pruner import PruneConfig
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


def test_keyword_options_merge_through_the_same_checks():
    base = PruneConfig(flops_reduction=0.3, round_to=4)
    cfg = with_options(PruneConfig, base, {"granularity": ["heads", "mlp"], "data": Path("imgs")}, "prune")
    assert cfg.granularity == ("heads", "mlp") and cfg.data == "imgs" and cfg.round_to == 4  # a path as its text
    assert base.granularity != cfg.granularity  # the given config is not changed
    assert with_options(PruneConfig, None, {}, "prune") == PruneConfig()
    with pytest.raises(VitCompressError, match=r"^unknown prune option 'flops'; known: batch_size, calib_images,"):
        with_options(PruneConfig, None, {"flops": 0.3}, "prune")
    with pytest.raises(VitCompressError, match=r"^prune option 'round_to' must be an integer, got 1.5$"):
        PruneConfig.from_options(round_to=1.5)


def test_export_options_are_refused_by_name_not_with_a_type_error(tmp_path):
    with pytest.raises(VitCompressError, match=r"^unknown export option 'opsett'; known: batch, check, dynamic_size,"):
        export_onnx("no-such-model", tmp_path / "m.onnx", opsett=18)
    with pytest.raises(VitCompressError, match=r"unknown export option 'workspace'; known: .*workspace_gib"):
        export("no-such-model", tmp_path / "m.onnx", ExportConfig(), workspace=2)  # names both settings' fields
    with pytest.raises(VitCompressError, match=r"^export option 'opset' must be an integer, got '18'$"):
        export_onnx("no-such-model", tmp_path / "m.onnx", opset="18")
    assert list(tmp_path.iterdir()) == []


def test_export_and_build_settings_check_their_ranges_once():
    assert ExportConfig(batch=(1, 2, 4)).validate() == (Profile(1, 2, 4), None)
    cfg = BuildConfig(batch="1:2:4", keep_permille=500, workspace_gib=2).validate()
    assert (cfg.batch, cfg.keep_permille, cfg.workspace_gib) == (Profile(1, 2, 4), Profile(500, 500, 500), 2.0)
    assert BuildConfig.make("1:2:4") == BuildConfig(batch=Profile(1, 2, 4))
    for bad, message in [
        (ExportConfig(opset=24), r"^opset=24 is outside 17..23; use the default opset=20$"),
        (ExportConfig(tolerance=float("nan")), r"^tolerance must be a finite number, got nan$"),
        (ExportConfig(precision="bf16"), r"^precision must be one of fp32, fp16, got 'bf16'$"),
        (BuildConfig(workspace_gib=float("inf")), r"^workspace_gib=inf must be in \(0, 1e\+06\] GiB"),
        (BuildConfig(opt_level=6), r"^opt_level=6 \(the builder optimisation level\) is outside 0..5$"),
        (BuildConfig(keep_permille="1:5:1001"), r"^keep_permille=1:5:1001 goes above 1000"),
    ]:
        with pytest.raises(VitCompressError, match=message) as e:
            bad.validate()
        assert e.value.params  # shown as its flag on the command line


def test_key_value_options_share_one_parser():
    assert parse_option_pairs([" steps = 10", "lr=1e-3", "steps=7"]) == {"steps": "7", "lr": "1e-3"}
    assert model_options(["depths=[2,2]", "window_size=7", "norm= x "]) == {
        "depths": [2, 2],
        "window_size": 7,
        "norm": "x",
    }
    assert parse_pairs(None, "x option", "x_opts", "a=1") == {}
    for pairs, message in [
        (["steps"], "method option 'steps' is not KEY=VALUE; pass e.g. method_opts=steps=50"),
        ([" =3"], "method option ' =3' has no key; pass e.g. method_opts=steps=50"),
    ]:
        with pytest.raises(VitCompressError) as e:
            parse_option_pairs(pairs)
        assert str(e.value) == message
        # the command line names the flag
        assert e.value.with_flags({"method_opts": "--method-opt"}).endswith("pass e.g. --method-opt steps=50")
    with pytest.raises(VitCompressError, match=r"^model option '=1' has no key; pass e.g. model_opts=depths=\[2,2\]$"):
        model_options(["=1"])


def test_lr_is_capped_before_the_optimizer_overflows():
    """The fuzz run's finding: lr=1e308 reached the optimizer and failed there with a traceback
    (``value cannot be converted to type float without overflow``); it is refused before any work."""
    with pytest.raises(VitCompressError, match="lr must be") as e:
        TrainConfig(lr=1e308).validate()
    assert "\n" not in str(e.value)
    TrainConfig(lr=10).validate()
