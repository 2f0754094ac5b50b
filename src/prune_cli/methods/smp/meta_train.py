"""SMP's meta-training (the `meta_train` stage; Zhang et al., AI Open 2021, arXiv:2011.03770,
official code thunlp/SMP): teach the pruner network which heads the pretrained model can lose,
from unlabelled text of several tasks, once for all later tasks.

Per micro-batch (one task, drawn with probability ~ size^0.2):

1. the FROZEN pretrained model (eval mode: no dropout) runs once under eager attention; the
   pruner scores every head from its map, averaged over the batch;
2. a hard Gumbel-softmax sample per layer (the scores as logits, tau 1) is drawn again and again
   until exactly H/2 distinct heads are chosen (at most 5H draws); a random half of the layers
   stays whole;
3. the model runs again with those heads gated off; the loss is KL(dense || pruned) between the
   in-batch similarity distributions of the sentence vectors of both passes (pooled [CLS] for
   pair tasks, mean pooling -- loss x 10 -- for single sentences), each row of the centred,
   L2-normalised, x10 cosine matrix cut into 2-way softmaxes over adjacent columns, after one
   feature-dropout mask (p 0.8) shared by both passes. The gradient reaches the pruner only
   through the straight-through samples.

SGD (lr 2e-2, no momentum), clip 1.0, micro-batch 60 x accumulation 8, 8,000 updates in the
reference; every number is a `method.*` key. Labels are never read: the label column is dropped
before batching. Resumable like every stage: the checkpoint holds the network, the optimizer,
the sampling generator and every task's place in its epoch, so a restart continues on the very
batch and noise the killed run would have drawn next.

The reference's sampler only works when layers == heads per layer (its `view(-1, L)`); ours
draws per layer, so any L x H works.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from prune_cli import checkpoints, groups
from prune_cli.accounting import METER
from prune_cli.errors import ConfigError
from prune_cli.methods.smp.network import MapScorer, attention_maps, geometry, model_inputs, save_pruner

#: method.* keys of the loop: (key, test, what is allowed)
KEYS = (
    ("meta_steps", lambda v: isinstance(v, int) and v >= 1, "a whole number of pruner updates >= 1 (reference: 8000)"),
    ("meta_batch_size", lambda v: isinstance(v, int) and v >= 2, ("a batch size >= 2 (the loss compares examples "
                                                                 "of one batch; reference: 60)")),
    ("meta_grad_accum", lambda v: isinstance(v, int) and v >= 1, "a positive integer (reference: 8)"),
    ("meta_lr", lambda v: isinstance(v, (int, float)) and v > 0, "a learning rate > 0 (reference: 2e-2, SGD)"),
    ("meta_max_grad_norm", lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0 (0 = no clipping)"),
    ("meta_max_length", lambda v: isinstance(v, int) and v >= 8, "a whole number of tokens >= 8 (reference: 128)"),
    ("meta_max_train_samples", lambda v: v is None or (isinstance(v, int) and v >= 2), "null (all rows) or >= 2"),
    ("rep_dropout", lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a feature-dropout rate in [0, 1) (0.8)"),
    ("task_power", lambda v: isinstance(v, (int, float)) and v >= 0, "an exponent >= 0 (task drawn ~ size^0.2)"),
    ("keep_fraction", lambda v: isinstance(v, (int, float)) and 0 < v < 1, ("a fraction of each layer's heads in "
                                                                          "(0, 1) (reference: 0.5)")),
    ("width", lambda v: isinstance(v, int) and v >= 1, "a channel count >= 1 (reference: 8)"),
)


@dataclass
class MetaTask:
    name: str
    data: object  # datasets.Dataset of model inputs, no labels
    pair: bool
    weight: int  # draws per round: int(size ** task_power), as the reference


def task_config(name: str, cfg: DictConfig) -> DictConfig:
    """The packaged task config `name` as Hydra composes `task=<name>` (its _glue.yaml base
    included), resolved against the run's data_root, with the meta length and row cap."""
    options = groups.options("task")
    if name not in options:
        raise ConfigError("method.meta_tasks", name, f"task names among {', '.join(options)}")
    node = OmegaConf.create({"data_root": cfg.get("data_root"), "task": groups.compose_option("task", name)})
    OmegaConf.resolve(node)
    task = node.task
    if task.get("family") != "glue":
        glue = [o for o in options if groups.compose_option("task", o).get("family") == "glue"]
        raise ConfigError("method.meta_tasks", name, f"GLUE tasks (sentences or sentence pairs): {', '.join(glue)}")
    task.max_length = int(cfg.method.get("meta_max_length") or 128)
    task.max_train_samples = cfg.method.get("meta_max_train_samples")
    return task


def check(cfg: DictConfig) -> None:
    """Everything meta_train reads, before any model loads."""
    from prune_cli.tasks import get_task

    method = cfg.method
    for key, test, allowed in KEYS:
        if key in method and not _safe(test, method.get(key)):
            raise ConfigError(f"method.{key}", method.get(key), allowed)
    names = method.get("meta_tasks")
    names = list(names) if OmegaConf.is_list(names) else names
    if not isinstance(names, list) or not names:
        raise ConfigError("method.meta_tasks", names, "a list of GLUE tasks whose training text (labels unused) "
                          "teaches the pruner, e.g. [cola,sst2,mrpc,stsb]")
    for name in names:
        get_task(task_config(str(name), cfg)).validate()
    if method.get("pruner"):
        raise ConfigError("method.pruner", method.pruner, "null with a meta_train stage (it writes <run>/pruner.pt)")


def load_tasks(cfg: DictConfig, tokenizer) -> list[MetaTask]:
    from prune_cli.tasks import get_task

    out = []
    for name in cfg.method.meta_tasks:
        task = get_task(task_config(str(name), cfg), seed=cfg.get("seed") or 0)
        data = task.splits(tokenizer).train.remove_columns(["labels"])
        out.append(MetaTask(str(name), data, bool(task.sentence_pair),
                            max(1, int(len(data) ** float(cfg.method.get("task_power", 0.2))))))
    return out


# ---- the loss ------------------------------------------------------------------------------
def similarity_logits(x: torch.Tensor, scale: float = 10.0, group: int = 2) -> torch.Tensor:
    """In-batch cosine similarities of the centred vectors x [B, d], times `scale`, each row cut
    into groups of `group` adjacent columns -> [B' * B' / group, group] (B' = B rounded down to
    a multiple of `group`; the centre is the mean of all B)."""
    n = x.shape[0] - x.shape[0] % group
    v = F.normalize(x[:n] - x.mean(0, keepdim=True), dim=-1)
    return (v @ v.T * scale).reshape(-1, group)


def sentence_vectors(out, attention_mask: torch.Tensor, pair: bool) -> torch.Tensor:
    """Pair tasks: the pooled [CLS] (the pooler's output, the [CLS] state if the model has no
    pooler); single sentences: the mean of the unpadded token states."""
    if pair:
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]
    mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
    return (out.last_hidden_state * mask).sum(1) / mask.sum(1)


def sample_heads(scores: torch.Tensor, keep: int, generator: torch.Generator, tau: float = 1.0,
                 attempts: int | None = None) -> torch.Tensor:
    """scores [L, H] -> a straight-through 0/1 mask [L, H] with `keep` heads per layer: hard
    Gumbel-softmax draws over each layer's heads, the union of the first j draws for the first j
    that reaches `keep` distinct heads (all `attempts` = 5H draws if none does)."""
    layers, heads = scores.shape
    attempts = attempts or 5 * heads
    u = torch.rand((attempts, layers, heads), generator=generator).to(scores.device)
    gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))
    soft = torch.softmax((scores.unsqueeze(0) + gumbel) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(-1), heads).to(soft.dtype)
    draws = hard - soft.detach() + soft  # value: the one-hot draw; gradient: the softmax's
    counts = hard.cummax(0).values.sum(-1)  # [attempts, L]: distinct heads in the first j+1 draws
    reached = counts == keep
    first = torch.where(reached.any(0), reached.float().argmax(0), torch.full_like(reached[0], attempts - 1,
                                                                                   dtype=torch.long))
    return torch.stack([draws[: int(j) + 1, layer].max(0).values for layer, j in enumerate(first.tolist())])


def micro_loss(model, gates, net: MapScorer, batch: dict, pair: bool, cfg: DictConfig,
               generator: torch.Generator) -> torch.Tensor:
    maps, dense = attention_maps(model, batch)  # the frozen model, unpruned (eager, no grad)
    layers, b, heads, n, _ = maps.shape
    scores = net(maps.reshape(-1, n, n))[:, 0 if pair else 1].reshape(layers, b, heads).mean(1)  # [L, H]
    keep = max(1, int(heads * float(cfg.get("keep_fraction", 0.5))))
    mask = sample_heads(scores, keep, generator)
    whole = torch.randperm(layers, generator=generator)[: layers // 2].to(mask.device)
    mask = mask.index_fill(0, whole, 1.0)  # a random half of the layers is not pruned
    attention = batch["attention_mask"]
    p = float(cfg.get("rep_dropout", 0.8))
    width = dense.last_hidden_state.shape[-1]
    keep_features = (torch.rand(width, generator=generator) >= p).to(maps.device, maps.dtype) / (1 - p)
    target = similarity_logits(sentence_vectors(dense, attention, pair) * keep_features)
    gates.set(mask.flatten())
    try:
        pruned = getattr(model, "base_model", model)(**model_inputs(batch))
    finally:
        gates.set(None)
    logits = similarity_logits(sentence_vectors(pruned, attention, pair) * keep_features)
    loss = F.kl_div(F.log_softmax(logits, -1), F.softmax(target, -1), reduction="none").mean()
    return loss * (1.0 if pair else float(cfg.get("single_weight", 10.0)))


# ---- the loop ------------------------------------------------------------------------------
class TaskStream:
    """Full batches of one task in a seeded order per (seed, task, epoch); the reference skips
    the short last batch of an epoch, so does this. Its place is two integers (resumable)."""

    def __init__(self, task: MetaTask, index: int, batch_size: int, seed: int, collate):
        self.task, self.index, self.batch_size, self.seed, self.collate = task, index, batch_size, seed, collate
        self.epoch, self.cursor = 0, 0
        self.per_epoch = len(task.data) // batch_size
        if self.per_epoch == 0:
            raise ConfigError("method.meta_batch_size", batch_size, f"<= {len(task.data)}, the rows of meta task "
                              f"{task.name}")
        self._order = None

    def next(self) -> dict:
        if self.cursor >= self.per_epoch:
            self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        if self._order is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.index * 10_007 + self.epoch)
            self._order = torch.randperm(len(self.task.data), generator=g)
        rows = self._order[self.cursor * self.batch_size:(self.cursor + 1) * self.batch_size].tolist()
        self.cursor += 1
        return self.collate([self.task.data[i] for i in rows])


def meta_train(*, model, tokenizer, tasks: list[MetaTask], cfg: DictConfig, out: Path, seed: int,
               device, logger=None, checkpoint: Path | None = None, save_every: int = 0, log_every: int = 10,
               progress_bar: bool = True, model_name: str = "") -> dict:
    """Train the pruner network on `tasks` with `model` frozen; write it to `out` (pruner.pt)."""
    from transformers import DataCollatorWithPadding

    from prune_cli.gates import Gates
    from prune_cli.train import StopSignals, load_checkpoint, rng_state, set_rng_state
    from prune_cli.units import UnitSpace

    method = cfg.method
    space = UnitSpace.from_model(model)
    if space.removed_params() or not space.is_whole():
        raise ConfigError("model.path", str(cfg.model.get("path")), "a dense pretrained model: meta_train learns "
                          "from every head's map (this model was pruned)")
    steps, accum = int(method.get("meta_steps", 8000)), int(method.get("meta_grad_accum", 8))
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    streams = [TaskStream(t, i, int(method.get("meta_batch_size", 60)), seed, collate) for i, t in enumerate(tasks)]
    weights = torch.tensor([float(t.weight) for t in tasks])
    net = MapScorer(int(method.get("map_size", 128)), int(method.get("width", 8))).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=float(method.get("meta_lr", 2e-2)))
    generator = torch.Generator().manual_seed(seed)
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.to(device).eval()
    step, losses, per_task = 0, [], {t.name: [] for t in tasks}
    state = load_checkpoint(checkpoint, "meta_train") if checkpoint is not None else None
    if state is not None:
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        for s, (epoch, cursor) in zip(streams, state["streams"]):
            s.epoch, s.cursor = epoch, cursor
        step, losses, per_task = state["step"], state["losses"], state["per_task"]
        set_rng_state(state["rng"])
        if logger is not None:
            logger.resume(state.get("global_step", logger.step), state.get("log_rows"))

    def save():
        if checkpoint is None:
            return
        record = {"net": net.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                  "streams": [(s.epoch, s.cursor) for s in streams], "step": step, "losses": losses,
                  "per_task": per_task, "rng": rng_state(),
                  "global_step": logger.step if logger is not None else step,
                  "log_rows": logger.rows if logger is not None else None}
        # the one it replaces stays (train-N.prev.pt) until this one is whole on disk
        checkpoints.atomic_write(checkpoint, lambda f: torch.save(record, f), checksum=True, keep_previous=True)

    bar = tqdm(total=steps, initial=step, desc="meta_train", disable=not progress_bar, dynamic_ncols=True)
    clip = float(method.get("meta_max_grad_norm", 1.0))
    net.train()
    try:
        with Gates(model, space) as gates, StopSignals() as signals:
            while step < steps:
                window = 0.0
                for _ in range(accum):
                    i = int(torch.multinomial(weights, 1, generator=generator))
                    batch = {k: v.to(device) for k, v in streams[i].next().items()}
                    loss = micro_loss(model, gates, net, batch, tasks[i].pair, method, generator)
                    if not torch.isfinite(loss):
                        continue  # as the reference: a NaN micro-batch is skipped
                    (loss / accum).backward()
                    METER.backward(batch["input_ids"].shape[0])
                    value = float(loss.detach())
                    window += value / accum
                    per_task[tasks[i].name].append(value)
                if clip > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                METER.add(optimizer_steps=1, examples=accum * streams[0].batch_size)
                losses.append(window)
                bar.update(1)
                if logger is not None:
                    logger.step += 1
                    if step % log_every == 0 or step == steps:
                        recent = losses[-log_every:]
                        logger.log({"meta_train/loss": sum(recent) / len(recent)})
                        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
                if save_every and step % save_every == 0:
                    save()
                if signals.received:
                    save()
                    signals.stop()
    finally:
        bar.close()
        for n, p in model.named_parameters():
            p.requires_grad_(requires[n])
        model.train(was_training)
    if not (save_every and step % save_every == 0):
        save()  # (saved already at this step: a second copy would leave no earlier generation)
    info = {"model_name": model_name, "model_type": getattr(model.config, "model_type", ""),
            "meta_tasks": [t.name for t in tasks], "steps": step, "seed": seed,
            "max_length": int(method.get("meta_max_length") or 128)}
    save_pruner(out, net.cpu(), geometry(space), info)
    head = max(1, min(20, len(losses) // 5))
    return {"steps": step, "loss_first": _mean(losses[:head]), "loss_last": _mean(losses[-head:]), "path": out.name,
            "loss_per_task": {k: _mean(v) for k, v in per_task.items()}}


def _safe(test, value) -> bool:
    try:
        return bool(test(value)) and not isinstance(value, bool)
    except (TypeError, ValueError):
        return False


def _mean(values) -> float | None:
    return float(sum(values) / len(values)) if values else None
