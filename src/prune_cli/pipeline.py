"""The runner: a list of stages from config, each reading and updating one small `State`.

    finetune -> prune -> finetune -> evaluate -> export      (scorers: michel, random)
    prune_joint -> evaluate -> export                        (learners, regime=joint)
    finetune -> learn_gates -> finetune -> evaluate -> export (learners, regime=pipelined)

What each stage does is its module in prune_cli/stages/ (the table of their properties is
prune_cli.stages); this module is the loop around them: the run folder (claimed, finished runs
never run over), resume, the checkpoint after every stage, the services a stage calls
(stages.state.Runner: training, evaluation, surgery, scoring passes) and the outputs.

After every stage the state is checkpointed in `<run>/checkpoints/`; running the same command
again with `hydra.run.dir=<run>` skips the stages that finished and resumes a training stage from
its last mid-stage checkpoint. Pruning is always finished by surgery, so every stage after it
trains and evaluates the physically smaller model.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from prune_cli import accounting, distributed, progress, report, rundir
from prune_cli.accounting import METER
from prune_cli.commits import Commits, resume_conflict
from prune_cli.errors import ConfigError, Diverged
from prune_cli.methods import get_pruner
from prune_cli.methods.apd import holdout
from prune_cli.run_cache import RunCache
from prune_cli.stages import (
    STAGES,
    bench,
    evaluate,
    export,
    meta_train,
    prune,
    prune_curve,
    prune_joint,
    teacher,
)
from prune_cli.stages import train as training
from prune_cli.stages.state import State
from prune_cli.surgery import count_params, remove_units
from prune_cli.tracking import RunLogger
from prune_cli.train import make_accelerator, seed_everything, train, train_loader
from prune_cli.units import UnitSpace
from prune_cli.validate import Plan, validate

#: what runs each stage of the table (prune_cli.stages): `run(runner, state, index) -> its record`
RUNNERS = {
    "teacher": teacher.run,
    "meta_train": meta_train.run,
    "train": training.train,
    "finetune": training.finetune,
    "prune": prune.run,
    "prune_curve": prune_curve.run,
    "prune_joint": prune_joint.prune_joint,
    "learn_gates": prune_joint.learn_gates,
    "evaluate": evaluate.run,
    "export": export.run,
    "bench": bench.run,
}
assert set(RUNNERS) == set(STAGES), "every stage of the table has a runner, and only those"


class Pipeline:
    def __init__(self, cfg: DictConfig, run_dir: Path, plan: Plan | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.plan = plan or validate(cfg)
        self.task = self.plan.task
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._cached_compute: list[dict] = []  # the current stage's cache hits: what they cost

    # ------------------------------------------------------------------ driver
    def run(self) -> dict:
        """The stages, in a folder this process holds (rundir.py) until it ends. A folder that
        holds a finished run is not run again: its metrics come back, `done_before` set."""
        self.accelerator = make_accelerator(self.cfg.trainer, self.cfg.seed)
        self.main = self.accelerator.is_main_process  # several processes: rank 0 alone writes (distributed.py)
        self.commits = Commits(self.run_dir, self.main)
        self.done_before = None
        self._claim()
        try:
            before = self._finished_before()
            if before is not None:
                self.done_before = before
                return before
            return self._run_stages()
        finally:
            if self.main:
                rundir.release(self.run_dir)

    def _claim(self) -> None:
        """Rank 0 takes the folder's lock for all the processes of the run; all refuse together."""
        rundir.overwrite(self.cfg)  # a value that is not a boolean: refused before anything
        refused = None
        if self.main:
            try:
                rundir.acquire(self.run_dir)
            except ConfigError as err:
                rundir.restore_hydra(self.run_dir)  # Hydra rewrote them for a command that does not run
                refused = (err.key, err.value, err.allowed)
        refused = distributed.broadcast(refused)
        if refused is not None:
            raise ConfigError(*refused)

    def _finished_before(self) -> dict | None:
        """A finished run (metrics.json) is never run over: the same settings get its metrics
        back, other ones are refused (its files as they were); `+overwrite=true` moves its results
        to previous-<time>/ first -- also those of an unfinished run started with other settings."""
        verdict = None
        if self.main:
            metrics = rundir.finished(self.run_dir)
            if rundir.overwrite(self.cfg) and (metrics is not None or resume_conflict(self.run_dir, self.cfg)):
                verdict = ("moved", str(rundir.move_aside(self.run_dir)))
            elif metrics is not None:
                diff = rundir.differences(self.run_dir, self.cfg, hydra_intact=False)
                rundir.restore_hydra(self.run_dir)
                if diff == []:
                    verdict = ("done", metrics)
                else:
                    err = rundir.refusal(self.run_dir, metrics, diff)
                    verdict = ("refused", (err.key, err.value, err.allowed))
        verdict = distributed.broadcast(verdict)
        if verdict is None:
            return None
        if verdict[0] == "refused":
            raise ConfigError(*verdict[1])
        if verdict[0] == "moved":
            if self.main:
                print(f"prune-run: {self.run_dir}: +overwrite=true: the earlier results are in {verdict[1]}")
            return None
        return verdict[1]

    def _run_stages(self) -> dict:
        cfg, plan = self.cfg, self.plan
        self.commits.guard(cfg)
        t0 = time.time()
        seed_everything(cfg.seed)
        self.logger = RunLogger(cfg, self.run_dir, main=self.main)
        self.cache = RunCache(cfg, lambda: self.splits.train, self.main, self.logger.log, self.say,
                              lambda cost: self._cached_compute.append(cost))
        try:
            state, done = self._start()
            with self.accelerator.main_process_first():  # tokenised caches: written once, then read
                self.splits = self.task.splits(state.tokenizer)
            self.holdout = None
            if cfg.method.get("tolerance") is not None:  # lossless mode: set rows aside BEFORE anything trains
                self.splits.train, self.holdout = holdout.carve(self.splits.train, cfg.method.get("holdout", 0.1),
                                                                cfg.seed)
                holdout.coarse_holdout(cfg.method.tolerance, len(self.holdout))
            self.pruner = get_pruner(cfg.method, state.space, cfg.seed)
            self.pruner.run_dir, self.pruner.task = self.run_dir, self.task
            with progress.shown(self.main and bool(cfg.trainer.get("progress_bar", True))):  # scoring, evaluation
                for i, name in enumerate(plan.stages):
                    if i < done:
                        continue
                    t = time.time()
                    seed_everything(cfg.seed + i)
                    METER.reset()
                    METER.watch(state.model)
                    self._cached_compute = []  # what this stage's cache hits cost when they were computed
                    self.say(f"stage {i + 1}/{len(plan.stages)} {name}{self._about(name)}")
                    try:
                        result = RUNNERS[name](self, state, i) or {}
                    finally:
                        METER.unwatch()
                    cached = accounting.total([{"compute": c} for c in self._cached_compute])
                    state.stages.append({"stage": name, "index": i, "seconds": round(time.time() - t, 2), **result,
                                         "compute": accounting.across_processes(METER.snapshot()),
                                         **({"cached_compute": cached} if self._cached_compute else {})})
                    self._checkpoint(state, i, changed_model=STAGES[name].changes_model)
                metrics = self._finish(state, time.time() - t0)
        except BaseException:
            self.logger.finish(exit_code=1)
            raise
        self.logger.finish()
        with distributed.main_writes() as write:
            if write:
                shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        return metrics

    def say(self, line: str) -> None:
        """What the run is doing, one line on stderr (stdout keeps the final result line)."""
        if self.main:
            print(f"prune-run: {line}", file=sys.stderr, flush=True)

    def _about(self, name: str) -> str:
        """What a stage header adds to the stage's name: the method and budget of a pruning stage."""
        if not STAGES[name].prunes:
            return ""
        plan = self.plan
        if plan.density is not None:
            budget = f"density {plan.density} over {'+'.join(plan.units)}"
        elif plan.keep is not None:
            budget = f"keep {plan.keep} of {plan.heads_in_scope} heads" + (" as whole key/value groups" if plan.units == ("kv",) else "")
        else:
            budget = "its own budget"
        return f": {self.cfg.method.name}, {budget}"

    def _start(self) -> tuple[State, int]:
        loaded = self.commits.newest(self.task.auto_class(), dict(enumerate(self.plan.stages)).get)
        if loaded is not None:
            saved, model, tokenizer = loaded
            state = State.from_json(saved, model, tokenizer)
            self.logger.resume(saved.get("global_step", 0), saved.get("log_rows"))
            return state, saved["done"] + 1
        self.logger.resume(0, 0)  # nothing was committed: rows a killed start logged are logged again
        model, tokenizer = self.task.load_model(self.cfg.model)
        # the DENSE geometry indexes everything (a pruned export loaded with model.path has lost
        # units: they start out removed, and heads_total / params_dense describe the dense model)
        space = UnitSpace.from_model(model)
        state = State(model, tokenizer, space, space.kept("head"))
        state.params_dense = report.dense_params(model)
        return state, 0

    def _checkpoint(self, state: State, index: int, changed_model: bool) -> None:
        """Commit stage `index` (prune_cli.commits), with the logger's place for a resumed run."""
        with distributed.main_writes() as write:
            if write:
                self.commits.commit(state, index, changed_model,
                                    {"global_step": self.logger.step, "log_rows": self.logger.rows})

    # ------------------------------------------------------------------ stages
    def fit(self, state: State, index: int, name: str, epochs=None, distill: bool = True, **kw) -> dict:
        collate = self.task.collate_fn(state.tokenizer)
        distiller = self.distiller(state) if distill and self.cfg.distill.name != "none" else None
        return train(
            model=state.model, dataset=self.splits.train, collate_fn=collate, tcfg=self.cfg.trainer,
            accelerator=self.accelerator, seed=self.cfg.seed + index, logger=self.logger, epochs=epochs,
            checkpoint=self.ckpt_dir / f"train-{index}.pt", evaluate=lambda step: self.evaluate(state, name),
            desc=name, distiller=distiller, **kw,
        )

    def distiller(self, state: State):
        """The teacher of `distill=` (its folder, or the `teacher` stage's) with fresh loss maps."""
        from prune_cli.distill import Distiller

        path = state.teacher or self.cfg.distill.get("teacher")
        # `dense`: the model the run starts from (validate.DENSE_TEACHER), loaded as the run loads it
        source = self.cfg.model if str(path) == "dense" else OmegaConf.merge(self.cfg.model, {"path": str(path)})
        teacher, _ = self.task.load_model(source)
        METER.watch(teacher)  # its forward passes are this stage's compute too
        return Distiller(self.cfg.distill, teacher, state.model, space=state.space)

    def epochs(self, index: int, given=None):
        """Epochs of the training stage at `index`: its share of trainer.total_epochs when that is
        set (validate splits it), else `given` (None = trainer.epochs)."""
        return given if self.plan.epochs is None else self.plan.epochs[index]

    def cached_scores(self, state: State, compute):
        """One-shot scores: the sweep cache's, or `compute()` on every process, stored there."""
        return self.cache.scores(state.model, state.space, self.plan.units, compute, self.agreed)

    @staticmethod
    def agreed(compute):
        """`compute()` on every process, rank 0's result for all: a scoring pass on a GPU is not
        bitwise reproducible, and processes that kept different heads could not train together."""
        return distributed.broadcast(compute())

    def score_batches(self, state: State):
        """A fresh pass over the TRAINING batches, in order, on the model's device (what scorers read)."""
        collate = self.task.collate_fn(state.tokenizer)
        device = self.accelerator.device
        state.model.to(device)

        def batches():
            loader = train_loader(self.splits.train, collate, int(self.cfg.trainer.batch_size), self.cfg.seed, shuffle=False)
            for batch in loader:
                yield {k: v.to(device) for k, v in batch.items()}

        return batches

    def holdout_metric(self, state: State):
        """The primary metric on the validation split carved from the training rows (lossless mode)."""
        bs = int(self.cfg.task.get("eval_batch_size") or self.cfg.trainer.eval_batch_size)

        def metric() -> float:
            out = self.task.evaluate_on(state.model, state.tokenizer, self.holdout, self.accelerator, bs)
            return float(out[self.task.primary_split()[1]])  # (MNLI's accuracy_mm: accuracy on the holdout)

        return metric

    def apply(self, state: State, target: UnitSpace) -> dict:
        """Physically remove what `target` (a UnitSpace over the dense index) does not keep."""
        state.space = remove_units(state.model, target, state.space)
        state.mask = target.kept("head")
        out = {"heads_kept": int(state.mask.sum()), "params": count_params(state.model)}
        if self.plan.density is not None:
            out["density"] = round(target.density(self.cfg.heads_scope), 6)
        self.logger.log(out)
        return out

    def evaluate(self, state: State, stage: str) -> dict:
        bs = int(self.cfg.task.get("eval_batch_size") or self.cfg.trainer.eval_batch_size)
        metrics = self.task.evaluate(state.model, state.tokenizer, self.splits, self.accelerator, bs)
        self.logger.log({f"eval/{k}": v for k, v in metrics.items()})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        self.say(f"{stage}: {shown} ({int(state.mask.sum())}/{state.space.total} heads)")
        state.evals.append({"stage": stage, "heads_kept": int(state.mask.sum()), "metrics": metrics})
        return metrics

    # ------------------------------------------------------------------ outputs
    def outcome(self, state: State) -> dict:
        """What the model is and scored, as metrics.json says it and the model card repeats it
        (one function for both: they cannot disagree)."""
        final_eval = next((e["metrics"] for e in reversed(state.evals) if e["stage"] != "prune_curve"), {})
        primary = self.task.primary_metric
        return {
            "primary_metric": primary,
            "primary": final_eval.get(primary),
            "eval": final_eval,
            "heads_total": state.space.total,
            "heads_kept": int(state.mask.sum()),
            "params": count_params(state.model),
            "params_dense": state.params_dense,
            **report.unit_metrics(state.model, state.space, self.cfg.heads_scope),
        }

    def _finish(self, state: State, seconds: float) -> dict:
        outcome = self.outcome(state)
        bad = {k: v for k, v in outcome["eval"].items() if isinstance(v, float) and not math.isfinite(v)}
        if bad:  # a NaN metric or evaluation loss is a diverged run, not a result
            raise Diverged("evaluate", None, ", ".join(f"{k} is {v}" for k, v in bad.items())
                           + "; no metrics.json written")
        metrics = {
            "task": self.cfg.task.name,
            "model": self.cfg.model.name,
            "method": self.cfg.method.name,
            "seed": self.cfg.seed,
            **outcome,
            "evals": state.evals,
            "stages": state.stages,
            "wall_time_s": round(seconds, 2),
            "device": str(self.accelerator.device),
            "compute": {**accounting.total(state.stages), "wall_time_s": round(seconds, 2),
                        "device": str(self.accelerator.device),
                        # what the run's cache hits cost when they were computed: the model received
                        # the sum of the two (equal budgets are read off compute + cached)
                        **({"cached": accounting.total(state.stages, "cached_compute")}
                           if any("cached_compute" in st for st in state.stages) else {})},
            "versions": report.versions(),
            **getattr(self.task, "metric_info", {}),
            **({"curve": state.curve} if state.curve else {}),
            # how max_train_samples chose the training rows (their indices: subset.json)
            **({"train_rows": {k: v for k, v in self.task.subset.items() if k != "indices"}}
               if self.task.subset else {}),
        }
        if distributed.world_size() > 1:
            metrics["processes"] = distributed.world_size()
        with distributed.main_writes() as write:
            if write:
                self._write_outputs(state, metrics)
        return metrics

    def _write_outputs(self, state: State, metrics: dict) -> None:
        final_eval = metrics["eval"]
        if self.task.subset:
            report.write_json(self.run_dir / "subset.json", self.task.subset)
        scores = state.scores
        head_scores = scores.get("head") if isinstance(scores, dict) else scores
        heads = report.heads_record(state.space, state.mask, head_scores, method=self.cfg.method.name,
                                    heads_scope=self.cfg.heads_scope, units=state.space.summary(),
                                    **{k: metrics[k] for k in ("density", "params", "params_encoder", "heads_left")})
        report.write_json(self.run_dir / "heads.json", heads)
        title = f"{self.cfg.model.name} {self.cfg.task.name} {self.cfg.method.name}"
        units = self.plan.density is not None or not state.space.is_whole()
        pruned = not bool(state.mask.all())
        # the head map where it says something: scores per head, or (without them) which heads a
        # head budget removed; a density run's picture is units.png, a dense run has none
        if head_scores is not None or (pruned and not units):
            png = report.plot_heads(self.run_dir / "heads.png", state.space, state.mask, head_scores,
                                    title=f"{title}: {heads['heads_kept']}/{heads['heads_total']} heads",
                                    label=f"{self.cfg.method.name} score (higher: kept first)")
            self.logger.image("heads", png)
        if units:
            report.write_json(self.run_dir / "units.json", report.units_record(state.space, scores))
            png = report.plot_units(self.run_dir / "units.png", state.space,
                                    title=f"{title}: density {metrics['density']:.3f}")
            self.logger.file(self.run_dir / "units.json")
            self.logger.image("units", png)
        if (self.run_dir / "curve.png").is_file():
            self.logger.image("curve", self.run_dir / "curve.png")
        self.logger.summary({f"final/{k}": v for k, v in final_eval.items() if isinstance(v, (int, float))})
        self.logger.summary({"final/heads_kept": metrics["heads_kept"], "final/params": metrics["params"]})
        self.logger.file(self.run_dir / "heads.json")
        rundir.keep_settings(self.run_dir, self.cfg, self.ckpt_dir)  # what a later command on the folder is held to
        # last: a folder holding metrics.json holds a finished run, which no later command runs over
        report.write_json(self.run_dir / "metrics.json", metrics)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    OmegaConf.resolve(cfg)
    return Pipeline(cfg, run_dir).run()
