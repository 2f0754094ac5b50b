"""`train` and `finetune`: the model trained on the task with the trainer settings.

A fine-tune after any pruning stage is a recovery (`trainer.recovery_epochs`), and with
`trainer.recovery_lora.r` it trains low-rank adapters (LoRA, through peft) on the frozen pruned
weights, merged into them when the stage ends: LLM-Pruner's recovery (Ma et al. 2023, Sec. 3.3),
and the export is a plain model. The dense fine-tune a run starts with is the same for every
point of a K x method sweep, so it comes from the sweep cache when one is set (`cache=`), and with
`distill=peer` (APD, Li et al. 2023) it becomes the peers' teacher."""

from __future__ import annotations

from prune_cli import distributed
from prune_cli.stages import STAGES, given_epochs, is_recovery
from prune_cli.stages.state import Runner, State
from prune_cli.surgery import save_pruned


def train(runner: Runner, state: State, index: int) -> dict:
    return runner.fit(state, index, "train", epochs=runner.epochs(index))


def finetune(runner: Runner, state: State, index: int) -> dict:
    cfg = runner.cfg
    epochs = runner.epochs(index, given_epochs(cfg, runner.plan.stages, index))
    dense = not any(STAGES[s["stage"]].changes_model for s in state.stages)
    peer_teacher = dense and cfg.distill.name == "peer" and not state.teacher and not cfg.distill.get("teacher")
    if is_recovery(runner.plan.stages, index) and (cfg.trainer.get("recovery_lora") or {}).get("r"):
        return _with_adapters(runner, state, index, epochs)
    if not dense or (cfg.distill.name != "none" and not peer_teacher):
        return runner.fit(state, index, "finetune", epochs=epochs)

    def fit(model):
        return runner.fit(state, index, "finetune", epochs=epochs, distill=False)

    state.model, result = runner.cache.finetune(state.model, state.tokenizer, cfg.seed + index, epochs, fit)
    if peer_teacher:  # distill=peer: the peers learn from this dense fine-tuned model
        with distributed.main_writes() as write:
            if write:
                save_pruned(state.model, runner.run_dir / "teacher", state.tokenizer)
        state.teacher = str(runner.run_dir / "teacher")
    return result


def _with_adapters(runner: Runner, state: State, index: int, epochs) -> dict:
    """The recovery fine-tune through LoRA adapters; the stage hands on (and commits) the merged
    model, so a resumed run wraps the same pruned weights again and its step checkpoint (which
    holds the adapters) continues them."""
    from peft import LoraConfig, get_peft_model

    node = runner.cfg.trainer.recovery_lora
    targets = node.target_modules if isinstance(node.target_modules, str) else list(node.target_modules)
    state.model = get_peft_model(state.model, LoraConfig(
        r=int(node.r), lora_alpha=float(node.alpha), lora_dropout=float(node.dropout), target_modules=targets))
    adapters, _ = state.model.get_nb_trainable_parameters()
    try:
        result = runner.fit(state, index, "finetune", epochs=epochs)
    finally:
        state.model = state.model.merge_and_unload()
    return {**result, "lora_params": adapters}
