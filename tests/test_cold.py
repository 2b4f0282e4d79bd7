"""Tests of ColD fusion rounds, their mask schedules, the text tasks and the experiment driver.

Models are tiny randomly initialized BERT / RoBERTa classifiers with the packaged MiniLM tokenizer.
Data are small slices of the real offline tasks (Rotten Tomatoes, BBC News, tweets).
"""

from __future__ import annotations

import inspect
import json
import os

import pytest
import torch
from transformers import AutoModel, DataCollatorWithPadding, TrainerCallback, TrainingArguments

from tna_hf.checkpoint import state_dict_fingerprint
from tna_hf.data.text_tasks import (
    BBC_NEWS_CLASSES,
    TWITTER_SENTIMENT_CLASSES,
    load_bbc_news,
    load_text_task,
    load_twitter_sentiment,
)
from tna_hf.experiments.cold_evaluation import tokenize_split
from tna_hf.experiments.cold_fusion import main, parse_arguments, prepare_tasks
from tna_hf.fusion.cold import (
    ColdFusion,
    Contributor,
    get_aggregation_weights,
    push_fused_round,
    round_revision,
    variant_tna_config,
)
from tna_hf.masks import build_masks, complement_masks, load_masks, mask_fingerprint
from tna_hf.models.text import (
    get_body_state_dict,
    get_head_state_dict,
    load_text_classifier,
    load_text_tokenizer,
    set_body_state_dict,
)

TASKS = ("rotten_tomatoes", "bbc_news", "twitter_sentiment")


@pytest.fixture(scope="module")
def tokenizer():
    return load_text_tokenizer("tiny-random-bert")


@pytest.fixture(scope="module")
def task_examples(tokenizer):
    """Tokenized training slices of the three real tasks, of different sizes (48, 32, 16 examples)."""
    examples = {}
    for size, name in zip((48, 32, 16), TASKS):
        task = load_text_task(name)
        examples[name] = (task.num_labels, tokenize_split(tokenizer, task.train.select(range(size)), max_length=24))
    return examples


def make_contributors(tokenizer, task_examples, names=TASKS, model_name="tiny-random-bert"):
    collator = DataCollatorWithPadding(tokenizer)
    contributors, body = [], None
    for position, name in enumerate(names):
        num_labels, examples = task_examples[name]
        model = load_text_classifier(model_name, num_labels, seed=position, tokenizer=tokenizer, max_length=24)
        if body is None:
            body = get_body_state_dict(model)
        set_body_state_dict(model, body)
        contributors.append(Contributor(name=name, model=model, train_dataset=examples, data_collator=collator))
    return contributors


def make_args(tmp_path, local_steps=2):
    return TrainingArguments(
        output_dir=str(tmp_path / "local"),
        max_steps=local_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        weight_decay=0.1,
        lr_scheduler_type="constant",
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )


class HeadAndBodyRecorder(TrainerCallback):
    """Records every contributor's head fingerprint around each local training, and the trained bodies."""

    def __init__(self, contributors):
        self.contributors = contributors
        self.events = []  # (who trained, "begin" or "end", {name: head fingerprint})
        self.trained_bodies = {}
        self.trained_heads = {}

    def _owner(self, model):
        return next(c.name for c in self.contributors if c.model is model)

    def _heads(self):
        return {c.name: state_dict_fingerprint(get_head_state_dict(c.model)) for c in self.contributors}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.events.append((self._owner(model), "begin", self._heads()))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        owner = self._owner(model)
        self.events.append((owner, "end", self._heads()))
        self.trained_bodies[owner] = get_body_state_dict(model)
        self.trained_heads[owner] = get_head_state_dict(model)


# ---------------------------------------------------------------------------------------------- heads and bodies


@pytest.fixture(scope="module", params=["uniform", "num_samples"])
def one_round(request, tokenizer, task_examples, tmp_path_factory):
    contributors = make_contributors(tokenizer, task_examples)
    recorder = HeadAndBodyRecorder(contributors)
    config = variant_tna_config("fedavg_tna_pfn", rho=0.4, body_prefix="bert.")
    fusion = ColdFusion(
        contributors,
        config,
        make_args(tmp_path_factory.mktemp("round")),
        weighting=request.param,
        callbacks=[recorder],
    )
    initial_heads = {c.name: get_head_state_dict(c.model) for c in contributors}
    result = fusion.run_round(0)
    return request.param, fusion, recorder, result, initial_heads


def test_heads_trained_only_by_owner(one_round):
    _, fusion, recorder, _, _ = one_round
    for position in range(0, len(recorder.events), 2):
        owner, begin_label, before = recorder.events[position]
        _, end_label, after = recorder.events[position + 1]
        assert (begin_label, end_label) == ("begin", "end")
        assert before[owner] != after[owner], f"the head of {owner} did not change during its own training"
        for name in before:
            if name != owner:
                assert before[name] == after[name], f"the head of {name} changed while {owner} trained"


def test_heads_unchanged_by_aggregation(one_round):
    _, fusion, recorder, _, initial_heads = one_round
    for contributor in fusion.contributors:
        head = get_head_state_dict(contributor.model)
        trained = recorder.trained_heads[contributor.name]
        for name, tensor in head.items():
            assert torch.equal(tensor.view(torch.int32), trained[name].view(torch.int32)), (
                f"{contributor.name}: {name} changed during aggregation"
            )
            assert not torch.equal(tensor, initial_heads[contributor.name][name]), (
                f"{contributor.name}: {name} was never trained"
            )


def test_heads_keep_their_own_shapes(one_round):
    _, fusion, _, _, _ = one_round
    shapes = {c.name: tuple(get_head_state_dict(c.model)["classifier.weight"].shape) for c in fusion.contributors}
    assert shapes == {"rotten_tomatoes": (2, 32), "bbc_news": (5, 32), "twitter_sentiment": (3, 32)}


def test_body_average_matches_hand_computation(one_round):
    weighting, fusion, recorder, result, _ = one_round
    sizes = [48, 32, 16]
    expected_weights = [1 / 3] * 3 if weighting == "uniform" else [size / sum(sizes) for size in sizes]
    assert result.weights == pytest.approx(expected_weights, abs=1e-12)

    bodies = [recorder.trained_bodies[name] for name in TASKS]
    for name, fused in fusion.base_body.items():
        if not fused.dtype.is_floating_point:
            assert torch.equal(fused, bodies[0][name]), f"integer buffer {name} changed"
            continue
        by_hand = sum(weight * body[name].double() for weight, body in zip(expected_weights, bodies))
        torch.testing.assert_close(fused, by_hand.float(), rtol=2e-7, atol=1e-9, msg=f"average of {name}")
    for contributor in fusion.contributors:
        body = get_body_state_dict(contributor.model)
        assert all(torch.equal(body[name], fusion.base_body[name]) for name in body), (
            f"{contributor.name} does not hold the fused body after the round"
        )


def test_weightings_differ_for_unequal_datasets(tokenizer, task_examples):
    contributors = make_contributors(tokenizer, task_examples)
    assert get_aggregation_weights(contributors, "uniform") == pytest.approx([1 / 3] * 3)
    assert get_aggregation_weights(contributors, "num_samples") == pytest.approx([0.5, 1 / 3, 1 / 6])
    with pytest.raises(ValueError, match="Unknown weighting 'median'"):
        get_aggregation_weights(contributors, "median")


# ---------------------------------------------------------------------------------------------- mask schedules


def run_schedule(variant, tokenizer, task_examples, tmp_path, rounds=2, local_steps=4):
    contributors = make_contributors(tokenizer, task_examples, names=TASKS[:2])
    config = variant_tna_config(variant, rho=0.4, seed=3, body_prefix="bert.")
    fusion = ColdFusion(contributors, config, make_args(tmp_path, local_steps))
    initial_body = dict(fusion.base_body)
    for round_index in range(rounds):
        fusion.run_round(round_index)
    fingerprints = {}
    for record in fusion.mask_records:
        fingerprints.setdefault((record.round_index, record.contributor), []).append((record.step, record.fingerprint))
    return fusion, config, fingerprints, initial_body


def expected_fingerprint(fusion, config, round_index=None):
    return mask_fingerprint(build_masks(fusion.contributors[0].model, config, round_index=round_index))


def test_fedavg_trains_without_mask(tokenizer, task_examples, tmp_path):
    _, _, fingerprints, _ = run_schedule("fedavg", tokenizer, task_examples, tmp_path, rounds=1, local_steps=2)
    assert len(fingerprints) == 2
    for key, steps in fingerprints.items():
        assert steps == [(1, None), (2, None)], f"{key} trained with a mask"


def test_fixed_schedule_same_mask_every_round(tokenizer, task_examples, tmp_path):
    fusion, config, fingerprints, initial_body = run_schedule("fedavg_tna_pfn", tokenizer, task_examples, tmp_path)
    expected = expected_fingerprint(fusion, config)
    assert len(fingerprints) == 4  # 2 rounds x 2 contributors
    for key, steps in fingerprints.items():
        assert [step for step, _ in steps] == [1, 2, 3, 4]
        assert {fingerprint for _, fingerprint in steps} == {expected}, f"{key} used another mask"

    # Entries fixed by the one mask keep their initial values through training and averaging.
    masks = build_masks(fusion.contributors[0].model, config)
    for name, mask in masks.items():
        fused, initial = fusion.base_body[name], initial_body[name]
        assert torch.equal(fused[~mask], initial[~mask]), f"fixed entries of {name} moved over the rounds"
        assert not torch.equal(fused[mask], initial[mask]), f"trainable entries of {name} never moved"


def test_per_round_schedule_new_mask_each_round(tokenizer, task_examples, tmp_path):
    fusion, config, fingerprints, _ = run_schedule("fedpfn", tokenizer, task_examples, tmp_path)
    per_round = {}
    for (round_index, name), steps in fingerprints.items():
        used = {fingerprint for _, fingerprint in steps}
        assert used == {expected_fingerprint(fusion, config, round_index)}, f"round {round_index}, {name}"
        per_round.setdefault(round_index, set()).update(used)
    assert all(len(used) == 1 for used in per_round.values()), "contributors used different masks in one round"
    assert per_round[0] != per_round[1], "the mask did not change between rounds"


def test_progressive_schedule_complement_at_half(tokenizer, task_examples, tmp_path):
    fusion, config, fingerprints, _ = run_schedule("fedpnu", tokenizer, task_examples, tmp_path)
    first_masks = {}
    for (round_index, name), steps in fingerprints.items():
        masks = build_masks(fusion.contributors[0].model, config, round_index=round_index)
        first, complement = mask_fingerprint(masks), mask_fingerprint(complement_masks(masks))
        assert steps == [(1, first), (2, first), (3, complement), (4, complement)], (
            f"round {round_index}, {name}: expected the mask for steps 1-2 and its complement for steps 3-4"
        )
        first_masks[round_index] = first
    assert first_masks[0] != first_masks[1], "FedPNU must draw a new mask each round"


def test_progressive_schedule_needs_two_steps(tokenizer, task_examples, tmp_path):
    with pytest.raises(ValueError, match="FedPNU needs at least 2 local steps"):
        run_schedule("fedpnu", tokenizer, task_examples, tmp_path, rounds=1, local_steps=1)


def test_variant_config_validation():
    assert variant_tna_config("fedavg").rho == 0.0
    assert variant_tna_config("fedpnu", rho=0.5).schedule == "progressive"
    with pytest.raises(ValueError, match="Unknown ColD fusion variant 'fedprox'"):
        variant_tna_config("fedprox")
    with pytest.raises(ValueError, match="needs rho > 0"):
        variant_tna_config("fedpfn", rho=0.0)


# ---------------------------------------------------------------------------------------------- models and data


def test_set_body_rejects_other_architecture(tokenizer):
    bert = load_text_classifier("tiny-random-bert", 2, tokenizer=tokenizer)
    roberta = load_text_classifier("tiny-random-roberta", 2, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="does not fit BertForSequenceClassification"):
        set_body_state_dict(bert, get_body_state_dict(roberta))


def test_bbc_news_split_is_complete_and_disjoint():
    train, test = load_bbc_news("train"), load_bbc_news("test")
    total = len(train) + len(test)
    assert 2100 < total < 2225, "duplicate articles must be kept once"
    assert 0.15 < len(test) / total < 0.25
    assert set(train.labels) == set(test.labels) == set(range(len(BBC_NEWS_CLASSES)))
    assert not set(train.texts) & set(test.texts)


def test_twitter_sentiment_has_no_duplicates():
    train, test = load_twitter_sentiment("train"), load_twitter_sentiment("test")
    assert len(train) + len(test) > 35000
    assert set(train.labels) == set(range(len(TWITTER_SENTIMENT_CLASSES)))
    assert len(set(train.texts) | set(test.texts)) == len(train) + len(test)


def test_unknown_task_and_split_rejected():
    with pytest.raises(ValueError, match="Unknown text task 'imdb'"):
        load_text_task("imdb")
    with pytest.raises(ValueError, match="split must be one of"):
        load_bbc_news("validation")


def test_refit_examples_mix_classes(tokenizer):
    # BBC News is read topic by topic, so an unshuffled subset would give the refit a single class.
    arguments = parse_arguments(["--tasks", "bbc_news", "--max_train_samples", "64", "--max_eval_samples", "8"])
    arguments.head_refit_samples = 16
    (prepared,) = prepare_tasks(arguments, [load_text_task("bbc_news")], tokenizer, with_token_type_ids=True)
    refit_labels = torch.cat([batch["labels"] for batch in prepared.refit_batches])
    assert len(refit_labels) == 16
    assert len(set(refit_labels.tolist())) >= 3, f"refit examples cover the classes {set(refit_labels.tolist())}"
    assert prepared.num_test == 8


def test_arguments_validation(tmp_path):
    with pytest.raises(ValueError, match="Unknown ColD fusion variant 'fedsgd'"):
        parse_arguments(["--variants", "fedsgd"])
    with pytest.raises(ValueError, match="push_to_hub needs --hub_repo_id"):
        parse_arguments(["--push_to_hub", "true"])
    config = tmp_path / "bad.yaml"
    config.write_text("rounds: 2\nlocal_epochs: 3\n")
    with pytest.raises(ValueError, match=r"unknown options \['local_epochs'\]"):
        parse_arguments(["--config", str(config)])


# ---------------------------------------------------------------------------------------------- end to end and the Hub


class RecordingHubApi:
    """Stands in for `huggingface_hub.HfApi`, which needs the network: records each call's arguments."""

    def __init__(self):
        self.calls = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        # Record what would be uploaded: the folder is only guaranteed to exist during the call.
        self.calls[-1][1]["files"] = sorted(os.listdir(kwargs["folder_path"]))


def test_end_to_end_tiny_roberta_with_hub_push(tmp_path):
    """Run FedAvg and FedPNU on a tiny random RoBERTa through `main`, up to the Hub upload.

    The upload itself is not exercised offline: a recorder takes the place of `HfApi`, and the recorded
    keyword arguments are bound to the real `HfApi` method signatures.
    """
    from huggingface_hub import HfApi

    api = RecordingHubApi()
    output_dir = tmp_path / "cold"
    results = main(
        [
            "--model_name_or_path", "tiny-random-roberta",
            "--variants", "fedavg", "fedpnu",
            "--rounds", "2",
            "--local_steps", "2",
            "--batch_size", "8",
            "--max_train_samples", "24",
            "--max_eval_samples", "16",
            "--head_refit_steps", "3",
            "--head_refit_samples", "16",
            "--max_length", "24",
            "--output_dir", str(output_dir),
            "--push_to_hub", "true",
            "--hub_repo_id", "someone/cold-fusion-test",
        ],
        hub_api=api,
    )  # fmt: skip

    # Results: every variant, every round, every task plus Sum, both heads.
    assert list(results["variants"]) == ["fedavg", "fedpnu"]
    for variant in results["variants"].values():
        assert [record["round"] for record in variant["rounds"]] == [1, 2]
        for record in variant["rounds"]:
            assert set(record["accuracies"]) == {*TASKS, "Sum"}
            for accuracies in record["accuracies"].values():
                assert 0.0 <= accuracies["accuracy_kept_head"] <= 1.0
                assert 0.0 <= accuracies["accuracy_refit_head"] <= 1.0
            assert record["accuracies"]["Sum"]["num_examples"] == 48
    saved = json.loads((output_dir / "cold_fusion_results.json").read_text())
    assert saved["variants"]["fedpnu"]["rounds"][1]["complement_fingerprints"]
    assert (output_dir / "cold_fusion_accuracy.png").stat().st_size > 0

    # Round folders: the fused RoBERTa body, its mask (names relative to the body) and the round summary.
    folder = output_dir / "rounds" / round_revision("fedpnu", 1)
    # RobertaForSequenceClassification has no pooler, so neither has the saved body.
    body = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    assert type(body).__name__ == "RobertaModel"
    masks = load_masks(folder, model=body)
    info = json.loads((folder / "cold_fusion_round.json").read_text())
    assert info["mask_fingerprint_body_names"] == mask_fingerprint(masks)
    assert info["base_fingerprint"] == results["variants"]["fedpnu"]["rounds"][1]["base_fingerprint"]
    assert info["mask_fingerprints"]["bbc_news"] != info["complement_fingerprints"]["bbc_news"]
    assert not (output_dir / "rounds" / round_revision("fedavg", 0) / "tna_mask.safetensors").exists()

    # Hub calls: 3 per variant and round, one branch per round, arguments valid for the real HfApi.
    assert len(api.calls) == 3 * 2 * 2
    branches = [kwargs["branch"] for method, kwargs in api.calls if method == "create_branch"]
    assert branches == ["fedavg-round-1", "fedavg-round-2", "fedpnu-round-1", "fedpnu-round-2"]
    for method, kwargs in api.calls:
        arguments = {key: value for key, value in kwargs.items() if key != "files"}
        inspect.signature(getattr(HfApi, method)).bind(None, **arguments)
    uploads = [kwargs for method, kwargs in api.calls if method == "upload_folder"]
    assert all(upload["revision"] in branches for upload in uploads)
    assert {"model.safetensors", "config.json", "tna_config.json", "cold_fusion_round.json"} <= set(uploads[0]["files"])
    assert "tna_mask.safetensors" in uploads[-1]["files"]


def test_push_rejects_bad_repo_id(tmp_path):
    with pytest.raises(ValueError, match="owner/name"):
        push_fused_round(str(tmp_path), "no-owner", "fedavg-round-1", api=RecordingHubApi())
    with pytest.raises(FileNotFoundError, match="save_fused_round"):
        push_fused_round(str(tmp_path / "missing"), "a/b", "fedavg-round-1", api=RecordingHubApi())
