"""APD, Automatic Peer Distillation (Li et al., IJCAI 2023), as described in the paper's abstract;
the details are ours (no code is public; every decision and its reason: docs/methods/apd.md).

Two parts:

* **Allocation** (before training, on the fine-tuned dense model and TRAINING batches): `APD.measure`
  gathers every attention block's statistics, `allocation` turns them into the heads to keep
  (per-layer cost curves, greedy elimination inside a layer, an exact dynamic programme across
  layers so that exactly K heads stay -- no per-layer setting).
* **Peer distillation** while training (`distill=peer`, `prune_cli.methods.apd.peer`): the chosen
  heads fade out (their gates follow the run's `schedule` from 1 to 0), and every layer that loses
  heads is trained to give the dense teacher layer's output with only its kept heads.

Lossless mode (`method.tolerance`, no K): a validation split carved from the TRAINING data
(`method.holdout`) is set aside before anything trains; the dense model's metric on it is the
reference, and a binary search over the number of heads removed (the allocation of each count,
the kept heads' output projections refit by least squares, no training) finds the most pruning
whose holdout metric stays within `tolerance` (relative) of the dense one. The evaluation split is
never read until the pipeline's `evaluate` stage.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prune_cli.accounting import METER, batch_examples
from prune_cli.arch.projections import weight
from prune_cli.errors import ConfigError
from prune_cli.methods.apd.allocation import LayerStats, allocate, elimination, head_features
from prune_cli.methods.base import Pruner, ScoreContext
from prune_cli.schedules import keep_at


class APD(Pruner):
    kind = "learner"
    prepares = True  # measures the model and allocates K (or chooses it) before training
    default_pipeline = ("finetune", "prune_joint", "evaluate", "export")

    def __init__(self, cfg, space, seed: int = 0):
        super().__init__(cfg, space, seed)
        tol = cfg.get("tolerance")  # its range, and holdout's, are checked by validate's rules
        self.tolerance = None if tol is None else float(tol)
        self.keep_mask = None
        self.search: list[dict] = []
        self.curves: dict[str, list[float]] = {}

    def check_run(self, cfg, stages: list[str], keep: int | None, in_scope: int) -> None:
        if self.tolerance is not None and not hasattr(type(self.task), "evaluate_on"):
            raise ConfigError("method.tolerance", self.tolerance, f"null with task={cfg.task.name}: the lossless mode "
                              "measures a GLUE task's metric on rows carved from its training split")

    # ---- before training: allocation (and the lossless search) ------------------------
    def measure(self, ctx: ScoreContext) -> dict[str, LayerStats]:
        """One pass over the training batches (at most `method.score_batches`), dropout off."""
        model = ctx.model
        was_training = model.training
        model.eval()
        modules = dict(model.named_modules())
        current = self.space.current_heads()
        stats: dict[str, LayerStats] = {}
        outputs: dict[str, torch.Tensor] = {}
        token_mask: list = [None]

        def hook(name):
            def record(module, args, out):
                c = args[0].detach()
                outputs[name] = out  # the loss gradient is taken w.r.t. the output the model uses
                y = out - module.bias if module.bias is not None else out
                st = stats.setdefault(name, LayerStats(c.shape[-1], y.shape[-1], c.device))
                m = token_mask[0]
                if m is not None and m.shape == c.shape[:2]:
                    c, yd = c[m], y.detach()[m]
                else:
                    c, yd = c.flatten(0, -2), y.detach().flatten(0, -2)
                c, yd = c.double(), yd.double()
                st.gram += c.T @ c
                st.cross += c.T @ yd
                st.energy += (yd * yd).sum(0)
                st.tokens += c.shape[0]

            return record

        blocks = [b for b in current.blocks if b.num_heads]
        handles = [modules[b.o].register_forward_hook(hook(b.name)) for b in blocks]
        ctx.gates.set(None)
        try:
            for batch in self.score_pass(ctx):
                mask = batch.get("attention_mask")
                token_mask[0] = mask.bool() if mask is not None else None
                outputs.clear()
                loss = model(**batch).loss
                names = [n for n in outputs if outputs[n].requires_grad]
                # the loss is a batch mean: B x its gradient is the per-example gradient
                grads = torch.autograd.grad(loss * batch_examples(batch.values()), [outputs[n] for n in names],
                                            allow_unused=True)
                if names and all(g is None for g in grads):
                    raise RuntimeError("APD: no loss gradient reached an attention output projection")
                METER.backward(batch_examples(batch.values()))
                for n, g in zip(names, grads):
                    if g is None:
                        continue
                    m = token_mask[0]
                    g = g[m] if m is not None and m.shape == g.shape[:2] else g.flatten(0, -2)
                    stats[n].fisher += (g.double() ** 2).sum(0)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        for st in stats.values():
            st.fisher /= max(st.tokens, 1)
        return stats

    def prepare(self, ctx: ScoreContext, validate: Callable[[], float] | None = None) -> int:
        """Measure, order every block's heads, and choose the heads to keep (returns K). With
        `method.tolerance`, `validate()` (the metric on the carved holdout) drives the search."""
        stats = self.measure(ctx)
        current = self.space.current_heads()
        dense_pos = self.space.positions(current)  # per block: the dense index of each present head
        eligible = self.eligible if self.eligible is not None else self.space.kept("head")
        self.order: list[list[int]] = []  # per block: dense indices in the order they leave
        curves = []
        for i, block in enumerate(current.blocks):
            pos = dense_pos[i]
            removable = [h for h in range(block.num_heads) if bool(eligible[pos[h]])]
            if not removable or block.name not in stats:
                self.order.append([])
                curves.append([0.0])
                continue
            order, costs = elimination(stats[block.name], block.num_heads, block.head_dim, removable)
            self.order.append([pos[h] for h in order])
            curves.append(costs)
            self.curves[block.name] = costs
        self._stats, self._curves, self._current = stats, curves, current
        in_scope = int(eligible.sum())
        if self.tolerance is None:
            self.keep_mask = self._mask(in_scope - self.keep)
            return self.keep
        if validate is None:
            raise ValueError("the lossless mode needs the holdout metric")
        self.keep_mask = self._lossless(ctx, validate, in_scope)
        self.keep = int((self.keep_mask & eligible).sum())
        return self.keep

    def _mask(self, remove: int) -> torch.Tensor:
        counts = allocate(self._curves, remove)
        mask = self.space.kept("head").clone()
        for order, r in zip(self.order, counts):
            mask[order[:r]] = False
        return mask

    def _lossless(self, ctx: ScoreContext, validate, in_scope: int) -> torch.Tensor:
        """The largest number of heads removed whose holdout metric (heads gated off, peers' output
        projections refit) stays within the tolerance of the dense model's; binary search."""
        dense = float(validate())
        floor = dense - self.tolerance * abs(dense)
        self.search = [{"removed": 0, "metric": dense}]
        lo, hi = 0, in_scope - 1  # lo always passes; keep at least one head in scope
        while lo < hi:
            mid = (lo + hi + 1) // 2
            metric = self._try(ctx, self._mask(mid), validate)
            self.search.append({"removed": mid, "metric": metric})
            if metric >= floor:
                lo = mid
            else:
                hi = mid - 1
        self.lossless = {"tolerance": self.tolerance, "holdout_dense": dense, "floor": floor, "removed": lo,
                         "holdout_pruned": next(s["metric"] for s in self.search if s["removed"] == lo)}
        return self._mask(lo)

    def _try(self, ctx: ScoreContext, mask: torch.Tensor, validate) -> float:
        """The holdout metric with `mask`'s heads kept, the others gated to 0 and the kept heads'
        output projections refit to their block's dense output (restored afterwards)."""
        modules = dict(ctx.model.named_modules())
        dense_pos = self.space.positions(self._current)
        saved = {}
        with torch.no_grad():
            for i, block in enumerate(self._current.blocks):
                keep = [h for h, p in enumerate(dense_pos[i]) if bool(mask[p])]
                if block.name not in self._stats or len(keep) in (0, block.num_heads):
                    continue
                o = modules[block.o]
                feats = head_features(keep, block.head_dim)
                saved[block.o] = o.weight.detach().clone()
                weight(o)[:, feats] = self._stats[block.name].refit(feats).to(o.weight)  # [out, in] view
        ctx.gates.set(mask.float())
        try:
            return float(validate())
        finally:
            ctx.gates.set(None)
            with torch.no_grad():
                for name, w in saved.items():
                    modules[name].weight.copy_(w)

    # ---- training: fade the chosen heads out -----------------------------------------
    def gate_values(self, step: int, total_steps: int, training: bool = True) -> torch.Tensor:
        keep = self.keep_mask.float()
        in_scope = int(self.eligible.sum()) if self.eligible is not None else int(self.space.total)
        if not training or in_scope <= self.keep:
            return keep
        k_t = keep_at(self.schedule, step, total_steps, in_scope, self.keep)
        share = (k_t - self.keep) / (in_scope - self.keep)  # 1 -> 0 as the budget falls to K
        return torch.where(self.keep_mask, keep, torch.full_like(keep, share))

    def hard_gates(self, step: int = 0, total_steps: int = 1) -> torch.Tensor:
        """The 0/1 gates the peer term trains against: the removed heads already gone."""
        return self.keep_mask.float()

    def final_mask(self, k: int) -> torch.Tensor:
        return self.keep_mask.clone()

    def scores(self):
        """Per head: how late it leaves its layer (higher = kept longer), for heads.json."""
        score = torch.full((self.space.total,), float(max((len(o) for o in self.order), default=0)) + 1)
        for order in self.order:
            for rank, p in enumerate(order):
                score[p] = rank
        return score

    def log_stats(self) -> dict[str, float]:
        return {"heads_kept": float(self.keep_mask.sum())} if self.keep_mask is not None else {}

    def report(self) -> dict:
        """What the stage result records: the per-layer allocation and, in lossless mode, the search."""
        out = {"allocation": [int(self.keep_mask[p].sum()) for p in self.space.positions(self._current)]}
        if self.tolerance is not None:
            out["lossless"] = {**self.lossless, "search": self.search}
        return out

    def state_dict(self) -> dict:
        return {} if self.keep_mask is None else {"keep_mask": self.keep_mask, "keep": self.keep}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.keep_mask, self.keep = state["keep_mask"], state["keep"]

