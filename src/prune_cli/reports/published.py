"""The papers' numbers beside ours: reading published/ and matching its entries to our runs.

published/ (at the repository root, shipped in the wheel as `prune_cli.published`) holds one YAML
file per paper -- Michel et al. (NeurIPS 2019, arXiv:1905.10650), Voita et al. (ACL 2019,
arXiv:1905.09418), DSP (Li, Cotterell, Sachan, TACL 2021, arXiv:2108.04657), SMP (Zhang et al.,
AI Open 2021, arXiv:2011.03770), GRAIN (Yang et al., ACL 2023, arXiv:2212.07634) and APD (Li et
al., IJCAI 2023) -- each number with the quote it was read from (published/README.md). A number is
set beside ours only where our run has its budget and was configured as the paper's method (the
file's `setting`), so an ablation of ours is never compared with the paper's headline number.
"""

from __future__ import annotations

from collections import defaultdict
from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf

from prune_cli.reports.runs import config_of


def published_source(source: Path) -> Path:
    """Where `--published SOURCE` is read from: SOURCE itself where it exists (the repository's
    published/ from a checkout, as every command in the docs gives it); otherwise, for a relative
    `published` or `published/<paper>.yaml`, the copy shipped in the package (`prune_cli.published`),
    so an installed `prune-report` finds the papers' numbers from any folder. Anything else stops
    with one line instead of an empty paper-vs-ours table."""
    source = Path(source)
    if source.exists():
        return source
    shipped = Path(str(resources.files("prune_cli.published")))
    if not source.is_absolute():
        if source.name == "published" and shipped.is_dir():
            return shipped
        if source.parent.name == "published" and (shipped / source.name).is_file():
            return shipped / source.name
    papers = ", ".join(sorted(p.name for p in shipped.glob("*.yaml")))
    raise SystemExit(f"--published {source}: no such file or folder (shipped: published/ with {papers})")


def load_published(source: Path) -> list[dict]:
    """Every entry of the YAML files in `source` (published/, or one file of it: a paper's numbers
    alone, where another paper's dense rows would stand beside runs of a different study), each with
    its file's provenance."""
    rows = []
    for path in [source] if source.is_file() else sorted(source.glob("*.yaml")):
        doc = OmegaConf.to_container(OmegaConf.load(path))
        settings = doc.get("setting") or {}
        for entry in doc.get("entries", []):
            rows.append({"paper": doc["paper"], "table": doc.get("table"), "model": doc.get("model"),
                         "read": doc.get("read"), "file": path.name,
                         "setting": settings.get(entry["method"]) or {}, **entry})
    return rows


def paper_table(runs: list[dict], published: list[dict]) -> tuple[str, list[dict]]:
    """Markdown + rows: each published number beside ours at the same task, method and budget (mean
    over seeds; task "*" = mean over our tasks), the delta, and whether the setting matches."""
    rows = []
    ours_tasks = {r["task"] for r in runs}
    ours_methods = {r["method"].split()[0].split("/")[0] for r in runs}
    for pub in published:
        if pub["method"] not in ours_methods or (pub["task"] != "*" and pub["task"] not in ours_tasks):
            continue  # a published number with no run of ours to stand beside
        mine = [r for r in runs if r["method"].split()[0].split("/")[0] == pub["method"]
                and (pub["task"] == "*" or r["task"] == pub["task"]) and matches_budget(r, pub.get("budget") or {})
                and has_setting(r, pub.get("setting") or {})]
        values = [v for v in (_ours(r, pub["metric"]) for r in mine) if v is not None]
        if pub["task"] == "*" and values:  # mean over tasks of the per-task means
            per_task = defaultdict(list)
            for r in mine:
                v = _ours(r, pub["metric"])
                if v is not None:
                    per_task[r["task"]].append(v)
            values = [sum(v) / len(v) for v in per_task.values()]
        models = sorted({str(r["model"]) for r in mine})
        ours = sum(values) / len(values) if values else None
        rows.append({**pub, "ours": ours, "n": len(values), "delta": None if ours is None else ours - pub["value"],
                     "our_models": models, "setting_matches": bool(models) and models == [pub["model"]]})
    if not rows:
        return "", rows
    out = ["### ours vs published\n",
           "| paper | table | task | method | budget | metric | published | ours | delta | n | same setting |",
           "|---|---|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        budget = ", ".join(f"{k} {v}" for k, v in (r.get("budget") or {}).items())
        bound = " (lower bound)" if r.get("bound") == "lower" else ""
        same = "yes" if r["setting_matches"] else (f"no: ours {'/'.join(r['our_models'])}, paper {r['model']}"
                                                   if r["our_models"] else "-")
        ours = "-" if r["ours"] is None else f"{r['ours']:.1f}"
        delta = "-" if r["delta"] is None else f"{r['delta']:+.1f}"
        out.append(f"| {r['paper']} | {r['table']} | {r['task']} | {r['method']} | {budget} | {r['metric']} | "
                   f"{r['value']:.1f}{bound} | {ours} | {delta} | {r['n']} | {same} |")
    return "\n".join(out) + "\n", rows


def prunable_share(runs: list[dict], published: list[dict], noticeable: float = 1.0) -> tuple[str, list[dict]]:
    """Markdown + rows: a paper's "up to X % of the heads can be pruned without a noticeable loss"
    (published entries with budget {no_noticeable_loss: true}; method `<method>/curve`, Michel et
    al.'s statements about their pruning curves) beside our prune_curve runs of that method and task
    (heads scored once, removed lowest score first, each point evaluated without retraining).

    Ours = the largest share of the heads removed up to which EVERY point of our curve -- the mean
    over seeds of the primary metric (x 100 for fractions) -- stays within `noticeable` points of the
    curve's own start (no head removed: the same fine-tuned models, dense); one line per task and
    model, with our value at the curve point nearest the published share."""
    rows = []
    points_word = "point" if noticeable == 1 else "points"
    for pub in published:
        if not (pub.get("budget") or {}).get("no_noticeable_loss"):
            continue
        curve = [r for r in runs if "curve_removed" in r and r["value"] is not None and r.get("heads_total")
                 and r["task"] == pub["task"] and r["method"].split()[0] == pub["method"]
                 and has_setting(r, pub.get("setting") or {})]
        for model in sorted({str(r["model"]) for r in curve}):
            points = defaultdict(list)  # share of heads removed -> the seeds' values there
            total = {}
            for r in curve:
                if str(r["model"]) == model:
                    share = r["curve_removed"] / r["heads_total"]
                    points[share].append(r["scale"] * r["value"])
                    total[share] = (r["curve_removed"], r["heads_total"])
            if 0.0 not in points:
                continue  # no point without pruning: nothing to measure a loss from
            mean = {share: sum(values) / len(values) for share, values in points.items()}
            shares, dense = sorted(points), mean[0.0]
            ours = 0.0
            for share in shares:
                if mean[share] < dense - noticeable - 1e-9:
                    break
                ours = share
            later = [s for s in shares if s > ours]
            near = min(shares, key=lambda s: (abs(s - pub["value"] / 100), s))
            rows.append({"paper": pub["paper"], "table": pub.get("table"), "task": pub["task"],
                         "method": pub["method"], "published_model": pub["model"], "row": pub.get("row"),
                         "quote": pub.get("quote"), "published": pub["value"], "model": model,
                         "metric": curve[0]["metric"], "seeds": len(points[0.0]), "noticeable": noticeable,
                         "dense": dense, "ours": 100 * ours, "ours_removed": total[ours], "at_ours": mean[ours],
                         "next": None if not later else (100 * later[0], mean[later[0]]),
                         "at_published": (100 * near, total[near], mean[near])})
    if not rows:
        return "", rows
    out = ["### heads prunable without a noticeable loss: published vs ours\n",
           (f"ours = the largest share of heads removed up to which every point of our curve (heads scored once, "
            f"removed lowest score first, no retraining; mean over seeds of the primary metric) stays within "
            f"{noticeable:g} {points_word} of the same models with no head removed (dense).\n")]
    for r in rows:
        (removed, total), (near, (near_removed, _), at_near) = r["ours_removed"], r["at_published"]
        following = "" if r["next"] is None else f"; next point {r['next'][0]:.1f} %: {r['next'][1]:.1f}"
        out.append(
            f"* {r['task']}, {r['method']}, {r['model']} ({r['seeds']} seeds, {r['metric']}): published: up to "
            f"{r['published']:g} % of heads prunable on {r['task']} without noticeable loss ({r['paper']}, "
            f"{r['table']}: {r['row']}; {r['published_model']}); ours: the largest share within {noticeable:g} "
            f"{points_word} of dense ({r['dense']:.1f}) is {r['ours']:.1f} % ({removed} of {total} heads removed: "
            f"{r['at_ours']:.1f}{following}); at the published share (nearest point {near:.1f} %, {near_removed} of "
            f"{total} removed) ours is {at_near:.1f} ({at_near - r['dense']:+.1f}).")
        out.append(f"  quote: \"{r['quote']}\"")
    return "\n".join(out) + "\n", rows


def matches_budget(run: dict, budget: dict) -> bool:
    """Does `run` have the budget of a published entry? (density within 0.005, heads kept within 1 %
    of the heads, the lossless mode)."""
    if "density" in budget:
        dense = budget["density"] >= 1.0
        if dense:
            return run["density"] in (None, 1.0) and run["heads_kept"] == run["heads_total"]
        return run["density"] is not None and abs(run["density"] - budget["density"]) <= 0.005
    if "heads_kept_fraction" in budget:
        return bool(run["heads_total"]) and abs(run["heads_kept"] / run["heads_total"]
                                                 - budget["heads_kept_fraction"]) <= 0.01
    if budget.get("lossless"):
        return run.get("tolerance") is not None
    return False


def has_setting(run: dict, setting: dict) -> bool:
    """Was `run` configured as the paper's method (the published file's `setting`: config keys ->
    values, e.g. GRAIN's units null, method.alpha 0.3)? Its ablations are not the paper's method;
    a key the run's config lacks is not held against it."""
    cfg = config_of(run["run"])
    missing = object()
    return all(got is missing or str(got) == str(value) for key, value in setting.items()
               for got in [OmegaConf.select(cfg, key, default=missing)])


def _ours(run: dict, metric: str):
    if metric == "heads_removed_pct":
        return 100.0 * (1 - run["heads_kept"] / run["heads_total"]) if run["heads_total"] else None
    value = run["eval"].get(metric, run["value"] if metric == run["metric"] else None)
    return None if value is None else run["scale"] * value
