"""Federated learning with FedPFN and FedPNU: `accelerate launch examples/federated.py` (or `tna fed`).

With no arguments: MLP_h2_w200 on Fashion-MNIST (6,000 training images, 2,000 test images), 20 clients
with Dirichlet(0.5) label partitions, 20 rounds of 2 local epochs, for FedAvg, FedPFN and FedPNU
(rho = 0.4), one seed; a few minutes on one CPU core. It prints a table of the reported accuracy (mean
test accuracy of the last 5 rounds) and writes outputs/federated/runs/*.json, summary.json and a
learning-curve plot in outputs/federated/plots. `--help` lists every option;
`--config configs/fed_fmnist_table5_paper.yaml` runs the Fashion-MNIST setting of Table 5 of Li et al. (T = 100,
E = 5, all 60,000 training images, three seeds).
"""

from tna_hf.experiments.federated import main

if __name__ == "__main__":
    main()
