"""TrainConfig: YAML loading, CLI precedence, and validation messages."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from vitpss.cli import build_parser
from vitpss.config import TrainConfig, config_to_dict, dump_yaml, field_names, from_dict, load_config, validate
from vitpss.errors import UsageError
from vitpss.commands.train import config_from_args


def parse(*argv: str):
    return config_from_args(build_parser().parse_args(["train", *argv]))[0]


def test_defaults_are_valid():
    assert validate(TrainConfig()) == TrainConfig()


def test_every_field_has_a_train_flag():
    parser = build_parser()
    for name in field_names():
        flag = "--" + name.replace("_", "-")
        assert parser.parse_known_args(["train"])  # the subcommand exists
        assert flag in parser._subparsers._group_actions[0].choices["train"]._option_string_actions


def test_yaml_values_load_and_cli_flags_override_them(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\nbatch-size: 16\nlr: 1.0e-4\nschedule: linear\nema_decay: 0.99\n")
    cfg = parse("--config", str(path), "--epochs", "3")
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.schedule, cfg.ema_decay) == (3, 16, 1e-4, "linear", 0.99)


def test_config_round_trips_through_yaml(tmp_path):
    cfg = dataclasses.replace(TrainConfig(), epochs=3, img_size=32, amp="bf16", period_steps=10)
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text()) == config_to_dict(cfg)


def test_every_unknown_yaml_key_is_listed_in_one_line_with_its_suggestion(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epoch: 3\nkeep_rate_low: 0.3\nbatchsize: 16\nlr: 0.001\nzzz: 1\n")
    with pytest.raises(UsageError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.endswith("unknown settings 'epoch' (did you mean 'epochs'?), 'keep_rate_low' (did you mean "
                            "'low'?), 'batchsize' (did you mean 'batch_size'?), 'zzz'")


def test_unknown_yaml_key_suggests_the_nearest_setting(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("batchsize: 16\n")
    with pytest.raises(UsageError, match="unknown setting 'batchsize'.*did you mean 'batch_size'"):
        load_config(path)


@pytest.mark.parametrize("values, message", [
    ({"epochs": "ten"}, "epochs must be int"),
    ({"lr": "fast"}, "lr must be float"),
    ({"overwrite": 1}, "overwrite must be bool"),
    ({"epochs": 1.5}, "epochs must be int"),
])
def test_wrong_types_are_usage_errors(values, message):
    with pytest.raises(UsageError, match=message):
        from_dict(values)


@pytest.mark.parametrize("values, message", [
    ({"epochs": 0}, "--epochs=0 is out of range"),
    ({"drop_path": 1.5}, "--drop-path=1.5 is out of range"),
    ({"ema_decay": 1.0}, "--ema-decay=1.0 is out of range"),
    ({"low": 0.9, "high": 0.5, "schedule": "linear"}, "invalid schedule setting: high=0.5"),
    ({"quantum": 2.0}, "invalid schedule setting: quantum"),
    ({"cooldown_epochs": 9, "epochs": 3}, "cooldown_epochs=9"),
    ({"img_size": 30, "patch_size": 7}, "not divisible by --patch-size=7"),
    ({"schedule": "cyclc"}, "unknown schedule 'cyclc' \\(did you mean 'cyclic'\\?\\)"),
    ({"sampler": "magnitud"}, "unknown sampler 'magnitud' \\(did you mean 'magnitude'\\?\\)"),
    ({"mixup": 0.8, "batch_size": 7}, "must be even"),
])
def test_out_of_range_values_are_usage_errors(values, message):
    with pytest.raises(UsageError, match=message):
        validate(from_dict(values))


def test_amp_flag_alone_means_auto_and_yaml_bool_is_accepted():
    assert parse("--amp").amp == "auto"
    assert from_dict({"amp": True}).amp == "auto" and from_dict({"amp": False}).amp == "off"


def test_sampler_names_of_the_config_are_the_samplers():
    from vitpss.config import SAMPLER_NAMES
    from vitpss.samplers import SAMPLERS

    assert SAMPLER_NAMES == tuple(SAMPLERS)
