import importlib

import pytest

import tna_hf

PUBLIC_NAMES = [
    "TNAConfig",
    "MaskedTrainer",
    "build_masks",
    "save_masks",
    "load_masks",
    "MaskedUpdate",
    "interpolate",
    "uniform_soup",
    "greedy_soup",
]


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_name_imports_from_package(name):
    assert getattr(tna_hf, name) is not None
    assert name in tna_hf.__all__


def test_every_exported_name_resolves():
    for name in tna_hf.__all__:
        assert getattr(tna_hf, name) is not None, name


def test_unknown_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'not_a_name'"):
        _ = tna_hf.not_a_name


def test_masking_core_imports_no_trainer_or_fusion():
    """The masking core must not import Trainer, fusion or federated code."""
    import subprocess
    import sys

    script = (
        "import sys; import tna_hf.config, tna_hf.masks, tna_hf.update;"
        "bad = [m for m in sys.modules if m.startswith(('transformers', 'tna_hf.fusion', 'tna_hf.federated',"
        " 'tna_hf.trainer'))]; print(bad)"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_version_is_a_string():
    assert isinstance(importlib.import_module("tna_hf").__version__, str)
