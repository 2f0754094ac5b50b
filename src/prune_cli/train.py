"""One training loop for every task and every method (nanoGPT-style: readable, no callbacks zoo).

A pruning method plugs in through `prune_cli.methods.base.Pruner` hooks: before each forward pass
it sets the gate values, after it adds its own loss term; its parameters get their own optimizer
group. The loop runs on `accelerate`, so the same code drives CPU, one GPU or many, in fp32, fp16
or bf16.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


@dataclass
class Budget:
    """How long a stage trains: whole epochs, or max_steps when given."""

    steps: int
    epochs: int
    steps_per_epoch: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_accelerator(tcfg: DictConfig, seed: int):
    """Seedable sampler: the shuffling order is a function of (seed, epoch), so a resumed run sees
    exactly the batches the interrupted one would have seen."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    return Accelerator(
        mixed_precision=str(tcfg.precision),
        gradient_accumulation_steps=int(tcfg.grad_accum),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
    )


def train_loader(dataset, collate_fn, batch_size: int, seed: int, shuffle: bool = True, num_workers: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn, generator=generator,
        num_workers=num_workers,
    )


def budget(tcfg: DictConfig, n_batches: int, epochs: float | None = None) -> Budget:
    steps_per_epoch = max(1, math.ceil(n_batches / int(tcfg.grad_accum)))
    if tcfg.get("max_steps"):
        steps = int(tcfg.max_steps)
        return Budget(steps, math.ceil(steps / steps_per_epoch), steps_per_epoch)
    epochs = float(tcfg.epochs if epochs is None else epochs)
    return Budget(max(1, math.ceil(epochs * steps_per_epoch)), max(1, math.ceil(epochs)), steps_per_epoch)


def _param_groups(model, tcfg: DictConfig, pruner, freeze_model: bool):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if freeze_model:
            p.requires_grad_(False)
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(tcfg.weight_decay), "lr": float(tcfg.lr)})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": float(tcfg.lr)})
    if pruner is not None and pruner.parameters():
        lr = pruner.lr() or float(tcfg.lr)
        groups.append({"params": pruner.parameters(), "weight_decay": 0.0, "lr": lr, "method": True})
    return groups


def _scheduler(optimizer, tcfg: DictConfig, total_steps: int):
    from transformers import (
        get_constant_schedule_with_warmup,
        get_inverse_sqrt_schedule,
        get_linear_schedule_with_warmup,
    )

    warmup = int(tcfg.get("warmup_steps") or round(float(tcfg.warmup_ratio) * total_steps))
    kind = tcfg.lr_scheduler
    if kind == "linear":
        schedule = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    elif kind == "inverse_sqrt":
        schedule = get_inverse_sqrt_schedule(optimizer, num_warmup_steps=max(1, warmup))
    else:
        schedule = get_constant_schedule_with_warmup(optimizer, warmup)
    if not any(g.get("method") for g in optimizer.param_groups):
        return schedule
    # A learner's own parameters keep a constant rate: warm-up and decay would freeze the head
    # logits at both ends of the run, where the budget and temperature schedules still move them.
    model_lambda = schedule.lr_lambdas[0]
    lambdas = [_constant if g.get("method") else model_lambda for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def _constant(step: int) -> float:
    return 1.0


def task_loss(outputs, batch: dict, label_smoothing: float) -> torch.Tensor:
    """The model's own loss, or label-smoothed cross-entropy when asked (MT, classification)."""
    labels = batch.get("labels")
    logits = getattr(outputs, "logits", None)
    if label_smoothing <= 0 or labels is None or logits is None or logits.shape[-1] == 1:
        return outputs.loss
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100,
        label_smoothing=label_smoothing,
    )


def train(
    *,
    model,
    dataset,
    collate_fn,
    tcfg: DictConfig,
    accelerator,
    seed: int,
    logger=None,
    pruner=None,
    gates=None,
    freeze_model: bool = False,
    epochs: float | None = None,
    checkpoint: Path | None = None,
    evaluate=None,
    desc: str = "train",
) -> dict:
    """Train `model` in place; returns {"steps", "train_loss"}.

    `pruner`/`gates`: a learner method whose gate values are set before every forward pass.
    `freeze_model`: train only the method's parameters (the "pipelined" regime's gate learning).
    `checkpoint`: file for a resumable mid-stage checkpoint (written every `save_every` steps).
    `evaluate`: callable(step) -> dict, run every `eval_every` steps.
    """
    loader = train_loader(dataset, collate_fn, int(tcfg.batch_size), seed, num_workers=int(tcfg.num_workers))
    plan = budget(tcfg, len(loader), epochs)
    optimizer = torch.optim.AdamW(
        _param_groups(model, tcfg, pruner, freeze_model), lr=float(tcfg.lr),
        betas=tuple(tcfg.get("adam_betas") or (0.9, 0.999)), eps=float(tcfg.get("adam_eps") or 1e-8),
    )
    scheduler = _scheduler(optimizer, tcfg, plan.steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if pruner is not None and hasattr(pruner, "to"):
        pruner.to(accelerator.device)

    step, start_epoch, skip = 0, 0, 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        accelerator.unwrap_model(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if pruner is not None:
            pruner.load_state_dict(state["pruner"])
        step = state["step"]
        if logger is not None and "global_step" in state:
            logger.step = state["global_step"]  # curves continue where the killed run stopped
        start_epoch, skip = divmod(step * int(tcfg.grad_accum), len(loader))
        torch.set_rng_state(state["rng"])

    label_smoothing = float(tcfg.get("label_smoothing") or 0.0)
    log_every, eval_every = int(tcfg.log_every), int(tcfg.eval_every)
    save_every = int(tcfg.save_every)
    losses: list[float] = []
    bar = tqdm(total=plan.steps, initial=step, desc=desc, disable=not tcfg.progress_bar, dynamic_ncols=True)
    model.train()
    if freeze_model:
        model.eval()  # no dropout while only the gates learn on a fixed network
    done = step >= plan.steps
    for epoch in range(start_epoch, plan.epochs + 1):
        if done:
            break
        loader.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if epoch == start_epoch and i < skip:
                continue
            with accelerator.accumulate(model):
                if pruner is not None:
                    gates.set(pruner.gate_values(step, plan.steps, training=True))
                with accelerator.autocast():
                    outputs = model(**batch)
                    loss = task_loss(outputs, batch, label_smoothing)
                    extra = pruner.extra_loss() if pruner is not None else 0.0
                    total = loss + extra
                accelerator.backward(total)
                if accelerator.sync_gradients and float(tcfg.max_grad_norm) > 0:
                    accelerator.clip_grad_norm_(
                        [p for g in optimizer.param_groups if not g.get("method") for p in g["params"]],
                        float(tcfg.max_grad_norm),
                    )
                if pruner is not None and accelerator.num_processes > 1:  # method params live outside DDP
                    for p in pruner.parameters():
                        if p.grad is not None:
                            p.grad = accelerator.reduce(p.grad, "mean")
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            if logger is not None:
                logger.step += 1
            if logger is not None and (step % log_every == 0 or step == plan.steps):
                row = {f"{desc}/loss": float(np.mean(losses[-log_every:])), f"{desc}/lr": scheduler.get_last_lr()[0]}
                if pruner is not None:
                    row.update({f"{desc}/{k}": v for k, v in pruner.log_stats().items()})
                    if torch.is_tensor(extra):
                        row[f"{desc}/method_loss"] = float(extra.detach())
                logger.log(row)
                bar.set_postfix(loss=f"{row[f'{desc}/loss']:.4f}")
            if evaluate is not None and eval_every and step % eval_every == 0 and step < plan.steps:
                if pruner is not None:  # score the hard top-K_t mask, not the last noisy relaxation
                    gates.set(pruner.gate_values(step, plan.steps, training=False))
                evaluate(step)
                model.train()
            if checkpoint is not None and save_every and step % save_every == 0 and step < plan.steps:
                _save(checkpoint, accelerator, model, optimizer, scheduler, pruner, step,
                      global_step=logger.step if logger is not None else step)
            if step >= plan.steps:
                done = True
                break
    bar.close()
    if gates is not None:
        gates.set(None)
    model = accelerator.unwrap_model(model)
    accelerator.free_memory()
    if freeze_model:
        for p in model.parameters():
            p.requires_grad_(True)
    if checkpoint is not None and checkpoint.is_file():
        checkpoint.unlink()  # the stage's own checkpoint supersedes it
    return {"steps": step, "train_loss": float(np.mean(losses)) if losses else float("nan")}


def _save(path: Path, accelerator, model, optimizer, scheduler, pruner, step: int, global_step: int) -> None:
    state = {
        "model": accelerator.unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "pruner": pruner.state_dict() if pruner is not None else {},
        "step": step,
        "global_step": global_step,
        "rng": torch.get_rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
