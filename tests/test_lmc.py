"""End-to-end LMC experiments at tiny sizes: every experiment runs, prints its table and saves its files."""

import json
import os

import pytest
import yaml

from tna_hf.experiments.lmc import layer_patterns, main, parse_args
from tna_hf.experiments.lmc_report import format_table

# Small models on a CPU shared with other jobs run many times faster on one thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = ["--dataset", "digits", "--models", "mlp_h1_w16", "--epochs", "2", "--batch_size", "32", "--no_progress"]
ONE_SEED = [*TINY, "--seeds", "0"]


def test_rho_sweep_tiny(tmp_path, capsys):
    # The CI config, with two seeds so the std is over real repeats.
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "lmc_tiny.yaml")
    results = main(
        ["--config", config, "--rhos", "0.5", "--seeds", "0", "1", "--no_progress", "--output_dir", str(tmp_path)]
    )
    assert results["args"]["dataset"] == "digits"
    methods = [(row["method"], row["rho"]) for row in results["rows"]]
    assert methods == [("vanilla", 0.0), ("TNA-PFN", 0.5), ("prune", 0.5)]
    for row in results["rows"]:
        barrier = row["metrics"]["accuracy_barrier"]
        assert len(barrier["values"]) == 2, "one value per seed"
        assert 0.0 <= barrier["mean"] <= 1.0
        assert row["metrics"]["average_accuracy"]["mean"] > 0.3, "two epochs on digits should beat chance (0.1)"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (
        saved["rows"][1]["metrics"]["accuracy_barrier"]["mean"]
        == results["rows"][1]["metrics"]["accuracy_barrier"]["mean"]
    )
    assert (tmp_path / "curves.png").is_file()
    assert (tmp_path / "rho_sweep_mlp_h1_w16_TNA-PFN.png").is_file()
    assert "±" in capsys.readouterr().out


def test_weight_matching_tiny(tmp_path):
    results = main(["--experiment", "weight_matching", *ONE_SEED, "--output_dir", str(tmp_path)])
    for row in results["rows"]:
        metrics = row["metrics"]
        assert metrics["matching_iterations"]["mean"] >= 1
        assert 0.0 <= metrics["matched_accuracy_barrier"]["mean"] <= 1.0


def test_multi_model_tiny(tmp_path):
    results = main(["--experiment", "multi_model", "--num_models", "3", *ONE_SEED, "--output_dir", str(tmp_path)])
    assert [row["method"] for row in results["rows"]] == ["vanilla", "TNA-PFN"]
    assert results["rows"][0]["num_models"] == 3


def test_tasks_tiny(tmp_path):
    results = main(
        [
            "--experiment",
            "tasks",
            "--tasks",
            "poly2",
            "rotten_tomatoes",
            "--poly_epochs",
            "2",
            "--text_epochs",
            "1",
            "--text_train_size",
            "300",
            "--test_size",
            "100",
            "--lstm_hidden",
            "16",
            "--max_length",
            "16",
            "--seeds",
            "0",
            "--no_progress",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert [row["dataset"] for row in results["rows"]] == ["poly2", "poly2", "rotten_tomatoes", "rotten_tomatoes"]
    assert "accuracy_barrier" not in results["rows"][0]["metrics"], "regression has no accuracy"
    assert results["rows"][0]["metrics"]["loss_barrier"]["mean"] >= 0.0
    assert (tmp_path / "curves_poly2.png").is_file()


def test_depth_width_and_layerwise_tiny(tmp_path):
    results = main(
        [
            "--experiment",
            "depth_width",
            "--depths",
            "1",
            "--widths",
            "16",
            *ONE_SEED,
            "--output_dir",
            str(tmp_path / "dw"),
        ]
    )
    assert sorted({row["model"] for row in results["rows"]}) == ["mlp_h1_w200", "mlp_h2_w16"]
    assert (tmp_path / "dw" / "barrier_vs_width.png").is_file()
    results = main(["--experiment", "layerwise", *ONE_SEED, "--output_dir", str(tmp_path / "lw")])
    assert [row["variant"] for row in results["rows"]] == ["vanilla", "first", "middle", "last", "all"]


def test_config_file_sets_defaults(tmp_path):
    config = tmp_path / "lmc.yaml"
    config.write_text(yaml.safe_dump({"experiment": "tasks", "epochs": 3, "seeds": [1, 2]}))
    args = parse_args(["--config", str(config), "--epochs", "4"])
    assert (args.experiment, args.epochs, args.seeds) == ("tasks", 4, [1, 2])
    config.write_text(yaml.safe_dump({"epoch": 3}))
    with pytest.raises(ValueError, match=r"unknown options \['epoch'\]"):
        parse_args(["--config", str(config)])


def test_bad_method_rejected():
    with pytest.raises(ValueError, match="'fix' and 'prune'"):
        parse_args(["--methods", "drop"])


def test_layer_patterns():
    assert layer_patterns("mlp_h2_w200")["middle"] == [r"^hidden\.1\."]
    assert layer_patterns("cnn")["first"] == [r"^conv1\."]
    assert layer_patterns("resnet20")["middle"] == [r"^stages\.1\."]
    assert layer_patterns("cnn")["all"] is None
    with pytest.raises(ValueError, match="No layer-wise patterns"):
        layer_patterns("lstm")


@pytest.mark.parametrize(
    ("model_name", "in_shape"), [("mlp_h2_w200", (1, 28, 28)), ("cnn", (1, 28, 28)), ("resnet20", (3, 32, 32))]
)
def test_layer_patterns_match_parameters(model_name, in_shape):
    from tna_hf import TNAConfig, build_masks
    from tna_hf.models import build_model

    model = build_model(model_name, in_shape=in_shape, num_classes=10)
    for variant, patterns in layer_patterns(model_name).items():
        masks = build_masks(model, TNAConfig(rho=0.4, target_patterns=patterns))
        assert masks, f"{model_name} {variant}: no parameter targeted"
        if patterns is not None:
            assert len(masks) < len(dict(model.named_parameters())), f"{model_name} {variant} targets every layer"


def test_format_table_mean_and_std():
    rows = [
        {
            "model": "m",
            "rho": 0.4,
            "metrics": {
                "accuracy_barrier": {"mean": 0.25, "std": 0.05, "values": []},
                "average_accuracy": {"mean": 0.9, "std": 0.01, "values": []},
            },
        }
    ]
    table = format_table(rows)
    assert "| m | 0.4 | 90.0 ± 1.0 | 0.250 ± 0.050 |" in table


@pytest.mark.parametrize(
    "flags, shown",
    [
        (["--rhos", "-0.2"], "invalid --rhos value -0.2: use a mask ratio with 0 < rho < 1"),
        (["--rhos", "0.4", "1.5"], "invalid --rhos value 1.5: use a mask ratio with 0 < rho < 1"),
        (["--rhos", "0"], "invalid --rhos value 0: use a mask ratio with 0 < rho < 1"),
        (["--experiment", "depth_width", "--rho", "1"], "invalid --rho value 1: use a mask ratio with 0 < rho < 1"),
    ],
)
def test_invalid_rho_rejected_before_training(tmp_path, capsys, flags, shown):
    output_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as raised:
        main([*ONE_SEED, *flags, "--output_dir", str(output_dir)])
    assert raised.value.code == 2
    assert shown in capsys.readouterr().err
    assert not output_dir.exists()


def test_valid_rhos_accepted():
    args = parse_args(["--rho", "0.05", "--rhos", "0.1", "0.95"])
    assert (args.rho, args.rhos) == (0.05, [0.1, 0.95])
