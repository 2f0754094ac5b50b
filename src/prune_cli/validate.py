"""Fail fast: every check on user input that can run before a model's weights are loaded.

Each problem is raised as `ConfigError(key, value, allowed)` and printed by the CLI as one line
(exit status 2). The result, `Plan`, carries what the checks derived (how many heads to keep, the
stages to run) so the pipeline never re-derives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

from omegaconf import DictConfig, OmegaConf

from prune_cli import schedules, schema, tracking
from prune_cli import stages as stages_table
from prune_cli.distributed import world_size
from prune_cli.errors import ConfigError, warn
from prune_cli.schema import is_int as _is_int
from prune_cli.schema import is_num as _is_num

STAGES, PRUNING_STAGES, TRAINING_STAGES = stages_table.NAMES, stages_table.PRUNING, stages_table.TRAINING
SCOPES = ("all", "encoder", "decoder", "cross")
PRECISIONS = ("no", "fp16", "bf16")
LOGGER_MODES = ("offline", "online", "disabled")
LR_SCHEDULERS = ("linear", "inverse_sqrt", "constant")


@dataclass
class Plan:
    heads_total: int  # heads in the whole model
    heads_in_scope: int  # heads that heads_scope lets the method prune
    keep: int | None  # heads to keep in scope (None = dense baseline, or a `density` budget)
    stages: list[str]
    task: object  # the validated prune_cli.tasks.Task
    density: float | None = None  # fraction of the attention + FFN weights (in heads_scope) to keep
    units: tuple[str, ...] = ("head",)  # the unit kinds the prune ranks
    epochs: dict[int, float] | None = None  # trainer.total_epochs: each training stage's epochs, by index


#: schedules that only make sense for one kind of method
SCORER_SCHEDULES = ("one_shot", "iterative", "geometric")


def validate(cfg: DictConfig) -> Plan:
    from prune_cli.tasks import get_task

    heads, sparsity = cfg.get("heads"), cfg.get("sparsity")
    if heads is not None and sparsity is not None:
        raise ConfigError("heads", heads, f"give heads= OR sparsity=, not both (sparsity={sparsity})")
    if heads is not None and not _is_int(heads):
        raise ConfigError("heads", heads, "a whole number of heads to keep (e.g. heads=72)")
    if sparsity is not None and (not isinstance(sparsity, Real) or isinstance(sparsity, bool) or not 0 <= sparsity < 1):
        raise ConfigError("sparsity", sparsity, "a fraction of heads to remove in [0, 1), e.g. sparsity=0.5")
    density = cfg.get("density")
    if density is not None:
        if heads is not None or sparsity is not None:
            given = f"heads={heads}" if heads is not None else f"sparsity={sparsity}"
            raise ConfigError("density", density, f"give density= OR heads=/sparsity=, not both ({given})")
        if not _is_num(density) or not 0 < density <= 1:
            raise ConfigError("density", density, "a fraction of the attention + FFN weights to keep in (0, 1], "
                              "e.g. density=0.1")
    from prune_cli.units import parse_units

    units_given = cfg.get("units")
    if OmegaConf.is_list(units_given):
        units_given = list(units_given)
    units = parse_units(units_given if units_given is not None else ("dims_ffn" if density is not None else "heads"))
    if units not in (("head",), ("kv",)) and density is None:
        raise ConfigError("units", units_given, "heads or kv when heads=/sparsity= is the budget (they count whole "
                          "heads): give density=FRACTION to prune FFN neurons or head dimensions")
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
    schema.check(cfg)

    method = cfg.method
    distill = _check_distill(cfg)
    default = _default_pipeline(method, cfg.model, distill)
    stages = list(cfg.pipeline) if cfg.get("pipeline") is not None else default
    for s in stages:
        _check_choice("pipeline", s, STAGES)
    regime = method.get("regime")
    if cfg.get("pipeline") is not None and method.get("pipelines") is not None and regime != "joint" and stages != default:
        raise ConfigError("pipeline", stages, f"method.regime={regime} already chooses the stages ({default}): "
                          "give method.regime or pipeline=, not both")
    if method.kind == "scorer" and cfg.schedule.name not in SCORER_SCHEDULES:
        raise ConfigError("schedule", cfg.schedule.name, f"a scorer ({method.name}) prunes in rounds: one of "
                          f"{', '.join(SCORER_SCHEDULES)} (linear and cubic anneal a learner's budget)")
    pruning = [s for s in stages if s in PRUNING_STAGES]
    if len(pruning) > 1:
        raise ConfigError("pipeline", stages, f"at most one pruning stage ({', '.join(PRUNING_STAGES)})")
    lossless = method.get("tolerance") is not None  # APD picks K itself
    by_lambda = method.get("ending") == "gates"  # Voita's own ending: lambda sets the sparsity
    if (lossless or by_lambda) and (heads is not None or sparsity is not None or density is not None):
        key, value = next((k, v) for k, v in (("heads", heads), ("sparsity", sparsity), ("density", density))
                          if v is not None)
        why = (f"method.tolerance={method.tolerance} (the lossless mode chooses K), or method.tolerance=null"
               if lossless else "method.ending=gates (the L0 penalty method.l0_penalty sets the sparsity), or "
               "method.ending=top_k")
        raise ConfigError(key, value, f"no budget with {why}")
    wants_pruning = heads is not None or sparsity is not None or density is not None or lossless or by_lambda
    if method.kind == "none" and wants_pruning:
        raise ConfigError("method", method.name, "a pruning method (e.g. method=michel) when heads=, sparsity= or "
                          "density= is given")
    single = [s for s in stages if stages_table.STAGES[s].single_process]
    if single and world_size() > 1:
        raise ConfigError("pipeline", stages, f"{single[0]} runs in one process: launch it without torchrun / "
                          f"accelerate launch / several SLURM tasks (this launch has {world_size()})")
    if "meta_train" in stages and method.name != "smp":
        raise ConfigError("pipeline", stages, f"a meta_train stage only with method=smp (it trains SMP's pruner), "
                          f"not method={method.name}")
    meta_only = "meta_train" in stages and not pruning
    if meta_only and wants_pruning:
        raise ConfigError("pipeline", stages, "a prune stage after meta_train when heads=/sparsity= is given "
                          "(e.g. pipeline=[meta_train,prune,finetune,evaluate,export])")
    if method.kind != "none" and not wants_pruning and not meta_only:
        raise ConfigError("heads", None, f"method={method.name} needs heads=K (heads kept), sparsity=FRACTION or "
                          "density=FRACTION (attention + FFN weights kept)")
    ranks = tuple(method.get("unit_kinds") or ("head",))
    if method.kind != "none" and not set(units) <= set(ranks):
        raise ConfigError("units", units_given if units_given is not None else "dims_ffn",
                          f"{'heads' if ranks == ('head',) else ', '.join(ranks)}: method={method.name} ranks "
                          f"{'whole heads only' if ranks == ('head',) else 'those kinds'} (random, magnitude and "
                          "taylor rank every kind)")
    if density is not None and method.kind == "learner" and ranks == ("head",):
        raise ConfigError("density", density, f"heads=K or sparsity= with method={method.name} (a learner keeps "
                          "exactly K heads); density= needs a scorer (random, magnitude, taylor) or method=grain")
    if density is None and method.kind == "learner" and ranks != ("head",) and wants_pruning:
        key, value = ("heads", heads) if heads is not None else ("sparsity", sparsity)
        raise ConfigError(key, value, f"density=FRACTION instead: method={method.name} prunes to a fraction of the "
                          "attention + FFN weights kept (e.g. density=0.1), not to a head count")
    if "teacher" in stages and distill == "none":
        raise ConfigError("pipeline", stages, "a teacher stage only with distill=logits, logits_hidden or peer")
    if distill != "none" and not cfg.distill.get("teacher") and "teacher" not in stages \
            and not (distill == "peer" and dense_finetune(stages)):
        raise ConfigError("distill.teacher", None, "a folder holding the fine-tuned dense teacher, or a teacher stage "
                          "first in pipeline= (it fine-tunes one)"
                          + (", or a finetune before pruning (it becomes the teacher)" if distill == "peer" else ""))
    if "prune_curve" in pruning and (method.kind != "scorer" or density is not None):
        raise ConfigError("pipeline", stages, "prune_curve with a scorer of whole heads (michel, random, taylor, "
                          f"magnitude, smp) and heads=/sparsity=, not method={method.name}"
                          + (" with density=" if density is not None else ""))
    if "prune_curve" in pruning and not (_is_num(cfg.get("curve_step")) and 0 < cfg.curve_step <= 0.5):
        raise ConfigError("curve_step", cfg.get("curve_step"), "a share of the heads in (0, 0.5] per curve point "
                          "(Michel et al.: 0.05)")
    if pruning and pruning[0] not in ("prune", "prune_curve") and method.kind != "learner":
        raise ConfigError("pipeline", stages, f"stage {pruning[0]} needs a learner method (dsp, ste, voita)")
    if "prune" in pruning and method.kind != "scorer":
        raise ConfigError("pipeline", stages, f"stage prune needs a scorer method (random, michel), not {method.name}")
    if wants_pruning and not pruning:
        raise ConfigError("pipeline", stages, "a pruning stage (prune, prune_joint or learn_gates) when heads/sparsity is set")
    _check_order(stages)
    _check_export(cfg, stages)
    _check_recovery_lora(cfg, stages)

    task = get_task(cfg.task, seed=cfg.get("seed") or 0)
    smoothing = cfg.trainer.get("label_smoothing") or 0
    if cfg.task.get("family") in ("lm", "zeroshot") and smoothing:
        raise ConfigError("trainer.label_smoothing", smoothing, f"0 for task={cfg.task.name}: a causal LM predicts the "
                          "NEXT token, and the smoothed loss compares logits and labels position by position")
    if cfg.task.get("subsample") == "stratified" and cfg.task.get("family") != "glue":
        raise ConfigError("task.subsample", "stratified", f"random or first: {cfg.task.name} has no labels to "
                          "stratify by (GLUE tasks do)")
    space, family, dense_total = _model_space(cfg, task)
    if units_given is None and density is not None and not family.dims:
        units = parse_units("heads_ffn")  # the finest units of a family whose heads keep their dimensions
    total, in_scope = space.total, int(space.scope_mask(scope).sum())
    if pruning and in_scope == 0:
        raise ConfigError("heads_scope", scope, f"a scope where {cfg.model.name} has heads ("
                          + ", ".join(sorted(space.kinds())) + "): this one has none, so nothing would be pruned")
    _check_against_model(cfg, task, stages, distill)
    from prune_cli.methods import get_pruner

    pruner = get_pruner(method, space, cfg.seed)  # the method checks its own keys (method.lr, tau_start...)
    if pruning and not family.surgery:  # LongT5: local attention mixes heads into per-block global tokens
        raise ConfigError("model", cfg.model.name, f"a model whose heads surgery can remove ({family.name}'s local "
                          "attention is not supported yet; gates and scoring work without a pruning stage)")
    if density is not None or units != ("head",):
        _check_units(cfg, task, units, density, scope, family)
    keep = None
    if heads is not None:
        if not 0 <= heads <= in_scope:
            where = "" if scope == "all" else f" in heads_scope={scope}"
            before = f" left of {dense_total} (it was pruned before)" if dense_total != total else ""
            raise ConfigError("heads", heads, f"0..{in_scope}: {cfg.model.name} has {in_scope} heads{where}{before}")
        keep = int(heads)
    elif sparsity is not None:
        keep = round((1 - float(sparsity)) * in_scope)
    group = max((b.group_size for b in space.blocks), default=1)
    if units == ("kv",) and keep is not None and keep % group:
        if heads is not None:  # whole key/value groups: the query heads kept come in groups
            lower, upper = keep - keep % group, keep - keep % group + group
            raise ConfigError("heads", heads, f"a multiple of {group} with units=kv ({cfg.model.name}'s key/value "
                              f"groups hold {group} query heads each), e.g. {lower} or {min(upper, in_scope)}")
        keep = round(keep / group) * group  # sparsity: the nearest whole number of groups
    if keep is not None and keep == in_scope:
        warn(f"{'heads' if heads is not None else 'sparsity'}={heads if heads is not None else sparsity} keeps "
             f"all {in_scope} heads of {cfg.model.name}: nothing is pruned (heads=K counts heads KEPT)")
    task.validate()
    pruner.task = task
    if "meta_train" in stages:  # SMP's pruner training reads its own keys and the meta tasks' data
        from prune_cli.methods.smp import meta_train

        meta_train.check(cfg)
    pruner.check_run(cfg, stages, keep, in_scope)
    return Plan(total, in_scope, keep, stages, task, density=None if density is None else float(density), units=units,
                epochs=split_epochs(cfg, stages))


def _check_against_model(cfg: DictConfig, task, stages: list[str], distill: str) -> None:
    """Keys whose allowed values depend on the model or the machine, checked from the model's
    config alone, before any weights load: each of them used to fail only when its stage came."""
    import torch

    from prune_cli.arch import family_of

    config = task.model_config(cfg.model)
    geometry = family_of(config).geometry(config)
    layers, width = geometry.layers or None, geometry.hidden
    node = cfg.get("distill")
    if distill != "none":
        chosen = node.get("hidden_layers")
        if distill == "logits_hidden" and chosen is not None and layers is not None and max(chosen) > layers:
            raise ConfigError("distill.hidden_layers", list(chosen), f"layer indices in 0..{layers} "
                              f"({cfg.model.name} has {layers} layers; 0 = the embeddings)")
        terms = {"logits": ("logit_weight", "hard_weight"), "logits_hidden": ("logit_weight", "hard_weight",
                 "hidden_weight"), "peer": ("logit_weight", "hard_weight", "peer_weight")}[distill]
        if all(float(node.get(t, 0) or 0) == 0 for t in terms):
            raise ConfigError(f"distill.{terms[0]}", node.get(terms[0]), "a weight > 0 for at least one of "
                              f"distill.{', distill.'.join(terms)} (all 0: the student would train on nothing)")
        if node.get("teacher") and str(node.teacher) != DENSE_TEACHER:
            _check_teacher(task, str(node.teacher))
    rank = cfg.method.get("embed_rank")
    if rank is not None and width is not None and rank >= width:
        raise ConfigError("method.embed_rank", rank, f"null or a rank below the embedding width {width} of "
                          f"{cfg.model.name} (the paper: 192 for BERT-base's 768)")
    attn = cfg.model.get("attn_implementation")
    if attn in ("flash_attention_2", "flash_attention_3") and not torch.cuda.is_available():
        raise ConfigError("model.attn_implementation", attn, "eager or sdpa on a machine without a CUDA GPU")
    device = str(cfg.get("bench", {}).get("device", "auto"))
    if "bench" in stages and device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("bench.device", device, "auto or cpu on a machine without a CUDA GPU")
    cache = cfg.get("cache", {}).get("dir")
    if cache:
        from pathlib import Path

        from hydra.utils import to_absolute_path

        if Path(to_absolute_path(str(cache))).exists() and not Path(to_absolute_path(str(cache))).is_dir():
            raise ConfigError("cache.dir", str(cache), "a folder (or null): this path is a file")


def _check_export(cfg: DictConfig, stages: list[str]) -> None:
    """export.push_to_hub / export.onnx act after the run has trained: what would stop them there
    (no export, no ONNX packages, no way to the Hub) is refused now, not hours later."""
    node = cfg.get("export") or {}
    repo, onnx = node.get("push_to_hub"), node.get("onnx")
    for key, value, wanted in (("export.push_to_hub", repo, repo is not None), ("export.onnx", onnx, bool(onnx))):
        unset = "null" if key == "export.push_to_hub" else "false"
        if wanted and not cfg.get("export_model", True):
            raise ConfigError(key, value, f"{unset} with export_model=false (no model is exported), or export_model=true")
        if wanted and "export" not in stages:
            raise ConfigError(key, value, f"{unset}, or a pipeline with an export stage (this one: {stages})")
    if onnx:
        import importlib

        from prune_cli.shipping import ONNX_EXTRA, ONNX_PACKAGES

        for name in ONNX_PACKAGES:
            try:
                importlib.import_module(name)
            except ImportError:
                raise ConfigError("export.onnx", onnx, f"false, or the ONNX packages first: {ONNX_EXTRA} ({name} "
                                  "is not installed)") from None
    if repo is not None:
        _check_hub_access(str(repo))


def _check_recovery_lora(cfg: DictConfig, stages: list[str]) -> None:
    """LoRA trains the recovery fine-tune only, and needs peft: both refused now, not after pruning."""
    r = (cfg.trainer.get("recovery_lora") or {}).get("r") or 0
    if not r:
        return
    if not any(stages_table.is_recovery(stages, i) for i in range(len(stages))):
        raise ConfigError("trainer.recovery_lora.r", r, f"0, or a finetune stage after the pruning stage (LoRA "
                          f"trains the recovery fine-tune only; this pipeline: {stages})")
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise ConfigError("trainer.recovery_lora.r", r, "0, or peft first: pip install 'prune-cli[lora]' (peft is "
                          "not installed)")


def _check_hub_access(repo: str) -> None:
    """A push needs the Hub online and a token: both known before anything loads."""
    from huggingface_hub import constants, get_token

    from prune_cli.hub import offline

    key = "export.push_to_hub"
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(key, repo, "null while HF_HUB_OFFLINE=1 is set (offline: nothing can be pushed), or "
                          "HF_HUB_OFFLINE=0 to push")
    try:
        token = get_token()
    except Exception:  # noqa: BLE001 - an OIDC exchange that fails: the push says why, the model saved
        token = "?"
    if not token:
        raise ConfigError(key, repo, "null, or a Hub token with write access first: HF_TOKEN=... or `hf auth login`")
    if offline():
        raise ConfigError(key, repo, f"null: {constants.ENDPOINT} cannot be reached from here, and a push needs it")


def _check_teacher(task, teacher: str) -> None:
    """`distill.teacher` is fine-tuned for THIS task: a teacher with another head (or none) would get
    a freshly initialised classifier, and the student would distil from random logits."""
    from hydra.utils import to_absolute_path
    from transformers import AutoConfig

    from prune_cli.models import label_change, trained_head

    try:
        saved = AutoConfig.from_pretrained(to_absolute_path(teacher))
    except Exception as err:  # noqa: BLE001 - unreadable config.json, unknown model type
        raise ConfigError("distill.teacher", teacher, f"a loadable model folder ({str(err).splitlines()[0]})") from None
    wanted = task.auto_class().__name__.replace("AutoModel", "")
    head = trained_head(saved)
    if head is None or not head.endswith(wanted):
        raise ConfigError("distill.teacher", teacher, f"a teacher fine-tuned for {task.name} (a {wanted} head); its "
                          f"config.json says architectures={getattr(saved, 'architectures', None)}: fine-tune it first "
                          "(<run>/model of a method=none run), or drop distill.teacher for a teacher stage")
    change = label_change(saved, task.auto_class(), task.model_kwargs())
    if change:
        raise ConfigError("distill.teacher", teacher, f"a teacher fine-tuned for {task.name}'s labels: {change}")




def split_epochs(cfg: DictConfig, stages: list[str]) -> dict[int, float] | None:
    """`trainer.total_epochs=E`: the run's training stages together train E epochs, so methods of
    different pipelines compare at one budget. A stage whose length is given (`method.gate_epochs`
    for learn_gates, `trainer.recovery_epochs` for a fine-tune after pruning) keeps it; the other
    stages share the rest evenly. None when E is not set."""
    total = cfg.trainer.get("total_epochs")
    if total is None:
        return None
    fixed, free = {}, []
    for i, stage in enumerate(stages):
        if stage in TRAINING_STAGES:
            given = stages_table.given_epochs(cfg, stages, i)
            (free.append(i) if given is None else fixed.update({i: float(given)}))
    given = sum(fixed.values())
    left = float(total) - given
    if (free and left <= 0) or (not free and abs(left) > 1e-9):
        need = f"more than {given:g}" if free else f"{given:g}"
        raise ConfigError("trainer.total_epochs", total, f"{need}: method.gate_epochs / trainer.recovery_epochs "
                          f"already give {given:g} epochs of pipeline {stages}, or null")
    return {**fixed, **{i: left / len(free) for i in free}}


def _check_units(cfg: DictConfig, task, units: tuple[str, ...], density, scope: str, family) -> None:
    """Can this model lose these unit kinds, and can they reach the density asked for?"""
    from prune_cli.units import DIM_MODEL_TYPES, UnitSpace

    name = cfg.model.name
    if {"qk", "vo"} & set(units) and not family.dims:
        why = f" ({family.no_dims})" if family.no_dims else ""
        raise ConfigError("units", list(units), f"heads, kv or ffn kinds (e.g. units=heads_ffn) for {name} "
                          f"({family.name}): its heads cannot lose single dimensions{why}; head dimensions are "
                          f"pruned on {', '.join(DIM_MODEL_TYPES)}")
    attn = cfg.model.get("attn_implementation") or "sdpa"
    if {"qk", "vo"} & set(units) and attn not in ("eager", "sdpa"):
        raise ConfigError("model.attn_implementation", attn, "eager or sdpa when head dimensions are pruned (heads of "
                          "unequal query/key and value sizes run through those kernels)")
    space = UnitSpace.from_config(task.model_config(cfg.model))
    if "ffn" in units and not space.ffns:
        raise ConfigError("units", list(units), f"kinds without ffn: no feed-forward block of {name} is known")
    if density is None:
        return
    kept, dense = space.weights(scope)
    ffn_kept = int(space.unit_sizes("ffn")[space.scope("ffn", scope) & space.kept("ffn")].sum())
    fixed = (0 if "ffn" in units else ffn_kept) + (0 if {"head", "kv", "qk", "vo"} & set(units) else kept - ffn_kept)
    if density * dense < fixed:
        raise ConfigError("density", density, f">= {fixed / dense:.3f} with units={'+'.join(units)} on {name} (the "
                          "weights of the kinds not pruned stay): add kinds, e.g. units=dims_ffn")
    if density * dense > kept:
        raise ConfigError("density", density, f"<= {kept / dense:.4f}: the model (model.path) was pruned to that "
                          "density before")


def _check_order(stages: list[str]) -> None:
    """Outputs must describe the final model: nothing is exported, timed or evaluated (as the
    run's result) before the last stage that changes the model."""
    changing = [i for i, s in enumerate(stages) if stages_table.STAGES[s].changes_model]
    last = changing[-1] if changing else -1
    for i, s in enumerate(stages):
        if s in ("export", "bench") and i < last:
            raise ConfigError("pipeline", stages, f"{s} after the last stage that changes the model ({stages[last]})")
    evals = [i for i, s in enumerate(stages) if s == "evaluate"]
    if evals and evals[-1] < last:
        raise ConfigError("pipeline", stages, f"an evaluate after {stages[last]}, or metrics.json would describe "
                          "another model than the one exported")


def _check_choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(key, value, f"one of {', '.join(allowed)}")


#: `distill.teacher=dense`: the model the run starts from, frozen, is the teacher (no teacher stage):
#: how LLM pruning distils a pruned model from its own dense pretrained model (e.g. Sheared-LLaMA,
#: Xia et al. 2024; Minitron, Muralidharan et al. 2024)
DENSE_TEACHER = "dense"


def _check_distill(cfg: DictConfig) -> str:
    """The distill group's mode, after checking its keys (before anything loads)."""
    from prune_cli.distill import MODES

    node = cfg.get("distill")
    mode = "none" if node is None else str(node.get("name"))
    _check_choice("distill", mode, MODES)
    if mode == "none":
        return mode
    if cfg.task.get("family") == "translation":
        raise ConfigError("distill", mode, "none for translation (distillation covers classification, NER and QA)")
    teacher = node.get("teacher")
    if teacher and str(teacher) != DENSE_TEACHER:
        from pathlib import Path

        from hydra.utils import to_absolute_path

        if not (Path(to_absolute_path(str(teacher))) / "config.json").is_file():
            raise ConfigError("distill.teacher", str(teacher), "a folder holding config.json (the fine-tuned dense "
                              f"teacher, e.g. <run>/model of a method=none run), {DENSE_TEACHER} (the model the run "
                              "starts from, e.g. a pretrained LLM), or null for a teacher stage")
    return mode


def _default_pipeline(method: DictConfig, model: DictConfig, distill: str = "none") -> list[str]:
    """The method's pipeline (per regime for learners). A model built from scratch (and not
    loaded from `model.path`) has nothing to fine-tune yet: its first stage trains it. With
    distillation a `teacher` stage comes first (unless `distill.teacher` names one); without,
    a method's own teacher stage is dropped."""
    if method.get("pipelines") is not None:
        regime = method.get("regime", "joint")
        if regime not in method.pipelines:
            raise ConfigError("method.regime", regime, f"one of {', '.join(method.pipelines)}")
        stages = list(method.pipelines[regime])
    else:
        stages = list(OmegaConf.to_container(method.default_pipeline))
    if model.get("from_scratch") and not model.get("path"):
        stages = ["train", *stages[1:]] if stages and stages[0] == "finetune" else ["train", *stages]
    if distill == "none":
        stages = [s for s in stages if s != "teacher"]
    elif distill == "peer" and dense_finetune(stages):
        stages = [s for s in stages if s != "teacher"]  # the dense fine-tune is the peers' teacher
    elif "teacher" not in stages:
        stages = ["teacher", *stages]
    return stages


def dense_finetune(stages: list[str]) -> bool:
    """A `finetune` comes before any stage that prunes or trains: the dense fine-tuned model, which
    `distill=peer` takes as its teacher when none is given."""
    for s in stages:
        if s == "finetune":
            return True
        if stages_table.STAGES[s].changes_model:
            return False
    return False


def _model_space(cfg: DictConfig, task):
    """HeadSpace (as the model is now), architecture family and the head count before any pruning,
    from the model's config alone (meta-device model: no weights); an undeclared family is refused
    here, before anything is built."""
    from prune_cli.arch import family_of
    from prune_cli.heads import RECORD_KEY, HeadSpace

    config = task.model_config(cfg.model)
    family = family_of(config)
    space = HeadSpace.from_config(config)
    dense = HeadSpace.from_config(config, dense=True).total if getattr(config, RECORD_KEY, None) else space.total
    return space, family, dense
