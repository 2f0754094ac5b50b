"""CoNLL-2003 task family: reading the files, sub-word label alignment, seqeval F1, evaluate()."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import load_task_cfg
from omegaconf import OmegaConf

from prune_cli.errors import ConfigError
from prune_cli.tasks import get_task
from prune_cli.tasks.conll import IGNORE, ConllTask, align_labels, entity_metrics, read_conll

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONF = Path(__file__).resolve().parents[1] / "conf"
CONLL = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def task_cfg(**overrides):
    return load_task_cfg("conll2003", CONLL, **overrides)


# ------------------------------------------------------------------ files
def test_read_conll_sentences_docstart_and_two_column_lines(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter B-PER\nBlackburn I-PER\n"
        "-DOCSTART- -X- -X- O\nBRUSSELS NNP B-NP B-LOC",  # no trailing newline
        encoding="utf-8",
    )
    assert read_conll(path) == [
        {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
        {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]},
        {"tokens": ["BRUSSELS"], "tags": ["B-LOC"]},
    ]
    path.write_text("EU NNP B-NP B-ORG\nlonely\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2"):
        read_conll(path)


def test_reads_real_files_with_official_counts_and_caps():
    task = get_task(task_cfg(max_train_samples=40, max_eval_samples=16, subsample="first"))
    assert isinstance(task, ConllTask) and task.primary_metric == "f1"
    task.validate()
    assert len(task._read("train")) == 14041 and len(task._read("validation")) == 3250
    first = task.sentences("train")[0]
    assert first["tokens"][:3] == ["EU", "rejects", "German"]
    assert first["tags"][:3] == ["B-ORG", "O", "B-MISC"]
    assert len(task.sentences("train")) == 40 and len(task.sentences("validation")) == 16
    assert task.model_kwargs()["id2label"][1] == "B-PER" and task.model_kwargs()["num_labels"] == 9
    test_task = get_task(task_cfg(eval_split="test"))
    test_task.validate()
    assert len(test_task._read("test")) == 3453


# ------------------------------------------------------------------ alignment
def test_first_subword_carries_the_label(tokenizer):
    words = ["EU", "rejects", "Germanyx", "call"]
    enc = tokenizer([words], is_split_into_words=True)
    word_ids = enc.word_ids(0)
    pieces = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    assert pieces == ["[CLS]", "eu", "rejects", "germany", "##x", "call", "[SEP]"]
    assert align_labels(word_ids, [3, 0, 7, 0]) == [IGNORE, 3, 0, 7, IGNORE, 0, IGNORE]


def test_encode_aligns_real_sentences_and_honours_max_length(tokenizer):
    task = get_task(task_cfg(max_length=12))
    task.validate()
    sentences = task.sentences("train")[:20]
    features, word_ids = task.encode(tokenizer, sentences)
    assert max(len(x) for x in features["input_ids"]) <= 12
    for labels, ids, sentence in zip(features["labels"], word_ids, sentences):
        firsts = [w for i, w in enumerate(ids) if w is not None and w != ids[i - 1]]
        assert [lab for lab in labels if lab != IGNORE] == [LABELS.index(sentence["tags"][w]) for w in firsts]


# ------------------------------------------------------------------ metric
def test_entity_metrics_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O"]]
    # gold entities PER, LOC, ORG, MISC (4); predicted PER, ORG, ORG (3); correct PER, ORG (2)
    m = entity_metrics(gold, pred, ["LOC", "MISC", "ORG", "PER"])
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(4 / 7)
    assert m["f1_PER"] == 1.0 and m["f1_ORG"] == pytest.approx(2 / 3)  # ORG: P 1/2, R 1
    assert m["f1_LOC"] == 0.0 and m["f1_MISC"] == 0.0
    assert m["accuracy"] == pytest.approx(5 / 7)


def test_entity_metrics_conlleval_semantics():
    # a partial span is no match at all
    assert entity_metrics([["B-ORG", "I-ORG", "I-ORG"]], [["B-ORG", "I-ORG", "O"]])["f1"] == 0.0
    # an entity that starts with I- (IOB1 style) still counts, as in conlleval
    assert entity_metrics([["I-PER", "I-PER"]], [["B-PER", "I-PER"]])["f1"] == 1.0
    # a type no one mentions keeps its key (stable logging), others are not invented
    m = entity_metrics([["B-PER"]], [["B-PER"]], ["LOC", "PER"])
    assert m["f1_LOC"] == 0.0 and m["f1_PER"] == 1.0 and "f1_ORG" not in m


def test_metric_on_sentences_equals_entity_metrics_and_bootstraps():
    """predictions.json keeps tag ids per word; the scores of any set of sentences summed from
    per-sentence counts equal seqeval's on them (a bootstrap resample repeats sentences), and
    the collector's paired bootstrap takes these ragged predictions."""
    import random

    from prune_cli.reports import paired_bootstrap

    task = get_task(task_cfg())
    gold = [[LABELS.index(t) for t in s["tags"]] for s in read_conll(CONLL / "valid.txt")[:300]]
    rng = random.Random(0)
    noisy = [[[rng.randrange(9) if rng.random() < p else t for t in g] for g in gold] for p in (0.05, 0.2)]
    words = lambda ids: [[LABELS[i] for i in s] for s in ids]
    for predicted in noisy:
        got, ref = task.metric_on(predicted, gold), entity_metrics(words(gold), words(predicted))
        assert got == {k: ref[k] for k in got}
    resample = [rng.randrange(300) for _ in range(300)]
    got = task.metric_on([noisy[0][i] for i in resample], [gold[i] for i in resample])
    assert got["f1"] == entity_metrics(words([gold[i] for i in resample]), words([noisy[0][i] for i in resample]))["f1"]
    result = paired_bootstrap([({"prediction": noisy[0], "label": gold}, {"prediction": noisy[1], "label": gold})],
                              lambda p, y: task.metric_on(p, y)["f1"], resamples=50)
    assert result["delta"] > 0 and result["low"] > 0 and result["examples"] == 300


def test_word_predictions_use_first_subword_and_fill_truncated_words_with_o():
    task = get_task(task_cfg())
    logits = [torch.eye(9)[[0, 1, 0, 3, 4, 0]].numpy()]  # rows: CLS, w0, w0-cont, w1, w2, SEP
    word_ids = [[None, 0, 0, 1, 2, None]]
    assert task.word_predictions(logits, word_ids, [4]) == [["B-PER", "B-ORG", "I-ORG", "O"]]


# ------------------------------------------------------------------ evaluate and training batch
def test_evaluate_tiny_bert_and_training_loss(tokenizer):
    from accelerate import Accelerator
    from transformers import BertConfig, BertForTokenClassification

    task = get_task(task_cfg(max_train_samples=8, max_eval_samples=12))
    task.validate()
    splits = task.splits(tokenizer)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        **task.model_kwargs(),
    )
    model = BertForTokenClassification(config)
    batch = task.collate_fn(tokenizer)([splits.train[i] for i in range(4)])
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.ndim == 0

    m1 = task.evaluate(model, tokenizer, splits, Accelerator(cpu=True), batch_size=5)
    m2 = task.evaluate(model, tokenizer, splits, None, batch_size=12)
    assert {"precision", "recall", "f1", "accuracy", "f1_PER", "f1_ORG", "f1_LOC", "f1_MISC"} <= set(m1)
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in m1.values())
    assert m1 == pytest.approx(m2)


# ------------------------------------------------------------------ validation
def test_validate_rejects_bad_config(tmp_path):
    cases = [
        (task_cfg(data_dir=str(tmp_path / "missing")), "task.data_dir"),
        (task_cfg(data_dir=str(tmp_path)), "task.local_files.train"),
        (task_cfg(eval_split="dev"), "task.eval_split"),
        (task_cfg(labels=["B-PER", "I-PER"]), "task.labels"),
        (task_cfg(max_length=1), "task.max_length"),
        (task_cfg(data_dir=None, hub="eriktks/not-cached-here"), "task.hub"),
        (task_cfg(data_dir=None, hub=None), "task.data_dir"),
    ]
    for cfg, key in cases:
        with pytest.raises(ConfigError) as err:
            get_task(cfg).validate()
        assert err.value.key == key, (key, str(err.value))


def test_validate_rejects_tags_missing_from_the_label_list(tmp_path):
    for name in ("train.txt", "valid.txt"):
        (tmp_path / name).write_text("Acme B-COMPANY\nsells O\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="B-COMPANY") as err:
        get_task(task_cfg(data_dir=str(tmp_path))).validate()
    assert err.value.key == "task.labels"


def test_byte_level_bpe_tokenizer_is_reloaded_with_add_prefix_space(tmp_path):
    """RoBERTa-style tokenizers: a word must be encoded as if a space preceded it (as inside a
    sentence), or every word but the first gets pieces the model never saw in pre-training."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, RobertaConfig, RobertaForTokenClassification, RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["hello world, the cat sat on the mat"] * 10,
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    bpe.save_model(str(tmp_path))
    merges = [tuple(line.split()) for line in (tmp_path / "merges.txt").read_text().splitlines()[1:] if line]
    RobertaTokenizer(vocab=bpe.get_vocab(), merges=merges).save_pretrained(tmp_path)
    config = RobertaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=len(LABELS),
    )
    RobertaForTokenClassification(config).save_pretrained(tmp_path)
    assert not AutoTokenizer.from_pretrained(tmp_path).add_prefix_space

    task = get_task(task_cfg())
    _, tok = task.load_model(OmegaConf.create({"name": "tiny-roberta", "path": str(tmp_path)}))
    assert tok.add_prefix_space
    enc = tok([["hello", "world"]], is_split_into_words=True)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"][0])
    firsts = [pieces[i] for i, w in enumerate(enc.word_ids(0)) if w == 1]
    assert firsts[0] == "Ġworld"


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_prune_run_conll_end_to_end(tmp_path):
    """The real command on 32 real sentences: MiniLM, random pruning to 36 heads, 2 fine-tuning steps."""
    import json
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    args = [
        "model=minilm", "task=conll2003", f"task.data_dir={CONLL}", "method=random", "heads=36",
        "pipeline=[prune,finetune,evaluate]",
        "task.max_train_samples=32", "task.max_eval_samples=16", "trainer.max_steps=2", "trainer.batch_size=8",
        "trainer.progress_bar=false", "logger.mode=disabled", "export_model=false", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    res = subprocess.run([sys.executable, "-m", "prune_cli.cli", *args], check=False, cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "conll2003" and metrics["primary_metric"] == "f1"
    assert metrics["heads_kept"] == 36
    assert {"f1", "precision", "recall", "accuracy", "f1_PER"} <= set(metrics["eval"])
    assert 0.0 <= metrics["eval"]["f1"] <= 1.0
    kept = json.loads((run_dir / "predictions.json").read_text())["splits"]["validation"]
    assert len(kept["label"]) == 16 and metrics["eval"]["f1"] == pytest.approx(
        get_task(task_cfg()).metric_on(kept["prediction"], kept["label"])["f1"])
