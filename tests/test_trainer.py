"""Tests for MaskedTrainer with the real transformers Trainer on tiny models and real data (CPU)."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import make_tiny_roberta, make_tiny_vit
from transformers import Trainer, TrainerCallback, TrainingArguments

from tna_hf import TNAConfig, complement_masks, load_masks, mask_fingerprint, save_masks
from tna_hf.checkpoint import PROVENANCE_NAME, load_provenance
from tna_hf.config import CONFIG_NAME
from tna_hf.masks import MASK_NAME, MaskMismatchError, build_masks
from tna_hf.trainer import METHOD_URL, MaskedTrainer, copy_mask_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_args(output_dir, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        weight_decay=0.1,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        data_seed=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def assert_fixed_kept_and_trainable_moved(model, initial, masks, zero_fixed=False):
    """Assert that fixed entries equal their initial value (or zero) bit for bit and that trainable entries moved."""
    params = dict(model.named_parameters())
    assert masks, "no masks to check"
    for name, mask in masks.items():
        current = params[name].detach()
        expected = torch.zeros_like(current) if zero_fixed else initial[name]
        fixed = ~mask
        assert torch.equal(current[fixed].view(torch.int32), expected[fixed].view(torch.int32)), (
            f"fixed entries of {name} changed"
        )
        assert not torch.equal(current[mask], initial[name][mask]), f"trainable entries of {name} did not move"


def build_trainer(kind, tmp_path, datasets, tna_config=None, **arg_overrides):
    tna_config = tna_config or TNAConfig(rho=0.4, seed=0)
    model = make_tiny_roberta() if kind == "roberta" else make_tiny_vit()
    dataset = datasets[kind]
    args = make_args(tmp_path / "out", **arg_overrides)
    return MaskedTrainer(model=model, args=args, train_dataset=dataset, tna_config=tna_config)


@pytest.fixture
def datasets(rotten_tomatoes_tiny, fashion_mnist_tiny):
    return {"roberta": rotten_tomatoes_tiny, "vit": fashion_mnist_tiny}


# ---------------------------------------------------------------- exactness with real optimizers

EXACTNESS_CASES = [
    # (model, args.optim, bf16). Every case also accumulates 2 micro-batches and clips at 0.02.
    ("roberta", "adamw_torch", False),
    ("roberta", "adamw_torch_fused", True),
    ("roberta", "sgd", False),
    ("roberta", "adafactor", True),
    ("vit", "adamw_torch", True),
    ("vit", "adamw_torch_fused", False),
    ("vit", "sgd", True),
    ("vit", "adafactor", False),
]


@pytest.mark.parametrize("kind,optim,bf16", EXACTNESS_CASES)
def test_fixed_entries_exact(kind, optim, bf16, tmp_path, datasets):
    overrides = dict(optim=optim, bf16=bf16, gradient_accumulation_steps=2, max_grad_norm=0.02, max_steps=2)
    if optim == "sgd":
        overrides["optim_args"] = "momentum=0.9,nesterov=true"
    trainer = build_trainer(kind, tmp_path, datasets, **overrides)
    initial = snapshot(trainer.model)

    trainer.train()

    assert trainer.masked_update.verify() == []
    assert_fixed_kept_and_trainable_moved(trainer.model, initial, trainer.masks)
    grad_norms = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    assert len(grad_norms) == 2
    assert any(norm > 0.02 for norm in grad_norms), f"clipping at 0.02 was never active: {grad_norms}"


def test_user_optimizer_exact(tmp_path, rotten_tomatoes_tiny):
    model = make_tiny_roberta()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)
    initial = snapshot(model)
    trainer = MaskedTrainer(
        model=model,
        args=make_args(tmp_path / "out"),
        train_dataset=rotten_tomatoes_tiny,
        optimizers=(optimizer, None),
        tna_config=TNAConfig(rho=0.4),
    )

    trainer.train()

    assert trainer.masked_update is not None
    assert_fixed_kept_and_trainable_moved(model, initial, trainer.masks)


def test_prune_mode_keeps_zeros(tmp_path, datasets):
    trainer = build_trainer("vit", tmp_path, datasets, tna_config=TNAConfig(rho=0.5, mode="prune"))
    initial = snapshot(trainer.model)

    trainer.train()

    assert_fixed_kept_and_trainable_moved(trainer.model, initial, trainer.masks, zero_fixed=True)


def test_rho_zero_equals_trainer(tmp_path, rotten_tomatoes_tiny):
    masked = MaskedTrainer(
        model=make_tiny_roberta(),
        args=make_args(tmp_path / "masked"),
        train_dataset=rotten_tomatoes_tiny,
        tna_config=TNAConfig(rho=0.0),
    )
    plain = Trainer(model=make_tiny_roberta(), args=make_args(tmp_path / "plain"), train_dataset=rotten_tomatoes_tiny)

    masked.train()
    plain.train()
    masked.save_model()

    assert masked.masks is None
    assert masked.masked_update is None
    for (name, param), other in zip(masked.model.named_parameters(), plain.model.parameters()):
        assert torch.equal(param, other), f"{name} differs from a plain Trainer run"
    assert TNAConfig.from_pretrained(tmp_path / "masked") == TNAConfig(rho=0.0)
    assert not os.path.exists(tmp_path / "masked" / MASK_NAME)


# ---------------------------------------------------------------- gradient norm and logging


def test_grad_norm_is_masked(tmp_path, rotten_tomatoes_tiny):
    # One step over the whole dataset in one batch, so the reference gradient uses the same examples.
    dataset = rotten_tomatoes_tiny[:16]
    model = make_tiny_roberta()
    reference = copy.deepcopy(model)
    trainer = MaskedTrainer(
        model=model,
        args=make_args(tmp_path / "out", per_device_train_batch_size=16, max_steps=1, max_grad_norm=1.0),
        train_dataset=dataset,
        tna_config=TNAConfig(rho=0.4),
    )

    trainer.train()
    logged = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]

    batch = {key: torch.stack([example[key] for example in dataset]) for key in dataset[0]}
    reference(**batch).loss.backward()
    squared_masked = 0.0
    squared_full = 0.0
    for name, param in reference.named_parameters():
        grad = param.grad.double()
        squared_full += grad.pow(2).sum().item()
        squared_masked += (grad * trainer.masks[name]).pow(2).sum().item()
    masked_norm = squared_masked**0.5
    full_norm = squared_full**0.5

    assert len(logged) == 1
    assert logged[0] == pytest.approx(masked_norm, rel=1e-4)
    assert abs(full_norm - masked_norm) > 0.05 * full_norm, "test cannot tell masked from unmasked norms"


def test_logs_fraction_fixed(tmp_path, rotten_tomatoes_tiny, caplog):
    trainer = MaskedTrainer(
        model=make_tiny_roberta(),
        args=make_args(tmp_path / "out", max_steps=1),
        train_dataset=rotten_tomatoes_tiny,
        tna_config=TNAConfig(rho=0.4),
    )
    expected = sum(int((~m).sum()) for m in trainer.masks.values()) / sum(
        m.numel() for m in trainer.masks.values()
    )

    with caplog.at_level(logging.INFO, logger="tna_hf.trainer"):
        trainer.train()

    logged = [entry["tna_fraction_fixed"] for entry in trainer.state.log_history if "tna_fraction_fixed" in entry]
    assert logged == [pytest.approx(expected)]
    assert abs(expected - 0.4) < 0.01
    assert any("targeted entries fixed" in record.getMessage() for record in caplog.records)


# ---------------------------------------------------------------- saving, checkpoints, resume


class StopAtStep(TrainerCallback):
    """Stop training after `step` optimizer steps, as an interrupted run would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def test_resume_equals_straight_run(tmp_path, rotten_tomatoes_tiny):
    # 12 examples in batches of 4 make 3 steps per epoch: the resumed run skips 2 batches, then starts epoch 2.
    dataset = rotten_tomatoes_tiny[:12]
    config = TNAConfig(rho=0.4, seed=3)
    saving = dict(max_steps=4, save_strategy="steps", save_steps=2)
    straight = MaskedTrainer(
        model=make_tiny_roberta(),
        args=make_args(tmp_path / "straight", max_steps=4),
        train_dataset=dataset,
        tna_config=config,
    )
    straight.train()

    interrupted = MaskedTrainer(
        model=make_tiny_roberta(),
        args=make_args(tmp_path / "resumed", **saving),
        train_dataset=dataset,
        tna_config=config,
        callbacks=[StopAtStep(2)],
    )
    interrupted.train()
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    assert interrupted.state.global_step == 2

    resumed = MaskedTrainer(
        model=make_tiny_roberta(),
        args=make_args(tmp_path / "resumed", **saving),
        train_dataset=dataset,
        tna_config=config,
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert resumed.state.global_step == 4
    assert load_provenance(checkpoint).mask_fingerprint == resumed.mask_fingerprint
    for (name, param), other in zip(resumed.model.named_parameters(), straight.model.parameters()):
        assert torch.equal(param, other), f"{name} differs between the resumed and the straight run"
    assert resumed.masked_update.verify() == []


def test_resume_takes_checkpoint_anchors(tmp_path, rotten_tomatoes_tiny):
    # Same mask, other initialization: after resuming, the fixed entries must keep the checkpoint's values.
    config = TNAConfig(rho=0.4)
    other = MaskedTrainer(
        model=make_tiny_roberta(seed=1),
        args=make_args(tmp_path / "other", max_steps=1, save_strategy="steps", save_steps=1),
        train_dataset=rotten_tomatoes_tiny,
        tna_config=config,
    )
    other.train()
    checkpoint_values = snapshot(other.model)
    trainer = MaskedTrainer(
        model=make_tiny_roberta(seed=0),
        args=make_args(tmp_path / "out", max_steps=2),
        train_dataset=rotten_tomatoes_tiny,
        tna_config=config,
    )
    trainer.train()

    trainer.train(resume_from_checkpoint=str(tmp_path / "other" / "checkpoint-1"))

    assert trainer.state.global_step == 2
    assert_fixed_kept_and_trainable_moved(trainer.model, checkpoint_values, trainer.masks)


def test_checkpoints_contain_mask(tmp_path, rotten_tomatoes_tiny):
    trainer = MaskedTrainer(
        model=make_tiny_roberta(),
        args=make_args(tmp_path / "out", max_steps=2, save_strategy="steps", save_steps=1),
        train_dataset=rotten_tomatoes_tiny,
        tna_config=TNAConfig(rho=0.4, seed=5),
        init_fingerprint="0" * 64,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))

    for folder in (tmp_path / "out" / "checkpoint-1", tmp_path / "out" / "checkpoint-2", tmp_path / "final"):
        assert (folder / "model.safetensors").is_file(), f"{folder} has no model weights"
        masks = load_masks(folder, model=trainer.model)
        assert mask_fingerprint(masks) == trainer.mask_fingerprint, f"{folder} holds another mask"
        assert TNAConfig.from_pretrained(folder) == trainer.tna_config
        provenance = load_provenance(folder)
        assert provenance.mask_fingerprint == trainer.mask_fingerprint
        assert provenance.init_fingerprint == "0" * 64


def test_resume_rejects_other_mask(tmp_path, rotten_tomatoes_tiny):
    trainer = MaskedTrainer(
        model=make_tiny_roberta(),
        args=make_args(tmp_path / "out", max_steps=1, save_strategy="steps", save_steps=1),
        train_dataset=rotten_tomatoes_tiny,
        tna_config=TNAConfig(rho=0.4),
    )
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-1"

    def new_trainer(config):
        return MaskedTrainer(
            model=make_tiny_roberta(),
            args=make_args(tmp_path / "out", max_steps=2),
            train_dataset=rotten_tomatoes_tiny,
            tna_config=config,
        )

    with pytest.raises(MaskMismatchError, match="seed: checkpoint 0, trainer 1"):
        new_trainer(TNAConfig(rho=0.4, seed=1)).train(resume_from_checkpoint=str(checkpoint))

    # Same config, but the checkpoint's mask file contains the complement mask.
    tampered = tmp_path / "tampered"
    shutil.copytree(checkpoint, tampered)
    save_masks(complement_masks(trainer.masks), tampered)
    with pytest.raises(MaskMismatchError, match="fingerprint mismatch"):
        new_trainer(TNAConfig(rho=0.4)).train(resume_from_checkpoint=str(tampered))

    # A checkpoint written by a plain Trainer.
    os.remove(tampered / CONFIG_NAME)
    with pytest.raises(FileNotFoundError, match="not saved by MaskedTrainer"):
        new_trainer(TNAConfig(rho=0.4)).train(resume_from_checkpoint=str(tampered))


def test_mask_dir_loads_saved_mask(tmp_path, datasets):
    config = TNAConfig(rho=0.3, seed=7)
    source = make_tiny_vit()
    save_masks(build_masks(source, config), tmp_path / "mask", config=config)
    expected = mask_fingerprint(build_masks(source, config))

    from_dir = MaskedTrainer(
        model=make_tiny_vit(), args=make_args(tmp_path / "a"), train_dataset=datasets["vit"], mask_dir=tmp_path / "mask"
    )
    from_path = MaskedTrainer(
        model=make_tiny_vit(),
        args=make_args(tmp_path / "b"),
        train_dataset=datasets["vit"],
        tna_config=str(tmp_path / "mask"),
    )

    assert from_dir.mask_fingerprint == expected
    assert from_path.mask_fingerprint == expected
    assert from_dir.tna_config == config


def test_round_index_selects_mask(tmp_path, datasets):
    config = TNAConfig(rho=0.4, schedule="per_round")
    with pytest.warns(UserWarning, match="round_index is None"):
        unindexed = build_trainer("vit", tmp_path, datasets, tna_config=config)
    round_one = MaskedTrainer(
        model=make_tiny_vit(),
        args=make_args(tmp_path / "r1"),
        train_dataset=datasets["vit"],
        tna_config=config,
        round_index=1,
    )

    assert round_one.mask_fingerprint == mask_fingerprint(build_masks(make_tiny_vit(), config, round_index=1))
    assert round_one.mask_fingerprint != unindexed.mask_fingerprint


# ---------------------------------------------------------------- PEFT


def test_peft_lora_masks_adapters_only(tmp_path, rotten_tomatoes_tiny):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        make_tiny_roberta(), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
    )
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    frozen_before = {
        name: param.detach().clone() for name, param in model.named_parameters() if not param.requires_grad
    }
    initial = snapshot(model)
    trainer = MaskedTrainer(
        model=model,
        args=make_args(tmp_path / "out", max_steps=3, learning_rate=5e-2),
        train_dataset=rotten_tomatoes_tiny,
        tna_config=TNAConfig(rho=0.4),
    )

    trainer.train()
    trainer.save_model()

    assert set(trainer.masks) == trainable
    assert any("lora_A" in name for name in trainer.masks)
    assert all("lora_" in name or "classifier" in name for name in trainer.masks), sorted(trainer.masks)
    assert_fixed_kept_and_trainable_moved(model, initial, trainer.masks)
    for name, param in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(param, frozen_before[name]), f"frozen base weight {name} changed"
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert mask_fingerprint(load_masks(tmp_path / "out", model=model)) == trainer.mask_fingerprint


# ---------------------------------------------------------------- Hub: model card and uploaded files


def test_model_card_section(tmp_path, rotten_tomatoes_tiny):
    trainer = MaskedTrainer(
        model=make_tiny_roberta(),
        args=make_args(tmp_path / "out", max_steps=1),
        train_dataset=rotten_tomatoes_tiny,
        tna_config=TNAConfig(rho=0.4, seed=11, mode="fix"),
    )
    trainer.train()

    trainer.create_model_card(model_name="tiny-tna")
    trainer.create_model_card(model_name="tiny-tna")
    with open(tmp_path / "out" / "README.md", encoding="utf-8") as handle:
        card = handle.read()

    assert card.count("## Training-time neuron alignment (TNA-PFN)") == 1
    assert METHOD_URL in card
    assert "| rho (mask ratio) | 0.4 |" in card
    assert "| mask seed | 11 |" in card
    assert "| mode | fix |" in card
    assert f"| fraction of targeted entries fixed | {trainer.get_mask_summary()['fraction_fixed']:.4f} |" in card
    assert f"`{trainer.mask_fingerprint}`" in card
    assert "tiny-tna" in card  # the Trainer's own card is still there


def test_push_to_hub_writes_files(tmp_path, rotten_tomatoes_tiny, monkeypatch):
    """push_to_hub saves the mask files and the card into the uploaded folder.

    The upload itself is not exercised: no network is available offline, so huggingface_hub's offline
    mode makes the final `upload_folder` call raise, and the test checks the folder it would upload.
    """
    import huggingface_hub.constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    trainer = MaskedTrainer(
        model=make_tiny_roberta(),
        args=make_args(tmp_path / "out", max_steps=1),
        train_dataset=rotten_tomatoes_tiny,
        tna_config=TNAConfig(rho=0.4),
    )
    trainer.train()
    trainer.hub_model_id = "local-user/tiny-tna"  # skips create_repo, which needs the network

    with pytest.raises(OfflineModeIsEnabled):
        trainer.push_to_hub()

    folder = tmp_path / "out"
    for name in ("model.safetensors", CONFIG_NAME, MASK_NAME, PROVENANCE_NAME, "README.md"):
        assert (folder / name).is_file(), f"{name} is not in the folder push_to_hub uploads"
    assert trainer.mask_fingerprint in (folder / "README.md").read_text(encoding="utf-8")


def test_copy_mask_files_for_checkpoint_push(tmp_path, rotten_tomatoes_tiny):
    trainer = MaskedTrainer(
        model=make_tiny_roberta(),
        args=make_args(tmp_path / "out", max_steps=1, save_strategy="steps", save_steps=1),
        train_dataset=rotten_tomatoes_tiny,
        tna_config=TNAConfig(rho=0.4),
    )
    trainer.train()

    os.makedirs(tmp_path / "upload")
    copied = copy_mask_files(tmp_path / "out" / "checkpoint-1", tmp_path / "upload")

    assert sorted(copied) == sorted([CONFIG_NAME, MASK_NAME, PROVENANCE_NAME])
    assert mask_fingerprint(load_masks(tmp_path / "upload")) == trainer.mask_fingerprint


# ---------------------------------------------------------------- input errors


def test_rejects_bad_tna_config(tmp_path, rotten_tomatoes_tiny):
    def make(**kwargs):
        return MaskedTrainer(
            model=make_tiny_roberta(), args=make_args(tmp_path / "out"), train_dataset=rotten_tomatoes_tiny, **kwargs
        )

    with pytest.raises(TypeError, match=r"TNAConfig\(\*\*your_dict\)"):
        make(tna_config={"rho": 0.4})
    with pytest.raises(TypeError, match="got float"):
        make(tna_config=0.4)
    with pytest.raises(ValueError, match="not both"):
        make(tna_config=TNAConfig(), mask_dir=str(tmp_path))
    with pytest.raises(ValueError, match="requires tna_config"):
        make()


def test_rejects_bad_mask_dir(tmp_path, rotten_tomatoes_tiny):
    def make(mask_dir):
        return MaskedTrainer(
            model=make_tiny_roberta(),
            args=make_args(tmp_path / "out"),
            train_dataset=rotten_tomatoes_tiny,
            mask_dir=mask_dir,
        )

    with pytest.raises(FileNotFoundError, match="not found"):
        make(tmp_path / "missing")

    config = TNAConfig(rho=0.4)
    config.save_pretrained(tmp_path / "config_only")
    with pytest.raises(FileNotFoundError, match=f"missing {MASK_NAME}"):
        make(tmp_path / "config_only")

    save_masks(build_masks(make_tiny_roberta(), config), tmp_path / "mask_only")
    with pytest.raises(FileNotFoundError, match=f"missing {CONFIG_NAME}"):
        make(tmp_path / "mask_only")

    # A mask saved for the ViT does not fit the RoBERTa model.
    save_masks(build_masks(make_tiny_vit(), config), tmp_path / "vit_mask", config=config)
    with pytest.raises(MaskMismatchError, match="targeted parameters without a mask"):
        make(tmp_path / "vit_mask")


def test_rejects_unsupported_training(tmp_path, rotten_tomatoes_tiny):
    """FSDP, DeepSpeed and optimizers that update parameters outside optimizer.step() are rejected up front.

    deepspeed is not installed here, so TrainingArguments cannot validate a DeepSpeed config and the field is set
    after construction.
    """
    def make(args):
        return MaskedTrainer(
            model=make_tiny_roberta(), args=args, train_dataset=rotten_tomatoes_tiny, tna_config=TNAConfig()
        )

    with pytest.raises(ValueError, match="does not support FSDP.*DDP"):
        make(make_args(tmp_path / "out", fsdp=True))

    args = make_args(tmp_path / "out")
    args.deepspeed = "ds_config.json"
    with pytest.raises(ValueError, match="does not support DeepSpeed.*DDP"):
        make(args)

    with pytest.raises(ValueError, match="optim='lomo'"):
        make(make_args(tmp_path / "out", optim="lomo"))


# ---------------------------------------------------------------- two processes (gloo)


def test_two_process_ddp(tmp_path):
    """A real 2-process CPU run (torch.distributed with gloo): identical masks on both ranks, fixed entries exact."""
    script = os.path.join(REPO_ROOT, "tests", "_trainer_ddp_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO_ROOT}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        script, str(tmp_path),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "address already in use" in result.stderr.lower():
        # torchrun --standalone picks a free port, which another process on the machine may take first: retry once.
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    # On failure, show the first worker traceback: torchrun's own summary at the end omits it.
    start = result.stderr.find("Traceback")
    assert result.returncode == 0, result.stderr[start : start + 4000] if start >= 0 else result.stderr[-4000:]

    reports = []
    for rank in (0, 1):
        with open(tmp_path / f"rank{rank}.json", encoding="utf-8") as handle:
            reports.append(json.load(handle))

    assert reports[0]["world_size"] == 2
    assert reports[0]["mask_fingerprint"] == reports[1]["mask_fingerprint"]
    assert reports[0]["mask_fingerprint"] == reports[0]["expected_fingerprint"]
    for report in reports:
        assert report["changed_fixed"] == [], f"rank {report['rank']}: verify() lists moved fixed entries"
        assert report["fixed_differ_from_initial"] == [], f"rank {report['rank']}: fixed entries moved"
    assert reports[0]["weights_fingerprint"] == reports[1]["weights_fingerprint"], "ranks ended with other weights"
    assert reports[0]["moved"], "training did not change the model"
    assert reports[0]["global_step"] == 3
