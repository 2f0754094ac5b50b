"""One rule for every config key of every group: its type, whether null is allowed, its range or
choices, and the words a refusal prints.

Checked on the composed config before anything loads (`check`), for every point of a sweep, so
that a value a stage would only trip over after others have trained is one line up front. Types
are strict, as a config bound to typed signatures would be (torchtune's recipe configs): a
boolean is `true` or `false` (Hydra reads `no` or `maybe` as strings, and a string is truthy), an
integer key refuses 3.5, a number refuses `inf` and `nan`, a list says what its elements are.
Cross-key rules and what needs the model's geometry stay in `prune_cli.validate`; what only a
method or a task knows (files, budgets) in their own `check_run` / `validate`.
`tests/test_schema.py` walks every key of every packaged group file and fails on a key without a
rule here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from prune_cli.errors import ConfigError

#: a Hub repo id, `owner/name` (prune_cli.shipping pushes to it)
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


@dataclass(frozen=True)
class Rule:
    """`kind`: bool | int | num | str | list[int] | list[num] | list[str] | str_or_list | dict | any.
    `check`: a test of the typed value (range, choices); `allowed`: what the refusal says."""

    kind: str
    allowed: str
    check: Callable[[Any], bool] | None = None
    null: bool = False


def is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def is_num(v) -> bool:
    """A finite real number: inf and nan pass every range check and then train to NaN."""
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _typed(kind: str, v) -> bool:
    if kind == "any":
        return True
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "int":
        return is_int(v)
    if kind == "num":
        return is_num(v)
    if kind == "str":
        return isinstance(v, str)
    if kind == "dict":
        return isinstance(v, dict)
    if kind == "str_or_list":
        return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
    if kind.startswith("list["):
        inner = kind[5:-1]
        return isinstance(v, list) and all(_typed(inner, x) for x in v)
    raise ValueError(f"unknown rule kind {kind}")


def _r(kind, allowed, check=None, null=False) -> Rule:
    return Rule(kind, allowed, check, null)


def _pos_int(what: str, null: bool = False) -> Rule:
    return _r("int", f"a whole number of {what} >= 1" + (", or null" if null else ""), lambda v: v >= 1, null)


def _choice(*options: str, note: str = "", null: bool = False) -> Rule:
    return _r("str", f"one of {', '.join(options)}{note}", lambda v: v in options, null)


def _fraction(what: str, low_open=False, high_open=False, null=False) -> Rule:
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    return _r("num", f"{what} in {lo}0, 1{hi}" + (", or null" if null else ""),
              lambda v: (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1), null)


def _nonneg(what: str = "a number >= 0", null=False) -> Rule:
    return _r("num", what, lambda v: v >= 0, null)


def _positive(what: str = "a number > 0", null=False) -> Rule:
    return _r("num", what, lambda v: v > 0, null)


_STR = _r("str", "a string")
_STR_NULL = _r("str", "a string, or null", null=True)
_BOOL = _r("bool", "true or false")
_DICT = _r("dict", "a mapping (see the group's YAML)")
_DICT_NULL = _r("dict", "a mapping (see the group's YAML), or null", null=True)
_PIPELINE = _r("list[str]", "a list of stage names, e.g. [finetune,prune,finetune,evaluate]")
_UNITS = ("head", "kv", "qk", "vo", "ffn")

#: top-level keys, then `group.key`; method keys are `method.key`, or `method.<name>.key` where one
#: method means something else by the same name
SCHEMA: dict[str, Rule] = {
    # ---- top level
    "heads": _r("int", "a whole number of heads to keep (e.g. heads=72)", null=True),
    "sparsity": _r("num", "a fraction of heads to remove in [0, 1), e.g. sparsity=0.5", lambda v: 0 <= v < 1, True),
    "density": _r("num", "a fraction of the attention + FFN weights to keep in (0, 1], e.g. density=0.1",
                  lambda v: 0 < v <= 1, True),
    "units": _r("str_or_list", "heads, heads_ffn, dims, dims_ffn, ffn, or a list of head, qk, vo, ffn", null=True),
    "heads_scope": _choice("all", "encoder", "decoder", "cross"),
    "seed": _r("int", "an integer"),
    "data_root": _STR_NULL,
    "pipeline": _r("list[str]", "a non-empty list of stage names, e.g. [finetune,prune,finetune,evaluate]",
                   lambda v: len(v) > 0, True),
    "curve_step": _r("num", "a fraction of the heads per curve point in (0, 1]", lambda v: 0 < v <= 1),
    "verbose": _BOOL,
    "export_model": _BOOL,
    "export": _DICT,
    "export.push_to_hub": _r("str", "a Hub model repo <owner>/<name> (e.g. me/minilm-sst2-pruned), or null",
                             lambda v: REPO_ID.fullmatch(v) is not None, True),
    "export.hub_private": _BOOL,
    "export.onnx": _BOOL,
    "cache": _DICT,
    "cache.dir": _STR_NULL,
    "bench": _DICT,
    "bench.batches": _r("list[int]", "a list of batch sizes >= 1", lambda v: len(v) > 0 and min(v) >= 1),
    "bench.seq_lens": _r("list[int]", "a list of lengths >= 1", lambda v: len(v) > 0 and min(v) >= 1),
    "bench.repeats": _pos_int("repeats"),
    "bench.warmup": _r("int", "a whole number >= 0", lambda v: v >= 0),
    "bench.threads": _r("int", "a number of threads >= 1, or null (torch's default)", lambda v: v >= 1, True),
    "bench.device": _r("str", "auto, cpu, cuda or cuda:N", lambda v: v in ("auto", "cpu") or v.startswith("cuda")),
    "bench.dtypes": _r("list[str]", "a list of float32, float16, bfloat16, or null",
                       lambda v: set(v) <= {"float32", "float16", "bfloat16"}, True),
    # ---- trainer
    "trainer.epochs": _positive("a number of epochs > 0 (fractions allowed)"),
    "trainer.max_steps": _pos_int("optimizer steps", null=True),
    "trainer.batch_size": _pos_int("examples"),
    "trainer.eval_batch_size": _pos_int("examples"),
    "trainer.grad_accum": _pos_int("micro-batches"),
    "trainer.lr": _positive("a learning rate > 0"),
    "trainer.weight_decay": _nonneg(),
    "trainer.adam_betas": _r("list[num]", "two numbers in [0, 1), e.g. [0.9,0.999]",
                             lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)),
    "trainer.adam_eps": _positive(),
    "trainer.warmup_ratio": _fraction("a fraction of the steps"),
    "trainer.warmup_steps": _r("int", "a whole number of steps >= 0, or null", lambda v: v >= 0, True),
    "trainer.lr_scheduler": _choice("linear", "inverse_sqrt", "constant"),
    "trainer.label_smoothing": _fraction("a number", high_open=True),
    "trainer.max_grad_norm": _nonneg("a number >= 0 (0 = no clipping)"),
    "trainer.max_nonfinite_steps": _r("int", "a whole number of skipped steps in a row >= 0 before the run stops "
                                      "as diverged", lambda v: v >= 0),
    "trainer.precision": _choice("no", "fp16", "bf16"),
    "trainer.eval_every": _r("int", "a whole number of steps >= 0 (0 = stage ends)", lambda v: v >= 0),
    "trainer.save_every": _r("int", "a whole number of steps >= 0 (0 = stage ends)", lambda v: v >= 0),
    "trainer.log_every": _pos_int("steps"),
    "trainer.num_workers": _r("int", "a whole number of worker processes >= 0", lambda v: v >= 0),
    "trainer.recovery_epochs": _positive("a number of epochs > 0, or null", null=True),
    "trainer.recovery_lora": _DICT,
    "trainer.recovery_lora.r": _r("int", "a LoRA rank >= 1, or 0 (the recovery fine-tune trains every weight)",
                                  lambda v: v >= 0),
    "trainer.recovery_lora.alpha": _positive("a LoRA scale numerator > 0 (LLM-Pruner: 16)"),
    "trainer.recovery_lora.dropout": _fraction("a dropout probability", high_open=True),
    "trainer.recovery_lora.target_modules": _r("str_or_list", "all-linear, or a list of module names "
                                               "(e.g. [q_proj,k_proj,v_proj,o_proj])"),
    "trainer.total_epochs": _positive("a number of epochs > 0 for all training stages together, or null", null=True),
    "trainer.progress_bar": _BOOL,
    # ---- logger
    "logger.mode": _choice("offline", "online", "disabled"),
    "logger.project": _STR,
    "logger.entity": _STR_NULL,
    "logger.group": _STR_NULL,
    "logger.tags": _r("list[str]", "a list of strings"),
    # ---- schedule
    "schedule.name": _choice("one_shot", "iterative", "geometric", "linear", "cubic"),
    "schedule.fraction": _fraction("a fraction of the heads per round", low_open=True, high_open=True),
    "schedule.warmup": _fraction("a fraction of the stage"),
    "schedule.anneal": _fraction("a fraction of the stage", low_open=True),
    # ---- model
    "model.name": _STR,
    "model.path": _STR_NULL,
    "model.hub": _STR_NULL,
    "model.package": _STR_NULL,
    "model.package_subdir": _STR_NULL,
    "model.gguf_file": _r("str", "a .gguf file name inside model.package (e.g. SmolLM2-135M-Instruct.Q4_1.gguf), "
                          "or null", lambda v: v.endswith(".gguf"), True),
    "model.attn_implementation": _choice("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention",
                                         null=True),
    "model.architecture": _STR,
    "model.from_scratch": _BOOL,
    "model.config": _DICT,
    "model.tokenizer": _DICT,
    "model.source_prefix": _STR_NULL,
    # ---- task
    "task.name": _STR,
    "task.family": _choice("glue", "squad", "conll", "translation", "lm", "zeroshot"),
    "task.data_dir": _STR_NULL,
    "task.hub": _STR_NULL,
    "task.hub_config": _STR_NULL,
    "task.hub_revision": _STR_NULL,
    "task.hub_splits": _DICT,
    "task.hub_text_columns": _r("list[str]", "a list of column names"),
    "task.hub_tag_column": _STR,
    "task.labels": _r("list[str]", "a list of label names, or null (regression)", null=True),
    "task.metrics": _r("list[str]", "a list of metric names"),
    "task.primary_metric": _STR,
    "task.eval_splits": _DICT,
    "task.eval_split": _STR,
    "task.local": _DICT,
    "task.local_files": _DICT,
    "task.local_splits": _DICT,
    "task.train_file": _STR_NULL,
    "task.eval_file": _STR_NULL,
    "task.version_2": _BOOL,
    "task.max_length": _r("int", "a whole number of tokens >= 8", lambda v: v >= 8),
    "task.max_train_samples": _pos_int("rows", null=True),
    "task.max_eval_samples": _pos_int("rows", null=True),
    "task.subsample": _choice("random", "stratified", "first", note=" (stratified: GLUE, each label's share)"),
    "task.subsample_seed": _r("int", "an integer, or null (the run's seed)", null=True),
    "task.eval_batch_size": _pos_int("examples", null=True),
    "task.doc_stride": _pos_int("tokens"),
    "task.n_best": _pos_int("candidates"),
    "task.max_answer_length": _pos_int("tokens"),
    "task.null_score_diff_threshold": _r("num", "a number"),
    "task.split_dev_for_train": _fraction("a fraction of the dev articles", low_open=True, high_open=True, null=True),
    "task.split_seed": _r("int", "an integer"),
    "task.source_lang": _STR,
    "task.target_lang": _STR,
    "task.source_prefix": _STR_NULL,
    "task.remove_bpe": _STR_NULL,
    "task.bleu_tokenize": _STR,
    "task.num_beams": _pos_int("beams"),
    "task.length_penalty": _r("num", "a number"),
    "task.max_new_tokens": _pos_int("tokens"),
    "task.max_source_length": _pos_int("tokens"),
    "task.max_target_length": _pos_int("tokens"),
    "task.hub_split": _r("str", "a split name of task.hub, or null (lm-evaluation-harness's)", null=True),
    "task.calibration_dir": _r("str", "a folder holding wiki.train.raw or wiki.valid.raw, or null (the Hub)", null=True),
    # ---- distill
    "distill.name": _choice("none", "logits", "logits_hidden", "peer"),
    "distill.teacher": _STR_NULL,
    "distill.temperature": _positive("a temperature > 0 (GRAIN: 8)"),
    "distill.logit_weight": _nonneg("a weight >= 0"),
    "distill.hard_weight": _nonneg("a weight >= 0 (GRAIN: 0)"),
    "distill.hidden_weight": _nonneg("a weight >= 0"),
    "distill.peer_weight": _nonneg("a weight >= 0"),
    "distill.hidden_layers": _r("list[int]", "a list of layer indices (0 = the embeddings), or null (0, 2, ..., L)",
                                lambda v: len(v) > 0 and min(v) >= 0, True),
    "distill.hidden_reduce": _choice("sum", "mean", note=" (sum: official GRAIN)"),
    "distill.maps_weight_decay": _nonneg("a number >= 0 (official: 0)"),
    "distill.maps_lr_schedule": _choice("constant", "model", note=" (constant: official GRAIN)"),
    "distill.maps_clip": _BOOL,
    # ---- method: every method
    "method.name": _STR,
    "method.kind": _choice("none", "scorer", "learner"),
    "method.unit_kinds": _r("list[str]", f"a list of {', '.join(_UNITS)}", lambda v: set(v) <= set(_UNITS)),
    "method.default_pipeline": _PIPELINE,
    "method.pipelines": _DICT,
    "method.regime": _choice("joint", "pipelined"),
    "method.score_batches": _pos_int("batches", null=True),
    "method.gate_epochs": _positive("a number of epochs > 0, or null", null=True),
    # learners (dsp, ste, voita)
    "method.lr": _positive("a learning rate > 0, or null (= trainer.lr)", null=True),
    "method.init": _choice("uniform", "zeros", "normal"),
    "method.init_scale": _nonneg(),
    "method.tau_start": _positive("a temperature > 0"),
    "method.tau_end": _positive("a temperature > 0"),
    "method.tau_schedule": _choice("exponential", "linear", "constant"),
    "method.cooldown_steps": _r("int", "a whole number of steps >= 0, or null", lambda v: v >= 0, True),
    "method.cooldown_fraction": _fraction("a fraction of the stage"),
    "method.lr_schedule": _choice("constant", "model"),
    "method.clip_logits": _BOOL,
    "method.gate_dropout": _BOOL,
    "method.backward": _choice("identity", "softmax"),
    "method.ties": _choice("exact", "official"),
    "method.noise": _BOOL,
    "method.temperature": _positive("a temperature > 0 (Voita: 1/3)"),
    "method.gamma": _r("num", "a negative number (the gate's lower stretch limit)", lambda v: v < 0),
    "method.zeta": _r("num", "a number above 1 (the gate's upper stretch limit)", lambda v: v > 1),
    "method.controller": _choice("projection", "fixed"),
    "method.l0_penalty": _nonneg(),
    "method.penalty": _choice("sum", "layer_mean"),
    "method.ending": _choice("top_k", "gates"),
    # michel
    "method.normalize_layers": _BOOL,
    "method.per_token": _BOOL,
    # grain
    "method.beta": _r("num", "an EMA factor in [0, 1), e.g. 0.998", lambda v: 0 <= v < 1),
    "method.importance": _choice("taylor", "random", "random_fixed"),
    "method.alpha": _nonneg("a number >= 0 (0 = no structure regularisation)"),
    "method.grad_sep": _BOOL,
    "method.p_start": _fraction("a fraction of training"),
    "method.p_end": _fraction("a fraction of training"),
    "method.schedule_rounding": _choice("exact", "official"),
    "method.embed_rank": _pos_int("dimensions (the paper: 192)", null=True),
    # apd
    "method.tolerance": _r("num", "a relative metric drop in [0, 1) (e.g. 0.01), or null", lambda v: 0 <= v < 1, True),
    "method.holdout": _r("num", "a fraction of the training rows in (0, 1) or a whole row count",
                         lambda v: 0 < v < 1 or (v >= 1 and float(v).is_integer())),
    # mask
    "method.heads": _STR_NULL,
    "method.invert": _BOOL,
    # smp
    "method.pruner": _STR_NULL,
    "method.budget": _choice("per_layer", "global"),
    "method.channel": _choice("auto", "pair", "single"),
    "method.map_size": _r("int", "a power of two >= 8 (the reference: 128)", lambda v: v >= 8 and not v & (v - 1)),
    "method.width": _pos_int("channels"),
    "method.meta_tasks": _r("list[str]", "a list of GLUE task names, e.g. [cola,sst2,mrpc,stsb]", lambda v: len(v) > 0),
    "method.meta_steps": _pos_int("pruner updates (reference: 8000)"),
    "method.meta_batch_size": _r("int", "a batch size >= 2 (reference: 60)", lambda v: v >= 2),
    "method.meta_grad_accum": _pos_int("micro-batches"),
    "method.meta_lr": _positive("a learning rate > 0 (reference: 2e-2, SGD)"),
    "method.meta_max_grad_norm": _nonneg("a number >= 0 (0 = no clipping)"),
    "method.meta_max_length": _r("int", "a whole number of tokens >= 8 (reference: 128)", lambda v: v >= 8),
    "method.meta_max_train_samples": _r("int", "null (all rows) or >= 2", lambda v: v >= 2, True),
    "method.task_power": _nonneg("an exponent >= 0 (task drawn ~ size^0.2)"),
    "method.keep_fraction": _fraction("a fraction of each layer's heads", low_open=True, high_open=True),
    "method.rep_dropout": _fraction("a feature-dropout rate", high_open=True),
    "method.single_weight": _nonneg(),
}

#: groups whose every key has a rule (`hydra` is Hydra's own)
GROUPS = ("trainer", "logger", "schedule", "model", "task", "distill", "method", "bench", "cache", "export")


def rule_for(key: str, method: str | None = None) -> Rule | None:
    group, _, name = key.partition(".")
    if group == "method" and method:
        return SCHEMA.get(f"method.{method}.{name}") or SCHEMA.get(key)
    return SCHEMA.get(key)


def keys_of(cfg: DictConfig) -> list[str]:
    """Every key the composed config holds, dotted, down to a group's own keys (a mapping value
    such as task.local is one key)."""
    out = []
    for top in cfg:
        if top == "hydra":
            continue
        node = cfg.get(top)
        if top not in GROUPS or top in SCHEMA:  # a group chosen in the defaults list is not a key itself
            out.append(str(top))
        if top in GROUPS and isinstance(node, DictConfig):
            out.extend(f"{top}.{k}" for k in node)
    # a mapping whose own keys have rules (trainer.recovery_lora.r, export.onnx) is checked key by key too
    nested = [f"{key}.{k}" for key in out if any(rule.startswith(f"{key}.") for rule in SCHEMA)
              and isinstance(sub := OmegaConf.select(cfg, key, throw_on_missing=False), DictConfig) for k in sub]
    return out + nested


def value_of(cfg: DictConfig, key: str):
    node = OmegaConf.select(cfg, key, throw_on_missing=False)
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def check(cfg: DictConfig) -> None:
    """Every key of the composed config against its rule: one ConfigError naming the first bad one.
    Keys without a rule (a user's own config dir may add some) are left to the code that reads them."""
    method = cfg.get("method", {}).get("name") if isinstance(cfg.get("method"), DictConfig) else None
    for key in keys_of(cfg):
        rule = rule_for(key, method)
        if rule is None:
            continue
        value = value_of(cfg, key)
        if value is None:
            if not rule.null:
                raise ConfigError(key, value, rule.allowed)
            continue
        if not _typed(rule.kind, value) or (rule.check is not None and not _safe(rule.check, value)):
            raise ConfigError(key, value, rule.allowed)


def _safe(test, value) -> bool:
    try:
        return bool(test(value))
    except (TypeError, ValueError):
        return False
