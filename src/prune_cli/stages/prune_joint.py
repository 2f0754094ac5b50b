"""`prune_joint` and `learn_gates`: the learners (DSP, STE, Voita, APD, GRAIN) learn their gates
while the model trains (`prune_joint`), or with the model frozen (`learn_gates`, the pipelined
regime); then the exact budget is taken and removed physically.

A learner of heads ends on `final_mask(K)` (APD may first choose K's allocation in `prepare`,
Li et al. 2023); a learner of units (GRAIN, Yang et al. 2023) on `final_space()` at the density
budget, after factorising the embeddings when `method.embed_rank` is set. Voita's `ending=gates`
folds the kept heads' fractional gates into the weights."""

from __future__ import annotations

from prune_cli import distributed, report
from prune_cli.gates import Gates
from prune_cli.methods import ScoreContext
from prune_cli.stages import given_epochs
from prune_cli.stages.state import Runner, State


def prune_joint(runner: Runner, state: State, index: int, freeze_model: bool = False) -> dict:
    if runner.plan.density is not None:  # a learner of units (GRAIN): a density budget
        return _units(runner, state, index)
    cfg, pruner = runner.cfg, runner.pruner
    eligible = state.space.scope_mask(cfg.heads_scope) & state.mask
    pruner.setup(keep=runner.plan.keep, eligible=eligible, schedule=cfg.schedule)
    name = "learn_gates" if freeze_model else "prune_joint"
    keep = runner.plan.keep
    with Gates(state.model, state.space) as gates:
        if pruner.prepares:  # APD: measures the model, chooses K's allocation (or K)
            ctx = ScoreContext(state.model, gates, runner.score_batches(state), state.mask, runner.accelerator,
                               space=state.space)
            chosen = pruner.prepare(ctx, validate=runner.holdout_metric(state) if runner.holdout is not None else None)
            keep = distributed.broadcast(keep if chosen is None else chosen)
            pruner.load_state_dict(distributed.broadcast(pruner.state_dict()))  # rank 0's choice
        epochs = runner.epochs(index, given_epochs(cfg, runner.plan.stages, index))
        result = runner.fit(state, index, name, epochs=epochs, pruner=pruner, gates=gates, freeze_model=freeze_model)
    mask = distributed.broadcast((pruner.final_mask(keep) | ~eligible) & state.mask)
    scales = pruner.final_scales()
    if scales is not None:  # Voita's ending=gates: the kept heads keep their fractional gates
        with Gates(state.model, state.space) as baked:
            baked.fold(distributed.broadcast(scales))
    state.scores = pruner.scores()
    target = state.space.with_masks({"head": mask})
    result.update({k: v for k, v in pruner.log_stats().items() if k == "k_reached"})
    result.update(pruner.report())
    history = pruner.history()
    if history is not None and runner.main:
        trajectory = runner.run_dir / "mask_trajectory.json"
        report.write_json(trajectory, {"space": state.space.describe(), **history})
        runner.logger.file(trajectory)
    applied = runner.apply(state, target)
    if runner.holdout is not None:  # lossless mode: the trained model on the carved holdout
        result.setdefault("lossless", {}).update(holdout_trained=runner.holdout_metric(state)(),
                                                 holdout_rows=len(runner.holdout))
    return {**result, **applied}


def learn_gates(runner: Runner, state: State, index: int) -> dict:
    return prune_joint(runner, state, index, freeze_model=True)


def _units(runner: Runner, state: State, index: int) -> dict:
    cfg, pruner = runner.cfg, runner.pruner
    rank = cfg.method.get("embed_rank")
    if rank and not getattr(state.model.config, "prune_cli_embed_rank", None):
        from prune_cli.methods.grain.factorize import factorize_embeddings

        factorize_embeddings(state.model, int(rank))  # before training, which recovers from it
    pruner.setup_units(state.space, runner.plan.units, runner.plan.density, cfg.heads_scope)
    with Gates(state.model, state.space) as gates:
        result = runner.fit(state, index, "prune_joint", epochs=runner.epochs(index), pruner=pruner, gates=gates)
    target = distributed.broadcast(pruner.final_space())
    state.scores = pruner.scores()
    result["steps_pruned"] = pruner.steps_pruned
    return {**result, **runner.apply(state, target)}
