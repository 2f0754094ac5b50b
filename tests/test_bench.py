"""Benchmark library: FLOP counting, masks, and the bench.json schema. No timing assertions:
timings on a shared machine are noise; these tests check what is computed from them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from prune_cli import bench
from prune_cli.flops import EncoderGeometry, encoder_flops, flop_speedup, heads_per_layer, layer_flops
from prune_cli.heads import HeadSpace
from prune_cli.surgery import count_params, remove_heads

TINY = EncoderGeometry(hidden=8, layers=2, heads=2, head_dim=4, intermediate=16)
QUICK = bench.Protocol(repeats=2, warmup=1)
ROW_KEYS = {"model", "heads_kept", "heads_total", "layout", "batch", "seq_len", "dense_ms", "pruned_ms", "speedup",
            "flop_speedup", "ratio"}


def test_matmul_flops_by_hand():
    # batch 1, length 3 -> 3 tokens; hidden 8, head_dim 4, FFN 16
    # 2 heads: qkv 3*2*3*8*8=1152, scores+context 2*(2*1*2*3*3*4)=288, out 2*3*8*8=384, ffn 2*2*3*8*16=1536
    assert layer_flops(TINY, 2, 1, 3)["matmul"] == 1152 + 288 + 384 + 1536
    # 1 head: qkv 3*2*3*8*4=576, scores+context 2*(2*1*1*3*3*4)=144, out 2*3*4*8=192, ffn 1536
    assert layer_flops(TINY, 1, 1, 3)["matmul"] == 576 + 144 + 192 + 1536
    # no head: the FFN's products and the zero stand-in head's scores + context (8 features)
    assert layer_flops(TINY, 0, 1, 3)["matmul"] == 1536 + 2 * (2 * 1 * 1 * 3 * 3 * 8)
    flops = encoder_flops(TINY, [2, 1], 1, 3)
    assert flops["matmul"] == 3360 + 2448
    assert flops["total"] == flops["matmul"] + flops["elementwise"]
    assert flops["attention"] + flops["ffn"] + flops["other"] == flops["total"]
    # a head-less layer still pays its output bias, residuals, LayerNorms: more than zero element-wise work
    assert layer_flops(TINY, 0, 1, 3)["elementwise"] > 0


def test_pooler_and_classifier_terms():
    with_head = EncoderGeometry(8, 2, 2, 4, 16, pooler=True, num_labels=3)
    extra = encoder_flops(with_head, [2, 2], 2, 3)["matmul"] - encoder_flops(TINY, [2, 2], 2, 3)["matmul"]
    assert extra == 2 * 2 * 8 * 8 + 2 * 2 * 8 * 3  # pooler [2,8]x[8,8] + classifier [2,8]x[8,3]


def test_flop_speedup_depends_only_on_head_counts():
    assert flop_speedup(TINY, [2, 2], 4, 16) == 1.0
    four = EncoderGeometry(8, 2, 4, 2, 16)
    assert flop_speedup(four, [3, 1], 4, 16) == pytest.approx(flop_speedup(four, [2, 2], 4, 16))
    # an emptied layer still runs the zero stand-in head: a little more work than one head fewer elsewhere
    assert flop_speedup(TINY, [2, 0], 4, 16) < flop_speedup(TINY, [1, 1], 4, 16)
    assert flop_speedup(TINY, [1, 1], 4, 16) > 1.0
    with pytest.raises(ValueError):
        encoder_flops(TINY, [3, 1], 1, 3)
    with pytest.raises(ValueError):
        encoder_flops(TINY, [2], 1, 3)


@pytest.mark.parametrize("keep", [None, [1, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1]])
def test_matmul_flops_match_torch_flop_counter(keep):
    """Independent check: torch's FlopCounterMode on an eager forward of the real (pruned) model,
    including a layer with no heads left, counts exactly our `matmul` FLOPs."""
    model = tiny_model("bert", attn="eager")
    if keep is not None:
        remove_heads(model, torch.tensor(keep, dtype=torch.bool))
    geometry = EncoderGeometry.from_model(model)
    assert (geometry.pooler, geometry.num_labels, geometry.heads) == (True, 2, 4)
    ids = torch.randint(3, 99, (2, 10))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(input_ids=ids)
    assert encoder_flops(geometry, heads_per_layer(model), 2, 10)["matmul"] == counter.get_total_flops()


def test_uneven_flops_match_torch_flop_counter():
    """The same check on heads pruned inside and FFNs of unequal widths (one emptied): our count
    from the TRUE kept dimensions equals what the pruned model's eager forward multiplies."""
    from prune_cli.flops import kept_geometry
    from prune_cli.surgery import remove_units
    from prune_cli.units import UnitSpace

    model = tiny_model("bert", attn="eager")
    space = UnitSpace.from_model(model)
    g = torch.Generator().manual_seed(0)
    vo = torch.rand(space.dims_total, generator=g) > 0.4
    qk = vo | (torch.rand(space.dims_total, generator=g) > 0.5)
    ffn = torch.rand(space.ffn_total, generator=g) > 0.5
    ffn[: space.ffns[0].width] = False
    target = space.replace(qk=qk, vo=vo, ffn=ffn)
    assert all(len(q) > 0 for i in range(len(target.blocks)) for _, q, _ in target.block_layout(i))
    remove_units(model, target, space)
    heads, widths = kept_geometry(UnitSpace.from_model(model))
    assert widths[0] == 0 and len({q for h in heads for q, _ in h}) > 1  # uneven, as intended
    ids = torch.randint(3, 99, (2, 10))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(input_ids=ids)
    geometry = EncoderGeometry.from_model(model)
    assert encoder_flops(geometry, heads, 2, 10, widths)["matmul"] == counter.get_total_flops()
    # whole heads given as (qk, vo) pairs count what the head counts count
    assert layer_flops(TINY, [(4, 4), (4, 4)], 1, 3) == layer_flops(TINY, 2, 1, 3)


def test_layer_counts_layouts():
    assert bench.layer_counts([12] * 6, 36, "uniform") == [6] * 6
    uneven = bench.layer_counts([12] * 6, 18, "uneven")
    assert sum(uneven) == 18 and uneven == sorted(uneven, reverse=True) and uneven[-1] == 0
    assert bench.layer_counts([12] * 6, 54, "uneven")[:3] == [12, 12, 12]  # capped at the layer size
    assert bench.layer_counts([4, 4], 8, "uneven") == [4, 4]
    with pytest.raises(ValueError):
        bench.layer_counts([4, 4], 3, "random")
    with pytest.raises(ValueError):
        bench.layer_counts([4, 4], 9, "uniform")


def test_keep_mask_total_and_layout():
    space = HeadSpace.from_model(tiny_model("bert"))
    mask = bench.keep_mask(space, 0.5, "uneven")
    assert mask.dtype == torch.bool and int(mask.sum()) == 6
    assert [int(m.sum()) for m in space.split(mask)] == [3, 2, 1]


def test_summarize():
    s = bench.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)


def _check_row(row):
    assert ROW_KEYS <= row.keys()
    # the JSON holds rounded numbers (ms to 3 decimals, ratios to 4): compare within that rounding
    assert row["speedup"] == pytest.approx(row["dense_ms"] / row["pruned_ms"], rel=1e-2, abs=2e-4)
    assert row["ratio"] == pytest.approx(row["speedup"] / row["flop_speedup"], rel=1e-2, abs=2e-4)
    assert row["dense_stats_ms"]["n"] == row["pruned_stats_ms"]["n"] == 2


def test_grid_rows_and_outputs(tmp_path):
    model = tiny_model("bert", attn="sdpa")
    rows = bench.grid("tiny", model, [1.0, 0.5], ["uniform", "uneven"], [2], [8], QUICK, log=None)
    assert [(r["variant"], r["heads_kept"], r["layout"]) for r in rows] == [
        ("100%-uniform", 12, "uniform"), ("50%-uniform", 6, "uniform"), ("50%-uneven", 6, "uneven")]
    for row in rows:
        _check_row(row)
        assert row["heads_total"] == 12 and (row["batch"], row["seq_len"]) == (2, 8)
    full, half_u, half_n = rows
    assert full["flop_speedup"] == 1.0 and full["params_pruned"] == full["params_dense"]
    assert half_u["flop_speedup"] == half_n["flop_speedup"] > 1.0  # same total heads, same FLOPs
    assert half_n["heads_per_layer"] == [3, 2, 1] and half_u["params_pruned"] < half_u["params_dense"]

    env = bench.env_record("cpu", attn_implementation="sdpa", repeats=2, warmup=1)
    path = bench.write_outputs(tmp_path, env, rows)
    saved = json.loads(path.read_text())
    assert {"device", "cpu_model", "threads", "torch", "transformers", "git_commit", "attn_implementation"} <= saved["env"].keys()
    assert saved["results"] == rows
    table = (tmp_path / "bench.md").read_text()
    assert table.count("| tiny | float32 | 2 | 8 |") == 1  # summary: one line per (model, dtype, batch, length)
    assert table.count("| tiny | float32 | ") == 4  # ... plus one line per row
    assert f"{half_u['speedup']:.2f} / {half_u['flop_speedup']:.2f} = **{half_u['ratio']:.2f}**" in table


def test_grid_in_bfloat16_prunes_then_casts():
    """remove_heads builds new Linear layers in the default dtype; the grid must still hand the
    timer a model that is bf16 throughout (else the forward fails on mixed dtypes)."""
    rows = bench.grid("tiny", tiny_model("bert", attn="sdpa"), [0.5], ["uniform"], [1], [4],
                      bench.Protocol(repeats=1, warmup=0), dtype="bfloat16", log=None)
    assert rows[0]["dtype"] == "bfloat16" and rows[0]["heads_kept"] == 6


def test_bench_run_model_times_the_runs_model_against_its_dense_geometry(tmp_path):
    model = tiny_model("bert", attn="sdpa")
    space = HeadSpace.from_model(model)
    mask = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1], dtype=torch.bool)
    remove_heads(model, mask, space)
    params = count_params(model)
    state = SimpleNamespace(model=model, space=space, mask=mask)
    cfg = OmegaConf.create({"model": {"name": "tiny"},
                            "bench": {"batches": [2], "seq_lens": [8], "repeats": 2, "warmup": 1, "device": "cpu"}})
    summary = bench.bench_run_model(cfg, state, tmp_path)
    saved = json.loads((tmp_path / "bench.json").read_text())
    (row,) = saved["results"]
    _check_row(row)
    assert (row["heads_kept"], row["heads_total"], row["layout"]) == (6, 12, "uneven")
    assert row["heads_per_layer"] == [4, 1, 1]
    assert row["params_pruned"] == params < row["params_dense"]
    assert summary == {"bench": "bench.json", "speedup": {"b2_n8_float32": row["speedup"]}}
    assert count_params(state.model) == params and not state.model.training  # the run's model is untouched
    assert (tmp_path / "bench.md").is_file()


def test_bench_stage_rejects_unknown_dtype(tmp_path):
    from prune_cli.errors import ConfigError

    model = tiny_model("bert")
    space = HeadSpace.from_model(model)
    state = SimpleNamespace(model=model, space=space, mask=torch.ones(space.total, dtype=torch.bool))
    cfg = OmegaConf.create({"model": {"name": "tiny"}, "bench": {"dtypes": ["float8"], "device": "cpu"}})
    with pytest.raises(ConfigError, match="bench.dtypes"):
        bench.bench_run_model(cfg, state, tmp_path)
    assert not (tmp_path / "bench.json").exists()
