import json

import pytest

from tna_hf import TNAConfig, __version__
from tna_hf.config import MaskMode, MaskSchedule


def test_defaults_target_every_parameter():
    config = TNAConfig()
    assert config.rho == 0.4
    assert config.mode == "fix"
    assert config.schedule == "fixed"
    assert config.is_targeted("encoder.layer.0.attention.self.query.weight")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rho": 1.0}, ValueError, r"rho must satisfy 0 <= rho < 1, got 1.0"),
        ({"rho": -0.1}, ValueError, r"rho must satisfy 0 <= rho < 1, got -0.1"),
        ({"rho": "0.4"}, TypeError, r"rho must be a number in \[0, 1\), got '0.4'"),
        ({"rho": True}, TypeError, r"rho must be a number"),
        ({"seed": -1}, ValueError, r"seed must be a non-negative integer, got -1"),
        ({"seed": 1.5}, ValueError, r"seed must be a non-negative integer, got 1.5"),
        ({"mode": "freeze"}, ValueError, r"mode must be one of \['fix', 'prune'\], got 'freeze'"),
        ({"schedule": "daily"}, ValueError, r"schedule must be one of \['fixed', 'per_round', 'progressive'\]"),
        ({"target_patterns": ["("]}, ValueError, r"target_patterns holds an invalid regular expression '\('"),
        ({"exclude_patterns": [3]}, TypeError, r"exclude_patterns must hold strings, got 3"),
    ],
)
def test_validation_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        TNAConfig(**kwargs)


def test_enums_and_single_patterns_are_normalized():
    config = TNAConfig(mode=MaskMode.PRUNE, schedule=MaskSchedule.PER_ROUND, target_patterns="weight$")
    assert config.mode == "prune"
    assert config.schedule == "per_round"
    assert config.target_patterns == ["weight$"]


def test_target_and_exclude_patterns():
    config = TNAConfig(target_patterns=[r"\.weight$"], exclude_patterns=[r"^classifier\."])
    assert config.is_targeted("encoder.dense.weight")
    assert not config.is_targeted("encoder.dense.bias")
    assert not config.is_targeted("classifier.weight")


def test_save_and_load_round_trip(tmp_path):
    config = TNAConfig(rho=0.25, seed=7, mode="prune", exclude_patterns=["head"], schedule="progressive")
    path = config.save_pretrained(tmp_path)
    with open(path) as handle:
        text = handle.read()
    payload = json.loads(text)
    assert list(payload) == sorted(payload), "keys must be written sorted"
    assert payload["tna_hf_version"] == __version__
    assert TNAConfig.from_pretrained(tmp_path) == config
    assert not (tmp_path / "tna_config.json.tmp").exists()


def test_unknown_keys_are_dropped_with_warning(tmp_path):
    TNAConfig(rho=0.1).save_pretrained(tmp_path)
    path = tmp_path / "tna_config.json"
    payload = json.loads(path.read_text())
    payload["future_option"] = 3
    path.write_text(json.dumps(payload))
    with pytest.warns(UserWarning, match=r"Ignoring unknown keys \['future_option'\]"):
        config = TNAConfig.from_pretrained(tmp_path)
    assert config == TNAConfig(rho=0.1)


def test_missing_config_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No tna_config.json found"):
        TNAConfig.from_pretrained(tmp_path)


def test_usable_by_hf_argument_parser():
    from transformers import HfArgumentParser

    (config,) = HfArgumentParser(TNAConfig).parse_args_into_dataclasses(["--rho", "0.3", "--mode", "prune"])
    assert config.rho == 0.3
    assert config.mode == "prune"


def test_numpy_scalars_accepted():
    import numpy as np

    config = TNAConfig(rho=np.float32(0.25), seed=np.int64(3))
    assert config.rho == 0.25
    assert config.seed == 3
    assert type(config.seed) is int


def test_nan_rho_rejected():
    with pytest.raises(ValueError, match="rho must satisfy 0 <= rho < 1, got nan"):
        TNAConfig(rho=float("nan"))


def test_corrupt_config_file_error(tmp_path):
    (tmp_path / "tna_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tna_config.json is not valid JSON"):
        TNAConfig.from_pretrained(tmp_path)
