import json
import subprocess
import sys

import pytest
import torch

from tna_hf import TNAConfig, build_masks, mask_fingerprint, save_masks
from tna_hf.cli import EXPERIMENTS, main


def test_inspect_prints_saved_mask_statistics(tmp_path, capsys):
    model = torch.nn.Linear(10, 4)
    config = TNAConfig(rho=0.5, seed=2)
    masks = build_masks(model, config)
    save_masks(masks, tmp_path, config)
    assert main(["inspect", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["rho"] == 0.5
    assert report["mask_fingerprint"] == mask_fingerprint(masks)
    assert report["targeted_entries"] == 44
    assert report["fraction_fixed"] == pytest.approx(22 / 44)


def test_inspect_missing_directory_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No tna_config.json found"):
        main(["inspect", str(tmp_path)])


def test_unknown_subcommand_exits_with_usage():
    result = subprocess.run(
        [sys.executable, "-m", "tna_hf.cli", "dance"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "invalid choice: 'dance'" in result.stderr


@pytest.mark.parametrize("command", sorted(EXPERIMENTS))
def test_experiment_subcommands_show_their_options(command):
    result = subprocess.run(
        [sys.executable, "-m", "tna_hf.cli", command, "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def test_inspect_vanilla_output_without_mask(tmp_path, capsys):
    TNAConfig(rho=0.0).save_pretrained(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fraction_fixed"] == 0.0
    assert report["mask_fingerprint"] is None


def test_console_entry_reports_errors_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tna_hf.cli", "inspect", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.startswith("tna: error: No tna_config.json found")
    assert "Traceback" not in result.stderr
