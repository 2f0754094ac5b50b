"""published/: every file loads, every number cites where it was read, no figure reading is a
published number, and Michel et al.'s prunable shares are set beside our committed curve records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prune_cli.reports import find_runs, load_published, plot, prunable_share, published_source
from prune_cli.reports.collect import main

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "published"
CURVES = ROOT / "docs" / "results" / "runs" / "curves" / "michel_curve"

FILES = sorted(PUBLISHED.glob("*.yaml"))
# where an entry (a number the report may print as the paper's) can come from: the paper itself
FROM_THE_PAPER = {"primary_pdf", "paper_fulltext_copy", "abstract_page",
                  "paper_table_image"}  # the paper's table as its authors publish it (LLM-Pruner's repository)


def raw(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path))


def test_every_file_loads_and_every_entry_is_complete():
    assert {p.name for p in FILES} >= {"michel.yaml", "voita.yaml", "grain.yaml", "apd.yaml", "dsp.yaml", "smp.yaml"}
    readme = (PUBLISHED / "README.md").read_text()
    for path in FILES:
        assert f"| {path.name} |" in readme, f"{path.name} is not in published/README.md's table"
        doc = raw(path)
        assert doc.get("paper") and doc.get("model") and doc.get("read"), path.name
        entries = load_published(path)
        assert len(entries) == len(doc.get("entries") or []), path.name
        if not entries:  # a paper whose results could not be found: it says so, and what it has
            assert doc.get("not_available") and doc.get("facts"), path.name
        for e in entries:
            for key in ("paper", "task", "method", "metric", "split", "budget", "value", "model"):
                assert e.get(key) is not None, (path.name, key, e)
            assert isinstance(e["budget"], dict) and isinstance(e["setting"], dict), (path.name, e)
            assert isinstance(e["value"], (int, float)) and not isinstance(e["value"], bool), (path.name, e)
            assert e.get("bound") in (None, "lower", "upper"), (path.name, e)


def test_every_entry_and_fact_cites_source_provenance_and_quote():
    for path in FILES:
        doc = raw(path)
        cited = (doc.get("entries") or []) + (doc.get("facts") or [])
        assert cited, path.name
        for item in cited:
            for key in ("source", "provenance", "quote"):
                assert isinstance(item.get(key), str) and item[key].strip(), (path.name, key, item)
    # and they reach the report: load_published keeps them on every entry
    assert all(e["quote"] and e["source"] and e["provenance"] for e in load_published(PUBLISHED))


def test_no_figure_reading_is_printed_as_published():
    """Values read off a plot by a third party are not carried at all; the numbers the report may
    print as the paper's (entries) were all read from the paper itself; third-party material is facts."""
    for path in FILES:
        doc = raw(path)
        for item in (doc.get("entries") or []) + (doc.get("facts") or []):
            assert "figure_reading" not in item["provenance"], (path.name, item)
            assert "read off the plot" not in str(item.get("what", "")) + str(item.get("metric", "")), item
    assert {e["provenance"] for e in load_published(PUBLISHED)} <= FROM_THE_PAPER
    # Voita et al.'s Figure 7 has no tabulated values: nothing of it is an entry
    assert not [e for e in load_published(PUBLISHED / "voita.yaml") if "Figure 7" in str(e.get("table"))
                and "Section" not in str(e.get("table"))]


def test_michel_thresholds_are_entries_the_report_can_use():
    thresholds = {e["task"]: e for e in load_published(PUBLISHED / "michel.yaml")
                  if e["budget"].get("no_noticeable_loss")}
    assert {t: e["value"] for t, e in thresholds.items()} == {
        "wmt14_en_fr": 20, "mnli": 40, "sst2": 60, "cola": 50, "mrpc": 50}
    assert all(e["method"] == "michel/curve" and e["metric"] == "heads_removed_pct" for e in thresholds.values())
    assert all(f"{e['value']}%" in e["quote"] for e in thresholds.values())
    assert thresholds["sst2"]["model"] == "bert-base-uncased"


def test_existing_grain_numbers_are_kept():
    """The numbers docs/results/grain.md was collected with (Table 1 at 5 %, Table 7 at 10 %, the
    teacher), with the paper's method setting; the additions are labelled, not mixed in."""
    grain = load_published(PUBLISHED / "grain.yaml")
    head = {(e["task"], e["metric"], e["budget"]["density"]): e["value"] for e in grain[:24]}
    assert head[("sst2", "accuracy", 0.05)] == 91.4 and head[("sst2", "accuracy", 0.1)] == 91.9
    assert head[("sst2", "accuracy", 1.0)] == 92.9 and head[("conll2003", "f1", 0.05)] == 88.3
    assert all(e["setting"] == {"units": None, "method.alpha": 0.3, "method.importance": "taylor",
                                "distill.name": "logits_hidden"} for e in grain[:24] if e["method"] == "grain")
    assert not any(e.get("variant") for e in grain[:24])
    without_ef = [e for e in grain if e["table"] == "Table 1 (GRAIN w/o EF)"]
    assert without_ef and all(e["variant"] and e["setting"]["method.embed_rank"] is None for e in without_ef)


def test_plot_draws_the_papers_method_not_its_variants(tmp_path):
    """Over a GRAIN curve: the paper's GRAIN at our budget and its dense teacher, not the w/o-EF row,
    the RoBERTa rows or the baselines at ~5 %."""
    run = tmp_path / "g"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("density: 0.05\n")
    (run / "metrics.json").write_text(json.dumps({
        "task": "sst2", "model": "minilm", "method": "grain", "primary_metric": "accuracy", "primary": 0.8,
        "eval": {"accuracy": 0.8}, "seed": 1, "heads_kept": 60, "heads_total": 72, "density": 0.05}))
    drawn = plot(find_runs([tmp_path]), tmp_path / "c.png", load_published(PUBLISHED))
    assert sorted(x[:2] for x in drawn["sst2"]["published"]) == [(5.0, 91.4), (100.0, 92.9)]


def _curve(task: str, removed_values: dict, tmp_path: Path, seed: int = 1) -> None:
    run = tmp_path / f"{task}_{seed}"
    run.mkdir()
    curve = [{"removed": k, "heads_kept": 10 - k, "metrics": {"accuracy": v}} for k, v in removed_values.items()]
    (run / "metrics.json").write_text(json.dumps({
        "task": task, "model": "minilm", "method": "michel", "primary_metric": "accuracy", "primary": 0.5,
        "eval": {"accuracy": 0.5}, "seed": seed, "heads_kept": 5, "heads_total": 10, "curve": curve}))


def test_prunable_share_is_where_the_curve_first_loses_more_than_the_tolerance(tmp_path):
    """Every point up to ours stays within 1 point of the unpruned start; a dip below it ends the
    share even when the curve recovers later; a gain is no loss."""
    _curve("sst2", {0: 0.800, 2: 0.812, 4: 0.791, 6: 0.789, 8: 0.81, 10: 0.5}, tmp_path)
    published = load_published(PUBLISHED / "michel.yaml")
    text, rows = prunable_share(find_runs([tmp_path]), published)
    (row,) = rows
    assert row["ours"] == pytest.approx(40.0) and row["ours_removed"] == (4, 10)
    assert row["next"] == (pytest.approx(60.0), pytest.approx(78.9))
    assert row["at_published"] == (pytest.approx(60.0), (6, 10), pytest.approx(78.9))
    assert "published: up to 60 % of heads prunable on sst2 without noticeable loss" in text
    assert "ours: the largest share within 1 point of dense (80.0) is 40.0 %" in text
    _, looser = prunable_share(find_runs([tmp_path]), published, noticeable=2.0)
    assert looser[0]["ours"] == pytest.approx(80.0)


def test_michel_threshold_comparison_prints_for_our_curve_records(tmp_path):
    """The committed curve records (two SST-2 seeds, one MRPC seed) through the collector's main():
    the published share and ours, computed here from the records themselves."""
    roots = [CURVES / "sst2" / "michel_s1", CURVES / "sst2" / "michel_s2", CURVES / "mrpc" / "michel_s1"]
    main([*map(str, roots), "--published", str(PUBLISHED), "--out", str(tmp_path / "curves")])
    md = (tmp_path / "curves.md").read_text()
    rows = json.loads((tmp_path / "curves_prunable.json").read_text())
    assert [(r["task"], r["published"], r["seeds"]) for r in rows] == [("sst2", 60, 2), ("mrpc", 50, 1)]
    assert "published: up to 60 % of heads prunable on sst2 without noticeable loss" in md
    assert "published: up to 50 % of heads prunable on mrpc without noticeable loss" in md
    assert "stays within 1 point of the same models with no head removed" in md
    assert "in some cases up to 60% (SST-2) or 50% (CoLA, MRPC) of heads can be pruned" in md

    for row, runs in zip(rows, (roots[:2], roots[2:])):
        curves = [json.loads((r / "metrics.json").read_text()) for r in runs]
        metric = curves[0]["primary_metric"]
        mean = {p["removed"]: 100 * sum(c["curve"][i]["metrics"][metric] for c in curves) / len(curves)
                for i, p in enumerate(curves[0]["curve"])}
        ours = 0
        for removed in sorted(mean):
            if mean[removed] < mean[0] - 1:
                break
            ours = removed
        assert row["ours_removed"] == [ours, 72] and row["dense"] == pytest.approx(mean[0])
        assert f"is {100 * ours / 72:.1f} % ({ours} of 72 heads removed" in md


def test_published_is_found_from_any_folder(tmp_path, monkeypatch):
    """`--published published` (or one paper's file) as the docs give it works outside a checkout
    too: the copy shipped as prune_cli.published holds the repository's files; a path that is
    neither stops with one line instead of an empty paper-vs-ours table."""
    monkeypatch.chdir(tmp_path)
    shipped = published_source(Path("published"))
    assert sorted(p.name for p in shipped.glob("*.yaml")) == [p.name for p in FILES]
    assert published_source(Path("published/apd.yaml")).read_text() == (PUBLISHED / "apd.yaml").read_text()
    assert published_source(PUBLISHED) == PUBLISHED  # a path that exists is taken as given
    with pytest.raises(SystemExit, match="--published nope: no such file or folder"):
        published_source(Path("nope"))


def test_llm_pruner_rows_are_transcribed_whole():
    """Every row of LLM-Pruner's Table 1 carries its ten numbers, and its Average is the mean of its
    seven accuracies (to the table's rounding): a typo in any accuracy shows here."""
    rows = {}
    for e in load_published(PUBLISHED / "llm_pruner.yaml"):
        rows.setdefault(e["row"].rsplit(", ", 1)[0], {})[e["task"]] = e["value"]
    assert len(rows) == 11 and all(len(r) == 10 for r in rows.values())
    zeroshot = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
    for name, r in rows.items():
        assert abs(sum(r[t] for t in zeroshot) / 7 - r["*"]) < 0.011, name
