"""Prefill latency, cached decode speed and KV-cache memory of pruned vs dense SmolLM2 (CPU).

Pruning a grouped-query LLM can remove whole key/value groups (`units=kv`: a group's key/value
head with every query head reading it) or query heads inside groups (`heads=K`: the groups stay).
This measures what each buys where an LLM spends its time, and against which limit:

* **prefill** (batch 1 x 256 tokens, the generation prefill: logits of the last token only) is
  compute-bound; its limit is dense FLOPs / pruned FLOPs, matrix products counted from the shapes
  (q/k/v/o projections, scores and context over the full 256 x 256 square, FFN, lm_head);
* **cached greedy decode** (64 tokens after a 256-token prompt, batch 1 and 4) is memory-bound:
  each step reads every weight once and each sequence's KV cache; its limit is
  (weight bytes + KV bytes read per step) dense / pruned at the decode's mean context length.

Every model is physically pruned (`surgery.remove_units`) and checked against the gated dense model
(`gates.Gates`) on one prompt, in float64, before anything is timed. All variants are timed in one
process, fp32, `torch.set_num_threads(1)`, `torch.inference_mode()`, after warm-up rounds, medians
of `repeats`: prefills round-robin (the order rotating each round); decodes in lockstep (step j of
every model, the order rotating each step) from a copy of each variant's prompt cache, so only
decode steps are timed and a shared machine's drift hits every variant alike. Both the wall clock
and the computing thread's CPU time are recorded (`CLOCKS`). Peak memory comes from a fresh
subprocess per variant (`measure_memory`): the resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs) above what was resident before the run. A `dense-copy` variant measures the
noise floor. `scripts/bench_llm.py` is the command line; docs/benchmarks.md has the numbers.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import inspect
import json
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from prune_cli.bench import env_record, summarize
from prune_cli.gates import Gates
from prune_cli.surgery import count_params, remove_units
from prune_cli.units import UnitSpace

PROMPT_LEN = 256
NEW_TOKENS = 64
BATCHES = (1, 4)
#: prefill calls are short (~0.8 s): they are repeated this many times as often as decodes
PREFILL_REPEATS = 5
#: context each decode step attends over, averaged over the steps (step j: prompt + j + 1 keys)
MEAN_CONTEXT = PROMPT_LEN + (NEW_TOKENS + 1) / 2
#: the memory subprocess's glibc settings: large blocks mmapped and unmapped at free, nothing retained
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "MALLOC_TRIM_THRESHOLD_": "0"}
#: the variants of `make bench` (labels: units-percent of query heads removed-layout)
DEFAULT = ("dense", "dense-copy", "kv-25-even", "kv-25-random", "head-25-random", "kv-33-even", "head-33-even",
           "kv-50-even", "kv-50-random", "head-50-random", "kv+ffn-50-even")
QUICK = ("dense", "kv-50-even", "head-50-random")


# ------------------------------------------------------------------------------ the model
def load_smollm2() -> nn.Module:
    """model=smollm2 as prune-run loads it (the GGUF converted once into $PRUNE_CLI_CACHE), fp32."""
    from transformers import AutoModelForCausalLM

    from prune_cli.groups import compose_option
    from prune_cli.models import load_pretrained

    model, _ = load_pretrained(compose_option("model", "smollm2"), AutoModelForCausalLM)
    return model.float().eval()


# ------------------------------------------------------------------------------ variants
@dataclass
class Variant:
    label: str
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # kept masks over the DENSE unit index


def _spread(total: int, slots: int) -> list[int]:
    """`total` items over `slots` as evenly as possible, the extra ones evenly spaced."""
    base, extra = divmod(total, slots)
    return [base + ((i + 1) * extra // slots - i * extra // slots) for i in range(slots)]


def kv_even(space: UnitSpace, removed: int) -> torch.Tensor:
    """Kept mask over key/value groups: `removed` groups, spread evenly over the layers (which
    group of a layer rotates with the layer)."""
    keep, pos = torch.ones(space.size("kv"), dtype=torch.bool), 0
    for layer, (b, n) in enumerate(zip(space.blocks, _spread(removed, len(space.blocks)))):
        groups = b.num_heads // b.group_size
        for j in range(n):
            keep[pos + (layer + j) % groups] = False
        pos += groups
    return keep


def kv_random(space: UnitSpace, removed: int, g: torch.Generator) -> torch.Tensor:
    """`removed` groups drawn at random over the whole model (a layer may lose all its groups)."""
    keep = torch.ones(space.size("kv"), dtype=torch.bool)
    keep[torch.randperm(len(keep), generator=g)[:removed]] = False
    return keep


def head_even(space: UnitSpace, per_group: int) -> torch.Tensor:
    """`per_group` query heads removed from EVERY group: groups stay equal (the stock kernels)."""
    keep = torch.ones(space.total, dtype=torch.bool)
    for layer, b in enumerate(space.blocks):
        for group in range(b.num_heads // b.group_size):
            for j in range(per_group):
                keep[b.offset + group * b.group_size + (layer + j) % b.group_size] = False
    return keep


def head_random(space: UnitSpace, removed: int, g: torch.Generator) -> torch.Tensor:
    """`removed` query heads drawn at random over the model, never the last of a group: every group
    stays, with unequal numbers of query heads."""
    keep, group_of = torch.ones(space.total, dtype=torch.bool), space.group_of_head()
    left = torch.bincount(group_of).tolist()
    for h in torch.randperm(space.total, generator=g).tolist():
        if removed == 0:
            break
        if left[group_of[h]] > 1:
            keep[h], left[group_of[h]], removed = False, left[group_of[h]] - 1, removed - 1
    if removed:
        raise ValueError("cannot remove that many query heads and keep every group")
    return keep


def make_variant(space: UnitSpace, label: str, seed: int = 0) -> Variant:
    """The variant a label names: `dense`, `dense-copy` (a copy of the dense model: its speedup is
    the noise floor), `kv-P-L`, `head-P-L` or `kv+ffn-P-L`, P the percentage of query heads removed
    (25 and 50 round to whole groups: 22 and 45 of 90), L `even` or `random`."""
    if label in ("dense", "dense-copy"):
        return Variant(label)
    units, percent, layout = label.split("-")
    groups = space.size("kv")
    per_group = space.total // groups
    removed_groups = round(int(percent) / 100 * groups)
    g = torch.Generator().manual_seed(seed + zlib.crc32(label.encode()))
    if units in ("kv", "kv+ffn"):
        masks = {"kv": kv_even(space, removed_groups) if layout == "even" else kv_random(space, removed_groups, g)}
        if units == "kv+ffn":  # and the same share of every FFN's neurons (the first ones kept)
            masks["ffn"] = torch.cat([torch.arange(f.width) < round(f.width * (1 - int(percent) / 100))
                                      for f in space.ffns])
    elif units == "head" and layout == "even":
        if (removed_groups * per_group) % groups:
            raise ValueError(f"{label}: equal groups need a multiple of {groups} query heads removed")
        masks = {"head": head_even(space, removed_groups * per_group // groups)}
    elif units == "head":
        masks = {"head": head_random(space, removed_groups * per_group, g)}
    else:
        raise ValueError(f"unknown variant {label!r}")
    return Variant(label, masks)


def build(dense: nn.Module, space: UnitSpace, variant: Variant) -> nn.Module:
    """A physically pruned copy of `dense` (the dense model itself for `dense`)."""
    if not variant.masks:
        return dense if variant.label == "dense" else copy.deepcopy(dense)
    pruned = copy.deepcopy(dense)
    remove_units(pruned, space.with_masks(variant.masks), space)
    return pruned.eval()


@torch.inference_mode()
def logits_gap(dense: nn.Module, space: UnitSpace, pruned: nn.Module, variant: Variant,
               ids: torch.Tensor) -> float:
    """Largest |logit| difference between `pruned` and the dense model gated by the same masks."""
    if not variant.masks:
        return 0.0
    with Gates(dense, space) as gates:
        gates.set_units({k: m.float() for k, m in variant.masks.items()})
        want = dense(input_ids=ids).logits
    return float((pruned(input_ids=ids).logits - want).abs().max())


def verify(dense: nn.Module, space: UnitSpace, pruned: nn.Module, variant: Variant, ids: torch.Tensor,
           tolerance: float = 1e-6) -> dict[str, float]:
    """The pruned model computes what the gated dense one does: checked in float64, where the two
    agree to rounding of 1e-15 (in float32 the smaller matrix products of a pruned model round
    differently, ~1e-4..1e-3 on SmolLM2's logits after 30 layers); ValueError otherwise."""
    gaps = {"float32": logits_gap(dense, space, pruned, variant, ids)}
    try:
        gaps["float64"] = logits_gap(dense.double(), space, pruned.double(), variant, ids)
    finally:
        dense.float(), pruned.float()
    if gaps["float64"] > tolerance:
        raise ValueError(f"{variant.label}: the pruned model's logits differ from the gated dense model's by "
                         f"{gaps['float64']:.2e} in float64: not timing a wrong model")
    return gaps


# ------------------------------------------------------------------------------ limits
@dataclass(frozen=True)
class Kept:
    """Per layer: query heads, key/value heads and FFN neurons left (emptied layers: 0, 0)."""

    q_heads: list[int]
    kv_heads: list[int]
    ffn: list[int]

    @classmethod
    def of(cls, space: UnitSpace) -> Kept:
        q, kv = [], []
        for i in sorted(range(len(space.blocks)), key=lambda i: space.blocks[i].layer):
            b, layout = space.blocks[i], space.block_layout(i)
            q.append(len(layout))
            kv.append(len({h // b.group_size for h, _, _ in layout}))
        ffn = [len(space.ffn_kept(j)) for j in sorted(range(len(space.ffns)), key=lambda j: space.ffns[j].layer)]
        return cls(q, kv, ffn)


def prefill_flops(config, kept: Kept, batch: int = 1, seq_len: int = PROMPT_LEN, logits: int = 1) -> int:
    """Matrix-product FLOPs (2*m*k*n each) of a prefill: q/k/v/o projections, scores and context
    over the full seq_len x seq_len square, gated FFN (gate, up, down), lm_head over `logits`
    positions per sequence."""
    d, dh, tokens = config.hidden_size, config.head_dim, batch * seq_len
    total = 2 * batch * logits * d * config.vocab_size
    for q, kv, f in zip(kept.q_heads, kept.kv_heads, kept.ffn):
        total += 2 * tokens * d * dh * (2 * q + 2 * kv)  # q, o; k, v
        total += 2 * 2 * batch * q * seq_len * seq_len * dh  # Q K^T and P V
        total += 3 * 2 * tokens * d * f
    return total


def kv_bytes_per_position(config, kept: Kept, element_size: int = 4) -> int:
    """KV-cache bytes one sequence adds per position (keys and values of every kept group)."""
    return 2 * sum(kept.kv_heads) * config.head_dim * element_size


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter (tied embeddings once: the lm_head reads them all at each step)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def decode_bytes(model: nn.Module, kept: Kept, batch: int, context: float = MEAN_CONTEXT) -> float:
    """Bytes one decode step reads: the weights once, each sequence's KV cache at `context`."""
    return weight_bytes(model) + batch * context * kv_bytes_per_position(model.config, kept)


# ------------------------------------------------------------------------------ prefill and decode
def _cache_key(model: nn.Module) -> str:
    """transformers >= 5.25 calls the cache argument `cache` (`past_key_values` before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _out_cache(out):
    return getattr(out, "cache", None) if getattr(out, "cache", None) is not None else out.past_key_values


@torch.inference_mode()
def prefill(model: nn.Module, ids: torch.Tensor):
    """(KV cache, greedy next token [b, 1]) after the prompt `ids`, as generate's prefill (last logits)."""
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return _out_cache(out), out.logits[:, -1:].argmax(-1)


@torch.inference_mode()
def decode(model: nn.Module, cache, next_ids: torch.Tensor, steps: int = NEW_TOKENS):
    """`steps` cached greedy steps from (cache, next_ids); returns the grown (cache, next_ids)."""
    key = _cache_key(model)
    for _ in range(steps):
        out = model(input_ids=next_ids, use_cache=True, **{key: cache})
        cache, next_ids = _out_cache(out), out.logits[:, -1:].argmax(-1)
    return cache, next_ids


def cache_bytes(cache) -> int:
    """Bytes the cache object holds (keys and values of every layer)."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def prompt(config, batch: int, seq_len: int = PROMPT_LEN, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, int(config.vocab_size), (batch, seq_len), generator=g)


#: what is timed: wall clock, and the CPU time of the (one) computing thread, which on a shared
#: machine leaves out the time the thread waits for a core
CLOCKS = ("cpu", "wall")


def _now() -> dict[str, float]:
    return {"cpu": time.thread_time() * 1000, "wall": time.perf_counter() * 1000}


def time_prefill(models: dict[str, nn.Module], ids: torch.Tensor, repeats: int, warmup: int) -> dict[str, dict]:
    """Round-robin prefill timing (the order rotates every round, warm-up rounds dropped):
    {name: {clock: summarize(ms)}}."""
    samples = {name: {c: [] for c in CLOCKS} for name in models}
    names = list(models)
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t = _now()
            prefill(models[name], ids)
            end = _now()
            if r >= warmup:
                for c in CLOCKS:
                    samples[name][c].append(end[c] - t[c])
    return {name: {c: summarize(xs) for c, xs in by_clock.items()} for name, by_clock in samples.items()}


def time_decode(models: dict[str, nn.Module], starts: dict, repeats: int, warmup: int, steps: int = NEW_TOKENS,
                grown: dict | None = None) -> dict[str, dict]:
    """Decode timing in lockstep: each repeat starts every model from a copy of its prompt state
    `starts[name]` = (cache, next_ids) and runs step 1 of every model, then step 2..., the order
    rotating every step, so a shared machine's drift hits every model alike within ~0.1 s. A
    repeat's sample is the sum of its `steps` step times: {name: {clock: summarize(ms)}}; the bytes
    of each grown cache go to grown[name]."""
    samples = {name: {c: [] for c in CLOCKS} for name in models}
    names = list(models)
    for r in range(warmup + repeats):
        state = {name: (copy.deepcopy(starts[name][0]), starts[name][1]) for name in names}
        total = {name: dict.fromkeys(CLOCKS, 0.0) for name in names}
        for step in range(steps):
            shift = (r * steps + step) % len(names)
            for name in names[shift:] + names[:shift]:
                t = _now()
                state[name] = decode(models[name], *state[name], steps=1)
                end = _now()
                for c in CLOCKS:
                    total[name][c] += end[c] - t[c]
        if r >= warmup:
            for name in names:
                for c in CLOCKS:
                    samples[name][c].append(total[name][c])
        if grown is not None:
            grown.update({name: cache_bytes(state[name][0]) for name in names})
        del state
    return {name: {c: summarize(xs) for c, xs in by_clock.items()} for name, by_clock in samples.items()}


def profile_decode(model: nn.Module, start, steps: int = 16) -> dict:
    """Where decode steps spend their time (torch profiler, self CPU ms per step) for the ops that
    differ between variants: the key/value index_select of unequal groups, the cache's cat, sdpa,
    the projections' matmuls."""
    from torch.profiler import ProfilerActivity, profile

    cache = copy.deepcopy(start[0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        decode(model, cache, start[1], steps=steps)
    by_op = {e.key: e.self_cpu_time_total / 1000 / steps for e in prof.key_averages()}
    total = sum(by_op.values())
    keep = ("aten::index_select", "aten::cat", "aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::mm", "aten::addmm", "aten::bmm")
    out = {op.removeprefix("aten::"): round(by_op.get(op, 0.0), 3) for op in keep}
    out["total"] = round(total, 3)
    out["index_select_share"] = round(by_op.get("aten::index_select", 0.0) / total, 4) if total else 0.0
    return out


# ------------------------------------------------------------------------------ peak memory
def _status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def _settle() -> int:
    """Free what can be freed (Python, glibc's arenas) and return the resident set in KiB."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return _status_kb("VmRSS")


def memory_worker(label: str, seed: int = 0) -> dict:
    """In a fresh process: build the variant, then per batch size the peak resident memory of a
    prefill + 64 decode steps above what was resident before it (weights, interpreter, libraries).
    One unmeasured run first pages the weights in and warms the allocator."""
    torch.set_num_threads(1)
    model = load_smollm2()
    space = UnitSpace.from_model(model)
    variant = make_variant(space, label, seed)
    if variant.masks:
        remove_units(model, space.with_masks(variant.masks), space)
    out = {"label": label, "weight_mb": round(weight_bytes(model) / 2**20, 1)}
    for batch in BATCHES:
        ids = prompt(model.config, batch)
        decode(model, *prefill(model, ids))
        before = _settle()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        cache, _ = decode(model, *prefill(model, ids))
        peak = _status_kb("VmHWM")
        out[f"b{batch}"] = {"resident_mb": round(before / 1024, 1), "peak_mb": round(peak / 1024, 1),
                            "above_resident_mb": round((peak - before) / 1024, 1),
                            "kv_cache_mb": round(cache_bytes(cache) / 2**20, 1)}
        del cache
    return out


def measure_memory(label: str, seed: int = 0) -> dict:
    """`memory_worker` in a subprocess (a high-water mark is per process, and models built before
    would be in it). glibc serves every allocation of >= 64 KiB by its own mmap there, returned to
    the system when freed, so the resident set follows the live tensors: with its default, adaptive
    threshold, the same variant's peak moved by up to 60 MB from run to run with what the heap kept."""
    src = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
           **MALLOC_ENV}
    code = ("import json, sys; from prune_cli.bench_llm import memory_worker; "
            "print(json.dumps(memory_worker(sys.argv[1], int(sys.argv[2]))))")
    run = subprocess.run([sys.executable, "-c", code, label, str(seed)], env=env, capture_output=True, text=True,
                         check=False)
    if run.returncode != 0:
        raise RuntimeError(f"memory of {label}: {run.stderr.strip().splitlines()[-1:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ the benchmark
def run(labels: Sequence[str] = DEFAULT, repeats: int = 5, warmup: int = 1, seed: int = 0, memory: bool = True,
        tolerance: float = 1e-6, log: Callable[[str], None] | None = print) -> dict:
    """Every variant of `labels` against the dense model: {"env", "results": [row per variant]}."""
    log = log or (lambda _: None)
    torch.set_num_threads(1)
    t0, load_start = time.time(), os.getloadavg()
    dense = load_smollm2()
    space = UnitSpace.from_model(dense)
    config = dense.config
    check_ids = prompt(config, 1, 64, seed=seed + 1)
    models, kept, rows = {}, {}, {}
    for label in labels:
        variant = make_variant(space, label, seed)
        model = build(dense, space, variant)
        gap = verify(dense, space, model, variant, check_ids, tolerance)
        units = space.with_masks(variant.masks) if variant.masks else space
        models[label], kept[label] = model, Kept.of(units)
        uneven = sum(m.__dict__.get("_prune_cli_kv_index") is not None for m in model.modules())
        rows[label] = {"variant": label, "q_heads": sum(kept[label].q_heads), "kv_heads": sum(kept[label].kv_heads),
                       "ffn": sum(kept[label].ffn), "layers_unequal_groups": uneven,
                       "layers_emptied": sum(q == 0 for q in kept[label].q_heads),
                       "params": count_params(model), "weight_mb": round(weight_bytes(model) / 2**20, 2),
                       "logits_max_abs_diff_vs_gated": gap}
        log(f"{label}: {rows[label]['q_heads']} query heads, {rows[label]['kv_heads']} key/value heads, "
            f"{uneven} layers with unequal groups; logits vs gated: {gap['float64']:.1e} (float64), "
            f"{gap['float32']:.1e} (float32)")

    ids = prompt(config, 1)
    stats = time_prefill(models, ids, PREFILL_REPEATS * repeats, warmup)
    for name, s in stats.items():
        rows[name]["prefill_ms"] = _stats(s)
    log("prefill (CPU time): " + ", ".join(f"{n} {s['cpu']['median']:.0f} ms" for n, s in stats.items()))

    for batch in BATCHES:
        ids = prompt(config, batch)
        starts = {name: prefill(m, ids) for name, m in models.items()}
        grown: dict[str, int] = {}
        stats = time_decode(models, starts, repeats, warmup, grown=grown)
        for name, m in models.items():
            row = rows[name]
            row[f"decode_b{batch}_ms"] = _stats(stats[name])
            for c in CLOCKS:
                row[f"decode_b{batch}_tokens_per_s" + ("" if c == "cpu" else "_wall")] = round(
                    batch * NEW_TOKENS / stats[name][c]["median"] * 1000, 2)
            row[f"decode_b{batch}_bytes_per_step"] = round(decode_bytes(m, kept[name], batch))
            row[f"kv_cache_b{batch}_bytes"] = grown[name]  # measured: the cache object after 320 positions
            row[f"kv_cache_b{batch}_bytes_kept"] = batch * (PROMPT_LEN + NEW_TOKENS) * kv_bytes_per_position(
                config, kept[name])  # what the kept groups alone need
            if name != "dense" and (row["layers_unequal_groups"] or batch == BATCHES[-1]):
                row[f"profile_b{batch}"] = profile_decode(m, starts[name])
        log(f"decode b={batch} (CPU time): " + ", ".join(
            f"{n} {rows[n][f'decode_b{batch}_tokens_per_s']:.1f} tok/s" for n in models))
        del starts

    if memory:
        del models
        for label in (x for x in labels if x != "dense-copy"):  # the same model as dense
            rows[label]["memory"] = measure_memory(label, seed)
            log(f"memory {label}: " + ", ".join(f"b{b} +{rows[label]['memory'][f'b{b}']['above_resident_mb']} MB"
                                                for b in BATCHES))
    results = [_limits(rows[label], rows["dense"], kept[label], kept["dense"], config) for label in labels]
    env = env_record("cpu", dtype="float32", attn_implementation=config._attn_implementation, repeats=repeats,
                     prefill_repeats=PREFILL_REPEATS * repeats,
                     warmup=warmup, prompt_len=PROMPT_LEN, new_tokens=NEW_TOKENS, batches=list(BATCHES),
                     mean_context=MEAN_CONTEXT, seconds=round(time.time() - t0, 1),
                     load_average_start=[round(x, 2) for x in load_start], clocks=list(CLOCKS),
                     memory_method="VmHWM (reset via /proc/self/clear_refs) in a fresh subprocess per variant, "
                                   f"glibc {MALLOC_ENV}")
    return {"env": env, "results": results}


def _stats(by_clock: dict) -> dict:
    return {c: {k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()} for c, s in by_clock.items()}


def _limits(row: dict, dense: dict, kept: Kept, dense_kept: Kept, config) -> dict:
    """Measured speedups (CPU time; `_wall`: wall clock) against their limits: FLOPs for prefill,
    bytes read per step for decode."""
    row = dict(row)
    flops, dense_flops = prefill_flops(config, kept), prefill_flops(config, dense_kept)
    row["prefill_gflops"] = round(flops / 1e9, 3)
    row["prefill_limit"] = round(dense_flops / flops, 4)
    for batch in BATCHES:
        key = f"decode_b{batch}"
        row[f"{key}_limit"] = round(dense[f"{key}_bytes_per_step"] / row[f"{key}_bytes_per_step"], 4)
    for key in ("prefill", *(f"decode_b{b}" for b in BATCHES)):
        for c in CLOCKS:
            tail = "" if c == "cpu" else "_wall"
            speedup = dense[f"{key}_ms"][c]["median"] / row[f"{key}_ms"][c]["median"]
            row[f"{key}_speedup{tail}"] = round(speedup, 4)
            row[f"{key}_ratio{tail}"] = round(speedup / row[f"{key}_limit"], 4)
    return row


# ------------------------------------------------------------------------------ outputs
def table(results: Sequence[dict], clock: str = "cpu") -> str:
    """One markdown line per variant: speedup / limit = ratio for prefill and decode (CPU time, or
    `clock="wall"`), tokens/s, KV cache, peak memory."""
    tail = "" if clock == "cpu" else "_wall"
    lines = [("| variant | q / kv heads | params | prefill ms | prefill: speedup / FLOP limit | decode b1 tok/s "
              "| b1: speedup / bytes limit | decode b4 tok/s | b4: speedup / bytes limit | KV cache b1 MB "
              "| peak above resident b1 / b4 MB |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mem = r.get("memory")
        peak = f"{mem['b1']['above_resident_mb']:.0f} / {mem['b4']['above_resident_mb']:.0f}" if mem else ""
        lines.append(
            f"| {r['variant']} | {r['q_heads']} / {r['kv_heads']} | {r['params'] / 1e6:.1f} M "
            f"| {r['prefill_ms'][clock]['median']:.0f} | {_cell(r, 'prefill', tail)} "
            f"| {r['decode_b1_tokens_per_s' + tail]:.1f} | {_cell(r, 'decode_b1', tail)} "
            f"| {r['decode_b4_tokens_per_s' + tail]:.1f} | {_cell(r, 'decode_b4', tail)} "
            f"| {r['kv_cache_b1_bytes'] / 2**20:.1f} | {peak} |")
    return "\n".join(lines) + "\n"


def _cell(r: dict, key: str, tail: str = "") -> str:
    return f"{r[key + '_speedup' + tail]:.2f} / {r[key + '_limit']:.2f} = **{r[key + '_ratio' + tail]:.2f}**"


def profile_table(results: Sequence[dict]) -> str:
    """Per pruned variant and batch: ms per decode step in the ops that differ between variants."""
    lines = [("| variant | batch | index_select ms/step | cat ms/step | sdpa ms/step | mm+addmm ms/step "
              "| all ops ms/step | index_select share |"), "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for batch in BATCHES:
            p = r.get(f"profile_b{batch}")
            if p:
                lines.append(f"| {r['variant']} | {batch} | {p['index_select']:.2f} | {p['cat']:.2f} "
                             f"| {p['_scaled_dot_product_flash_attention_for_cpu']:.2f} "
                             f"| {p['mm'] + p['addmm']:.2f} | {p['total']:.2f} | {p['index_select_share']:.1%} |")
    return "\n".join(lines) + "\n"


def write_outputs(out_dir, payload: dict) -> Path:
    """<out_dir>/llm.json and llm.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "llm.json").write_text(json.dumps(payload, indent=1))
    (out / "llm.md").write_text(f"# Pruned vs dense SmolLM2: prefill, cached decode, KV cache\n\n{report(payload)}")
    return out / "llm.json"


def report(payload: dict) -> str:
    """The environment line, the tables (CPU time, then wall clock) and the decode profiles."""
    env, results = payload["env"], payload["results"]
    return (f"{env['cpu_model']} ({env['cpu_count']} cores), {env['threads']} thread, fp32, "
            f"{env['attn_implementation']}, torch {env['torch']}, transformers {env['transformers']}, {env['date']}, "
            f"load average {env.get('load_average_start')} at the start, "
            f"{[round(x, 2) for x in env['load_average'] or []]} at the end; medians of {env['repeats']} decode "
            f"and {env.get('prefill_repeats')} prefill round-robin repeats after {env['warmup']} warm-up.\n\nCPU time of the computing thread:\n\n"
            + table(results) + "\nWall clock:\n\n" + table(results, "wall")
            + "\nDecode steps profiled (torch profiler, self CPU time per step):\n\n" + profile_table(results))
