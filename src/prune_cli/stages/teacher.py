"""`teacher`: fine-tune the dense teacher of `distill=` from the model the run starts with (the
student keeps starting from the unfine-tuned model, as GRAIN does: Yang et al. 2023, airaria/GRAIN);
saved in <run>/teacher, reused on resume and shared through the sweep cache."""

from __future__ import annotations

import copy

from prune_cli import distributed
from prune_cli.accounting import METER
from prune_cli.stages.state import Runner, State
from prune_cli.surgery import save_pruned
from prune_cli.train import train


def run(runner: Runner, state: State, index: int) -> dict:
    cfg = runner.cfg
    if cfg.distill.get("teacher"):
        state.teacher = str(cfg.distill.teacher)
        return {"path": state.teacher}
    METER.unwatch()  # a deep copy would take the hook along, counting into a copy of the meter
    teacher = copy.deepcopy(state.model)
    METER.watch(teacher)
    collate = runner.task.collate_fn(state.tokenizer)

    def fit(model):
        return train(model=model, dataset=runner.splits.train, collate_fn=collate, tcfg=cfg.trainer,
                     accelerator=runner.accelerator, seed=cfg.seed + index, logger=runner.logger,
                     checkpoint=runner.ckpt_dir / f"train-{index}.pt", desc="teacher")

    teacher, result = runner.cache.finetune(teacher, state.tokenizer, cfg.seed + index, None, fit)
    bs = int(cfg.task.get("eval_batch_size") or cfg.trainer.eval_batch_size)
    metrics = runner.task.evaluate(teacher, state.tokenizer, runner.splits, runner.accelerator, bs)
    runner.logger.log({f"teacher/{k}": v for k, v in metrics.items()})
    path = runner.run_dir / "teacher"
    with distributed.main_writes() as write:
        if write:
            save_pruned(teacher, path, state.tokenizer)
    state.teacher = str(path)
    del teacher
    return {**result, "path": "teacher", "metrics": metrics}
