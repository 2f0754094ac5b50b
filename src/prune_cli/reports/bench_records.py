"""Time the pruned models of recorded runs side by side, in one process, against the dense one.

A grid's records keep no model, and each run's own `bench` stage was timed under whatever else the
machine ran then (another grid worker, another session), so speeds from different runs do not
compare. Speed depends on the shapes alone, and every record's heads.json says what was left (per
head the query/key and value/output dimensions, per layer the FFN width): each shape is rebuilt
on the dense model (the first dimensions of each head kept) and all are timed round-robin with the
dense model (prune_cli.bench's protocol), so every speedup in the table is measured under the same
load. The rebuilt shapes are those GRAIN's pruning leaves (Yang et al., ACL 2023,
arXiv:2212.07634: heads of unequal query/key and value/output sizes, FFNs of unequal widths), run
through `surgery.remove_units`.

    python scripts/bench_records.py docs/results/runs/grain/sst2 --label units,method.alpha,method.importance \
        --out docs/results/grain_speed

Writes <out>.json (env + one row per run, in bench.json's row schema plus run, task, method,
seed, density asked) and <out>.md (per task, method and density: speedup mean over runs, and each run's).
"""

from __future__ import annotations

import argparse
import copy
import json
from collections import defaultdict
from pathlib import Path

import torch

from prune_cli import bench
from prune_cli.bench import load_model
from prune_cli.reports.runs import find_runs
from prune_cli.surgery import remove_units
from prune_cli.units import UnitSpace


def structure_of(space: UnitSpace, units: dict) -> UnitSpace:
    """The kept units a heads.json `units` entry describes, as masks over `space` (the dense
    model's): per head its first qk / vo dimensions, per FFN its first neurons. Blocks and FFNs
    are matched in order (the record's names carry the task model's prefix)."""
    blocks, ffns = units["blocks"], units["ffns"]
    if len(blocks) != len(space.blocks) or len(ffns) != len(space.ffns):
        raise ValueError(f"the record has {len(blocks)} blocks / {len(ffns)} FFNs, the model "
                         f"{len(space.blocks)} / {len(space.ffns)}: not the same architecture")
    qk, vo, ffn = (torch.zeros(space.size(k), dtype=torch.bool) for k in ("qk", "vo", "ffn"))
    for i, (block, rec) in enumerate(zip(space.blocks, blocks)):
        if rec["head_dim"] != block.head_dim or len(rec["qk"]) != block.num_heads:
            raise ValueError(f"block {i}: the record has {len(rec['qk'])} heads of {rec['head_dim']}, the model "
                             f"{block.num_heads} of {block.head_dim}")
        for h, (q, v) in enumerate(zip(rec["qk"], rec["vo"])):
            base = space.dim_offsets[i] + h * block.head_dim
            qk[base:base + q] = True
            vo[base:base + v] = True
    for f, rec in zip(space.ffns, ffns):
        ffn[f.offset:f.offset + rec["kept"]] = True
    return space.replace(qk=qk, vo=vo, ffn=ffn)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", nargs="+", type=Path, help="folders of records (or runs) with heads.json")
    p.add_argument("--label", default="", help="config keys added to a method's label (as collect_runs.py)")
    p.add_argument("--out", type=Path, default=Path("outputs/bench_records"), help="output path stem")
    p.add_argument("--model", default="minilm", help="the dense model the runs were pruned from")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    runs = [r for r in find_runs(args.roots, tuple(k for k in args.label.split(",") if k))
            if (Path(r["run"]) / "heads.json").is_file()
            and (json.loads((Path(r["run"]) / "heads.json").read_text()).get("units") or {}).get("blocks")]
    if not runs:
        raise SystemExit(f"no heads.json with a units record under {', '.join(map(str, args.roots))}")
    protocol = bench.Protocol(repeats=args.repeats, threads=args.threads)
    protocol.apply()
    dense, source = load_model(args.model, "sdpa")
    dense = dense.float().eval()
    space = UnitSpace.from_model(dense)
    variants = {}
    for r in runs:
        model = copy.deepcopy(dense)
        target = structure_of(space, json.loads((Path(r["run"]) / "heads.json").read_text())["units"])
        remove_units(model, target, space)
        variants[r["run"]] = (model.eval(), "recorded units")
    with torch.inference_mode():
        rows = bench.compare(args.model, dense, variants, args.batch, args.seq_len, protocol)
    for row, r in zip(rows, runs):
        row.update(run=r["run"], task=r["task"], method=r["method"], seed=r["seed"],
                   density_asked=r.get("density_target"),
                   density=r.get("density"), heads_left=r.get("heads_left"))
    env = bench.env_record(threads=args.threads, model_source=source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"env": env, "results": rows}, indent=1))

    groups = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["method"], row["density_asked"])].append(row)
    header = (f"Recorded structures timed round-robin with the dense {args.model} in one process: batch "
              f"{args.batch} x {args.seq_len}, float32, {args.threads} thread(s), median of {args.repeats} "
              f"(dense {rows[0]['dense_ms']:.0f} ms).\n")
    lines = [header,
             "| task | method | density asked | runs | heads left | speedup measured (per run) | FLOP limit |",
             "|---|---|---:|---:|---|---|---:|"]
    for (task, method, asked), group in sorted(groups.items(), key=lambda kv: (kv[0][0], -(kv[0][2] or 1), kv[0][1])):
        speed = sum(g["speedup"] for g in group) / len(group)
        flop = sum(g["flop_speedup"] for g in group) / len(group)
        per_run = ", ".join(f"{g['speedup']:.2f}" for g in sorted(group, key=lambda g: g["seed"] or 0))
        heads = ", ".join(str(g["heads_left"]) for g in sorted(group, key=lambda g: g["seed"] or 0))
        asked_text = "-" if asked is None else f"{100 * asked:g} %"
        lines.append(f"| {task} | {method} | {asked_text} | {len(group)} | {heads} | {speed:.2f}x ({per_run}) | {flop:.2f}x |")
    md = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {args.out}.md, .json ({len(rows)} runs)")
