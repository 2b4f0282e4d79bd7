"""Two-process MaskedTrainer run for tests/test_trainer.py (launched with torchrun or accelerate launch on CPU).

Each rank trains 3 steps on real Rotten Tomatoes snippets and writes `rank<N>.json` into the folder given as
the only argument: its mask fingerprint, the names of parameters whose fixed entries moved (by `verify()` and by a
bitwise comparison with the initial weights), and a fingerprint of its final weights.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import load_rotten_tomatoes_tiny, make_tiny_roberta  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

from tna_hf import TNAConfig, build_masks, mask_fingerprint  # noqa: E402
from tna_hf.checkpoint import state_dict_fingerprint  # noqa: E402
from tna_hf.trainer import MaskedTrainer  # noqa: E402


def main(output_dir: str) -> None:
    torch.set_num_threads(1)
    dataset = load_rotten_tomatoes_tiny()
    config = TNAConfig(rho=0.4, seed=2)
    model = make_tiny_roberta()
    initial = {name: param.detach().clone() for name, param in model.named_parameters()}
    args = TrainingArguments(
        output_dir=os.path.join(output_dir, "run"),
        use_cpu=True,
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-2,
        weight_decay=0.1,
        optim="adamw_torch",
        max_grad_norm=0.5,
        save_strategy="no",
        report_to="none",
        seed=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = MaskedTrainer(model=model, args=args, train_dataset=dataset, tna_config=config)
    trainer.train()

    rank = args.process_index
    final = {name: param.detach() for name, param in trainer.model.named_parameters()}
    report = {
        "rank": rank,
        "world_size": args.world_size,
        "global_step": trainer.state.global_step,
        "mask_fingerprint": trainer.mask_fingerprint,
        "expected_fingerprint": mask_fingerprint(build_masks(make_tiny_roberta(), config)),
        "changed_fixed": trainer.masked_update.verify(),
        "fixed_differ_from_initial": [
            name
            for name, mask in trainer.masks.items()
            if not torch.equal(final[name][~mask].view(torch.int32), initial[name][~mask].view(torch.int32))
        ],
        "weights_fingerprint": state_dict_fingerprint(final),
        "moved": any(not torch.equal(final[name], initial[name]) for name in final),
    }
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main(sys.argv[1])
