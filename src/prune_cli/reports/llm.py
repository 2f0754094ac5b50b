"""The LLM table: every pruned model's WikiText-2 perplexity and seven zero-shot accuracies in the
layout researchers judge LLM pruning by (LLM-Pruner, Ma et al., NeurIPS 2023, Table 1; FLAP;
SliceGPT), from the records of scripts/llm_grid.sh.

A record tree holds one folder per cell (`dense`, `oneshot/heads135/taylor`, `tuned/kv135/random_s2`,
...) with one run folder per score (`wikitext2`, `boolq`, ..., and the cell's `prune` run). Cells
that differ only by a `_s<seed>` suffix are the seeds of one row. Every number comes with a 95 %
percentile bootstrap interval over the evaluation examples (WikiText-2: its windows), resampling
the seeds too where a row has several (the two levels of `bootstrap.paired_bootstrap`), and every
pruned row's mean accuracy is compared with the random row of the same recovery, units and budget
by a paired bootstrap (the same examples drawn for both; each side's seeds drawn on their own,
since a deterministic method has one); a method that learns its gates while training on the recovery
data is compared with random plus the same recovery fine-tune. The dense model's row comes first, then the published
LLM-Pruner table (another model: the protocol, not a comparison).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

ZEROSHOT = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
HEADS = {"boolq": "BoolQ", "piqa": "PIQA", "hellaswag": "HellaSwag", "winogrande": "WinoGrande",
         "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA"}
METHOD_ORDER = ("random", "magnitude", "taylor", "michel")
RECOVERY = {"oneshot": "one-shot", "tuned": "recovery fine-tune", "lora": "LoRA recovery",
            "learned": "learned while training"}
#: the recoveries after a one-shot pruning: each row is compared with its one-shot row
RECOVERIES = ("tuned", "lora")


def read_cells(root: Path) -> dict[str, dict[str, dict]]:
    """{cell: {score folder: {"metrics", "predictions"}}} of every finished run under `root`."""
    cells: dict[str, dict[str, dict]] = {}
    for path in sorted(Path(root).rglob("metrics.json")):
        folder = path.parent
        cell = str(folder.parent.relative_to(root))
        preds = folder / "predictions.json"
        cells.setdefault(cell, {})[folder.name] = {
            "metrics": json.loads(path.read_text()),
            "predictions": json.loads(preds.read_text()) if preds.is_file() else None}
    return cells


def _per_example(run: dict):
    """A score's per-example data: (correct 0/1 of the primary metric) for a zero-shot task,
    (nll sum, tokens) per window for WikiText-2."""
    split = next(iter(run["predictions"]["splits"].values()))
    metrics = run["metrics"]
    if metrics["primary_metric"] == "perplexity":
        return np.asarray(split["prediction"], dtype=np.float64), np.asarray(split["label"], dtype=np.float64)
    which = 1 if metrics["primary_metric"] == "acc_norm" else 0
    chosen = np.asarray([p[which] for p in split["prediction"]])
    return (chosen == np.asarray(split["label"])).astype(np.float64)


def _draws(rng, resamples: int, n: int) -> np.ndarray:
    return rng.integers(0, n, (resamples, n))


def _seed_weights(rng, resamples: int, k: int) -> np.ndarray:
    """How often each of k seeds is drawn in each resample (k draws with replacement)."""
    picks = rng.integers(0, k, (resamples, k))
    return np.stack([np.bincount(row, minlength=k) for row in picks]).astype(np.float64) / k


def _accuracy_resamples(correct: np.ndarray, idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """correct [seeds, n] -> the seed-weighted accuracy on every resample [resamples]."""
    per_seed = correct[:, idx].mean(-1)  # [seeds, resamples]
    return (weights * per_seed.T).sum(1)


def _perplexity_resamples(nll: np.ndarray, tokens: np.ndarray, idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
    per_seed = np.exp(nll[:, idx].sum(-1) / tokens[:, idx].sum(-1))
    return (weights * per_seed.T).sum(1)


def _perplexity(nll: np.ndarray, tokens: np.ndarray) -> float:
    """A row's perplexity: each seed's over all its windows, averaged over the seeds."""
    return float(np.mean([math.exp(x.sum() / t.sum()) for x, t in zip(nll, tokens)]))


def _row_scores(seeds: list[dict], resamples: int, seed: int, average: tuple[str, ...] = ZEROSHOT) -> dict:
    """Point value and 95 % interval of every score of one row (its seeds' cells); "mean" averages
    the tasks in `average`."""
    rng = np.random.default_rng(seed)
    k = len(seeds)
    out = {}
    weights = _seed_weights(np.random.default_rng([seed, 1]), resamples, k)
    task_resamples = {}
    for task in ("wikitext2", *ZEROSHOT):
        if not all(task in s for s in seeds):
            continue
        data = [_per_example(s[task]) for s in seeds]
        if task == "wikitext2":
            nll, tokens = np.stack([d[0] for d in data]), np.stack([d[1] for d in data])
            value = _perplexity(nll, tokens)
            boot = _perplexity_resamples(nll, tokens, _draws(rng, resamples, nll.shape[1]), weights)
            out[task] = {"value": value, "low": float(np.percentile(boot, 2.5)), "high": float(np.percentile(boot, 97.5)),
                         "n": int(nll.shape[1]), "tokens": int(tokens[0].sum())}
            continue
        correct = np.stack(data)
        boot = _accuracy_resamples(correct, _draws(rng, resamples, correct.shape[1]), weights)
        task_resamples[task] = boot
        out[task] = {"value": float(correct.mean()), "low": float(np.percentile(boot, 2.5)),
                     "high": float(np.percentile(boot, 97.5)), "n": int(correct.shape[1])}
    if all(t in task_resamples for t in average):
        boot = np.mean([task_resamples[t] for t in average], axis=0)
        out["mean"] = {"value": float(np.mean([out[t]["value"] for t in average])),
                       "low": float(np.percentile(boot, 2.5)), "high": float(np.percentile(boot, 97.5)),
                       "tasks": list(average)}
    return out


def versus(a: list[dict], b: list[dict], resamples: int = 1000, seed: int = 0,
           tasks: tuple[str, ...] = ZEROSHOT) -> dict | None:
    """Paired bootstrap of the mean zero-shot accuracy over `tasks`, row a minus row b: every task's
    examples drawn once for both rows, each row's seeds drawn on their own; None unless both have
    every task."""
    if not all(t in s for s in a + b for t in tasks):
        return None
    rng = np.random.default_rng(seed)
    wa = _seed_weights(np.random.default_rng([seed, 1]), resamples, len(a))
    wb = _seed_weights(np.random.default_rng([seed, 2]), resamples, len(b))
    deltas, observed = [], []
    for task in tasks:
        ca = np.stack([_per_example(s[task]) for s in a])
        cb = np.stack([_per_example(s[task]) for s in b])
        if ca.shape[1] != cb.shape[1]:
            return None
        idx = _draws(rng, resamples, ca.shape[1])
        deltas.append(_accuracy_resamples(ca, idx, wa) - _accuracy_resamples(cb, idx, wb))
        observed.append(ca.mean() - cb.mean())
    boot = np.mean(deltas, axis=0)
    p = min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean()))
    return {"delta": float(np.mean(observed)), "low": float(np.percentile(boot, 2.5)),
            "high": float(np.percentile(boot, 97.5)), "p": float(p)}


def perplexity_ratio(a: list[dict], b: list[dict], resamples: int = 1000, seed: int = 0) -> dict | None:
    """Paired bootstrap of WikiText-2 perplexity, row a over row b: the same windows drawn for both,
    each row's seeds drawn on their own; None unless both have it on the same windows."""
    if not all("wikitext2" in s for s in a + b):
        return None
    da, db = ([_per_example(s["wikitext2"]) for s in row] for row in (a, b))
    nll_a, tok_a = np.stack([d[0] for d in da]), np.stack([d[1] for d in da])
    nll_b, tok_b = np.stack([d[0] for d in db]), np.stack([d[1] for d in db])
    if nll_a.shape[1] != nll_b.shape[1]:
        return None
    rng = np.random.default_rng(seed)
    wa = _seed_weights(np.random.default_rng([seed, 1]), resamples, len(a))
    wb = _seed_weights(np.random.default_rng([seed, 2]), resamples, len(b))
    idx = _draws(rng, resamples, nll_a.shape[1])
    boot = _perplexity_resamples(nll_a, tok_a, idx, wa) / _perplexity_resamples(nll_b, tok_b, idx, wb)
    value = _perplexity(nll_a, tok_a) / _perplexity(nll_b, tok_b)
    p = min(1.0, 2 * min((boot <= 1).mean(), (boot >= 1).mean()))
    return {"ratio": float(value), "low": float(np.percentile(boot, 2.5)), "high": float(np.percentile(boot, 97.5)),
            "p": float(p)}


def _groups_vs_heads(rows: list[dict], resamples: int, average: tuple[str, ...]) -> None:
    """Each whole-group (units=kv) row against the scattered-heads rows of the same method and
    recovery: at the same query heads kept (kv then also removes the groups' key/value rows), and
    at the nearest parameter count within 1 % (fewer query heads kept)."""
    for r in rows:
        r["vs_heads"] = []
        if r["units"] != "kv" or not r.get("params"):
            continue
        peers = [h for h in rows if h["units"] == "heads" and h["recovery"] == r["recovery"]
                 and h["method"] == r["method"] and h.get("params")]
        same = next((h for h in peers if h["heads"] == r["heads"]), None)
        near = min((h for h in peers if h is not same), key=lambda h: abs(h["params"] - r["params"]), default=None)
        for label, h in (("same heads", same), ("same params", near)):
            if h is None or (label == "same params" and abs(h["params"] - r["params"]) > 0.01 * r["params"]):
                continue
            r["vs_heads"].append({"at": label, "heads_cell": h["cell"], "heads_kept": h["heads"],
                                  "params": h["params"],
                                  "accuracy": versus(r["_seeds"], h["_seeds"], resamples, tasks=average),
                                  "perplexity": perplexity_ratio(r["_seeds"], h["_seeds"], resamples)})


def _recovery_gain(rows: list[dict], resamples: int, average: tuple[str, ...]) -> None:
    """Each row with a recovery fine-tune against the one-shot row of the same method, units and
    budget: what the fine-tune gave back (paired over the same examples and windows)."""
    by = {(r["recovery"], r["units"], r["heads"], r["method"]): r for r in rows}
    for r in rows:
        base = by.get(("oneshot", r["units"], r["heads"], r["method"])) if r["recovery"] in RECOVERIES else None
        r["vs_oneshot"] = None if base is None else {
            "accuracy": versus(r["_seeds"], base["_seeds"], resamples, tasks=average),
            "perplexity": perplexity_ratio(r["_seeds"], base["_seeds"], resamples)}


def _versus_dense(rows: list[dict], resamples: int, average: tuple[str, ...]) -> None:
    """Each pruned row against the dense model, paired over the same examples and windows: what
    the method costs (LLM-Pruner's Table 1 prints both rows; the pairing gives the interval)."""
    dense = next((r for r in rows if r["method"] == "dense"), None)
    for r in rows:
        r["vs_dense"] = None if dense is None or r is dense else {
            "accuracy": versus(r["_seeds"], dense["_seeds"], resamples, tasks=average),
            "perplexity": perplexity_ratio(r["_seeds"], dense["_seeds"], resamples)}


def _pair_text(pair: dict) -> tuple[str, str]:
    acc, ppl = pair["accuracy"], pair["perplexity"]
    acc_text = "..." if not acc else (f"{100 * acc['delta']:+.1f} [{100 * acc['low']:+.1f}, "
                                       f"{100 * acc['high']:+.1f}] p={acc['p']:.3f}")
    ppl_text = "..." if not ppl else f"{ppl['ratio']:.2f} [{ppl['low']:.2f}, {ppl['high']:.2f}] p={ppl['p']:.3f}"
    return acc_text, ppl_text


def _paired_table(rows: list[dict], key: str, a: str, b: str) -> str:
    """Each row's paired comparison `key` (row a against row b): mean accuracy difference and
    perplexity ratio, each with its 95 % interval and two-sided p."""
    out = [f"| recovery | units | kept | method | params | mean accuracy, {a} - {b} | perplexity, {a} / {b} |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get(key):
            acc_text, ppl_text = _pair_text(r[key])
            params = f"{r['params'] / 1e6:.1f} M" if r.get("params") else ""
            kept = f"{r['heads']} heads" if r["heads"] else r["units"]
            out.append(f"| {RECOVERY.get(r['recovery'], '')} | {r['units']} | {kept} | {r['method']} | {params} "
                       f"| {acc_text} | {ppl_text} |")
    return "\n".join(out) + "\n" if len(out) > 2 else ""


def recovery_table(rows: list[dict]) -> str:
    """The recovery fine-tune against one-shot: what it gave back."""
    return _paired_table(rows, "vs_oneshot", "tuned", "one-shot")


def dense_table(rows: list[dict]) -> str:
    """Every pruned row against the dense model: what the method costs."""
    return _paired_table(rows, "vs_dense", "pruned", "dense")


def groups_table(rows: list[dict]) -> str:
    """Whole key/value groups vs scattered query heads, paired: the mean accuracy difference and
    the perplexity ratio (groups / heads), each with its 95 % interval and two-sided p."""
    out = [("| recovery | method | groups row | vs heads row | at | params (groups / heads) | "
            "mean accuracy, groups - heads | perplexity, groups / heads |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for c in r.get("vs_heads", []):
            acc_text, ppl_text = _pair_text(c)
            out.append(f"| {RECOVERY.get(r['recovery'], '')} | {r['method']} | {r['heads']} heads as groups | "
                       f"{c['heads_kept']} scattered heads | {c['at']} | {r['params'] / 1e6:.1f} M / "
                       f"{c['params'] / 1e6:.1f} M | {acc_text} | {ppl_text} |")
    return "\n".join(out) + "\n" if len(out) > 2 else ""


def _describe(cell: str) -> dict:
    """dense | <recovery>/<units><heads kept>/<method>[_s<seed>] -> its parts."""
    parts = cell.split("/")
    if len(parts) != 3:
        return {"recovery": "", "units": "", "heads": None, "method": parts[-1]}
    recovery, budget, method = parts
    m = re.fullmatch(r"([a-z_]+?)(\d+)", budget)
    units, heads = (m.group(1), int(m.group(2))) if m else (budget, None)
    return {"recovery": recovery, "units": units, "heads": heads, "method": re.sub(r"_s\d+$", "", method)}


def _random_for_learner(r: dict, rows: list[dict]) -> dict | None:
    """A learner trained on the recovery data is compared with random + the same recovery fine-tune:
    at its units and heads, or (a weight budget such as GRAIN's density) the tuned random row
    nearest in parameters, within 1 %."""
    tuned = [b for b in rows if b["recovery"] == "tuned" and b["method"] == "random"]
    same = next((b for b in tuned if (b["units"], b["heads"]) == (r["units"], r["heads"])), None)
    if same is not None or not r.get("params"):
        return same
    near = min((b for b in tuned if b.get("params")), key=lambda b: abs(b["params"] - r["params"]), default=None)
    return near if near is not None and abs(near["params"] - r["params"]) <= 0.01 * r["params"] else None


def rows_of(cells: dict, resamples: int = 1000, average: tuple[str, ...] = ZEROSHOT) -> list[dict]:
    """The table's rows; the mean accuracy and every paired comparison of it average the tasks in
    `average` (all seven, LLM-Pruner's "Average", by default)."""
    groups: dict[str, list[dict]] = {}
    for cell, runs in cells.items():
        groups.setdefault(re.sub(r"_s\d+$", "", cell), []).append(runs)
    rows = []
    for name, seeds in groups.items():
        info = _describe(name)
        prune = next((s["prune"]["metrics"] for s in seeds if "prune" in s), None)
        any_score = next(iter(seeds[0].values()))["metrics"]
        heads_total = any_score.get("heads_total")
        rows.append({"cell": name, **info, "seeds": len(seeds),
                     "heads_kept": (prune or any_score).get("heads_kept"), "heads_total": heads_total,
                     "params": (prune or any_score).get("params"), "params_dense": any_score.get("params_dense"),
                     "scores": _row_scores(seeds, resamples, seed=0, average=average), "_seeds": seeds})
    by = {(r["recovery"], r["units"], r["heads"], r["method"]): r for r in rows}
    for r in rows:
        base = by.get((r["recovery"], r["units"], r["heads"], "random"))
        if r["recovery"] == "learned":
            base = _random_for_learner(r, rows)
        r["vs_random"] = versus(r["_seeds"], base["_seeds"], resamples, tasks=average) if base and base is not r else None
    _groups_vs_heads(rows, resamples, average)
    _recovery_gain(rows, resamples, average)
    _versus_dense(rows, resamples, average)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (r["recovery"] != "", r["recovery"], -(r["heads"] or 10**9), r["units"],
                             order.get(r["method"], len(order)), r["method"]))
    for r in rows:
        del r["_seeds"]
    return rows


def _cell(score: dict | None, perplexity: bool = False) -> str:
    if score is None:
        return "..."
    if perplexity:
        return f"{score['value']:.2f} [{score['low']:.1f}, {score['high']:.1f}]"
    half = 100 * (score["high"] - score["low"]) / 2
    return f"{100 * score['value']:.1f} ±{half:.1f}"


def average_label(average: tuple[str, ...] = ZEROSHOT) -> str:
    """The mean column's name: "Average" (LLM-Pruner's), or which tasks it leaves out."""
    left = [HEADS[t] for t in ZEROSHOT if t not in average]
    return "Average" if not left else f"Average without {', '.join(left)}"


def table(rows: list[dict], average: tuple[str, ...] = ZEROSHOT) -> str:
    """Our rows in LLM-Pruner's layout, intervals beside every number."""
    mean = average_label(average)
    head = ("| removed | recovery | units | method | seeds | params | WikiText2 ↓ | "
            + " | ".join(HEADS[t] for t in ZEROSHOT) + f" | {mean} | vs random ({mean}) |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s = r["scores"]
        if r["units"].startswith("density"):  # a weight budget: the cell names the density kept
            removed = f"{r['units']} of the attention + FFN weights"
        elif r["method"] == "dense" or not r["heads"]:
            removed = "0 %"
        else:
            removed = f"{100 * (1 - r['heads'] / r['heads_total']):.1f} % of heads ({r['heads']} kept)"
        params = f"{r['params'] / 1e6:.1f} M" if r.get("params") else ""
        vs = r.get("vs_random")
        vs_text = "" if not vs else f"{100 * vs['delta']:+.1f} [{100 * vs['low']:+.1f}, {100 * vs['high']:+.1f}] p={vs['p']:.3f}"
        out.append(f"| {removed} | {RECOVERY.get(r['recovery'], '')} | {r['units']} | {r['method']} | {r['seeds']} | "
                   f"{params} | {_cell(s.get('wikitext2'), True)} | "
                   + " | ".join(_cell(s.get(t)) for t in ZEROSHOT) + f" | {_cell(s.get('mean'))} | {vs_text} |")
    return "\n".join(out) + "\n"


def _num(value) -> str:
    return "" if value is None else f"{value:.2f}"


#: the published LLM tables printed beside ours, in this order (files of published/)
PUBLISHED_LLM = ("llm_pruner.yaml", "flap.yaml")


def published_table(path: Path) -> str:
    """One paper's LLM rows (published/llm_pruner.yaml, flap.yaml) in the same columns: another model."""
    from prune_cli.reports.published import load_published

    rows: dict[str, dict] = {}
    entries = load_published(path)
    for e in entries:
        rows.setdefault(e["row"].rsplit(", ", 1)[0], {})[e["task"]] = e["value"]
    first = entries[0] if entries else {}
    title = f"{first.get('model', '').replace('llama-7b', 'LLaMA-7B')} ({first.get('paper', '')}, {first.get('table', '')})"
    head = f"| {title} | WikiText2 ↓ | " + " | ".join(HEADS[t] for t in ZEROSHOT) + " | Average |"
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        out.append(f"| {name} | {_num(r.get('wikitext2'))} | " + " | ".join(_num(r.get(t)) for t in ZEROSHOT)
                   + f" | {_num(r.get('*'))} |")
    return "\n".join(out) + "\n"


def report(root: Path, published: Path | None = None, resamples: int = 1000,
           average: tuple[str, ...] = ZEROSHOT) -> tuple[str, list[dict]]:
    cells = read_cells(root)
    if not cells:
        raise SystemExit(f"no metrics.json under {root}")
    rows = rows_of(cells, resamples, average)
    dense = next((r for r in rows if r["method"] == "dense"), None)
    first = (dense or rows[0])["scores"]
    ns = {t: v["n"] for t, v in first.items() if "n" in v}
    wiki = first.get("wikitext2", {})
    window = wiki["tokens"] // wiki["n"] + 1 if wiki else "?"  # a window of L tokens predicts L - 1 of them
    sizes = {ns[t] for t in ZEROSHOT if t in ns}
    examples = (f"the first {sizes.pop() if sizes else '?'} examples of each zero-shot task" if len(sizes) <= 1
                else "the first " + ", ".join(f"{ns[t]} of {HEADS[t]}" for t in ZEROSHOT if t in ns))
    md = [f"### {len(rows)} rows from {root}\n",
          (f"Every cell scored on the same subsets: WikiText-2 test, the first {ns.get('wikitext2', '?')} windows of "
           f"{window} tokens; {examples}. Accuracies in % with "
           "the half-width of their 95 % bootstrap interval (examples, and seeds where a row has several); "
           "perplexity with its interval over windows. vs random: the mean accuracy minus the random row's of the "
           "same recovery, units and budget (paired bootstrap over the same examples, both rows' seeds "
           "resampled)."
           + ("" if average == ZEROSHOT else f" Every mean accuracy here, in the table and in each comparison, is "
              f"the {average_label(average)}.") + "\n"),
          table(rows, average)]
    groups = groups_table(rows)
    if groups:
        md += [("\nWhole key/value groups against scattered query heads of the same method and recovery "
                "(paired bootstrap over the same examples and windows; seeds resampled on each side): at the same "
                "query heads kept, and at the same parameters (within 1 %).\n"), groups]
    recovery = recovery_table(rows)
    if recovery:
        md += [("\nWhat the recovery fine-tune gives back: each tuned row against the one-shot row of the same "
                "method, units and budget (paired bootstrap; the tuned cell's scorer read the 64 recovery windows, "
                "the one-shot cell's 32, so their kept units may differ).\n"), recovery]
    against_dense = dense_table(rows)
    if against_dense:
        md += [("\nEach pruned row against the dense model (paired bootstrap over the same examples and windows; "
                "seeds resampled): the mean accuracy lost and the perplexity ratio.\n"), against_dense]
    published = Path(published) if published is not None else None
    files = ([published] if published.is_file() else [published / f for f in PUBLISHED_LLM if (published / f).is_file()]) \
        if published is not None and published.exists() else []
    if files:
        md.append("\nPublished, for the protocol and the shape of the results only: ANOTHER MODEL (LLaMA-7B; 20-50 % "
                  "of its parameters as the papers' own structures); both papers' code scores perplexity on 128-token "
                  "windows (ours: 2048).\n")
        md += [published_table(f) for f in files]
    return "\n".join(md), rows
