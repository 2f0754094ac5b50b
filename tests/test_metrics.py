"""The local `evaluate` modules (prune_cli/metrics): they load offline with `evaluate.load(path)`
and give the numbers the tasks gave before they computed through them, on real data."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import evaluate
import numpy as np
import pytest

from prune_cli import metrics
from prune_cli.tasks.conll import entity_metrics, read_conll
from prune_cli.tasks.glue import METRICS, read_tsv
from prune_cli.tasks.squad import read_squad_json, squad_metrics
from prune_cli.tasks.translation import corpus_bleu, read_lines

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def noisy(labels, flip: float, seed: int = 0, classes: int = 2):
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    out = labels.copy()
    change = rng.random(len(labels)) < flip
    out[change] = rng.integers(0, classes, int(change.sum()))
    return out


@pytest.mark.parametrize("task, column, config, names", [
    ("MRPC", 0, "mrpc", ["accuracy", "f1"]),
    ("CoLA", 1, "cola", ["matthews_correlation"]),
    ("RTE", 3, "rte", ["accuracy"]),
])
def test_glue_module_equals_the_task_metrics_on_real_labels(task, column, config, names):
    rows = list(read_tsv(DATA / "glue" / task / "dev.tsv"))
    if task != "CoLA":
        rows = rows[1:]  # header
    values = [r[column] for r in rows]
    labels = np.array([int(v) for v in values]) if task != "RTE" else np.array([v == "entailment" for v in values],
                                                                                dtype=int)
    preds = noisy(labels, 0.3)
    glue = evaluate.load(metrics.path("glue"), config)
    got = glue.compute(predictions=preds, references=labels)
    assert list(got) == names
    assert got == {n: METRICS[n](preds, labels) for n in names}


def test_glue_regression_and_undefined_correlations():
    rows = list(read_tsv(DATA / "glue" / "STS-B" / "dev.tsv"))[1:]
    gold = np.array([float(r[-1]) for r in rows])
    pred = (gold + np.random.default_rng(0).normal(0, 1.0, len(gold))).astype(np.float32)
    got = evaluate.load(metrics.path("glue"), "stsb").compute(predictions=pred, references=gold)
    assert got == {"pearson": METRICS["pearson"](pred, gold), "spearmanr": METRICS["spearmanr"](pred, gold)}
    constant = metrics.load("glue", "regression").compute(predictions=[1.0] * 5, references=[0.0, 1, 2, 3, 4])
    assert constant == {"pearson": 0.0, "spearmanr": 0.0}


def test_glue_batches_accumulate_and_names_are_checked():
    glue = evaluate.load(metrics.path("glue"), "mrpc")
    glue.add_batch(predictions=[1, 0], references=[1, 1])
    glue.add_batch(predictions=[1, 1], references=[1, 0])
    assert glue.compute() == {"accuracy": 0.5, "f1": METRICS["f1"](np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0]))}
    with pytest.raises(ValueError, match="unknown GLUE metrics"):
        metrics.load("glue", "default").compute(predictions=[1], references=[1], metrics=["bleu"])


@pytest.mark.parametrize("version_2", [False, True])
def test_squad_module_equals_the_official_semantics_on_real_dev_questions(version_2):
    rows = read_squad_json(DATA / "squad" / "v1.1" / "dev-v1.1.json")[:600]
    rng = random.Random(0)
    if version_2:  # make every fifth question unanswerable
        rows = [{**r, "answers": {"text": [], "answer_start": []}} if i % 5 == 0 else r for i, r in enumerate(rows)]
    predictions = {}
    for r in rows:
        golds = list(r["answers"]["text"]) or [""]
        choice = rng.random()
        predictions[r["id"]] = (golds[0] if choice < 0.4 else golds[-1].split(" ")[0] if choice < 0.7
                                else "" if choice < 0.8 else r["context"][:30])
    expected = squad_metrics(predictions, rows, version_2)
    module = evaluate.load(metrics.path("squad"), "v2" if version_2 else "v1")
    answers = [{"id": k, "prediction_text": v} for k, v in predictions.items()]
    rng.shuffle(answers)  # matched by id, not by position
    got = module.compute(predictions=answers,
                         references=[{"id": r["id"], "answers": r["answers"]} for r in rows])
    assert got == expected
    assert 0 < got["exact_match"] < got["f1"] < 100
    assert ("no_ans_f1" in got) == version_2


def test_seqeval_module_equals_entity_metrics_on_conll():
    sentences = read_conll(DATA / "conll2003" / "valid.txt")[:800]
    gold = [s["tags"] for s in sentences]
    rng = random.Random(0)
    tags = sorted({t for g in gold for t in g})
    predicted = [[rng.choice(tags) if rng.random() < 0.1 else t for t in g] for g in gold]
    types = ["LOC", "MISC", "ORG", "PER"]
    got = evaluate.load(metrics.path("seqeval")).compute(predictions=predicted, references=gold, types=types)
    assert got == entity_metrics(gold, predicted, types)
    assert 0.5 < got["f1"] < 1


def test_sacrebleu_module_equals_corpus_bleu_on_multi30k_with_one_or_two_references():
    refs = read_lines(DATA / "translation" / "multi30k-de-en" / "raw" / "test_2016_flickr.en.gz")[:300]
    rng = random.Random(0)
    hyps = [" ".join(w for w in r.split() if rng.random() > 0.2) for r in refs]
    bleu = evaluate.load(metrics.path("sacrebleu"))
    got = bleu.compute(predictions=hyps, references=[[r] for r in refs])
    assert (got["bleu"], got["signature"]) == corpus_bleu(hyps, refs)
    second = [r.lower() for r in refs]
    two = bleu.compute(predictions=hyps, references=[[a, b] for a, b in zip(refs, second)], tokenize="none")
    assert (two["bleu"], two["signature"]) == corpus_bleu(hyps, [[a, b] for a, b in zip(refs, second)], "none")
    assert "tok:none" in two["signature"]


def test_every_module_loads_without_the_network_flags(tmp_path):
    """A fresh process with no HF_HUB_OFFLINE and an empty HF cache: loading the local modules
    never asks the Hub (this machine has no route to it: a request would fail or hang)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HOME"] = str(tmp_path / "hf")
    code = ("import evaluate, prune_cli.metrics as m\n"
            "for n, c in [('glue', 'mrpc'), ('squad', 'v1'), ('seqeval', None), ('sacrebleu', None)]:\n"
            "    evaluate.load(m.path(n), c)\n"
            "print(evaluate.load(m.path('glue'), 'sst2').compute(predictions=[1, 0], references=[1, 1]))")
    res = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "{'accuracy': 0.5}"


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="no local metric"):
        metrics.path("rouge")
    with pytest.raises(KeyError, match="config name"):
        evaluate.load(metrics.path("glue"), "mnli_typo")
