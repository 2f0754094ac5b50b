"""Knowledge distillation from a fine-tuned dense teacher, for ANY method (`distill=` group).

The losses, each with its own weight key:

* ``logits``: KL(teacher || student) of the softened output distributions at temperature tau
  (GRAIN: 8). It has the gradient of the soft cross-entropy GRAIN uses and is 0 when the student
  equals the teacher. Sequence classification: over the labels; token classification (CoNLL):
  per real token; extractive QA (SQuAD): over the positions, for the start and the end logits;
  a regression head (STS-B, one output) is matched by MSE instead;
* ``hidden``: MSE between student and teacher hidden states on layers {0, 2, 4, ..., L} (0 = the
  embedding output), each student state mapped by a trainable linear map initialised to the
  identity, padding positions masked out; the per-layer terms are SUMMED, as the official GRAIN
  code adds them (airaria/GRAIN, PruneDistiller.compute_loss: weight 1 per matched layer), so the
  term grows with the number of matched layers (`hidden_reduce=mean` divides by it instead);
* ``peer`` (`distill=peer`, APD): each attention block that lost heads, run on the teacher's
  input with only its kept heads, matches the teacher block's output (`prune_cli.methods.apd.peer`);
* ``hard``: the task loss on the labels (GRAIN: weight 0).

`losses()` returns the terms in two parts, so that a learner can read its importance from the
first part's gradient before the second part's is added (GRAIN's gradient separation).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("none", "logits", "logits_hidden", "peer")


class Distiller(nn.Module):
    """Teacher (frozen, eval mode) + the trainable hidden-state maps + the loss terms."""

    def __init__(self, cfg, teacher: nn.Module, student: nn.Module, space=None):
        """`space`: the student's UnitSpace (which heads it still has), needed by `distill=peer`."""
        super().__init__()
        self.cfg = cfg
        self.mode = str(cfg.name)
        self.tau = float(cfg.get("temperature", 8.0))
        self.weights = {"logits": float(cfg.get("logit_weight", 1.0)), "hard": float(cfg.get("hard_weight", 0.0)),
                        "hidden": float(cfg.get("hidden_weight", 1.0)) if self.mode == "logits_hidden" else 0.0,
                        "peer": float(cfg.get("peer_weight", 1.0)) if self.mode == "peer" else 0.0}
        self.teacher_ref = [teacher.eval().requires_grad_(False)]  # not a submodule: never saved or trained
        self.hidden = self.weights["hidden"] > 0
        self.reduce = str(cfg.get("hidden_reduce", "sum"))
        self.layers = list(cfg.get("hidden_layers") or range(0, student.config.num_hidden_layers + 1, 2)) \
            if self.hidden else []
        if self.hidden and student.config.num_hidden_layers not in self.layers:
            self.layers.append(student.config.num_hidden_layers)  # odd depth: the last layer too
        d_s, d_t = _width(student.config), _width(teacher.config)
        self.maps = nn.ModuleList([_identity(d_s, d_t) for _ in self.layers])
        self.peer = None
        if self.weights["peer"] > 0:
            from prune_cli.methods.apd.peer import PeerLoss
            from prune_cli.units import UnitSpace

            self.peer = PeerLoss(teacher, student, space if space is not None else UnitSpace.from_model(student))

    @property
    def teacher(self) -> nn.Module:
        return self.teacher_ref[0]

    def to(self, *args, **kwargs):
        self.teacher.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def map_group(self, lr: float) -> dict | None:
        """The optimizer group of the hidden-state maps. The official GRAIN code adds them to its
        AdamW after the scheduler was built, so they train at a constant lr with the optimizer's
        default weight decay (0) and outside the gradient clip (it clips the model only):
        `maps_weight_decay`, `maps_lr_schedule` (constant | model) and `maps_clip` choose."""
        params = list(self.maps.parameters())
        if not params:
            return None
        return {"params": params, "lr": lr, "weight_decay": float(self.cfg.get("maps_weight_decay", 0.0)),
                "constant_lr": str(self.cfg.get("maps_lr_schedule", "constant")) == "constant",
                "clip": bool(self.cfg.get("maps_clip", False))}

    def forward_kwargs(self) -> dict:
        return {"output_hidden_states": True} if self.hidden else {}

    def losses(self, outputs, batch: dict, task_loss: torch.Tensor, student: nn.Module | None = None, gates=None,
               hard: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(first, second, parts): first = hard + logit terms, second = the hidden-state and peer terms.

        The peer term needs the `student` (unwrapped), its `gates` and `hard`, the 0/1 head gates
        of a learner that is fading heads out (None: only physically removed heads count)."""
        taps = self.peer.teacher_taps(self.teacher) if self.peer is not None else contextlib.nullcontext({})
        with torch.no_grad(), taps as recorded:
            teacher_out = self.teacher(**batch, **self.forward_kwargs())
        mask = batch.get("attention_mask")
        first = task_loss.new_zeros(())
        parts = {}
        if self.weights["logits"]:
            logit = logit_loss(outputs, teacher_out, self.tau, mask)
            first = first + self.weights["logits"] * logit
            parts["kd_logits"] = logit.detach()
        if self.weights["hard"]:
            first = first + self.weights["hard"] * task_loss
        second = torch.zeros((), device=first.device)
        if self.hidden:
            hidden = hidden_loss(outputs.hidden_states, teacher_out.hidden_states, self.layers, self.maps, mask,
                                 reduce=self.reduce)
            second = second + self.weights["hidden"] * hidden
            parts["kd_hidden"] = hidden.detach()
        if self.peer is not None:
            peer = self.peer(student, batch, recorded, gates=gates, hard=hard)
            second = second + self.weights["peer"] * peer
            parts["kd_peer"] = peer.detach()
        return first, second, parts


def logit_loss(student, teacher, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) at temperature tau over whatever the task's head predicts."""
    if hasattr(student, "start_logits") and student.start_logits is not None:  # extractive QA
        return 0.5 * (_kl(student.start_logits, teacher.start_logits, tau, mask, positions=True)
                      + _kl(student.end_logits, teacher.end_logits, tau, mask, positions=True))
    s, t = student.logits, teacher.logits
    if s.shape[-1] == 1:  # regression (STS-B): no distribution to soften
        return F.mse_loss(_f32(s), _f32(t))
    if s.dim() == 3:  # token classification: per real token
        return _kl(s, t, tau, mask)
    return _kl(s, t, tau)


def _kl(s: torch.Tensor, t: torch.Tensor, tau: float, mask: torch.Tensor | None = None,
        positions: bool = False) -> torch.Tensor:
    s, t = _f32(s) / tau, _f32(t) / tau
    if positions and mask is not None:  # QA: the distribution is over the real positions
        s = s.masked_fill(mask == 0, torch.finfo(s.dtype).min)
        t = t.masked_fill(mask == 0, torch.finfo(t.dtype).min)
    log_p_t = F.log_softmax(t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - F.log_softmax(s, dim=-1))).sum(-1)
    if kl.dim() == 2 and mask is not None:  # [b, n] per token
        weight = mask.to(kl.dtype)
        return (kl * weight).sum() / weight.sum().clamp_min(1)
    return kl.mean()


def hidden_loss(student_states, teacher_states, layers, maps, mask: torch.Tensor | None = None,
                reduce: str = "sum") -> torch.Tensor:
    """Sum (or mean, `reduce="mean"`) over the chosen layers of the MSE of map(student state) vs
    teacher state, padding out."""
    total = 0.0
    for layer, proj in zip(layers, maps):
        s, t = proj(_f32(student_states[layer])), _f32(teacher_states[layer])
        err = (s - t).pow(2).mean(-1)  # [b, n]
        if mask is not None:
            weight = mask.to(err.dtype)
            err = (err * weight).sum() / weight.sum().clamp_min(1)
        else:
            err = err.mean()
        total = total + err
    return total / max(len(layers), 1) if reduce == "mean" else total


def _f32(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (losses of bf16/fp16 activations are computed in float32)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _width(config) -> int:
    from prune_cli.arch import family_of

    return family_of(config).geometry(config).hidden


def _identity(d_in: int, d_out: int) -> nn.Linear:
    lin = nn.Linear(d_in, d_out)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[:, :min(d_in, d_out)].copy_(torch.eye(d_out, min(d_in, d_out)))
        lin.bias.zero_()
    return lin
