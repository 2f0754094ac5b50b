"""What a run says on the console: a header per stage, a line per evaluation, nothing from the
libraries unless verbose=true, no empty log file in the run folder; a launcher whose plugin is
missing is one line; W&B run names say the budget."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

import pytest
from omegaconf import OmegaConf
from test_cli import TINY, prune_run

from prune_cli import cli
from prune_cli.tracking import run_name


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    folder = tmp_path_factory.mktemp("talk")
    quiet = prune_run([*TINY, "method=taylor", "heads=36", "pipeline=[prune,evaluate,export]",
                       f"hydra.run.dir={folder / 'quiet'}"], cwd=folder)
    loud = prune_run([*TINY, "method=taylor", "heads=36", "pipeline=[prune,evaluate]", "verbose=true",
                      f"hydra.run.dir={folder / 'loud'}"], cwd=folder)
    return folder, quiet, loud


def test_a_run_says_each_stage_and_each_evaluation(talk):
    _, quiet, _ = talk
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    lines = [line for line in quiet.stderr.splitlines() if line.startswith("prune-run:")]
    assert lines[0] == "prune-run: stage 1/3 prune: taylor, keep 36 of 72 heads"
    assert lines[1] == "prune-run: stage 2/3 evaluate"
    assert lines[2].startswith("prune-run: evaluate: accuracy=") and lines[2].endswith("(36/72 heads)")
    assert lines[3] == "prune-run: stage 3/3 export"
    assert quiet.stdout.strip().startswith("prune-run: rte accuracy=")  # stdout: the result line only


def test_library_noise_is_off_unless_verbose(talk):
    folder, quiet, loud = talk
    for noise in ("LOAD REPORT", "Loading weights", "Writing model shards"):
        assert noise not in quiet.stderr
    assert "Loading weights" in loud.stderr or "LOAD REPORT" in loud.stderr
    assert not (folder / "quiet" / "prune-run.log").exists()  # no job log file (it was empty)


class _Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("hydra_plugins.hydra_joblib_launcher"):
            raise ModuleNotFoundError(name)


def test_a_launcher_without_its_plugin_is_one_line(capsys, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("hydra_plugins.hydra_joblib_launcher")]:
        monkeypatch.delitem(sys.modules, name)  # imported earlier in this process: find_spec would not look
    sys.meta_path.insert(0, _Hidden())
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.check_launcher(["-m", "hydra/launcher=parallel", "heads=1,2"])
    finally:
        sys.meta_path.pop(0)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert "hydra/launcher=parallel" in err and "prune-cli[slurm]" in err
    try:
        installed = importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None
    except ImportError:  # no Hydra plugin at all (make test-oldest's venv)
        installed = False
    if installed:
        cli.check_launcher(["-m", "hydra/launcher=parallel"])  # nothing to say


@pytest.mark.parametrize("budget,name", [({"heads": 36}, "rte-taylor-k36-s1"),
                                         ({"density": 0.1, "units": "dims_ffn"}, "rte-taylor-density0.1-dims_ffn-s1"),
                                         ({"sparsity": 0.5, "units": "kv"}, "rte-taylor-sparsity0.5-kv-s1")])
def test_wandb_run_names_say_the_budget(budget, name):
    cfg = OmegaConf.create({"task": {"name": "rte"}, "method": {"name": "taylor"}, "seed": 1, **budget})
    assert run_name(cfg) == name
