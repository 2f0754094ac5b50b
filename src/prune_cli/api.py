"""prune-cli from Python: prune a model you hold (a notebook, your own training script) with the
methods `prune-run` uses, and prune inside your own `transformers.Trainer`.

    import prune_cli
    model = prune_cli.prune(model, tokenizer, method="taylor", heads=36, data=texts)
    prune_cli.save_pruned(model, "pruned", tokenizer)      # loads anywhere: see README

`prune` runs the `prune` stage's own code (`prune_cli.oneshot`) on the model in place: the same
scores, the same global top-K or weight budget, the same surgery, so it keeps exactly what the
same scorer keeps in a `prune-run ... pipeline=[prune]` on the same batches. Methods that learn
their gates while training (dsp, ste, voita, grain, apd) need the training loop: use `prune-run`.
`PruneCallback` scores at a step of a user's `Trainer.train()`, holds the pruned units at 0 with
gates for the rest of training (so the kept weights learn without them, as prune -> fine-tune
does) and removes them physically when training ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources

import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import TrainerCallback

from prune_cli import oneshot
from prune_cli.errors import ConfigError
from prune_cli.gates import Gates
from prune_cli.methods import get_pruner
from prune_cli.surgery import remove_units
from prune_cli.units import UnitSpace, parse_units


def method_config(method: str, **options):
    """The packaged `conf/method/<method>.yaml` with `options` over it, as prune-run composes it."""
    path = resources.files("prune_cli.conf") / "method" / f"{method}.yaml"
    if not path.is_file():
        names = sorted(p.name[:-5] for p in (resources.files("prune_cli.conf") / "method").iterdir()
                       if p.name.endswith(".yaml"))
        raise ConfigError("method", method, f"one of {', '.join(names)}")
    cfg = OmegaConf.load(str(path))
    for key, value in options.items():
        if key not in cfg:
            raise ConfigError(f"method.{key}", value, f"a key of method={method} ({', '.join(map(str, cfg))})")
        cfg[key] = value
    if cfg.get("kind") != "scorer":
        raise ConfigError("method", method, "a scorer (random, magnitude, taylor, michel, smp, mask): "
                          f"{method} learns its gates while training, which prune-run does")
    return cfg


def _units(space: UnitSpace, units, density) -> tuple[str, ...]:
    if units is None:
        dims = all(b.group_size == 1 for b in space.blocks)
        units = "heads" if density is None else ("dims_ffn" if dims else "heads_ffn")
    return parse_units(units)


def _keep(space: UnitSpace, heads, sparsity, density, kinds, scope) -> int | None:
    given = [n for n, v in (("heads", heads), ("sparsity", sparsity), ("density", density)) if v is not None]
    if len(given) != 1:
        raise ConfigError("budget", ", ".join(given) or "none", "exactly one of heads=, sparsity=, density=")
    if density is not None:
        if not 0 < density <= 1:
            raise ConfigError("density", density, "a fraction of the attention + FFN weights to keep in (0, 1]")
        return None
    in_scope = int((space.scope_mask(scope) & space.kept("head")).sum())
    if sparsity is not None:
        if not 0 <= sparsity < 1:
            raise ConfigError("sparsity", sparsity, "a fraction of heads to remove in [0, 1)")
        keep = round((1 - sparsity) * in_scope)
    else:
        keep = int(heads)
        if not 0 <= keep <= in_scope:
            raise ConfigError("heads", heads, f"0..{in_scope} (the heads the model has in scope {scope})")
    if kinds not in (("head",), ("kv",)):
        raise ConfigError("units", list(kinds), "heads or kv with heads=/sparsity= (density= ranks smaller units)")
    group = max((b.group_size for b in space.blocks), default=1)
    if kinds == ("kv",) and keep % group:
        if heads is not None:
            raise ConfigError("heads", heads, f"a multiple of {group} with units=kv (query heads per key/value group)")
        keep = round(keep / group) * group
    return keep


def _is_causal_lm(model: nn.Module) -> bool:
    from transformers import AutoModelForCausalLM

    try:  # the causal-LM class of this config only (iterating the mapping imports every family)
        return AutoModelForCausalLM._model_mapping[type(model.config)] is type(model)
    except KeyError:
        return False


def batches_from(data, model: nn.Module, tokenizer=None, batch_size: int = 8, max_length: int = 512) -> list[dict]:
    """Scoring batches from `data`: model-input dicts (with `labels` where the method needs a loss),
    used as they are; or texts, tokenised in batches of `batch_size`, where a causal LM learns to
    predict each next token (labels = input ids, padding ignored)."""
    if data is None:
        return []
    items = list(data)
    if not items:
        return []
    if isinstance(items[0], dict):
        return items
    if not all(isinstance(t, str) for t in items):
        raise ConfigError("data", type(items[0]).__name__, "texts (str) or model-input batches (dicts of tensors)")
    if tokenizer is None:
        raise ConfigError("tokenizer", None, "the model's tokenizer, to turn the texts of data= into batches")
    if not _is_causal_lm(model):
        raise ConfigError("data", "texts", f"batches with labels for {type(model).__name__} (texts carry labels "
                          "only for a causal LM, which predicts their next tokens)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out = []
    for i in range(0, len(items), batch_size):
        enc = tokenizer(items[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        out.append({**enc, "labels": labels})
    return out


def _on(device, batch: dict) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def choose(model: nn.Module, method: str = "taylor", *, heads: int | None = None, sparsity: float | None = None,
           density: float | None = None, units=None, data: Iterable | None = None, tokenizer=None,
           batch_size: int = 8, max_length: int = 512, scope: str = "all", seed: int = 0,
           method_options: dict | None = None) -> tuple[UnitSpace, object]:
    """What `prune` keeps (a UnitSpace over the model's dense index) and the method's scores,
    without changing the model."""
    space = UnitSpace.from_model(model)
    kinds = _units(space, units, density)
    keep = _keep(space, heads, sparsity, density, kinds, scope)
    cfg = method_config(method, **(method_options or {}))
    if not set(kinds) <= set(cfg.get("unit_kinds", ["head"])):
        raise ConfigError("units", list(kinds), f"kinds method={method} ranks ({', '.join(cfg.unit_kinds)})")
    torch.manual_seed(seed)
    pruner = get_pruner(cfg, space, seed)
    device = next(model.parameters()).device
    items = batches_from(data, model, tokenizer, batch_size, max_length)

    def batches():
        return (_on(device, b) for b in items)

    if density is not None:
        return oneshot.keep_density(model, space, pruner, batches, float(density), kinds, scope=scope)
    if kinds == ("kv",):
        return oneshot.keep_groups(model, space, pruner, batches, keep, scope=scope)
    return oneshot.keep_heads(model, space, pruner, batches, keep, scope=scope)


def prune(model: nn.Module, tokenizer=None, method: str = "taylor", *, heads: int | None = None,
          sparsity: float | None = None, density: float | None = None, units=None, data: Iterable | None = None,
          batch_size: int = 8, max_length: int = 512, scope: str = "all", seed: int = 0,
          method_options: dict | None = None) -> nn.Module:
    """Prune `model` in place with a scorer and return it, physically smaller.

    Budget: `heads=K` query heads kept, `sparsity=s` (the fraction of heads removed) or `density=d`
    (the fraction of attention + FFN weights kept, over `units`: heads_ffn, dims_ffn, ffn...).
    `units="kv"` removes whole key/value groups of a grouped-query model. `data`: the scoring
    batches (texts for a causal LM, else model-input dicts with labels); random and magnitude read
    none. The result equals the model with the removed units gated to 0, its config records what
    it kept, and `prune_cli.save_pruned` writes it as a folder plain transformers loads."""
    target, _ = choose(model, method, heads=heads, sparsity=sparsity, density=density, units=units, data=data,
                       tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, scope=scope, seed=seed,
                       method_options=method_options)
    remove_units(model, target)
    return model


class PruneCallback(TrainerCallback):
    """Prune during your own `Trainer.train()`: at `at_step` (0 = before the first step) score the
    model with `method` on `score_batches` training batches, gate the removed units to 0 for the
    rest of training, and remove them physically when training ends (`trainer.model` is then the
    smaller model; save it with `prune_cli.save_pruned`).

        trainer = Trainer(model, args, train_dataset=..., callbacks=[PruneCallback("taylor", heads=36)])
    """

    def __init__(self, method: str = "taylor", *, heads: int | None = None, sparsity: float | None = None,
                 density: float | None = None, units=None, at_step: int = 0, score_batches: int = 8,
                 scope: str = "all", seed: int = 0, method_options: dict | None = None):
        self.method, self.at_step, self.score_batches = method, int(at_step), int(score_batches)
        self.budget = {"heads": heads, "sparsity": sparsity, "density": density, "units": units, "scope": scope,
                       "seed": seed, "method_options": method_options}
        method_config(method, **(method_options or {}))  # a wrong method fails here, not at step N
        self.target: UnitSpace | None = None
        self.gates: Gates | None = None

    def _score(self, model, train_dataloader) -> None:
        was_training = model.training
        data = []
        for batch in train_dataloader or ():
            if len(data) >= self.score_batches:
                break
            data.append(dict(batch))
        self.target, _ = choose(model, self.method, data=data, **self.budget)
        model.train(was_training)
        space = UnitSpace.from_model(model)
        changed = {k: self.target.kept(k).float() for k in ("head", "qk", "vo", "ffn")
                   if not torch.equal(self.target.kept(k), space.kept(k))}
        self.gates = Gates(model, space)
        self.gates.set_units(changed)

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        if self.at_step == 0 and self.target is None:
            self._score(model, train_dataloader)

    def on_step_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        if self.target is None and state.global_step >= self.at_step:
            self._score(model, train_dataloader)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.gates is not None:
            self.gates.set(None)
            self.gates.remove()
            self.gates = None
        if self.target is not None and model is not None:
            remove_units(model, self.target)


__all__ = ["PruneCallback", "batches_from", "choose", "method_config", "prune"]
