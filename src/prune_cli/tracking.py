"""Run logging: W&B (offline by default) plus plain files, so a run is readable without W&B.

Every number that goes to W&B also lands in `<run>/log.jsonl`, one JSON object a line, with the
global step; a run killed half-way still leaves its curve behind.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from prune_cli.checkpoints import atomic_write


def has_wandb_credentials() -> bool:
    """Whether `wandb.init(mode="online")` will find credentials without prompting (environment,
    ~/.netrc, W&B settings). A run on a node without them would otherwise die in wandb.init after
    the model is loaded. If this wandb version hides its credential lookup, assume yes."""
    try:
        from wandb.sdk.lib.wbauth.authenticate import authenticate_session
    except ImportError:
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:
        return authenticate_session(host=host, source="prune-run", prompt=False, update_session=False) is not None
    except Exception:  # noqa: BLE001 - a malformed key: let wandb.init say what is wrong with it
        return True


class RunLogger:
    """`main=False` (a process other than rank 0 of a multi-process run): counts steps like the
    main one, writes nothing."""

    def __init__(self, cfg: DictConfig, run_dir: Path, main: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._path = self.run_dir / "log.jsonl"
        self._jsonl = open(self._path, "a", buffering=1) if main else None  # noqa: SIM115 - open for the whole run
        self.step = 0  # global optimisation step across stages (W&B needs it monotone)
        self.rows = len(_complete_lines(self._path)) if main else 0  # rows in log.jsonl: checkpoints record it
        self._cut: tuple[int, int | None] | None = None  # where resume() said the redone rows begin
        self.wandb_run = None
        mode = cfg.logger.mode
        if mode != "disabled" and main:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb_run = wandb.init(
                project=cfg.logger.project,
                entity=cfg.logger.get("entity"),
                group=cfg.logger.get("group"),
                tags=list(cfg.logger.get("tags") or []),
                name=run_name(cfg),
                mode=mode,
                dir=str(self.run_dir),
                config=OmegaConf.to_container(cfg, resolve=True),
                reinit="finish_previous",
            )

    def log(self, metrics: dict, step: int | None = None) -> None:
        step = self.step if step is None else step
        if self._jsonl is None:
            return
        self._apply_cut()
        clean = {k: _plain(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self.rows += 1
        if self.wandb_run is not None:
            self.wandb_run.log(clean, step=step)

    def resume(self, step: int, rows: int | None = None) -> None:
        """Continue from a checkpoint taken at global `step` when log.jsonl held `rows` rows.

        The killed process may have logged past its last checkpoint; those steps are computed and
        logged again, so the rows after the checkpoint go (`rows` unknown, as in a checkpoint from
        an older version: the rows after `step`). Not at once: a later checkpoint found on the way
        (a stage's own, after the pipeline's) moves the point again before anything is logged."""
        self.step = step
        self._cut = (step, rows)

    def _apply_cut(self) -> None:
        if self._cut is None or self._jsonl is None:
            return
        step, rows = self._cut
        self._cut = None
        lines = _complete_lines(self._path)
        if rows is not None:
            keep = lines[: max(0, rows)]
        else:
            keep = [line for line in lines if _step_of(line) <= step]
        if keep == lines and self._path.stat().st_size == sum(len(line) for line in lines):
            return  # nothing to cut (and no half-written last row)
        self._jsonl.close()
        atomic_write(self._path, b"".join(keep))
        self._jsonl = open(self._path, "a", buffering=1)  # noqa: SIM115 - open for the whole run
        self.rows = len(keep)

    def summary(self, metrics: dict) -> None:
        if self.wandb_run is not None:
            for k, v in metrics.items():
                self.wandb_run.summary[k] = _plain(v)

    def image(self, key: str, path: Path) -> None:
        if self.wandb_run is not None and Path(path).is_file():
            import wandb

            self.wandb_run.log({key: wandb.Image(str(path))}, step=self.step)

    def file(self, path: Path) -> None:
        """Attach a run-folder file (heads.json, mask_trajectory.json...) to the W&B run."""
        if self.wandb_run is not None and Path(path).is_file():
            self.wandb_run.save(str(path), base_path=str(self.run_dir), policy="now")

    def finish(self, exit_code: int = 0) -> None:
        if exit_code == 0:  # a resumed run that logged nothing more still drops the rows it redid
            self._apply_cut()
        if self._jsonl is not None:
            self._jsonl.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None


def _complete_lines(path: Path) -> list[bytes]:
    """The rows of a log.jsonl, each with its newline; a last row a kill cut short is left out."""
    if not path.is_file():
        return []
    lines = path.read_bytes().splitlines(keepends=True)
    return lines if not lines or lines[-1].endswith(b"\n") else lines[:-1]


def _step_of(line: bytes) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return float("inf")  # unreadable: not a row to keep


def _plain(v):
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def run_name(cfg) -> str:
    """The W&B run's name: task, method, the budget as the user gave it, seed
    (`sst2-taylor-k36-s42`, `sst2-grain-density0.1-s42`, `mnli-dsp-sparsity0.5-s1`, `sst2-none-dense-s42`)."""
    if cfg.get("heads") is not None:
        budget = f"k{cfg.heads}"
    elif cfg.get("sparsity") is not None:
        budget = f"sparsity{cfg.sparsity}"
    elif cfg.get("density") is not None:
        budget = f"density{cfg.density}"
    else:  # the dense baseline, or a method that sets its own budget (Voita's lambda)
        budget = "dense" if cfg.method.name == "none" else ""
    units = cfg.get("units")
    kinds = "" if units in (None, "heads") else f"-{units if isinstance(units, str) else '+'.join(units)}"
    return "-".join(p for p in (cfg.task.name, cfg.method.name, budget + kinds, f"s{cfg.seed}") if p)
