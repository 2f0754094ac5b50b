"""A run's committed stages in <run>/checkpoints/: what a restart resumes from.

After every stage the runner commits the state: the model folder (when the stage changed the
model) and progress.json, each whole on disk (checksummed, written atomically) before the state
it supersedes goes. A restart loads the newest commit that reads (a damaged one falls back to the
one before, with one warning naming the file), and refuses other settings than the run was
started with, before any model loads. The runner (prune_cli.pipeline) calls this module; nothing
else writes checkpoints/ but the training loop's step checkpoints (train-<stage>.pt).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from prune_cli import checkpoints, distributed, report, rundir
from prune_cli.errors import ConfigError
from prune_cli.surgery import load_pruned, save_pruned


class Commits:
    """The commits of one run folder (`<run>/checkpoints`)."""

    def __init__(self, run_dir: Path, main: bool):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.main = main
        self.model_dir: Path | None = None  # the folder the current state's model came from (or was saved to)

    def guard(self, cfg: DictConfig) -> None:
        """First start: keep the config (and Hydra's record of it) here. A restart with other
        settings is refused, and Hydra's .hydra/ files, which it has already rewritten, are put
        back to what the run was started with."""
        saved, hydra_dir = self.dir / "config.yaml", self.run_dir / ".hydra"
        conflict = resume_conflict(self.run_dir, cfg)
        if conflict:
            for f in (self.dir / "hydra").glob("*.yaml"):
                shutil.copy2(f, hydra_dir / f.name)
            raise ConfigError("hydra.run.dir", str(self.run_dir), "a new folder, or the settings this unfinished run "
                              f"was started with ({conflict}), or +overwrite=true to start it again there")
        with distributed.main_writes() as write:
            if write and not saved.is_file():
                self.dir.mkdir(parents=True, exist_ok=True)
                if hydra_dir.is_dir():
                    shutil.copytree(hydra_dir, self.dir / "hydra", dirs_exist_ok=True)
                checkpoints.atomic_write(saved, OmegaConf.to_yaml(cfg, resolve=True))

    def newest(self, auto_class, stage_name: Callable[[int], str | None]):
        """(record, model, tokenizer) of the newest commit that reads, or None (a fresh start)."""
        loaded = checkpoints.load_newest(
            self.dir / "progress.json", lambda path: self._load(path, auto_class), main=self.main,
            fallback="the run starts again from its first stage",
            describe=lambda p, got: f"resuming from {p}, after stage {got[0]['done']} "
                                    f"({stage_name(got[0]['done'])}): the stages after it run again")
        if loaded is None:
            return None
        saved, model, tokenizer, self.model_dir = loaded
        return saved, model, tokenizer

    def _load(self, path: Path, auto_class):
        """A committed stage: its record and its model folder, both checked (checkpoints.Damaged
        names the file that is not whole; the folder goes with it)."""
        from transformers import AutoTokenizer

        saved = json.loads(path.read_text())
        if not isinstance(saved.get("done"), int):
            raise checkpoints.Damaged(path, "no stage index in it")
        model_dir = self.dir / Path(saved["model_dir"]).name  # (the run folder may have moved)
        try:
            checkpoints.check_folder(model_dir)
            model = load_pruned(model_dir, auto_class=auto_class)
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except checkpoints.Damaged as err:
            raise checkpoints.Damaged(err.path, err.reason, remove=model_dir) from None
        except Exception as err:  # noqa: BLE001 - a model folder that does not load
            first = (str(err).strip().splitlines() or [""])[0]
            raise checkpoints.Damaged(model_dir, f"unreadable: {type(err).__name__}: {first}",
                                      remove=model_dir) from None
        return saved, model, tokenizer, model_dir

    def commit(self, state, index: int, changed_model: bool, extra: dict) -> None:
        """Commit stage `index`: its model folder (when it changed the model) and progress.json
        (the state's record + `extra`). Two commits are kept: the latest and, as
        progress.prev.json, the last one before it that holds ANOTHER model folder (else simply
        the one before), so a damaged model folder still leaves a commit to go back to."""
        self.dir.mkdir(parents=True, exist_ok=True)
        progress = self.dir / "progress.json"
        model_dir = self.model_dir
        if changed_model or model_dir is None:
            model_dir = self.dir / f"model-{index}"
            checkpoints.write_folder(model_dir, lambda folder: save_pruned(state.model, folder, state.tokenizer))
        latest, before = _model_dir_of(progress), _model_dir_of(checkpoints.previous(progress))
        rotate = not (latest == model_dir.name and before is not None and before != latest)
        report.write_json(progress, {"done": index, "model_dir": str(model_dir), **extra, **state.to_json()},
                          checksum=True, keep_previous=rotate)
        self.model_dir = model_dir
        # the stage is committed: its mid-stage checkpoints (kept until now, so that a kill between
        # the end of training and this commit resumes at the stage's last step) are superseded
        checkpoints.remove(self.dir / f"train-{index}.pt")
        keep = {model_dir.name, _model_dir_of(checkpoints.previous(progress))}
        for folder in self.dir.glob("model-*"):
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)


def resume_conflict(run_dir: Path, cfg: DictConfig) -> str | None:
    """None if `run_dir` holds no unfinished run or one started with the same settings; else what
    differs. Resuming a run with other settings would mix two experiments in one folder and make
    its config.yaml lie, so it is refused (before any model loads)."""
    saved = Path(run_dir) / "checkpoints" / "config.yaml"
    if not saved.is_file():
        return None
    old, new = rundir.flat(OmegaConf.load(saved)), rundir.flat(cfg)
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if not diff:
        return None
    more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
    return "; ".join(diff[:3]) + more


def _model_dir_of(progress: Path) -> str | None:
    """The model folder a progress record names (its name in checkpoints/), if it reads."""
    try:
        return Path(json.loads(progress.read_text())["model_dir"]).name
    except (OSError, ValueError, KeyError, TypeError):
        return None
