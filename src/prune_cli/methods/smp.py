"""SMP, Zhang et al. 2021, "Know what you don't need: Single-Shot Meta-Pruning for attention
heads" (facts from thunlp/SMP: ../shared/METHODS.md).

A small CNN (the *pruner*) looks at each head's attention map in the PRETRAINED model and scores
the head; trained once (`meta_train` stage, `prune_cli.meta_train`) on the unlabelled text of
several tasks, it then picks heads for a new task before any fine-tuning. A head's score is the
pruner's output averaged over the target task's TRAINING examples; by default the same number of
heads is kept in every layer (the paper's rule), `method.budget=global` ranks all heads together.

Two departures from the reference, both so that it runs on any model and any length:

* depth follows the canvas: the reference's network needs 128 x 128 maps (five stride-2
  convolutions down to 4 x 4, then a 4 x 4 one). Here the map is drawn on a canvas of
  `method.map_size` (a power of two, 128 by default, recorded in pruner.pt) with log2(size) - 2
  stride-2 convolutions; at 128 the network is the reference's, weight for weight.
* maps of any length: a map of n <= canvas tokens is zero-padded to the canvas -- exactly what
  the reference sees, as it pads every input to 128 tokens and zeroes padded query rows (padded
  key columns hold 0 after the softmax). A longer map is area-averaged down to the canvas and
  multiplied by n / canvas, so that its rows still sum to 1 as an attention row does -- in
  meta-training only: pruning refuses a `task.max_length` above the pruner's canvas, since the
  kept heads would then change with the batch's padded length.

The sampler of the reference only works when layers == heads per layer (its `view(-1, L)`); ours
draws per layer, so any L x H works.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.methods.base import Pruner, ScoreContext, top_k_mask

#: what each output channel of the pruner scores: sentence-pair tasks, single-sentence tasks
CHANNELS = ("pair", "single")
BUDGETS = ("per_layer", "global")
FORMAT = "prune-cli smp pruner v1"


class MapScorer(nn.Module):
    """The pruner network: one attention map in, one score per channel in (0, 2) out.

    DCGAN-discriminator shape as in the reference: 4 x 4 stride-2 convolutions that double the
    width (batch norm from the second on, LeakyReLU 0.2), a final 4 x 4 convolution to two
    channels, sigmoid x 2; weights drawn from N(0, 0.01), batch-norm scales from N(1, 0.01)."""

    def __init__(self, map_size: int = 128, width: int = 8):
        super().__init__()
        if map_size < 8 or map_size & (map_size - 1):
            raise ValueError(f"map_size must be a power of two >= 8, got {map_size}")
        self.map_size, self.width = int(map_size), int(width)
        layers: list[nn.Module] = [nn.Conv2d(1, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        channels = width
        for _ in range(int(math.log2(map_size)) - 3):
            layers += [nn.Conv2d(channels, 2 * channels, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * channels),
                       nn.LeakyReLU(0.2)]
            channels *= 2
        layers += [nn.Conv2d(channels, len(CHANNELS), 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """maps [N, n, n] (any n) -> scores [N, 2] (columns in CHANNELS order)."""
        return self.main(fit_canvas(maps, self.map_size).unsqueeze(1)).flatten(1) * 2


def fit_canvas(maps: torch.Tensor, size: int) -> torch.Tensor:
    """[N, n, n] -> [N, size, size]: zero-padded when n <= size, area-averaged (rows still sum
    to 1) when longer."""
    n = maps.shape[-1]
    if n <= size:
        return F.pad(maps, (0, size - n, 0, size - n))
    return F.adaptive_avg_pool2d(maps, size) * (n / size)


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """sdpa and the fused kernels return no attention probabilities: switch the model to the
    eager kernel for the passes that read them, and back."""
    before = getattr(model.config, "_attn_implementation", None)
    if before in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def model_inputs(batch: dict) -> dict:
    """What the encoder reads: never the labels (SMP uses none, in scoring or meta-training)."""
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def attention_maps(model: nn.Module, batch: dict):
    """(maps [L, B, H, n, n], encoder outputs) of one batch, rows of padded query positions
    zeroed. `model` may be any head class: its base model runs."""
    base = getattr(model, "base_model", model)
    inputs = model_inputs(batch)
    with eager_attention(model), torch.no_grad():
        out = base(**inputs, output_attentions=True)
    if not out.attentions or any(a is None for a in out.attentions):
        raise RuntimeError(f"{type(base).__name__} returned no attention maps with output_attentions=True under "
                           "eager attention: this transformers release changed how they are returned")
    maps = torch.stack(out.attentions)
    mask = inputs.get("attention_mask")
    if mask is not None:
        maps = maps * mask[None, :, None, :, None].to(maps.dtype)
    return maps, out


def geometry(space) -> dict:
    """What a pruner is trained for: layers x heads of the dense model (SMP: encoder blocks only)."""
    heads = sorted({b.num_heads for b in space.blocks})
    return {"layers": len(space.blocks), "heads": heads[0] if len(heads) == 1 else heads}


def save_pruner(path: Path, net: MapScorer, model_geometry: dict, info: dict) -> None:
    """pruner.pt: plain tensors and numbers (loadable with weights_only=True)."""
    record = {"format": FORMAT, "state_dict": net.state_dict(),
              "network": {"map_size": net.map_size, "width": net.width},
              "model": model_geometry, **info}
    from prune_cli.checkpoints import atomic_write

    atomic_write(Path(path), lambda f: torch.save(record, f))


def read_pruner(path) -> dict:
    """The record of a pruner file, or ConfigError naming what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("method.pruner", str(path), "a pruner.pt written by a meta_train run "
                          "(prune-run method=smp pipeline=[meta_train] ...)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise ConfigError("method.pruner", str(path), f"a pruner.pt written by a meta_train run (unreadable: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError("method.pruner", str(path), "a pruner.pt written by a meta_train run (this file is not one)")
    return record


def load_network(record: dict) -> MapScorer:
    net = MapScorer(**record["network"])
    net.load_state_dict(record["state_dict"])
    return net


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
        own keys are checked by that stage, prune_cli.meta_train.check)."""
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
