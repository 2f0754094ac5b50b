"""SMP's pruning step (Zhang et al., "Know What You Don't Need: Single-Shot Meta-Pruning for
Attention Heads", AI Open 2021, arXiv:2011.03770; official code thunlp/SMP).

A head's score is the meta-trained pruner network's output (`network.MapScorer`) on the head's
attention map, averaged over the target task's TRAINING examples, before any fine-tuning. By
default the same number of heads is kept in every layer (the paper's rule); `method.budget=global`
ranks all heads together.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prune_cli.errors import ConfigError
from prune_cli.methods.base import Pruner, ScoreContext, top_k_mask
from prune_cli.methods.smp.network import (
    CHANNELS,
    attention_maps,
    eager_attention,
    geometry,
    load_network,
    read_pruner,
)

BUDGETS = ("per_layer", "global")


class SMP(Pruner):
    kind = "scorer"
    default_pipeline = ("prune", "finetune", "evaluate", "export")

    def __init__(self, cfg, space, seed: int = 0):
        super().__init__(cfg, space, seed)
        self.budget = str(cfg.get("budget", "per_layer"))
        if self.budget not in BUDGETS:
            raise ConfigError("method.budget", self.budget, f"one of {', '.join(BUDGETS)} (per_layer: the paper's "
                              "rule, the same number of heads in every layer)")
        channel = cfg.get("channel", "auto")
        if channel not in ("auto", *CHANNELS):
            raise ConfigError("method.channel", channel, "auto (from the task), pair or single")
        size = cfg.get("map_size", 128)
        if not isinstance(size, int) or isinstance(size, bool) or size < 8 or size & (size - 1):
            raise ConfigError("method.map_size", size, "a power of two >= 8 (the reference: 128)")
        kinds = {b.kind for b in space.blocks}
        if kinds != {"encoder"}:
            raise ConfigError("method", "smp", "an encoder-only model (BERT, RoBERTa, DistilBERT, ELECTRA...): SMP "
                              f"scores encoder self-attention maps; this model has {', '.join(sorted(kinds))} blocks")

    # ---- which pruner ------------------------------------------------------
    def pruner_path(self) -> Path:
        from hydra.utils import to_absolute_path

        given = self.cfg.get("pruner")
        if given:
            return Path(to_absolute_path(str(given)))
        return Path(self.run_dir or ".") / "pruner.pt"

    def channel(self) -> int:
        choice = self.cfg.get("channel", "auto")
        if choice == "auto":
            pair = getattr(self.task, "sentence_pair", None)
            if pair is None:
                raise ConfigError("method.channel", "auto", "pair or single: this task does not say whether its "
                                  "inputs are sentence pairs")
            choice = "pair" if pair else "single"
        return CHANNELS.index(choice)

    # ---- scoring -----------------------------------------------------------
    def score(self, ctx: ScoreContext) -> torch.Tensor:
        """Mean pruner output per head over the training examples (one no-grad pass, eager)."""
        import itertools

        model = ctx.model
        device = next(model.parameters()).device
        net = load_network(read_pruner(self.pruner_path())).to(device).eval()
        channel = self.channel()
        current = self.space.current_heads() if hasattr(self.space, "current_heads") else self.space
        where = torch.tensor([i for block in self.space.positions(current) for i in block], dtype=torch.long)
        was_training = model.training
        model.eval()
        ctx.gates.set(ctx.mask.float())  # heads an earlier round removed stay off
        total = torch.zeros(where.numel(), dtype=torch.float64, device=device)  # summed on the device
        count = 0
        batches = ctx.batches()
        if self.cfg.get("score_batches"):
            batches = itertools.islice(batches, int(self.cfg.score_batches))
        try:
            with eager_attention(model):  # one switch for the whole pass (attention_maps' own is then a no-op)
                for batch in batches:
                    maps, _ = attention_maps(model, batch)
                    layers, b, heads, n, _ = maps.shape
                    if layers * heads != where.numel():
                        raise RuntimeError(f"{layers * heads} attention maps per example for {where.numel()} heads")
                    with torch.no_grad():
                        out = torch.cat([net(chunk) for chunk in maps.reshape(-1, n, n).split(4096)])
                    total += out[:, channel].reshape(layers, b, heads).sum(1).flatten().double()
                    count += b
        finally:
            ctx.gates.set(None)
            model.train(was_training)
        scores = torch.zeros(self.space.total, dtype=torch.float64)
        scores[where] = total.cpu() / max(count, 1)
        return scores  # heads removed before (model.path) stay 0 and are never eligible

    def select(self, scores: torch.Tensor, k: int, eligible: torch.Tensor) -> torch.Tensor:
        """The paper's rule: the same number of heads in every layer that `eligible` touches."""
        if self.budget == "global":
            return top_k_mask(scores, k, eligible)
        layers = [b for b in self.space.blocks if eligible[b.offset:b.offset + b.num_heads].any()]
        if not layers:
            return torch.zeros_like(eligible)
        per, rest = divmod(k, len(layers))
        if rest:
            raise ConfigError("heads", k, f"a multiple of {len(layers)} with method.budget=per_layer (the same number "
                              "of heads in every layer), or method.budget=global")
        mask = torch.zeros_like(eligible)
        for b in layers:
            part = slice(b.offset, b.offset + b.num_heads)
            if int(eligible[part].sum()) < per:
                raise ConfigError("heads", k, f"<= {len(layers)} x {int(eligible[part].sum())}: {b.name} has only "
                                  f"{int(eligible[part].sum())} heads left to keep {per} per layer")
            mask[part] = top_k_mask(scores[part], per, eligible[part])
        return mask

    # ---- checks before anything loads ---------------------------------------
    def check_run(self, cfg, stages: list[str], keep: int | None, in_scope: int) -> None:
        """Pruner file and geometry, the per-layer budget: one line each (the meta_train stage's
        own keys are checked by that stage, prune_cli.methods.smp.meta_train.check)."""
        if "prune" in stages:
            self.channel()
            if not cfg.method.get("pruner") and "meta_train" not in stages[:stages.index("prune")]:
                raise ConfigError("method.pruner", None, "the pruner.pt of a meta_train run (prune-run method=smp "
                                  "pipeline=[meta_train] ...), or a meta_train stage before prune")
            if cfg.method.get("pruner"):
                record = read_pruner(self.pruner_path())
                want, have = record.get("model"), geometry(self.space)
                if want != have:
                    raise ConfigError("method.pruner", str(cfg.method.pruner), f"a pruner meta-trained for "
                                      f"{have['layers']} layers x {have['heads']} heads ({cfg.model.name}); this one "
                                      f"was trained for {want.get('layers')} x {want.get('heads')} "
                                      f"({record.get('model_name', '?')})")
        if keep is not None and self.budget == "per_layer":
            self._check_budget(cfg, keep, in_scope)
        if "prune" in stages:
            self._check_canvas(cfg, stages)

    def _check_canvas(self, cfg, stages: list[str]) -> None:
        """A batch longer than the pruner's canvas would be averaged down to it: maps unlike those
        the network was meta-trained on, and scores that depend on how long the batch's longest
        example is. Refused before anything loads, with the two ways out."""
        if cfg.method.get("pruner") and "meta_train" not in stages[:stages.index("prune")]:
            canvas, source = int(read_pruner(self.pruner_path())["network"]["map_size"]), str(cfg.method.pruner)
        else:
            canvas, source = int(cfg.method.get("map_size", 128)), "method.map_size"
        length = int(cfg.task.max_length)
        if length > canvas:
            raise ConfigError("task.max_length", length, f"<= {canvas}, the canvas of the pruner ({source} scores "
                              f"{canvas} x {canvas} attention maps; a longer batch would be averaged down to it), "
                              f"or a pruner meta-trained on a canvas >= {length} (method.map_size)")

    def _check_budget(self, cfg, keep: int, in_scope: int) -> None:
        layers = len(self.space.blocks)  # encoder blocks only (checked above)
        if cfg.get("heads_scope", "all") not in ("all", "encoder"):
            raise ConfigError("heads_scope", cfg.heads_scope, "all or encoder with method=smp (an encoder-only model)")
        from prune_cli.schedules import rounds

        for kept in rounds(cfg.schedule, in_scope, keep):
            if kept % layers:
                per = in_scope // layers
                allowed = ", ".join(str(layers * i) for i in range(1, min(per, 4) + 1)) + (
                    f", ..., {layers * per}" if per > 4 else "")
                given = f"heads={cfg.heads}" if cfg.get("heads") is not None else f"sparsity={cfg.get('sparsity')}"
                raise ConfigError("heads", cfg.get("heads") if cfg.get("heads") is not None else keep,
                                  f"a multiple of {layers} with method.budget=per_layer ({layers} layers: {allowed}; "
                                  f"{given} keeps {kept}{'' if kept == keep else ' in one round'}), or "
                                  "method.budget=global")
