"""Command options generated from the settings dataclasses; library errors in Python words, shown as flags."""

from dataclasses import dataclass, fields

import click
import pytest
from click.testing import CliRunner

from vitcompress.artifact import save
from vitcompress.callbacks import GASConfig
from vitcompress.cli import cli, main
from vitcompress.commands.options import command_flags, config_options, given
from vitcompress.config import merge_config, setting
from vitcompress.errors import VitCompressError
from vitcompress.models import create_source_model
from vitcompress.training import TrainConfig, fit


@dataclass
class Toy:
    size: int = setting(3, "How many.")
    rate: float | None = setting(None, "How fast.")
    kinds: tuple[str, ...] = setting(("a", "b"), "Which.")
    fast: bool = setting(False, "Hurry.")
    mode: str = setting("x", "Mode.", choices=("x", "y"))


def _toy_command():
    seen = {}

    @click.command()
    @config_options(Toy, flags={"rate": "--speed"})
    def toy(**kw):
        seen["given"] = given(Toy, kw)
        seen["cfg"] = merge_config(Toy(), seen["given"], "toy")
        seen["left"] = kw

    return toy, seen


def test_options_carry_the_fields_types_defaults_and_help():
    toy, seen = _toy_command()
    opts = {p.name: p for p in toy.params}
    assert opts["size"].type is click.INT and opts["size"].default == 3 and opts["size"].help == "How many."
    assert opts["rate"].opts == ["--speed"] and opts["rate"].default is None
    assert opts["kinds"].default == "a,b" and opts["fast"].is_flag
    assert list(opts["mode"].type.choices) == ["x", "y"]
    assert command_flags(toy) == {
        "size": "--size",
        "rate": "--speed",
        "kinds": "--kinds",
        "fast": "--fast",
        "mode": "--mode",
    }
    res = CliRunner().invoke(toy, ["--size", "5", "--kinds", "c, d", "--fast"])
    assert res.exit_code == 0, res.output
    assert seen["given"] == {"size": 5, "kinds": "c, d", "fast": True} and seen["left"] == {}  # only what was typed
    assert seen["cfg"] == Toy(size=5, kinds=("c", "d"), fast=True)
    assert CliRunner().invoke(toy, ["--mode", "z"]).exit_code == 2


def _option_defaults(command: str) -> dict:
    cmd = cli.get_command(None, command)
    return {p.name: p.default for p in cmd.params if isinstance(p, click.Option)}


def test_train_and_finetune_options_are_the_train_config_fields():
    for command in ("train", "finetune", "pipeline"):
        defaults = _option_defaults(command)
        for f in fields(TrainConfig):
            if f.name not in ("optimizer", "progress", "eval_every"):
                assert defaults[f.name] == f.default, (command, f.name)
    gas = _option_defaults("finetune")
    assert gas["gas_interval"] == GASConfig.interval and gas["gas_gain"] == GASConfig.gain and gas["gas_target"] is None


def test_library_errors_name_parameters_and_the_cli_shows_flags(tmp_path, capsys):
    e = VitCompressError(
        "pass resume=True or force=True; lower lr or set amp=off (force stays)", params=["resume", "force", "lr", "amp"]
    )
    assert e.with_flags({"resume": "--resume", "force": "--force", "lr": "--lr", "amp": "--amp"}) == (
        "pass --resume or --force; lower --lr or set --amp off (--force stays)"
    )
    assert e.with_flags({}) == str(e)  # a parameter without a flag stays as it is
    (tmp_path / "out").mkdir()
    m = create_source_model("vit_tiny_patch16_224", img_size=16, patch_size=8, num_classes=10, depth=1)
    with pytest.raises(VitCompressError) as err:
        fit(m, TrainConfig(data="digits", epochs=1), tmp_path / "out")
    assert "pass resume=True to continue it, force=True to overwrite it" in str(err.value)
    with pytest.raises(VitCompressError, match="GAS target=1.5 is outside"):
        GASConfig(1.5).validate()
    arch = ["--img-size", "16", "--patch-size", "8", "--num-classes", "10", "--depth", "1", "--data", "digits"]
    code = main(
        ["train", "vit_tiny_patch16_224", *arch, "--mixup", "0.2", "--batch-size", "3", "-o", str(tmp_path / "t")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err == "error: mixup/cutmix need an even --batch-size, got 3\n"
    save(m, tmp_path / "art")
    code = main(
        ["finetune", str(tmp_path / "art"), "--gas-target", "1.5", "--data", "digits", "-o", str(tmp_path / "f")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: GAS --gas-target 1.5 is outside (0, 1)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "out"]


def test_export_options_are_the_export_and_build_config_fields():
    """The flags and defaults of ``export`` are those it had before they were generated."""
    from vitcompress.exporters import BuildConfig, ExportConfig

    cmd = cli.get_command(None, "export")
    opts = {p.name: p for p in cmd.params if isinstance(p, click.Option)}
    for f in fields(ExportConfig):
        if f.name not in ("external_data", "seed"):  # library-only settings
            assert opts[f.name].default == f.default, f.name
    for f in fields(BuildConfig):
        if f.name not in ("batch", "img_size", "precision"):  # the export's
            assert opts[f.name].default == f.default, f.name
    flags = {name: [o for o in p.opts if o.startswith("--")][0] for name, p in opts.items()}
    assert flags["workspace_gib"] == "--workspace" and "--no-check" in opts["check"].secondary_opts
    assert opts["batch"].default == "1:8:32" and opts["opset"].default == 20 and opts["workspace_gib"].default == 4.0
    assert opts["opt_level"].default == 3 and opts["precision"].default == "fp32" and opts["check"].default is True
    expected = {"--batch", "--dynamic-size", "--img-size", "--precision", "--opset", "--check", "--tolerance"}
    expected |= {"--runtime-keep", "--workspace", "--opt-level", "--timing-cache", "--keep-permille"}
    assert expected <= set(flags.values())


def test_export_settings_reach_the_library_call(tmp_path, monkeypatch):
    """Each option lands in the ``ExportConfig`` / ``BuildConfig`` given to ``export``."""
    import vitcompress.commands.export as export_command

    seen = {}
    monkeypatch.setattr(export_command, "export", lambda *a, **k: seen.update(args=a, kw=k))
    art = save(create_source_model("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1), tmp_path / "a")
    argv = ["export", str(art), "-o", str(tmp_path / "m.onnx"), "--batch", "1:2:4", "--no-check", "--opset", "18"]
    assert main([*argv, "--trt", "--workspace", "2", "--opt-level", "1"]) == 0
    _, _, cfg, build = seen["args"]
    assert (cfg.batch, cfg.check, cfg.opset, cfg.precision, cfg.dynamic_size) == ("1:2:4", False, 18, "fp32", False)
    assert (build.workspace_gib, build.opt_level, build.timing_cache) == (2.0, 1, None)
    assert seen["kw"]["trt"] is True and seen["kw"]["force"] is False
