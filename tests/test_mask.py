"""method=mask: a run keeps exactly the heads another run kept, or (invert) the ones it removed."""

from __future__ import annotations

import json

from test_cli import TINY, prune_run


def test_mask_and_its_inverse_and_a_wrong_count(tmp_path):
    first = tmp_path / "random"
    common = [*TINY, "pipeline=[prune,evaluate]", "logger=none", "export_model=false"]
    assert prune_run([*common, "method=random", "heads=30", f"hydra.run.dir={first}"], cwd=tmp_path).returncode == 0
    kept = json.loads((first / "heads.json").read_text())["kept"]
    same, inverse = tmp_path / "same", tmp_path / "inverse"
    res = prune_run([*common, "method=mask", f"method.heads={first / 'heads.json'}", "heads=30", "seed=5",
                     f"hydra.run.dir={same}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((same / "heads.json").read_text())["kept"] == kept
    res = prune_run([*common, "method=mask", f"method.heads={first / 'heads.json'}", "method.invert=true",
                     "heads=42", f"hydra.run.dir={inverse}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(json.loads((inverse / "heads.json").read_text())["kept"] + kept) == list(range(72))
    res = prune_run([*common, "method=mask", f"method.heads={first / 'heads.json'}", "heads=36",
                     f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("prune-run: error: heads=36: 30: the number")
