"""Models pruned inside heads and FFNs vs dense, against the FLOP limit of the TRUE kept units.

At each density (fraction of the encoder's attention + FFN weights kept) three models of the same
budget are timed round-robin with the dense one (see prune_cli/bench_units.py):

* grain-like          heads mostly full or empty, some partial, FFN widths varying per layer,
                      as `surgery.remove_units` builds it (heads of equal size grouped);
* grain-like padded   the same units, each layer padded to its largest head (the alternative
                      representation: stock attention, zero rows);
* heads+ffn           whole heads + FFN neurons (GRAIN's "whole heads" baseline).

    python3 scripts/bench_units.py                       # MiniLM, 50/20/10/5 %, b=32 and b=1 x 128, 1 thread
    python3 scripts/bench_units.py --models minilm bert-base --threads 2

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
from prune_cli.bench_units import units_grid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["minilm"], help="minilm bert-base")
    p.add_argument("--densities", nargs="+", type=float, default=[0.5, 0.2, 0.1, 0.05])
    p.add_argument("--batches", nargs="+", type=int, default=[32, 1])
    p.add_argument("--seq-lens", nargs="+", type=int, default=[128])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(bench.DTYPES))
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa | eager)")
    p.add_argument("--no-padded", action="store_true", help="skip the padded representation")
    p.add_argument("--random-minilm", action="store_true", help="MiniLM geometry with random weights")
    p.add_argument("--out", default="outputs/bench/units")
    args = p.parse_args(argv)

    protocol = bench.Protocol(repeats=args.repeats, warmup=args.warmup, threads=args.threads, device=args.device)
    protocol.apply()
    t0 = time.time()
    rows, sources = [], {}
    for name in args.models:
        model, sources[name] = load_model(name, args.attn, args.random_minilm)
        rows += units_grid(name, model, args.densities, args.batches, args.seq_lens, protocol, args.dtype,
                           padded=not args.no_padded)
        del model
    env = bench.env_record(args.device, dtype=[args.dtype], attn_implementation=args.attn, repeats=args.repeats,
                           warmup=args.warmup, weights=sources, command=" ".join(sys.argv),
                           seconds=round(time.time() - t0, 1), peak_rss_mb=bench.peak_rss_mb())
    path = bench.write_outputs(args.out, env, rows)
    print(f"wrote {path} and bench.md ({len(rows)} rows, {time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
