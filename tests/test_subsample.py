"""`task.max_train_samples` draws a seeded random (or stratified) subset of the training rows and
records it; evaluation rows stay the first N, the same for every run."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import load_task_cfg
from omegaconf import OmegaConf

from prune_cli.tasks import get_task
from prune_cli.tasks.base import stratified

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
CONLL = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"


def glue(name: str, folder: str, seed: int = 1, **overrides):
    return get_task(load_task_cfg(name, GLUE / folder, **overrides), seed=seed)


def stsb_genres() -> list[str]:
    with open(GLUE / "STS-B" / "train.tsv", encoding="utf-8") as f:
        return [row[1] for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][1:]


def test_random_rows_are_seeded_recorded_and_not_the_file_head():
    """STS-B's first 1,000 training rows are all one genre (video captions); a random draw is not."""
    genres = stsb_genres()
    assert set(genres[:1000]) == {"main-captions"}
    t = glue("stsb", "STS-B", max_train_samples=1000)
    t.examples("train")
    rec = t.subset
    assert rec["subsample"] == "random" and rec["seed"] == 1 and rec["rows"] == 1000 and rec["of"] == len(genres)
    drawn = Counter(genres[i] for i in rec["indices"])
    assert len(drawn) == 3 and drawn["main-captions"] < 800, drawn
    again = glue("stsb", "STS-B", max_train_samples=1000)
    again.examples("train")
    other = glue("stsb", "STS-B", seed=2, max_train_samples=1000)
    other.examples("train")
    assert again.subset["indices"] == rec["indices"] != other.subset["indices"]
    fixed = glue("stsb", "STS-B", seed=2, max_train_samples=1000, subsample_seed=1)
    fixed.examples("train")
    assert fixed.subset["indices"] == rec["indices"]  # subsample_seed pins the rows across run seeds
    first = glue("stsb", "STS-B", max_train_samples=1000, subsample="first")
    assert first.examples("train")[1] == [float(x) for x in _scores()[:1000]]
    assert first.subset["indices"] == list(range(1000))


def _scores() -> list[str]:
    with open(GLUE / "STS-B" / "train.tsv", encoding="utf-8") as f:
        return [row[-1] for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][1:]


def test_stratified_keeps_every_labels_share():
    t = glue("rte", "RTE", max_train_samples=101, subsample="stratified")
    all_labels = glue("rte", "RTE").examples("train")[1]
    _, labels = t.examples("train")
    assert len(labels) == 101
    share = Counter(all_labels)
    for label, n in Counter(labels).items():
        assert abs(n - 101 * share[label] / len(all_labels)) < 1
    scores = np.random.default_rng(0).random(1000)  # a regression score: quintiles are the strata
    idx = stratified(scores, 100, 0)
    bins = np.searchsorted(np.quantile(scores, [0.2, 0.4, 0.6, 0.8]), scores[idx], side="right")
    assert sorted(Counter(bins.tolist()).values()) == [20] * 5 and len(set(idx.tolist())) == 100


def test_evaluation_rows_are_the_first_n_for_every_seed():
    a = glue("mrpc", "MRPC", seed=1, max_eval_samples=50, max_train_samples=10)
    b = glue("mrpc", "MRPC", seed=7, max_eval_samples=50, max_train_samples=10)
    assert a.examples("validation") == b.examples("validation")
    full = glue("mrpc", "MRPC").examples("validation")
    assert a.examples("validation")[1] == full[1][:50]


def test_conll_draws_sentences_and_refuses_stratified_up_front():
    from prune_cli.errors import ConfigError

    t = get_task(load_task_cfg("conll2003", CONLL, max_train_samples=40), seed=3)
    rows = t.sentences("train")
    assert len(rows) == 40 and t.subset["indices"] != list(range(40))
    assert rows[0] == t._read("train")[t.subset["indices"][0]]
    from hydra import compose, initialize_config_module

    from prune_cli.validate import validate

    def cfg(*overrides):
        with initialize_config_module("prune_cli.conf", version_base="1.3"):
            return compose("config", overrides=["model=minilm", f"data_root={CONLL.parent}", *overrides])

    with pytest.raises(ConfigError, match=r"^task.subsample='stratified'"):
        validate(cfg("task=conll2003", "task.subsample=stratified"))
    with pytest.raises(ConfigError, match=r"^task.subsample='half'"):
        validate(cfg("task=rte", "task.subsample=half"))


def test_a_run_records_its_rows(tmp_path):
    """metrics.json says how the rows were drawn; subset.json lists them."""
    import json

    from test_cli import TINY, prune_run

    run = tmp_path / "run"
    res = prune_run([*TINY, "method=none", "pipeline=[finetune,evaluate]", "logger=none", f"hydra.run.dir={run}"],
                    cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    subset = json.loads((run / "subset.json").read_text())
    assert metrics["train_rows"] == {k: v for k, v in subset.items() if k != "indices"}
    assert metrics["train_rows"]["subsample"] == "random" and len(subset["indices"]) == metrics["train_rows"]["rows"]
    assert OmegaConf.load(run / ".hydra" / "config.yaml").task.subsample == "random"
