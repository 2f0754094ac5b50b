"""`meta_train`: SMP's pruner network trained on the meta tasks' text with the model frozen
(Zhang et al. 2021, thunlp/SMP) -> <run>/pruner.pt.

It has its own loop (methods/smp/meta_train.py), not the common one (prune_cli.train), because
nothing of the common loop's step applies: a step draws one of several meta tasks by size, runs
the FROZEN model twice (dense, then with a Gumbel sample of heads gated off), and updates only the
pruner network by SGD on a KL between the two passes' similarity distributions -- no labels, no
task loss, no gates to schedule, no evaluation split. What the common loop gives every stage it
shares: the step checkpoint (train.load_checkpoint; checkpoints.atomic_write, checksummed, the
previous one kept), the preemption signals (train.StopSignals) and the RNG state, so a killed
meta-training resumes on the very batch and noise it would have drawn next
(tests/test_smp.py::test_meta_training_resumes_exactly)."""

from __future__ import annotations

from prune_cli.stages.state import Runner, State


def run(runner: Runner, state: State, index: int) -> dict:
    from prune_cli.methods.smp.meta_train import load_tasks, meta_train

    cfg = runner.cfg
    tcfg = cfg.trainer
    result = meta_train(
        model=state.model, tokenizer=state.tokenizer, tasks=load_tasks(cfg, state.tokenizer), cfg=cfg,
        out=runner.run_dir / "pruner.pt", seed=cfg.seed + index, device=runner.accelerator.device,
        logger=runner.logger, checkpoint=runner.ckpt_dir / f"train-{index}.pt", save_every=int(tcfg.save_every),
        log_every=int(tcfg.log_every), progress_bar=bool(tcfg.progress_bar),
        model_name=str(cfg.model.get("path") or cfg.model.name))
    runner.logger.file(runner.run_dir / "pruner.pt")
    return result
