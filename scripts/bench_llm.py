"""Pruned vs dense SmolLM2 (model=smollm2) on CPU: prefill latency, cached decode tokens/s, KV-cache
bytes and peak memory, against their limits (docs/benchmarks.md, "Decoder-only LLMs").

Variants (query heads removed, of 270): whole key/value groups (`kv`, 25 / 33 / 50 %, spread evenly
over the layers or drawn at random over the model), query heads inside groups (`head`: every group
kept; 1 of 3 per group = 33 %, or a random 25 / 50 %), and groups + FFN neurons (`kv+ffn`). Each is
checked against the gated dense model before it is timed. fp32, 1 thread, one process, round-robin.

    python3 scripts/bench_llm.py --out outputs/bench/llm          # make bench (~25 min on a quiet core)
    python3 scripts/bench_llm.py --quick --out outputs/bench/llm  # dense, kv-50-even, head-50-random, 1 repeat (~4 min)

Writes <out>/llm.json ({"env", "results"}) and <out>/llm.md; prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prune_cli import bench_llm


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/bench/llm")
    p.add_argument("--quick", action="store_true", help="a smoke run: 3 variants, 1 repeat")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick 1)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--variants", nargs="+", help=f"default: {' '.join(bench_llm.DEFAULT)}")
    p.add_argument("--seed", type=int, default=0, help="of the random masks and prompts")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    args = p.parse_args(argv)

    labels = list(args.variants or (bench_llm.QUICK if args.quick else bench_llm.DEFAULT))
    if "dense" not in labels:
        labels.insert(0, "dense")
    repeats = args.repeats or (1 if args.quick else 5)
    t0 = time.time()
    payload = bench_llm.run(labels, repeats=repeats, warmup=args.warmup, seed=args.seed, memory=not args.no_memory)
    payload["env"]["command"] = " ".join(sys.argv)
    path = bench_llm.write_outputs(args.out, payload)
    print()
    print(bench_llm.report(payload))
    print(f"wrote {path} and llm.md ({len(labels)} variants, {time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
