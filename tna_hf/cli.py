"""The `tna` command: run the experiments and inspect saved masks.

```
tna soup [options]   model soups, vanilla vs TNA-PFN (examples/soup.py)
tna lmc [options]    linear mode connectivity experiments (examples/lmc.py)
tna fed [options]    federated learning: FedAvg, FedProx, FedPFN, FedPNU (examples/federated.py)
tna cold [options]   ColD fusion of a pretrained encoder (examples/cold_fusion.py)
tna inspect DIR      print the TNA config, mask fingerprint and fraction fixed saved in DIR
```

Each experiment subcommand passes its remaining arguments to the experiment's own parser, so
`tna soup --help` lists the soup options.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Optional

EXPERIMENTS = {
    "soup": ("tna_hf.experiments.soup", "model soups of ingredients fine-tuned with and without TNA-PFN"),
    "lmc": ("tna_hf.experiments.lmc", "linear mode connectivity: barriers, rho sweeps, baselines"),
    "fed": ("tna_hf.experiments.federated", "federated learning with FedAvg, FedProx, FedPFN and FedPNU"),
    "cold": ("tna_hf.experiments.cold_fusion", "ColD fusion rounds of a pretrained encoder"),
}


def inspect_directory(directory: str) -> dict:
    """Return the TNA config, mask fingerprint and mask statistics saved in `directory`."""
    from .config import TNAConfig
    from .masks import MASK_NAME, fraction_fixed, load_masks, mask_fingerprint

    config = TNAConfig.from_pretrained(directory)
    if config.rho == 0 and not os.path.isfile(os.path.join(directory, MASK_NAME)):
        # Vanilla outputs (rho 0) carry the config but no mask file.
        return {
            "config": config.to_dict(),
            "mask_fingerprint": None,
            "targeted_parameters": 0,
            "targeted_entries": 0,
            "fraction_fixed": 0.0,
        }
    masks = load_masks(directory)
    return {
        "config": config.to_dict(),
        "mask_fingerprint": mask_fingerprint(masks),
        "targeted_parameters": len(masks),
        "targeted_entries": sum(mask.numel() for mask in masks.values()),
        "fraction_fixed": fraction_fixed(masks),
    }


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="tna", description="Training-time neuron alignment (TNA-PFN) tools.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in EXPERIMENTS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    inspect_parser = subparsers.add_parser("inspect", help="print the TNA config and mask statistics of a folder")
    inspect_parser.add_argument("directory", help="folder with tna_config.json and tna_mask.safetensors")

    if argv and argv[0] in EXPERIMENTS:
        module = importlib.import_module(EXPERIMENTS[argv[0]][0])
        module.main(argv[1:])
        return 0

    args = parser.parse_args(argv)
    if args.command == "inspect":
        print(json.dumps(inspect_directory(args.directory), indent=2, sort_keys=True))  # noqa: T201
    return 0


def console_main() -> int:
    """Entry point of the `tna` script: invalid input ends with a one-line error and exit status 2."""
    try:
        return main()
    except (FileNotFoundError, ValueError) as error:
        print(f"tna: error: {error}", file=sys.stderr)  # noqa: T201
        return 2


if __name__ == "__main__":
    raise SystemExit(console_main())
