"""YAML presets for the experiment command lines: `--config FILE.yaml` sets defaults that options override."""

from __future__ import annotations

import argparse
from typing import Optional

import yaml


def set_defaults_from_config_file(parser: argparse.ArgumentParser, argv: Optional[list[str]]) -> Optional[str]:
    """Read the YAML file named by `--config` in `argv`, if any, into the defaults of `parser`.

    Options given on the command line still override the file. Returns the file's path, or None.

    Raises:
        ValueError: The file has keys that are not options of `parser` (the message lists the valid ones).
    """
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("--config")
    known, _ = config_parser.parse_known_args(argv)
    if not known.config:
        return None

    with open(known.config, encoding="utf-8") as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ValueError(
            f"{known.config} must contain a mapping of option names to values, got {type(values).__name__}."
        )
    valid = {action.dest for action in parser._actions} - {"help", "config"}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"{known.config} has unknown options {unknown}; valid options are {sorted(valid)}.")
    parser.set_defaults(**values)
    return known.config
