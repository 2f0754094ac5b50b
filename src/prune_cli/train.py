"""One training loop for every task and every method (nanoGPT-style: readable, no callbacks zoo).

A pruning method plugs in through `prune_cli.methods.base.Pruner` hooks: before each forward pass
it sets the gate values, after it adds its own loss term; its parameters get their own optimizer
group. The loop runs on `accelerate`, so the same code drives CPU, one GPU or many, in fp32, fp16
or bf16.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from prune_cli import checkpoints, distributed
from prune_cli.accounting import METER, batch_examples
from prune_cli.errors import Diverged


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


def rng_state() -> dict:
    """Every generator a training step draws from (dropout, sampling noise, numpy, Python)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    if isinstance(state, torch.Tensor):  # checkpoints before 2026-12 kept torch's CPU state only
        torch.set_rng_state(state)
        return
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Preempted(SystemExit):
    """A run stopped by SLURM's preemption / time-limit signal (or a plain `kill`), after its
    checkpoint was written: rerunning the command (submitit requeues the job) resumes from it."""


class StopSignals:
    """SIGUSR2 (SLURM's warning before a time limit or preemption, as submitit asks for it) and
    SIGTERM set a flag; the loop finishes the optimizer step it is in, writes the checkpoint AT
    ONCE, then `stop()` hands the signal to whoever handled it before (submitit: requeue the job)
    and ends the run. Only in the main thread (Python allows signal handlers nowhere else)."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGUSR2", None), signal.SIGTERM) if s is not None)

    def __init__(self):
        self.received: tuple | None = None
        self.previous: dict = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.received = self.received or (signum, frame)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def stop(self) -> None:
        if self.received is None:  # another process of the run got it: stop with it, no requeue here
            self.__exit__()
            raise Preempted(128 + signal.SIGTERM)
        signum, frame = self.received
        previous = self.previous.get(signum)
        self.__exit__()
        if callable(previous) and previous is not signal.default_int_handler:
            with contextlib.suppress(SystemExit):  # submitit's handler requeues the job, then exits:
                previous(signum, frame)            # the run ends as Preempted all the same
        raise Preempted(128 + signum)


def make_accelerator(tcfg: DictConfig, seed: int):
    """Seedable sampler: the shuffling order is a function of (seed, epoch), so a resumed run sees
    exactly the batches the interrupted one would have seen. Gradient accumulation is NOT left to
    accelerate: `train` groups micro-batches itself (see there), so accelerate's step counting and
    loss scaling stay out of it. Several processes on CPUs (torchrun) are accelerate's MULTI_CPU
    only when asked for with `cpu=True`."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    return Accelerator(
        mixed_precision=str(tcfg.precision),
        cpu=distributed.world_size() > 1 and not torch.cuda.is_available(),  # else accelerate sees one process
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
    )


def train_loader(dataset, collate_fn, batch_size: int, seed: int, shuffle: bool = True, num_workers: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn, generator=generator,
        num_workers=num_workers,
    )


def budget(tcfg: DictConfig, n_batches: int, epochs: float | None = None) -> Budget:
    """Optimizer steps of a stage. An epoch of n micro-batches is ceil(n / grad_accum) windows:
    the last one may be short, and it still is one optimizer step."""
    steps_per_epoch = max(1, math.ceil(n_batches / int(tcfg.grad_accum)))
    if tcfg.get("max_steps"):
        steps = int(tcfg.max_steps)
        return Budget(steps, math.ceil(steps / steps_per_epoch), steps_per_epoch)
    epochs = float(tcfg.epochs if epochs is None else epochs)
    return Budget(max(1, math.ceil(epochs * steps_per_epoch)), max(1, math.ceil(epochs)), steps_per_epoch)


def _param_groups(model, tcfg: DictConfig, pruner, freeze_model: bool, distiller=None):
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
    maps = distiller.map_group(float(tcfg.lr)) if distiller is not None else None
    if maps is not None:  # the hidden-state maps train with the model, by the distill group's settings
        groups.append(maps)
    return groups


def _scheduler(optimizer, tcfg: DictConfig, total_steps: int, pruner=None):
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
    if not any(g.get("method") or g.get("constant_lr") for g in optimizer.param_groups):
        return schedule
    # A learner's own parameters keep a constant rate by default: warm-up and decay would freeze the
    # head logits at both ends of the run, where the budget and temperature schedules still move
    # them. `method.lr_schedule=model` follows the model's schedule instead (the official DSP code).
    # Groups marked `constant_lr` (GRAIN's hidden-state maps, as its official code trains them) too.
    model_lambda = schedule.lr_lambdas[0]
    method_lambda = model_lambda if pruner is not None and pruner.lr_schedule == "model" else _constant
    lambdas = [method_lambda if g.get("method") else _constant if g.get("constant_lr") else model_lambda
               for g in optimizer.param_groups]
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


def loss_units(batch: dict) -> int | torch.Tensor:
    """How many terms the batch's mean loss averages: labelled tokens for token-level labels
    (NER, translation: -100 is ignored), else examples. Weighting micro-batches by it makes an
    accumulated window compute the loss of ONE batch of all its examples."""
    labels = batch.get("labels")
    if labels is None:
        first = next(v for v in batch.values() if torch.is_tensor(v))
        return int(first.shape[0])
    if labels.dim() > 1:
        return (labels != -100).sum()  # a tensor on the batch's device: no host sync per micro-batch
    return int(labels.shape[0])


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
    distiller=None,
    epochs: float | None = None,
    checkpoint: Path | None = None,
    evaluate=None,
    desc: str = "train",
) -> dict:
    """Train `model` in place; returns {"steps", "train_loss"}.

    `pruner`/`gates`: a learner method whose gate values are set before every forward pass.
    `distiller`: a `prune_cli.distill.Distiller`: the loss is its terms (teacher logits, hidden
    states, the hard labels by their weights) instead of the task loss alone. A learner that reads
    its importance from gate gradients (`pruner.observes_gradients`) sees them after the backward
    of the first terms; with `pruner.grad_sep` the hidden-state term is backpropagated after that
    (GRAIN's gradient separation), so the importance never sees its gradient but the weights do.
    `freeze_model`: train only the method's parameters (the "pipelined" regime's gate learning;
    the model stays in eval mode, so no dropout, unless `pruner.gate_dropout`). The learner's own
    parameters follow the model's lr schedule with `pruner.lr_schedule == "model"` (else a
    constant rate) and share the gradient-norm clip with `pruner.clip_logits`.
    `checkpoint`: file for a resumable mid-stage checkpoint (written every `save_every` steps and
    when the stage ends; the pipeline deletes it once the stage is committed).
    `evaluate`: callable(step) -> dict, run every `eval_every` steps.

    Gradient accumulation, spelled out: each epoch's micro-batches are cut into windows of
    `grad_accum` (the last may be shorter); every micro-batch's loss is weighted by its share of
    the window's loss terms (`loss_units`), so a window equals one batch of all its examples and
    a short last window gets the full step, not a fraction of it. Step s starts at epoch
    s // steps_per_epoch, window s % steps_per_epoch: a resumed run continues on the very batch
    the killed one would have seen next.
    """
    accum = int(tcfg.grad_accum)
    accelerator.dataloader_config.data_seed = seed  # each stage its own order (seed + stage index)
    loader = accelerator.prepare(
        train_loader(dataset, collate_fn, int(tcfg.batch_size), seed, num_workers=int(tcfg.num_workers)))
    n_batches = len(loader)
    plan = budget(tcfg, n_batches, epochs)
    optimizer = torch.optim.AdamW(
        _param_groups(model, tcfg, pruner, freeze_model, distiller), lr=float(tcfg.lr),
        betas=tuple(tcfg.get("adam_betas") or (0.9, 0.999)), eps=float(tcfg.get("adam_eps") or 1e-8),
    )
    scheduler = _scheduler(optimizer, tcfg, plan.steps, pruner)  # stepped once per optimizer step, by us
    model, optimizer = accelerator.prepare(model, optimizer)
    if pruner is not None:
        pruner.to(accelerator.device)
    if distiller is not None:
        distiller.to(accelerator.device)

    step = 0
    losses: list[float] = []
    nonfinite, bad_run = 0, 0  # optimizer steps skipped for a non-finite gradient: all, and in a row
    max_bad = int(tcfg.get("max_nonfinite_steps", 10))
    state = (load_checkpoint(checkpoint, desc, main=accelerator.is_main_process, total=plan.steps)
             if checkpoint is not None else None)
    if state is not None:
        step, losses, (nonfinite, bad_run) = _restore(state, accelerator, model, optimizer, scheduler, pruner,
                                                      distiller, logger)
    start_epoch, skip_windows = divmod(step, plan.steps_per_epoch)

    label_smoothing = float(tcfg.get("label_smoothing") or 0.0)
    log_every, eval_every = int(tcfg.log_every), int(tcfg.eval_every)
    save_every = int(tcfg.save_every)
    bar = tqdm(total=plan.steps, initial=step, desc=desc, disable=not tcfg.progress_bar, dynamic_ncols=True)
    # no dropout while only the gates learn on a fixed network, unless the method asks for it
    # (`method.gate_dropout`: the official DSP code's pipelined gate learning keeps model.train())
    train_mode = not freeze_model or (pruner is not None and pruner.gate_dropout)
    model.train(train_mode)
    extra, parts = 0.0, {}
    observes = pruner is not None and pruner.observes_gradients
    grad_sep = observes and pruner.grad_sep and distiller is not None
    # Two backward passes in one step (gradient separation) are more than DDP's reducer allows:
    # then every micro-batch runs without its sync and the window's gradients are averaged here.
    manual_sync = grad_sep and accelerator.num_processes > 1
    clip_method = pruner is not None and pruner.clip_logits
    outside_ddp = ([p for p in pruner.parameters()] if pruner is not None else []) + (
        list(distiller.maps.parameters()) if distiller is not None else [])

    def save():
        if checkpoint is not None:
            _save(checkpoint, accelerator, model, optimizer, scheduler, pruner, step, losses,
                  global_step=logger.step if logger is not None else step, distiller=distiller,
                  log_rows=logger.rows if logger is not None else None,
                  nonfinite=(nonfinite, bad_run))
            distributed.barrier()  # no process moves on (or exits on a signal) before rank 0 has written it

    with StopSignals() as signals:  # preemption / time limit: checkpoint at once, then stop
        epoch = start_epoch
        while step < plan.steps:
            loader.set_epoch(epoch)
            batches = iter(loader)
            for window in range(plan.steps_per_epoch):
                size = min(accum, n_batches - window * accum)
                micro = [next(batches) for _ in range(size)]
                if epoch == start_epoch and window < skip_windows:
                    continue  # already trained on before the restart
                weights, sizes = _window_weights(micro, accelerator)
                window_loss = 0.0
                for j, batch in enumerate(micro):
                    weight = weights[j]
                    sync = j == size - 1 and not manual_sync
                    with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                        if pruner is not None:
                            _set_gates(gates, pruner.gate_values(step, plan.steps, training=True))
                        with accelerator.autocast():
                            outputs = model(**batch, **(distiller.forward_kwargs() if distiller is not None else {}))
                            loss = task_loss(outputs, batch, label_smoothing)
                            extra = pruner.extra_loss() if pruner is not None else 0.0
                            if distiller is not None:
                                first, second, parts = distiller.losses(
                                    outputs, batch, loss, student=accelerator.unwrap_model(model), gates=gates,
                                    hard=pruner.hard_gates(step, plan.steps)
                                    if pruner is not None and distiller.peer is not None else None)
                                first = first + extra
                            else:
                                first, second, parts = loss + extra, None, {}
                        if grad_sep and second is not None:
                            accelerator.backward(first * weight, retain_graph=True)
                            pruner.observe_gradients()  # importance: the first terms' gradient only
                            accelerator.backward(second * weight)
                        else:
                            accelerator.backward((first if second is None else first + second) * weight)
                            if observes:
                                pruner.observe_gradients()
                        objective = loss if distiller is None else first + second
                    window_loss = window_loss + weight * objective.detach()
                    METER.backward(sizes[j])
                if accelerator.num_processes > 1:  # what DDP does not average: the method's parameters,
                    synced = outside_ddp + ([p for p in model.parameters() if p.requires_grad] if manual_sync else [])
                    for p in synced:                 # distillation maps, and everything under manual_sync
                        if p.grad is not None:
                            p.grad = accelerator.reduce(p.grad, "mean")
                    if observes:  # GRAIN: the global batch's importance
                        pruner.sync_observed(lambda t: accelerator.reduce(t, "mean"))
                finite = _gradients_finite(optimizer, pruner)
                if finite:
                    bad_run = 0
                else:  # skipped: no weight and no importance changes (fp16's scaler still sees the overflow)
                    bad_run, nonfinite = bad_run + 1, nonfinite + 1
                    if pruner is not None:
                        pruner.discard_observed()
                    tqdm.write(f"{desc}: step {step + 1}: non-finite gradient, step skipped ({nonfinite} so far)")
                    if bad_run > max_bad:
                        raise Diverged(desc, step + 1, f"the gradient has been non-finite for {bad_run} steps "
                                       f"in a row (trainer.max_nonfinite_steps={max_bad})")
                _optimizer_step(optimizer, scheduler, accelerator, finite, float(tcfg.max_grad_norm), clip_method)

                step += 1
                METER.add(optimizer_steps=1, epochs=1 / plan.steps_per_epoch, examples=sum(sizes))
                if pruner is not None:
                    pruner.after_step(step, plan.steps)  # GRAIN: running importance, masks that shrink
                if accelerator.num_processes > 1:  # the global window's loss, not this process's share
                    window_loss = accelerator.reduce(torch.as_tensor(window_loss, device=accelerator.device), "mean")
                losses.append(float(window_loss))  # one host sync a step, as before accumulation
                bar.update(1)
                if logger is not None:
                    logger.step += 1
                if logger is not None and (step % log_every == 0 or step == plan.steps):
                    row = _log_row(desc, losses[-log_every:], scheduler, parts, pruner, extra)
                    logger.log(row)
                    bar.set_postfix(loss=f"{row[f'{desc}/loss']:.4f}")
                if evaluate is not None and eval_every and step % eval_every == 0 and step < plan.steps:
                    if pruner is not None:  # score the hard top-K_t mask, not the last noisy relaxation
                        _set_gates(gates, pruner.gate_values(step, plan.steps, training=False))
                    evaluate(step)
                    model.train(train_mode)
                if save_every and (step % save_every == 0 or step == plan.steps):
                    save()  # also at the end: a kill before the pipeline commits the stage loses nothing
                stop = signals.received is not None  # read as late as possible: a signal during this step's
                if accelerator.num_processes > 1:    # logging or saving still stops at this step; on ANY process
                    stop = bool(accelerator.reduce(torch.tensor(float(stop), device=accelerator.device), "sum") > 0)
                if stop:  # every process stops at this same step
                    if not (save_every and step % save_every == 0):
                        save()  # this very step, not the last periodic one
                    if accelerator.is_main_process:
                        print(f"prune-run: stopped by a signal in stage {desc} at step {step}/{plan.steps}; its "
                              f"checkpoint is {checkpoint}: rerun the same command to resume", file=sys.stderr,
                              flush=True)
                    signals.stop()
                if step >= plan.steps:
                    break
            epoch += 1
    bar.close()
    if gates is not None:
        gates.set(None)
    model = accelerator.unwrap_model(model)
    bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:  # a stage that ends on non-finite weights has diverged, whatever its last steps did
        raise Diverged(desc, step, f"non-finite weights at the end of the stage (first: {bad})")
    accelerator.free_memory()
    if freeze_model:
        for p in model.parameters():
            p.requires_grad_(True)
    finite_losses = [v for v in losses if math.isfinite(v)]
    return {"steps": step, "train_loss": float(np.mean(finite_losses)) if finite_losses else float("nan"),
            "nonfinite_steps": nonfinite}


def _restore(state: dict, accelerator, model, optimizer, scheduler, pruner, distiller, logger):
    """Everything a step checkpoint holds put back (model, optimizer, schedule, the learner and the
    distillation maps, the fp16 scaler, the stage's compute so far, every RNG); returns
    (step, losses, (non-finite steps, of them in a row))."""
    accelerator.unwrap_model(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if pruner is not None:
        pruner.load_state_dict(state["pruner"])
    if distiller is not None and state.get("distill"):
        distiller.load_state_dict(state["distill"])
    if accelerator.scaler is not None and state.get("scaler"):
        accelerator.scaler.load_state_dict(state["scaler"])
    if logger is not None and "global_step" in state:  # curves continue where the killed run stopped,
        logger.resume(state["global_step"], state.get("log_rows"))  # its rows after this point are cut
    meters = state.get("meter")  # the stage's compute up to the checkpoint (checkpoints before 2026-12-06: none)
    if meters and len(meters) == accelerator.num_processes:
        METER.counts = Counter(meters[accelerator.process_index])
    ranks = state.get("rng_ranks")  # several processes: each its own generators (dropout differs per rank)
    set_rng_state(ranks[accelerator.process_index] if ranks and len(ranks) == accelerator.num_processes
                  else state["rng"])
    return state["step"], list(state.get("losses", [])), tuple(state.get("nonfinite", (0, 0)))


def _window_weights(micro: list, accelerator) -> tuple[list, list[int]]:
    """Each micro-batch's share of its window's loss terms, and its examples. With several
    processes the share is of the GLOBAL window: DDP averages over processes, so x world size gives
    the global mean. A window whose labels are all ignored gets weights 0, not NaN."""
    units = [loss_units(b) for b in micro]
    sizes = [batch_examples(b.values()) for b in micro]
    total = sum(units)
    if accelerator.num_processes > 1:
        total = accelerator.reduce(torch.as_tensor(total, dtype=torch.float32, device=accelerator.device),
                                   "sum") / accelerator.num_processes
    total = total.clamp_min(1) if torch.is_tensor(total) else max(1, total)
    return [u / total for u in units], sizes


def _optimizer_step(optimizer, scheduler, accelerator, finite: bool, max_grad_norm: float, clip_method: bool) -> None:
    """Clip, step and schedule a window whose gradients are finite (a non-finite one is skipped:
    only fp16's scaler still sees it, skips the step itself and lowers its scale)."""
    if finite and max_grad_norm > 0:  # after the sync: one norm on every rank; the method's parameters
        # join it with `method.clip_logits`, the hidden-state maps with `distill.maps_clip`
        accelerator.clip_grad_norm_(
            [p for g in optimizer.param_groups
             if (clip_method or not g.get("method")) and g.get("clip", True) for p in g["params"]],
            max_grad_norm,
        )
    if finite or accelerator.scaler is not None:
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16: an overflow skips both
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _log_row(desc: str, recent: list[float], scheduler, parts: dict, pruner, extra) -> dict:
    """log.jsonl's row for a logging step: the mean loss since the last row, the lr, the
    distillation terms and the learner's statistics."""
    row = {f"{desc}/loss": float(np.mean(recent)), f"{desc}/lr": scheduler.get_last_lr()[0]}
    row.update({f"{desc}/{k}": float(v) for k, v in parts.items()})
    if pruner is not None:
        row.update({f"{desc}/{k}": v for k, v in pruner.log_stats().items()})
        if torch.is_tensor(extra):
            row[f"{desc}/method_loss"] = float(extra.detach())
    return row


def _gradients_finite(optimizer, pruner) -> bool:
    """True when every gradient the step would apply (and every gradient a learner read its
    importance from) is finite. One fused norm per device and dtype, one host sync per step."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True) if grads else torch.zeros(())
    return bool(torch.isfinite(norm)) and (pruner is None or pruner.observed_finite())


def _set_gates(gates, values) -> None:
    """Head gate values ([H]) or gate values per unit kind ({kind: tensor})."""
    if isinstance(values, dict):
        gates.set_units(values)
    else:
        gates.set(values)


def _save(path: Path, accelerator, model, optimizer, scheduler, pruner, step: int, losses: list[float],
          global_step: int, distiller=None, nonfinite: tuple[int, int] = (0, 0),
          log_rows: int | None = None) -> None:
    ranks = distributed.gather(rng_state()) if accelerator.num_processes > 1 else None
    # what the stage has computed so far, per process: a resumed stage reports the same compute as
    # an uninterrupted one (the meter is reset when a stage starts, so the counts before the crash
    # would otherwise be lost)
    meters = distributed.gather(dict(METER.counts)) if accelerator.num_processes > 1 else [dict(METER.counts)]
    if not accelerator.is_main_process:
        return
    state = {
        "model": accelerator.unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "pruner": pruner.state_dict() if pruner is not None else {},
        "distill": distiller.state_dict() if distiller is not None else {},
        "step": step,
        "global_step": global_step,
        "log_rows": log_rows,  # log.jsonl rows written up to here: a resume drops the later ones
        "losses": losses,
        "nonfinite": nonfinite,
        "rng": rng_state(),
        "rng_ranks": ranks,
        "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        "meter": meters,
    }
    # the checkpoint it replaces is kept (train-N.prev.pt) until this one is whole on disk
    checkpoints.atomic_write(path, lambda f: torch.save(state, f), checksum=True, keep_previous=True)


def load_checkpoint(path: Path, desc: str, main: bool = True, total: int | None = None) -> dict | None:
    """The newest good mid-stage checkpoint (`train-N.pt`, else the one it replaced), or None:
    the stage starts from its beginning. A damaged one is said in one warning line, a good one in
    one line naming the step it resumes at (of `total` optimizer steps)."""
    of = f"/{total}" if total else ""
    return checkpoints.load_newest(
        path, lambda p: torch.load(p, map_location="cpu", weights_only=False), main=main,
        fallback=f"stage {desc} starts again from its first step",
        describe=lambda p, state: f"resuming stage {desc} at step {state['step']}{of} from {p}")
