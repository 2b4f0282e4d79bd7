"""Linear mode connectivity with and without TNA-PFN: `accelerate launch examples/lmc.py` (or `tna lmc`).

With no arguments: the paper's rho sweep (Figure 2) for MLP_h2_w200 on Fashion-MNIST at full size
(60,000 training images, 10 epochs, seeds a = 0, 10, 20). `--config configs/lmc_*.yaml` runs one
table or figure at the sizes of docs/results.md, for example

    accelerate launch examples/lmc.py --config configs/lmc_headline.yaml

prints the accuracy barrier of MLP_h2_w200 after vanilla training and after TNA-PFN (rho 0.4), before
and after weight matching, and writes runs/lmc/headline/results.json and curves.png. `--help` lists
every option; `--experiment` picks rho_sweep, depth_width, multi_model, tasks, weight_matching or
layerwise.
"""

from tna_hf.experiments.lmc import main

if __name__ == "__main__":
    main()
