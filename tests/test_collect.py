"""The collector's statistics (prune_cli.reports): the two-level (seeds and examples) paired
bootstrap, its vectorised metrics, and the count of distinct masks among a method's seeds (issue 31,
item 4)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from prune_cli.reports import (
    Resamples,
    comparison_table,
    distinct_masks,
    find_runs,
    paired_bootstrap,
    read_json,
    resampled_metric,
)
from prune_cli.reports.resampled import _accuracy as resampled_accuracy
from prune_cli.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "results" / "runs"


def accuracy(p, y) -> float:
    return float(np.mean(np.asarray(p) == np.asarray(y)))


def old_paired_bootstrap(pairs, metric, resamples=1000, seed=0):
    """The collector's bootstrap before issue 31 (examples resampled, seeds fixed), kept as the reference."""
    labels = np.asarray(pairs[0][0]["label"])
    preds = [(np.asarray(a["prediction"]), np.asarray(b["prediction"])) for a, b in pairs]

    def delta(idx):
        return float(np.mean([metric(pa[idx], labels[idx]) - metric(pb[idx], labels[idx]) for pa, pb in preds]))

    observed = delta(np.arange(len(labels)))
    rng = np.random.default_rng(seed)
    draws = np.array([delta(rng.integers(0, len(labels), len(labels))) for _ in range(resamples)])
    p = min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean()))
    return {"delta": observed, "low": float(np.percentile(draws, 2.5)), "high": float(np.percentile(draws, 97.5)),
            "p": float(p)}


def seed_noise_pairs(n=2000):
    """3 seeds; B right on 80 % of the examples in every seed, A = B with a seed-dependent share of
    its errors fixed or new errors made (+6, -4, +5 points): a large spread between seeds, and A and
    B differ on few examples (a small spread between example resamples)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    pairs = []
    for seed, shift in zip((1, 2, 3), (0.06, -0.04, 0.05)):
        g = np.random.default_rng(seed)
        b = np.where(g.random(n) < 0.8, labels, 1 - labels)
        a = b.copy()
        pool = np.flatnonzero(b != labels) if shift > 0 else np.flatnonzero(b == labels)
        change = g.choice(pool, int(abs(shift) * n), replace=False)
        a[change] = 1 - a[change]
        pairs.append(({"prediction": a.tolist(), "label": labels.tolist()},
                      {"prediction": b.tolist(), "label": labels.tolist()}))
    return pairs


def test_two_level_is_wider_than_examples_only_when_seeds_vary_most():
    """(a) Seeds disagree (+6, -4, +5 points) while the examples barely move the delta: the
    examples-only bootstrap calls +2.3 significant, the two-level one sees the seeds' spread."""
    pairs = seed_noise_pairs()
    kwargs = {"resamples": 500, "resampled": resampled_accuracy}
    examples = paired_bootstrap(pairs, accuracy, bootstrap="examples", **kwargs)
    two = paired_bootstrap(pairs, accuracy, bootstrap="two_level", **kwargs)
    assert examples["delta"] == two["delta"] == pytest.approx(0.07 / 3)
    assert examples["p"] < 0.01 and examples["low"] > 0
    assert two["high"] - two["low"] > 3 * (examples["high"] - examples["low"])
    assert two["p"] > 0.1 > examples["p"] and two["low"] < 0 < two["high"]
    assert two["bootstrap"] == "two_level" and two["seeds"] == 3 and two["examples"] == 2000
    # one seed: nothing to resample at the seed level, the two agree draw for draw
    one = [pairs[0]]
    assert paired_bootstrap(one, accuracy, bootstrap="examples", **kwargs) == {
        **paired_bootstrap(one, accuracy, **kwargs), "bootstrap": "examples"}
    with pytest.raises(ValueError, match="bootstrap must be"):
        paired_bootstrap(one, accuracy, bootstrap="seeds")


def test_observed_delta_and_examples_mode_equal_the_old_bootstrap():
    """(b) The observed delta is the old function's in both modes; `--bootstrap examples`
    reproduces the old interval and p (same example draws), vectorised or not."""
    pairs = seed_noise_pairs(500)
    old = old_paired_bootstrap(pairs, accuracy, resamples=200)
    for resampled in (resampled_accuracy, None):
        new = paired_bootstrap(pairs, accuracy, resamples=200, bootstrap="examples", resampled=resampled)
        assert {k: new[k] for k in old} == old
        assert paired_bootstrap(pairs, accuracy, resamples=200, resampled=resampled)["delta"] == old["delta"]
    # a real comparison: SMP against random on STS-B (Pearson), the committed records
    task = get_task(OmegaConf.load(RECORDS / "smp/stsb/smp_s1/.hydra/config.yaml").task)

    def pearson(p, y):
        return task.metric_on(p, y)["pearson"]

    def predictions(run):
        return json.loads((RECORDS / "smp/stsb" / run / "predictions.json").read_text())["splits"]["validation"]

    pairs = [(predictions(f"smp_s{s}"), predictions(f"random_s{s}")) for s in (1, 2, 3)]
    old = old_paired_bootstrap(pairs, pearson, resamples=100)
    new = paired_bootstrap(pairs, pearson, resamples=100, bootstrap="examples",
                           resampled=resampled_metric(task, "pearson"))
    assert new["delta"] == old["delta"] and new["p"] == old["p"]
    assert new["low"] == pytest.approx(old["low"], abs=1e-12) and new["high"] == pytest.approx(old["high"], abs=1e-12)
    two = paired_bootstrap(pairs, pearson, resamples=100, resampled=resampled_metric(task, "pearson"))
    assert two["delta"] == old["delta"]


def _record(path: str) -> tuple:
    run = RECORDS / path
    task = get_task(OmegaConf.load(run / ".hydra/config.yaml").task)
    split = json.loads((run / "predictions.json").read_text())["splits"]
    split = split[task.primary_split()[0] or next(iter(split))]
    return task, split["prediction"], split["label"]


def _check(task, names, predictions, labels, resamples=25, exact=()):
    """Every metric in `names`, vectorised, equals the task's metric_on on the same resample indices."""
    n = len(labels)
    draws = Resamples(np.random.default_rng(7).integers(0, n, (resamples, n)))

    def examples(values):  # as the bootstrap holds them: ragged entries (tags, gold answers) as objects
        if not isinstance(values[0], list):
            return np.asarray(values)
        out = np.empty(n, dtype=object)
        out[:] = list(values)
        return out

    p, y = examples(predictions), examples(labels)
    for name in names:
        fast = resampled_metric(task, name)(p, y)
        assert fast is not None, name
        got = fast(draws)
        want = np.array([task.metric_on(p[i], y[i])[name] for i in draws.idx])
        if name in exact:
            assert got.tolist() == want.tolist(), name
        else:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)


def test_vectorised_metrics_equal_the_task_metric_on_the_same_resamples():
    """(c) accuracy (SST-2), binary F1 and accuracy (MRPC), Pearson and Spearman (STS-B), CoNLL
    entity P / R / F1 and word accuracy: committed records; MCC (CoLA): synthetic, binary and
    3 classes; constant predictions (correlation 0) and no positives (F1 0)."""
    task, p, y = _record("apd/sst2/random_s1")
    _check(task, ["accuracy"], p, y, exact=("accuracy",))
    task, p, y = _record("apd/mrpc/smp_s1")
    _check(task, ["f1", "accuracy"], p, y, exact=("f1", "accuracy"))
    _check(task, ["f1"], [0] * len(y), y, exact=("f1",))
    task, p, y = _record("smp/stsb/smp_s2")
    _check(task, ["pearson", "spearmanr"], p, y)
    _check(task, ["pearson", "spearmanr"], np.round(np.asarray(p)), y)  # many ties
    _check(task, ["pearson", "spearmanr"], [2.5] * len(y), y)  # a collapsed model: 0 in every resample
    task, p, y = _record("grain/conll2003/random_d0.05_s1")
    _check(task, ["f1", "precision", "recall", "accuracy"], p, y, resamples=10, exact=("f1", "precision", "recall"))
    cola = get_task(OmegaConf.create({"name": "cola", "family": "glue", "primary_metric": "matthews_correlation",
                                      "metrics": ["matthews_correlation"]}))
    rng = np.random.default_rng(3)
    for classes in (2, 3):
        labels = rng.integers(0, classes, 300)
        preds = np.where(rng.random(300) < 0.7, labels, rng.integers(0, classes, 300))
        _check(cola, ["matthews_correlation"], preds.tolist(), labels.tolist())
    _check(cola, ["matthews_correlation"], [1] * 300, labels.tolist())  # constant side: 0


def test_squad_scores_and_the_fallback():
    """SQuAD EM / F1 from per-question scores; a metric with no vectorised form (and one that does
    not match the task's on the full sample) falls back to the task's metric per resample."""
    squad = get_task(OmegaConf.create({"name": "squad", "family": "squad"}))
    golds = [["Denver Broncos"], ["Paris", "in Paris"], ["1999"], ["blue whale"]] * 10
    preds = ["Denver Broncos", "Paris France", None, "the blue whales"] * 10
    _check(squad, ["exact_match", "f1"], preds, golds)
    pairs = [({"prediction": preds, "label": golds}, {"prediction": preds[1:] + preds[:1], "label": golds})]

    def f1(p, y):
        return squad.metric_on(p, y)["f1"]

    reference = paired_bootstrap(pairs, f1, resamples=50)
    assert paired_bootstrap(pairs, f1, resamples=50, resampled=resampled_metric(squad, "f1")) == pytest.approx(reference)

    def wrong(p, y):
        return lambda rs: np.zeros(len(rs.idx)) + 123.0

    assert paired_bootstrap(pairs, f1, resamples=50, resampled=wrong) == reference


def _write_run(root: Path, name: str, method: str, seed: int, mask, correct, labels, units=None, scores=None):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "task: {name: rte, family: glue, primary_metric: accuracy, metrics: [accuracy]}\n")
    (run / "metrics.json").write_text(json.dumps({
        "task": "rte", "method": method, "primary_metric": "accuracy", "primary": float(correct.mean()),
        "seed": seed, "heads_kept": int(np.sum(mask)), "heads_total": 8}))
    (run / "predictions.json").write_text(json.dumps({"splits": {"validation": {
        "prediction": np.where(correct, labels, 1 - labels).tolist(), "label": labels.tolist()}}}))
    heads = {"heads_total": 8, "heads_kept": int(np.sum(mask)), "mask": mask, "scores": scores}
    if units is not None:
        heads["units"] = units
    (run / "heads.json").write_text(json.dumps(heads))


def test_identical_masks_across_seeds_are_counted_and_reported(tmp_path):
    """(d) `smp` keeps one mask in all 3 seeds (its scores ignore the seed), `random` three; the
    table's masks column says 1 / 3 and the footnote says the test is then over n = 1 mask.
    Units (GRAIN's per-head dimensions) count as structure; a run without heads.json: unknown."""
    labels = np.random.default_rng(0).integers(0, 2, 300)
    right = np.ones(300, dtype=bool)
    smp_mask = [[1, 1, 0, 0], [0, 1, 1, 0]]
    random_masks = {1: [[1, 0, 1, 0], [0, 1, 0, 1]], 2: [[0, 0, 1, 1], [1, 1, 0, 0]], 3: [[1, 1, 0, 0], [0, 1, 1, 0]]}
    for seed, mask in random_masks.items():
        g = np.random.default_rng(seed)
        _write_run(tmp_path, f"smp_{seed}", "smp", seed, smp_mask, g.random(300) < 0.6, labels)
        _write_run(tmp_path, f"random_{seed}", "random", seed, mask, g.random(300) < 0.55, labels)
    runs = find_runs([tmp_path])
    smp = [r for r in runs if r["method"] == "smp"]
    random = [r for r in runs if r["method"] == "random"]
    assert distinct_masks(smp) == 1 and distinct_masks(random) == 3
    text, rows = comparison_table(runs, baseline="random", resamples=100)
    (row,) = rows
    assert row["masks"] == 1 and row["baseline_masks"] == 3 and row["bootstrap"] == "two_level"
    assert "| rte | smp | 4 |" in text and "| 3 | 1 / 3 |" in text
    assert "two-level bootstrap: seeds and examples resampled, 100 resamples" in text
    assert "(n = 1 mask)" in text and "mask distribution" in text
    text, rows = comparison_table(runs, baseline="random", resamples=100, bootstrap="examples")
    assert "seeds paired, not resampled, 100 resamples" in text and rows[0]["bootstrap"] == "examples"

    # the same head mask, different units kept: different structures
    units = [{"blocks": [{"qk": [32, 0], "vo": [32, 8]}]}, {"blocks": [{"qk": [32, 0], "vo": [32, 9]}]}]
    for i, u in enumerate(units):
        _write_run(tmp_path / "units", f"g{i}", "grain", i, smp_mask, right, labels, units=u)
    assert distinct_masks(find_runs([tmp_path / "units"])) == 2
    (tmp_path / "units" / "g1" / "heads.json").unlink()
    read_json.cache_clear()
    assert distinct_masks(find_runs([tmp_path / "units"])) is None

    # curve points: the heads the order had removed there, from the scores
    for seed, scores in ((1, [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]),
                         (2, [[0.2, 0.1, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])):
        _write_run(tmp_path / "curves", f"curve_{seed}", "michel", seed, smp_mask, right, labels,
                   scores=scores)
    points = [{"run": str(tmp_path / "curves" / f"curve_{s}")} for s in (1, 2)]
    assert [distinct_masks([{**p, "curve_removed": k} for p in points]) for k in (0, 1, 2, 3, 8)] == [1, 2, 1, 1, 1]


def test_the_launcher_prints_what_the_package_prints(tmp_path, capsys):
    """scripts/collect_runs.py, the command of the docs and the grids, only launches
    prune_cli.reports.collect (`prune-report`): the same records print the same report either way."""
    from prune_cli.reports.collect import main

    records, out = RECORDS / "smp_controls", tmp_path / "table"
    main([str(records), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "wrote" in printed and (tmp_path / "table.png").is_file()
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect_runs.py"), str(records), "--out", str(out)],
                         capture_output=True, text=True, check=True)
    assert res.stdout == printed
