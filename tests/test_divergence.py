"""A diverged run is an error, never a result: one line, exit status 1, no metrics.json, no export."""

from __future__ import annotations

from test_cli import TINY, prune_run


def test_a_run_that_diverges_fails_with_one_line_and_leaves_no_result(tmp_path):
    run = tmp_path / "run"
    res = prune_run([*TINY, "method=none", "trainer.lr=1e30", "trainer.max_grad_norm=0", "trainer.max_nonfinite_steps=0", "logger=none",
                     f"hydra.run.dir={run}"], cwd=tmp_path)
    lines = [line for line in res.stderr.splitlines() if line.startswith("prune-run: error")]
    assert res.returncode == 1 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("prune-run: error: diverged in stage "), lines
    assert "Traceback" not in res.stderr
    assert not (run / "metrics.json").exists() and not (run / "model").exists()
