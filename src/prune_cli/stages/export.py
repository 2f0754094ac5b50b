"""`export`: the physically pruned model in <run>/model, loadable with plain transformers
(standalone.py), with its model card, and, when asked, its ONNX graph and a push to the Hub
(shipping.py). A model with a non-finite weight is never written."""

from __future__ import annotations

from pathlib import Path

import torch

from prune_cli import distributed
from prune_cli.accounting import METER
from prune_cli.errors import Diverged
from prune_cli.stages.state import Runner, State
from prune_cli.surgery import save_pruned


def run(runner: Runner, state: State, index: int) -> dict:
    if not runner.cfg.get("export_model", True):
        return {}
    bad = [n for n, p in state.model.named_parameters() if not torch.isfinite(p).all()]
    if bad:  # never ship a diverged model (training stops earlier; this guards every other path)
        raise Diverged("export", None, f"non-finite weights in {len(bad)} tensors (first: {bad[0]}); nothing exported")
    result = {"path": "model"}
    with distributed.main_writes() as write:
        if write:
            save_pruned(state.model, runner.run_dir / "model", state.tokenizer)
            result.update(_ship(runner, state, runner.run_dir / "model"))
    return result


def _ship(runner: Runner, state: State, folder: Path) -> dict:
    """The saved model's card, its ONNX graph (export.onnx) and its push (export.push_to_hub).
    A failure is one line (shipping.ShippingError) and the stage is not committed: the same
    command resumes here, saves the model again and retries."""
    from prune_cli import __version__, shipping

    cfg, plan = runner.cfg, runner.plan
    options = cfg.get("export") or {}
    repo, out = options.get("push_to_hub"), {}
    if options.get("onnx"):
        METER.unwatch()  # its counting hook reads the batch size, which the export must leave symbolic
        out["onnx"] = shipping.write_onnx(state.model, state.tokenizer, folder / shipping.ONNX_FILE)
    card = shipping.model_card(folder, cfg, runner.outcome(state), command=shipping.command_of(runner.run_dir),
                               version=__version__, stages=plan.stages, units=plan.units,
                               onnx=out.get("onnx"), repo_id=repo, auto_class=runner.task.auto_class().__name__)
    (folder / "README.md").write_text(card, encoding="utf-8")
    if repo is not None:
        asked = shipping.budget(cfg, plan.units) or "dense"
        message = (f"prune-cli {__version__}: {cfg.model.name} {cfg.task.name} {cfg.method.name} "
                   f"{asked}, {int(state.mask.sum())}/{state.space.total} heads")
        out["hub"] = shipping.push(folder, str(repo), bool(options.get("hub_private", True)), message)
        runner.say(f"pushed {folder} to {out['hub']}")
    return out
