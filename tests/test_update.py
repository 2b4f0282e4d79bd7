"""Exactness of `MaskedUpdate`: fixed entries stay bit-identical under real torch optimizers."""

import math

import pytest
import torch

from tna_hf import MaskedUpdate, TNAConfig, build_masks, complement_masks


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3)
        self.norm = torch.nn.LayerNorm(6 * 6 * 6)
        self.fc = torch.nn.Linear(6 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.norm(torch.relu(self.conv(x)).flatten(1)))


def make_net(seed=0, channels_last=False):
    torch.manual_seed(seed)
    net = TinyNet()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def batches(num, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(num):
        yield torch.randn(8, 3, 8, 8, generator=generator), torch.randint(0, 5, (8,), generator=generator)


def snapshot(model):
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def assert_fixed_unchanged_and_trainable_moved(model, masks, initial, require_moved=True):
    for name, param in model.named_parameters():
        fixed = ~masks[name]
        current = param.detach()
        # Compare raw bits so that -0.0 vs 0.0 or NaN payloads would count as changes.
        bits = torch.int16 if current.element_size() == 2 else torch.int32
        assert torch.equal(current[fixed].view(bits), initial[name][fixed].view(bits)), f"fixed entries of {name} moved"
        if require_moved:
            moved = (current[~fixed] != initial[name][~fixed]).float().mean().item()
            assert moved > 0.5, f"only {moved:.0%} of the trainable entries of {name} moved"


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "sgd_nesterov_wd_foreach": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, foreach=True
    ),
    "sgd_fused": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1, fused=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1),
    "adam_foreach": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True),
    "adam_fused_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, fused=True),
    "adamw_forloop": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.5, foreach=False),
    "adamw_foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.5, foreach=True),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.5, fused=True),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1, weight_decay=0.1),
    "adamax": lambda p: torch.optim.Adamax(p, lr=1e-2, weight_decay=0.1),
    "nadam": lambda p: torch.optim.NAdam(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    "radam": lambda p: torch.optim.RAdam(p, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9, weight_decay=0.1),
    "adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0, weight_decay=0.1),
    "asgd": lambda p: torch.optim.ASGD(p, lr=0.1, weight_decay=0.1),
    "rprop": lambda p: torch.optim.Rprop(p, lr=1e-2),
}


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
def test_fixed_entries_exact_per_optimizer(optimizer_name):
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4, seed=0))
    initial = snapshot(model)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    MaskedUpdate(model, masks).attach(optimizer)

    for inputs, labels in batches(6):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()

    assert_fixed_unchanged_and_trainable_moved(model, masks, initial)


def test_lbfgs_with_closure():
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4))
    initial = snapshot(model)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    MaskedUpdate(model, masks).attach(optimizer)
    inputs, labels = next(batches(1))

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    assert_fixed_unchanged_and_trainable_moved(model, masks, initial)


def test_gradient_masking_alone_is_not_exact():
    """Equation 5 applied only to gradients: weight decay and momentum still move fixed entries."""
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4))
    initial = snapshot(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for inputs, labels in batches(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        for name, param in model.named_parameters():
            param.grad.mul_(masks[name])
        optimizer.step()
    moved = [
        name
        for name, param in model.named_parameters()
        if not torch.equal(param[~masks[name]], initial[name][~masks[name]])
    ]
    assert moved, "weight decay should have moved fixed entries without MaskedUpdate"


def test_fixed_gradients_are_zero_after_backward():
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4))
    MaskedUpdate(model, masks)
    inputs, labels = next(batches(1))
    torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    for name, param in model.named_parameters():
        assert torch.count_nonzero(param.grad[~masks[name]]) == 0, name
        assert torch.count_nonzero(param.grad[masks[name]]) > 0, name


def test_gradient_clipping_uses_masked_norm():
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4))
    reference = make_net()
    inputs, labels = next(batches(1))
    torch.nn.functional.cross_entropy(reference(inputs), labels).backward()
    expected = math.sqrt(sum(float((p.grad[masks[n]] ** 2).sum()) for n, p in reference.named_parameters()))
    unmasked = math.sqrt(sum(float((p.grad**2).sum()) for p in reference.parameters()))

    MaskedUpdate(model, masks)
    torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-3)
    assert float(norm) == pytest.approx(expected, rel=1e-5)
    assert float(norm) != pytest.approx(unmasked, rel=1e-3)


def test_gradient_accumulation_and_clipping():
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4))
    initial = snapshot(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    MaskedUpdate(model, masks).attach(optimizer)
    for step, (inputs, labels) in enumerate(batches(8)):
        (torch.nn.functional.cross_entropy(model(inputs), labels) / 4).backward()
        if step % 4 == 3:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
            optimizer.step()
            optimizer.zero_grad()
    assert_fixed_unchanged_and_trainable_moved(model, masks, initial)


def test_bf16_autocast():
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4))
    initial = snapshot(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    MaskedUpdate(model, masks).attach(optimizer)
    for inputs, labels in batches(4):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
    assert_fixed_unchanged_and_trainable_moved(model, masks, initial)


def test_bf16_parameters():
    model = make_net().to(torch.bfloat16)
    masks = build_masks(model, TNAConfig(rho=0.4))
    initial = snapshot(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    MaskedUpdate(model, masks).attach(optimizer)
    for inputs, labels in batches(4):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs.bfloat16()), labels).backward()
        optimizer.step()
    assert_fixed_unchanged_and_trainable_moved(model, masks, initial)


def test_skipped_steps_with_grad_scaler():
    """A GradScaler step that finds inf skips optimizer.step; fixed entries still match afterwards."""
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4))
    initial = snapshot(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    MaskedUpdate(model, masks).attach(optimizer)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    skipped = 0
    for step, (inputs, labels) in enumerate(batches(6)):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        if step == 2:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scale_before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped += scaler.get_scale() < scale_before
    assert skipped == 1
    assert_fixed_unchanged_and_trainable_moved(model, masks, initial)


def test_channels_last_parameters():
    model = make_net(channels_last=True)
    assert not model.conv.weight.is_contiguous()
    masks = build_masks(model, TNAConfig(rho=0.4))
    initial = snapshot(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    update = MaskedUpdate(model, masks).attach(optimizer)
    for inputs, labels in batches(4):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs.to(memory_format=torch.channels_last)), labels).backward()
        optimizer.step()
    assert not model.conv.weight.is_contiguous()
    assert update.verify() == []
    assert_fixed_unchanged_and_trainable_moved(model, masks, initial)


def test_nan_on_fixed_entries_is_repaired_by_selection():
    """Restoring by selection puts back exact values even where a parameter became NaN or inf."""
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4))
    initial = snapshot(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    update = MaskedUpdate(model, masks).attach(optimizer)
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
        model.conv.weight.fill_(float("inf"))
    assert set(update.verify()) == {"fc.weight", "conv.weight"}
    inputs, labels = next(batches(1))
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    optimizer.step()
    assert update.verify() == []
    for name in ("fc.weight", "conv.weight"):
        fixed = ~masks[name]
        param = dict(model.named_parameters())[name].detach()
        assert torch.equal(param[fixed], initial[name][fixed]), name


def test_mask_change_mid_training_uses_new_snapshot():
    """Momentum gathered under the first mask must not move entries fixed under the complement."""
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    update = MaskedUpdate(model, masks).attach(optimizer)
    data = list(batches(8))
    for inputs, labels in data[:4]:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()

    complement = complement_masks(masks)
    update.set_masks(complement)
    at_switch = snapshot(model)
    for inputs, labels in data[4:]:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    assert_fixed_unchanged_and_trainable_moved(model, complement, at_switch)
    assert update.fingerprint != MaskedUpdate(make_net(), masks).fingerprint


def test_new_round_mask_with_adam_state():
    model = make_net()
    config = TNAConfig(rho=0.4, schedule="per_round")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    update = MaskedUpdate(model, build_masks(model, config, round_index=0)).attach(optimizer)
    data = list(batches(6))
    for inputs, labels in data[:3]:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    round_one = build_masks(model, config, round_index=1)
    update.set_masks(round_one)
    at_switch = snapshot(model)
    for inputs, labels in data[3:]:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    assert_fixed_unchanged_and_trainable_moved(model, round_one, at_switch)


def test_prune_mode_zeroes_fixed_entries():
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4, mode="prune"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    MaskedUpdate(model, masks, mode="prune").attach(optimizer)
    for name, param in model.named_parameters():
        assert torch.count_nonzero(param.detach()[~masks[name]]) == 0, name
    for inputs, labels in batches(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    for name, param in model.named_parameters():
        assert torch.count_nonzero(param.detach()[~masks[name]]) == 0, name


def test_rho_zero_is_vanilla():
    masked_model, plain_model = make_net(), make_net()
    masks = build_masks(masked_model, TNAConfig(rho=0.0))
    masked_opt = torch.optim.AdamW(masked_model.parameters(), lr=1e-2)
    plain_opt = torch.optim.AdamW(plain_model.parameters(), lr=1e-2)
    MaskedUpdate(masked_model, masks).attach(masked_opt)
    for inputs, labels in batches(3):
        for model, optimizer in ((masked_model, masked_opt), (plain_model, plain_opt)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
    for (name, a), b in zip(masked_model.named_parameters(), plain_model.parameters()):
        assert torch.equal(a, b), name


def test_masked_update_of_trainable_entries_matches_gradient_masking():
    """With plain SGD (no decay, no momentum) equation 5 is exact, and MaskedUpdate gives the same weights."""
    model, reference = make_net(), make_net()
    masks = build_masks(model, TNAConfig(rho=0.4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    MaskedUpdate(model, masks).attach(optimizer)
    for inputs, labels in batches(3):
        optimizer.zero_grad()
        ref_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        torch.nn.functional.cross_entropy(reference(inputs), labels).backward()
        for name, param in reference.named_parameters():
            param.grad.mul_(masks[name])
        optimizer.step()
        ref_optimizer.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), name


def test_attach_accepts_wrapped_optimizer_and_is_idempotent():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4))
    initial = snapshot(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    update = MaskedUpdate(model, masks)
    update.attach(optimizer)
    update.attach(optimizer)
    assert len(update._optimizers) == 1
    for inputs, labels in batches(3):
        optimizer.zero_grad()
        accelerator.backward(torch.nn.functional.cross_entropy(model(inputs), labels))
        optimizer.step()
    assert_fixed_unchanged_and_trainable_moved(accelerator.unwrap_model(model), masks, initial)


def test_detach_stops_masking():
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
    update = MaskedUpdate(model, masks).attach(optimizer)
    update.detach()
    inputs, labels = next(batches(1))
    torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    optimizer.step()
    assert update.verify(), "after detach the optimizer should move fixed entries again"


@pytest.mark.parametrize(
    ("masks_fn", "match"),
    [
        (lambda m: {"missing.weight": torch.ones(3, dtype=torch.bool)}, "'missing.weight' is not a parameter"),
        (lambda m: {"fc.weight": torch.ones(3, dtype=torch.bool)}, r"'fc.weight' has mask shape \(3,\)"),
        (lambda m: {"fc.weight": torch.ones(5, 216)}, "masks must be torch.bool"),
    ],
)
def test_invalid_masks_rejected(masks_fn, match):
    model = make_net()
    with pytest.raises(ValueError, match=match):
        MaskedUpdate(model, masks_fn(model))


def test_invalid_mode_and_optimizer():
    model = make_net()
    masks = build_masks(model, TNAConfig(rho=0.4))
    with pytest.raises(ValueError, match="mode must be 'fix' or 'prune', got 'zero'"):
        MaskedUpdate(model, masks, mode="zero")
    with pytest.raises(TypeError, match="attach expects a torch.optim.Optimizer, got list"):
        MaskedUpdate(model, masks).attach([])


def test_fraction_fixed_reported():
    model = make_net()
    update = MaskedUpdate(model, build_masks(model, TNAConfig(rho=0.25)))
    assert update.fraction_fixed() == pytest.approx(0.25, abs=0.01)
    assert update.num_fixed() == sum(round(0.25 * p.numel()) for p in model.parameters())


def test_cast_after_set_masks_error():
    model = torch.nn.Linear(4, 4)
    masks = build_masks(model, TNAConfig(rho=0.5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    MaskedUpdate(model, masks).attach(optimizer)
    model.to(torch.float64)
    expected = r"changed from torch.float32 to torch.float64 .* call MaskedUpdate.set_masks"
    with pytest.raises(RuntimeError, match=expected):
        model(torch.randn(2, 4, dtype=torch.float64)).sum().backward()
