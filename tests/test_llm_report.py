"""prune-report --llm: the LLM table from scripts/llm_grid.sh's record layout, on the committed dense
SmolLM2 records (copied into cells whose predictions are then changed in known ways)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from prune_cli.reports.collect import main
from prune_cli.reports.llm import ZEROSHOT, read_cells, rows_of

ROOT = Path(__file__).resolve().parents[1]
DENSE = ROOT / "docs" / "results" / "runs" / "llm" / "dense"


def _cell(root: Path, name: str, flip_every: int | None = None) -> None:
    """A copy of the dense records as cell `name`; with `flip_every`, every n-th zero-shot example
    (both metrics) made wrong where it was right."""
    target = root / name
    shutil.copytree(DENSE, target)
    if flip_every is None:
        return
    for task in ZEROSHOT:
        path = target / task / "predictions.json"
        record = json.loads(path.read_text())
        split = next(iter(record["splits"].values()))
        for i in range(0, len(split["label"]), flip_every):
            wrong = (split["label"][i] + 1) % 2
            split["prediction"][i] = [wrong, wrong]
        path.write_text(json.dumps(record))


@pytest.fixture
def grid(tmp_path):
    if not all((DENSE / t / "predictions.json").is_file() for t in ("wikitext2", *ZEROSHOT)):
        pytest.skip("the dense SmolLM2 records are not all committed")
    _cell(tmp_path, "dense")
    for s in (1, 2):
        _cell(tmp_path, f"oneshot/heads135/random_s{s}", flip_every=2)
    _cell(tmp_path, "oneshot/heads135/taylor")
    return tmp_path


def test_rows_aggregate_seeds_and_compare_with_random(grid):
    rows = {r["cell"]: r for r in rows_of(read_cells(grid), resamples=200)}
    assert set(rows) == {"dense", "oneshot/heads135/random", "oneshot/heads135/taylor"}
    random, taylor, dense = rows["oneshot/heads135/random"], rows["oneshot/heads135/taylor"], rows["dense"]
    assert random["seeds"] == 2 and taylor["seeds"] == 1 and random["heads"] == 135 and random["units"] == "heads"
    for name, score in taylor["scores"].items():
        assert score["low"] <= score["value"] <= score["high"], name
    assert taylor["scores"]["mean"]["value"] == pytest.approx(dense["scores"]["mean"]["value"])
    assert random["scores"]["mean"]["value"] < taylor["scores"]["mean"]["value"]
    vs = taylor["vs_random"]
    assert vs["delta"] > 0 and vs["low"] > 0 and vs["p"] < 0.05  # right on examples random got wrong
    assert rows["oneshot/heads135/random"]["vs_random"] is None and dense["vs_random"] is None
    # against the dense model: taylor's copy of it loses nothing, random loses every flipped example
    assert dense["vs_dense"] is None
    assert taylor["vs_dense"]["accuracy"]["delta"] == 0 and taylor["vs_dense"]["perplexity"]["ratio"] == 1
    assert random["vs_dense"]["accuracy"]["high"] < 0


def test_the_command_writes_the_table_with_the_published_rows(grid, tmp_path, capsys):
    out = tmp_path / "report" / "llm_runs"
    main([str(grid), "--llm", "--published", "published", "--resamples", "100", "--out", str(out)])
    md = out.with_suffix(".md").read_text()
    assert "| 50.0 % of heads (135 kept) | one-shot | heads | taylor | 1 |" in md
    assert "ANOTHER MODEL" in md and "| Ratio = 20% w/ tune, Element1 | 17.58 |" in md
    assert "| one-shot | heads | 135 heads | taylor | 134.5 M | +0.0 [+0.0, +0.0] p=1.000 | 1.00 [1.00, 1.00] p=1.000 |" in md
    assert len(json.loads(out.with_suffix(".json").read_text())) == 3


def _prune_record(root: Path, cell: str, heads_kept: int, params: int) -> None:
    (root / cell / "prune").mkdir(parents=True)
    (root / cell / "prune" / "metrics.json").write_text(json.dumps(
        {"primary_metric": "perplexity", "heads_kept": heads_kept, "heads_total": 270, "params": params}))


def test_groups_are_compared_with_scattered_heads_at_equal_heads_and_equal_params(grid):
    """units=kv rows against units=heads rows of the same method: at the same query heads and at
    the nearest parameter count within 1 % (a paired accuracy difference and perplexity ratio)."""
    _cell(grid, "oneshot/kv135/taylor", flip_every=3)
    wiki = grid / "oneshot/kv135/taylor/wikitext2/predictions.json"
    record = json.loads(wiki.read_text())
    split = next(iter(record["splits"].values()))
    split["prediction"] = [1.1 * nll for nll in split["prediction"]]  # every window's loss up by 10 %
    wiki.write_text(json.dumps(record))
    _cell(grid, "oneshot/heads108/taylor", flip_every=2)
    _prune_record(grid, "oneshot/kv135/taylor", 135, 121_200_000)
    _prune_record(grid, "oneshot/heads135/taylor", 135, 123_200_000)
    _prune_record(grid, "oneshot/heads108/taylor", 108, 121_000_000)
    rows = {r["cell"]: r for r in rows_of(read_cells(grid), resamples=200)}
    same, near = rows["oneshot/kv135/taylor"]["vs_heads"]
    assert (same["at"], same["heads_kept"], near["at"], near["heads_kept"]) == ("same heads", 135, "same params", 108)
    assert same["accuracy"]["delta"] < 0 < near["accuracy"]["delta"]  # 1 in 3 wrong vs none / 1 in 2
    assert same["perplexity"]["ratio"] > 1.05 and same["perplexity"]["low"] > 1 and same["perplexity"]["p"] < 0.05
    assert rows["oneshot/heads135/taylor"]["vs_heads"] == []


def test_a_tuned_row_is_compared_with_its_one_shot_row(grid):
    """What the recovery fine-tune gave back: a tuned row against the one-shot row of the same
    method, units and budget, paired; rows without a one-shot twin get nothing."""
    from prune_cli.reports.llm import recovery_table

    _cell(grid, "tuned/heads135/taylor", flip_every=2)
    rows = rows_of(read_cells(grid), resamples=200)
    by = {r["cell"]: r for r in rows}
    gain = by["tuned/heads135/taylor"]["vs_oneshot"]
    assert gain["accuracy"]["delta"] < 0 and gain["accuracy"]["high"] < 0  # every other example made wrong
    assert gain["perplexity"]["ratio"] == pytest.approx(1.0)  # the same windows, unchanged
    assert by["oneshot/heads135/taylor"]["vs_oneshot"] is None and by["dense"]["vs_oneshot"] is None
    assert "| recovery fine-tune | heads | 135 heads | taylor |" in recovery_table(rows)
    _cell(grid, "lora/heads135/taylor")  # a LoRA recovery is compared the same way
    by = {r["cell"]: r for r in rows_of(read_cells(grid), resamples=200)}
    assert by["lora/heads135/taylor"]["vs_oneshot"]["accuracy"]["delta"] == pytest.approx(0)
    assert "| LoRA recovery | heads | 135 heads | taylor |" in recovery_table(list(by.values()))


def test_a_learner_is_compared_with_tuned_random_at_its_heads_or_nearest_params(grid):
    """DSP at 135 heads against random + the recovery fine-tune at 135 heads; GRAIN's weight budget
    (no head count) against the tuned random row nearest in parameters, and nothing beyond 1 %."""
    for s in (1, 2):
        _cell(grid, f"tuned/heads135/random_s{s}", flip_every=2)
        _prune_record(grid, f"tuned/heads135/random_s{s}", 135, 123_000_000)
    _cell(grid, "learned/heads135/dsp")
    _cell(grid, "learned/density0.893/grain")
    _prune_record(grid, "learned/density0.893/grain", 140, 123_500_000)
    _cell(grid, "learned/density0.5/grain")
    _prune_record(grid, "learned/density0.5/grain", 80, 90_000_000)
    rows = {r["cell"]: r for r in rows_of(read_cells(grid), resamples=200)}
    for cell in ("learned/heads135/dsp", "learned/density0.893/grain"):
        vs = rows[cell]["vs_random"]
        assert vs["delta"] > 0 and vs["low"] > 0, cell  # right on the examples tuned random got wrong
    assert rows["learned/density0.5/grain"]["vs_random"] is None
    assert rows["learned/density0.893/grain"]["units"] == "density0.893"


def test_the_mean_can_leave_tasks_out_and_a_wrong_task_is_refused(grid, tmp_path, capsys):
    """--llm-without boolq: the mean and the paired test over the six other tasks only; a BoolQ-only
    difference then vanishes from both."""
    _cell(grid, "oneshot/heads135/michel")
    path = grid / "oneshot/heads135/michel/boolq/predictions.json"
    record = json.loads(path.read_text())
    split = next(iter(record["splits"].values()))
    split["prediction"] = [[y, y] for y in split["label"]]  # every BoolQ answer right
    path.write_text(json.dumps(record))
    six = tuple(t for t in ZEROSHOT if t != "boolq")
    for average, moved in ((ZEROSHOT, True), (six, False)):
        rows = {r["cell"]: r for r in rows_of(read_cells(grid), resamples=200, average=average)}
        michel, taylor = rows["oneshot/heads135/michel"], rows["oneshot/heads135/taylor"]
        assert michel["scores"]["mean"]["tasks"] == list(average)
        gap = michel["scores"]["mean"]["value"] - taylor["scores"]["mean"]["value"]
        assert (gap > 0.01) == moved and (michel["vs_random"]["delta"] - taylor["vs_random"]["delta"] > 0.01) == moved
        expected = sum(michel["scores"][t]["value"] for t in average) / len(average)
        assert michel["scores"]["mean"]["value"] == pytest.approx(expected)
    out = tmp_path / "report" / "llm_runs"
    main([str(grid), "--llm", "--llm-without", "boolq", "--resamples", "50", "--out", str(out)])
    assert "| Average without BoolQ | vs random (Average without BoolQ) |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        main([str(grid), "--llm", "--llm-without", "boolx", "--out", str(out)])
    assert "--llm-without='boolx': not a zero-shot task" in capsys.readouterr().err


def test_full_sets_print_each_tasks_size_and_leave_unscored_tasks_empty(grid, tmp_path):
    """scripts/llm_fullset.sh's records: tasks of different sizes, BoolQ and HellaSwag not scored."""
    full = tmp_path / "full"
    _cell(full, "dense")
    for task in ("boolq", "hellaswag"):
        shutil.rmtree(full / "dense" / task)
    path = full / "dense" / "piqa" / "predictions.json"
    record = json.loads(path.read_text())
    split = next(iter(record["splits"].values()))
    for key in split:
        split[key] = split[key][:60]
    path.write_text(json.dumps(record))
    out = tmp_path / "report" / "llm_full"
    main([str(full), "--llm", "--llm-without", "boolq,hellaswag", "--resamples", "50", "--out", str(out)])
    md = out.with_suffix(".md").read_text()
    assert "the first 60 of PIQA, 100 of WinoGrande, 100 of ARC-e, 100 of ARC-c, 100 of OBQA." in md
    row = next(line for line in md.splitlines() if "| dense |" in line).split(" | ")
    assert row[7] == row[9] == "..."  # BoolQ, HellaSwag
    scores = json.loads(out.with_suffix(".json").read_text())[0]["scores"]
    five = [t for t in ZEROSHOT if t not in ("boolq", "hellaswag")]
    assert "boolq" not in scores and scores["piqa"]["n"] == 60
    assert scores["mean"]["value"] == pytest.approx(sum(scores[t]["value"] for t in five) / 5)
