"""The sweep cache (cache.dir): a hit is exactly what the run would have computed, the key
moves with everything that determines the entry, and concurrent jobs train a key once."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from conftest import tiny_model
from test_pipeline import make_cfg

from prune_cli.accounting import FIELDS
from prune_cli.cache import dataset_digest, tensor_digest
from prune_cli.pipeline import Pipeline


def test_digests_move_with_one_weight_and_one_token():
    import datasets

    model = tiny_model("bert")
    before = tensor_digest(model.state_dict())
    with torch.no_grad():
        model.classifier.bias[0] += 1e-6
    assert tensor_digest(model.state_dict()) != before
    rows = {"input_ids": [[1, 2, 3], [4, 5]], "labels": [0, 1]}
    a = dataset_digest(datasets.Dataset.from_dict(rows))
    assert a == dataset_digest(datasets.Dataset.from_dict(rows))
    assert a != dataset_digest(datasets.Dataset.from_dict({**rows, "input_ids": [[1, 2, 3], [4, 6]]}))


def test_a_cache_hit_gives_the_metrics_of_the_run_that_computes(tmp_path):
    """michel at K=36 computed from scratch == michel at K=36 after a K=54 run filled the cache
    (its dense fine-tune and its one-shot scores are both hits); another seed misses."""
    cache = f"cache.dir={tmp_path / 'cache'}"
    plain = Pipeline(make_cfg("method=michel", "heads=36", "export_model=false"), tmp_path / "plain").run()
    Pipeline(make_cfg("method=michel", "heads=54", "export_model=false", cache), tmp_path / "fill").run()
    warm = Pipeline(make_cfg("method=michel", "heads=36", "export_model=false", cache), tmp_path / "warm").run()
    assert warm["stages"][0]["cache"].startswith("hit ")
    assert warm["eval"] == plain["eval"]
    heads = [json.loads((tmp_path / r / "heads.json").read_text()) for r in ("plain", "warm")]
    assert heads[0]["scores"] == heads[1]["scores"] and heads[0]["mask"] == heads[1]["mask"]
    log = [json.loads(line) for line in (tmp_path / "warm" / "log.jsonl").read_text().splitlines()]
    assert sum(row.get("cache/hit", 0) for row in log) == 2  # the fine-tune and the scores
    # what the hits cost when they were computed: the warm run received exactly the plain run's compute
    received = {k: warm["compute"][k] + warm["compute"]["cached"][k] for k in FIELDS}
    assert received == {k: plain["compute"][k] for k in FIELDS} and "cached" not in plain["compute"]
    assert warm["compute"]["cached"]["epochs"] == plain["stages"][0]["compute"]["epochs"] > 0
    assert warm["compute"]["cached"]["backward_passes"] > plain["stages"][0]["compute"]["backward_passes"]  # + scoring
    from prune_cli.reports import compute_table, find_runs

    rows = [line.split("|") for line in compute_table(find_runs([tmp_path / "plain", tmp_path / "warm"])).splitlines()
            if line.startswith("| rte |")]
    assert len(rows) == 1 and rows[0][3].strip() == "2"  # both runs in one row: michel
    lines = compute_table(find_runs([tmp_path / "warm"])).splitlines()
    head = next(line for line in lines if line.startswith("| task |")).split("|")
    warm_row = next(line for line in lines if line.startswith("| rte |")).split("|")
    assert float(warm_row[head.index(" received_epochs ")]) == plain["compute"]["epochs"]
    other = Pipeline(make_cfg("method=random", "heads=36", "export_model=false", "seed=7", cache), tmp_path / "o").run()
    assert other["stages"][0]["cache"].startswith("stored ")


def test_concurrent_jobs_fine_tune_a_base_once(tmp_path):
    from test_cli import TINY

    env_cmd = [sys.executable, "-m", "prune_cli.cli", *TINY, "logger.mode=disabled", "export_model=false",
               f"cache.dir={tmp_path / 'cache'}"]
    jobs = [subprocess.Popen([*env_cmd, f"method={m}", "heads=36", f"hydra.run.dir={tmp_path / m}"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in ("michel", "random")]
    for job in jobs:
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-2000:]
    first = [json.loads((tmp_path / m / "metrics.json").read_text())["stages"][0]["cache"] for m in ("michel", "random")]
    assert sorted(c.split()[0] for c in first) == ["hit", "stored"]
    assert len({c.split()[1] for c in first}) == 1
    assert len(list((tmp_path / "cache" / "finetune").glob("*/result.json"))) == 1
