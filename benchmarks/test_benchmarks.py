"""Checks of the benchmark scripts and of `MaskedUpdate`'s fast path (run: `.venv/bin/pytest benchmarks -q`)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import masked_step  # noqa: E402
import restore_strategies  # noqa: E402
from _common import build_mlp, make_adamw, masked_copy, train_step  # noqa: E402

from tna_hf import MaskedUpdate, TNAConfig, build_masks  # noqa: E402


def fixed_bits(model, masks):
    return {
        name: param.detach().clone().view(torch.int32)[~masks[name]]
        for name, param in model.named_parameters()
        if name in masks
    }


@pytest.mark.parametrize("strategy", sorted(restore_strategies.RESTORE_STRATEGIES))
def test_restore_strategy_is_exact(strategy):
    case = build_mlp("cpu", batch_size=8)
    model, masks = masked_copy(case, rho=0.4)
    restorer = restore_strategies.RESTORE_STRATEGIES[strategy](model, masks)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    initial = {name: param.detach().clone() for name, param in model.named_parameters()}
    for _ in range(3):
        train_step(case, model, optimizer)
        restorer.restore()
    assert restorer.is_exact(), f"{strategy} did not restore the fixed entries bit for bit"
    for name, param in model.named_parameters():
        moved = (param.detach() != initial[name])[masks[name]].float().mean().item()
        assert moved > 0.5, f"{strategy}: only {moved:.0%} of the trainable entries of {name} moved"


@pytest.mark.parametrize("hook", sorted(restore_strategies.HOOK_STRATEGIES))
def test_hook_strategy_zeroes_fixed_gradients(hook):
    case = build_mlp("cpu", batch_size=8)
    model, masks = masked_copy(case, rho=0.4)
    for name, param in model.named_parameters():
        restore_strategies.HOOK_STRATEGIES[hook](param, masks[name])
    case.loss_fn(model, case.inputs).backward()
    for name, param in model.named_parameters():
        assert torch.count_nonzero(param.grad[~masks[name]]) == 0, f"{hook} left gradients on fixed entries of {name}"
        assert torch.count_nonzero(param.grad[masks[name]]) > 0, f"{hook} zeroed trainable gradients of {name}"


def test_masked_step_reports_ratio_bits_and_memory(tmp_path):
    output = tmp_path / "results.json"
    results = masked_step.main(
        ["--models", "mlp", "--blocks", "2", "--steps-per-block", "1", "--warmup", "1", "--output", str(output)]
    )
    mlp = results["models"]["mlp_h2_w200"]
    assert output.is_file()
    assert mlp["step"]["fused_cpu"]["ratio_of_medians"] > 0
    assert mlp["step"]["forloop_cpu"]["ratio_of_medians"] > 0
    assert mlp["step"]["components"]["restore_ms"] > 0
    assert mlp["step"]["components"]["hooks_ms"] > 0
    # One bit per entry plus the header: 199,210 entries pack into 24,902 bytes.
    assert mlp["mask_file"]["payload_bits_per_entry"] == pytest.approx(1.0, abs=1e-4)
    assert 1.0 < mlp["mask_file"]["bits_per_entry"] < 1.05
    # float32: 1 byte of mask and 4 bytes of fixed bits per targeted entry.
    assert mlp["memory"]["held_bytes_per_param"] == pytest.approx(5.0)


def test_parameter_storage_replaced_after_set_masks():
    """`model.to(...)` and `accelerator.prepare` replace `param.data`; restoring must follow the new storage."""
    case = build_mlp("cpu", batch_size=8)
    model, masks = masked_copy(case, rho=0.4)
    optimizer = make_adamw(model, "forloop")
    update = MaskedUpdate(model, masks).attach(optimizer)
    before = fixed_bits(model, masks)
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()
    for _ in range(2):
        train_step(case, model, optimizer)
    assert update.verify() == []
    after = fixed_bits(model, masks)
    for name in masks:
        assert torch.equal(after[name], before[name]), name


def test_parameter_cast_after_set_masks_raises():
    case = build_mlp("cpu", batch_size=8)
    model, masks = masked_copy(case, rho=0.4)
    update = MaskedUpdate(model, masks)
    model.double()
    with pytest.raises(RuntimeError, match="call MaskedUpdate.set_masks again after casting"):
        update.restore()


def test_sparse_gradient_rejected():
    model = torch.nn.Embedding(10, 4, sparse=True)
    masks = build_masks(model, TNAConfig(rho=0.4))
    MaskedUpdate(model, masks)
    with pytest.raises(NotImplementedError, match="masks dense gradients only"):
        model(torch.tensor([1, 2])).sum().backward()


def test_nan_gradient_on_fixed_entries_becomes_zero():
    weight = torch.nn.Parameter(torch.ones(6, 5))
    holder = torch.nn.Module()
    holder.weight = weight
    masks = {"weight": torch.rand(6, 5, generator=torch.Generator().manual_seed(0)) > 0.4}
    MaskedUpdate(holder, masks)
    upstream = torch.full((6, 5), float("nan"))
    (weight * upstream).sum().backward()
    fixed = weight.grad[~masks["weight"]]
    assert torch.equal(fixed.view(torch.int32), torch.zeros_like(fixed.view(torch.int32))), "fixed gradients not +0.0"
    assert torch.isnan(weight.grad[masks["weight"]]).all()
