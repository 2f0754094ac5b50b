"""Fail fast: every check on user input that can run before a model's weights are loaded.

Each problem is raised as `ConfigError(key, value, allowed)` and printed by the CLI as one line
(exit status 2). The result, `Plan`, carries what the checks derived (how many heads to keep, the
stages to run) so the pipeline never re-derives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

from omegaconf import DictConfig, OmegaConf

from prune_cli import schedules, tracking
from prune_cli.errors import ConfigError

STAGES = ("train", "finetune", "prune", "prune_joint", "learn_gates", "evaluate", "export", "bench")
PRUNING_STAGES = ("prune", "prune_joint", "learn_gates")
SCOPES = ("all", "encoder", "decoder", "cross")
PRECISIONS = ("no", "fp16", "bf16")
LOGGER_MODES = ("offline", "online", "disabled")
LR_SCHEDULERS = ("linear", "inverse_sqrt", "constant")
#: LongT5's local / transient-global attention mixes heads into per-block global tokens: no surgery yet
NO_SURGERY_MODELS = ("longt5",)


@dataclass
class Plan:
    heads_total: int  # heads in the whole model
    heads_in_scope: int  # heads that heads_scope lets the method prune
    keep: int | None  # heads to keep in scope (None = dense baseline)
    stages: list[str]
    task: object  # the validated prune_cli.tasks.Task


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def validate(cfg: DictConfig) -> Plan:
    from prune_cli.tasks import get_task

    heads, sparsity = cfg.get("heads"), cfg.get("sparsity")
    if heads is not None and sparsity is not None:
        raise ConfigError("heads", heads, f"give heads= OR sparsity=, not both (sparsity={sparsity})")
    if heads is not None and not _is_int(heads):
        raise ConfigError("heads", heads, "a whole number of heads to keep (e.g. heads=72)")
    if sparsity is not None and (not isinstance(sparsity, Real) or isinstance(sparsity, bool) or not 0 <= sparsity < 1):
        raise ConfigError("sparsity", sparsity, "a fraction of heads to remove in [0, 1), e.g. sparsity=0.5")
    scope = cfg.get("heads_scope", "all")
    if scope not in SCOPES:
        raise ConfigError("heads_scope", scope, f"one of {', '.join(SCOPES)}")
    if not _is_int(cfg.get("seed")):
        raise ConfigError("seed", cfg.get("seed"), "an integer")
    _check_choice("trainer.precision", str(cfg.trainer.precision), PRECISIONS)
    _check_choice("trainer.lr_scheduler", cfg.trainer.lr_scheduler, LR_SCHEDULERS)
    _check_choice("logger.mode", cfg.logger.mode, LOGGER_MODES)
    if cfg.logger.mode == "online" and not tracking.has_wandb_credentials():
        raise ConfigError("logger.mode", "online", "offline (then `wandb sync <run>/wandb/offline-run-*`), or W&B "
                          "credentials first: WANDB_API_KEY=... or `wandb login`")
    schedules.check(cfg.schedule)
    if cfg.trainer.precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.precision", "fp16", "no (fp32) or bf16 on a machine without a CUDA GPU")
    for key in ("batch_size", "eval_batch_size", "grad_accum"):
        v = cfg.trainer.get(key)
        if not _is_int(v) or v < 1:
            raise ConfigError(f"trainer.{key}", v, "a positive integer")
    for key in ("max_train_samples", "max_eval_samples"):
        v = cfg.task.get(key)
        if v is not None and (not _is_int(v) or v < 1):
            raise ConfigError(f"task.{key}", v, "a positive integer or null (all rows)")

    method = cfg.method
    stages = list(cfg.pipeline) if cfg.get("pipeline") is not None else _default_pipeline(method, cfg.model)
    for s in stages:
        _check_choice("pipeline", s, STAGES)
    pruning = [s for s in stages if s in PRUNING_STAGES]
    if len(pruning) > 1:
        raise ConfigError("pipeline", stages, f"at most one pruning stage ({', '.join(PRUNING_STAGES)})")
    wants_pruning = heads is not None or sparsity is not None
    if method.kind == "none" and wants_pruning:
        raise ConfigError("method", method.name, "a pruning method (e.g. method=michel) when heads= or sparsity= is given")
    if method.kind != "none" and not wants_pruning:
        raise ConfigError("heads", None, f"method={method.name} needs heads=K (heads kept) or sparsity=FRACTION")
    if pruning and pruning[0] != "prune" and method.kind != "learner":
        raise ConfigError("pipeline", stages, f"stage {pruning[0]} needs a learner method (dsp, ste, voita)")
    if "prune" in pruning and method.kind != "scorer":
        raise ConfigError("pipeline", stages, f"stage prune needs a scorer method (random, michel), not {method.name}")
    if wants_pruning and not pruning:
        raise ConfigError("pipeline", stages, "a pruning stage (prune, prune_joint or learn_gates) when heads/sparsity is set")

    task = get_task(cfg.task)
    space, model_type = _model_space(cfg, task)
    total, in_scope = space.total, int(space.scope_mask(scope).sum())
    from prune_cli.methods import get_pruner

    get_pruner(method, space, cfg.seed)  # the method checks its own keys (method.lr, tau_start...)
    if pruning and model_type in NO_SURGERY_MODELS:
        raise ConfigError("model", cfg.model.name, f"a model whose heads surgery can remove ({model_type}'s local "
                          "attention is not supported yet; gates and scoring work without a pruning stage)")
    keep = None
    if heads is not None:
        if not 0 <= heads <= in_scope:
            where = "" if scope == "all" else f" in heads_scope={scope}"
            raise ConfigError("heads", heads, f"0..{in_scope}: {cfg.model.name} has {in_scope} heads{where}")
        keep = int(heads)
    elif sparsity is not None:
        keep = round((1 - float(sparsity)) * in_scope)
    task.validate()
    return Plan(total, in_scope, keep, stages, task)


def _check_choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(key, value, f"one of {', '.join(allowed)}")


def _default_pipeline(method: DictConfig, model: DictConfig) -> list[str]:
    """The method's pipeline (per regime for learners). A model built from scratch (and not
    loaded from `model.path`) has nothing to fine-tune yet: its first stage trains it."""
    if method.get("pipelines") is not None:
        regime = method.get("regime", "joint")
        if regime not in method.pipelines:
            raise ConfigError("method.regime", regime, f"one of {', '.join(method.pipelines)}")
        stages = list(method.pipelines[regime])
    else:
        stages = list(OmegaConf.to_container(method.default_pipeline))
    if model.get("from_scratch") and not model.get("path"):
        stages = ["train", *stages[1:]] if stages and stages[0] == "finetune" else ["train", *stages]
    return stages


def _model_space(cfg: DictConfig, task):
    """HeadSpace and model type from the model's config alone (meta-device model: no weights)."""
    from prune_cli.heads import HeadSpace

    config = task.model_config(cfg.model)
    return HeadSpace.from_config(config), getattr(config, "model_type", "")
