"""Units inside heads and FFNs: gates of every kind equal uneven surgery, which saves and reloads.

The masks are built to hit every shape surgery has to handle in one model: a head with query/key
0 and value > 0 (uniform attention), a head with value 0 (it disappears, its query/key with it),
whole heads beside partial ones, a block with no head left, and FFN layers of unequal widths,
one of them 0.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ENC_DEC, SEQ2SEQ, minilm_path, padded_batch, tiny_model

from prune_cli.gates import Gates
from prune_cli.heads import HeadSpace
from prune_cli.surgery import count_params, load_pruned, remove_units, save_pruned
from prune_cli.units import UnitSpace, parse_units, ranges, unranges

#: UMT5 views q/k/v with its head count, not -1: refused for dimensions up front (test_validate)
ARCHS = ["bert", "roberta", "distilbert", "bart", "marian", "t5"]
DECODERS = [a for a in SEQ2SEQ if a != "umt5"]


def uneven_space(space: UnitSpace, seed: int) -> UnitSpace:
    g = torch.Generator().manual_seed(seed)
    qk = torch.rand(space.dims_total, generator=g) > 0.35
    vo = torch.rand(space.dims_total, generator=g) > 0.35
    for i, b in enumerate(space.blocks):
        base, d = space.dim_offsets[i], b.head_dim
        if i == 0:
            qk[base:base + d] = False  # head 0: no query/key left, values kept -> uniform attention
            vo[base:base + d] = True
            vo[base + d:base + 2 * d] = False  # head 1: no value left -> the head disappears
            qk[base + 2 * d:base + 3 * d] = vo[base + 2 * d:base + 3 * d] = True  # head 2 whole
        if i == 1:
            vo[base:base + b.num_heads * d] = False  # a block with no head left
    ffn = torch.rand(space.ffn_total, generator=g) > 0.5
    f = space.ffns[-1]
    ffn[f.offset:f.offset + f.width] = False  # an FFN with no neuron left
    return space.replace(qk=qk, vo=vo, ffn=ffn)


def outputs(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def gate_values(target: UnitSpace) -> dict:
    return {k: target.kept(k).float() for k in ("qk", "vo", "ffn")}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_gated_units_equal_uneven_surgery(arch, attn):
    model = tiny_model(arch, attn)
    space = UnitSpace.from_model(model)
    batch = padded_batch(arch)
    for seed in range(2):
        target = uneven_space(space, seed)
        with Gates(model, space) as gates:
            gates.set_units(gate_values(target))
            gated = outputs(model, batch)
        pruned = copy.deepcopy(model)
        remove_units(pruned, target, space)
        diff = (outputs(pruned, batch) - gated).abs().max().item()
        assert diff < 1e-5, f"{arch}/{attn} seed {seed}: gated vs pruned differ by {diff}"
        assert count_params(pruned) == count_params(model) - target.removed_params()
        assert UnitSpace.from_model(pruned) == target  # the config's record describes the weights
        # pruning the pruned model again, with gates read through the dense index
        again = target.with_masks({"vo": uneven_space(space, seed + 7).kept("vo"),
                                   "ffn": uneven_space(space, seed + 7).kept("ffn")})
        with Gates(pruned, target) as gates:
            gates.set_units(gate_values(again))
            gated_again = outputs(pruned, batch)
        remove_units(pruned, again, target)
        diff = (outputs(pruned, batch) - gated_again).abs().max().item()
        assert diff < 1e-5, f"{arch}/{attn} seed {seed}: second prune differs by {diff}"


@pytest.mark.parametrize("arch", ["bert", "distilbert", "bart", "t5"])
def test_saved_uneven_model_reloads_identically(arch, tmp_path):
    model = tiny_model(arch, "sdpa")
    space = UnitSpace.from_model(model)
    target = uneven_space(space, 3)
    remove_units(model, target, space)
    batch = padded_batch(arch)
    save_pruned(model, tmp_path / "m")
    loaded = load_pruned(tmp_path / "m", type(model), attn_implementation="sdpa")
    assert torch.equal(outputs(loaded, batch), outputs(model, batch))
    assert count_params(loaded) == count_params(model)
    assert UnitSpace.from_model(loaded) == target
    assert HeadSpace.from_model(loaded).total == int(target.kept("head").sum())


@pytest.mark.parametrize("beams", [1, 3], ids=["greedy", "beam"])
@pytest.mark.parametrize("arch", DECODERS)
def test_uneven_model_decodes_like_gated_with_cache(arch, beams):
    model = tiny_model(arch)
    space = UnitSpace.from_model(model)
    target = uneven_space(space, 6)  # (seed 5 gives tiny mT5 two candidate tokens within 1e-6: a coin toss)
    batch = padded_batch(arch)
    del batch["decoder_input_ids"]

    def decode(m, use_cache):
        out = m.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=beams,
                         use_cache=use_cache, output_logits=True, return_dict_in_generate=True)
        return out.sequences, torch.stack(out.logits)

    with Gates(model, space) as gates:
        gates.set_units(gate_values(target))
        want_ids, want = decode(model, True)
    pruned = copy.deepcopy(model)
    remove_units(pruned, target, space)
    for use_cache in (True, False):
        ids, logits = decode(pruned, use_cache)
        assert torch.equal(ids, want_ids), f"{arch}/cache={use_cache}: other tokens"
        # [steps, rows, vocab]; beams of equal score may sit in either row: match rows per step
        diff = (logits[:, :, None] - want[:, None]).abs().amax(-1).amin(-1).max().item()
        # relative to the logits' size: a few float32 ulps (tiny mT5's logits reach ~30, where one
        # ulp is 2e-6 and AMD EPYC kernels differ from the gated matmuls by 1.1e-5)
        scale = max(1.0, want.abs().max().item())
        assert diff < 1e-6 * scale, f"{arch}/beams={beams}/cache={use_cache}: logits differ by {diff} (scale {scale})"


def test_minilm_uneven_surgery_and_attention_scale():
    """The real model, with its padded batches: gated == pruned, and the kept scale is the original
    1/sqrt(32) (a pruned head of 20 dimensions must not switch to 1/sqrt(20)). In float64 the two
    agree to rounding (1e-10 on the raw hidden states); in float32 on what all-MiniLM-L6-v2 outputs
    (mean-pooled, normalised sentence embeddings) to 1e-5 -- its raw last hidden states reach 6.5,
    where float32 rounding of differently shaped products alone is ~1e-5."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    batch = dict(tok(["a short one", "a rather longer sentence about pruning attention heads"],
                     padding=True, return_tensors="pt"))

    def raw(model):
        return outputs(model, batch)

    def embed(model):
        hidden = outputs(model, batch)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    for attn in ("eager", "sdpa"):
        for dtype, check, tol in ((torch.float64, raw, 1e-10), (torch.float32, embed, 1e-5)):
            model = AutoModel.from_pretrained(path, attn_implementation=attn, dtype=dtype).eval()
            space = UnitSpace.from_model(model)
            target = uneven_space(space, 11)
            with Gates(model, space) as gates:
                gates.set_units(gate_values(target))
                gated = check(model)
            remove_units(model, target, space)
            diff = (check(model) - gated).abs().max().item()
            assert diff < tol, f"{attn}/{dtype}: {diff}"
        attention = model.encoder.layer[0].attention.self
        assert attention.scaling == pytest.approx(32 ** -0.5)
        assert attention._prune_cli_groups  # this block runs uneven


def test_first_order_importance_equals_grain_score():
    """|dL/dgate| at gate 1 equals GRAIN's |sum(grad * W)| over the unit's slice: the W_o column
    (vo), the W_q row plus its bias (qk), the W2 column (ffn)."""
    model = tiny_model("bert").train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    space = UnitSpace.from_model(model)
    batch = padded_batch("bert")
    gates_v = {k: torch.ones(space.size(k), requires_grad=True) for k in ("qk", "vo", "ffn")}
    with Gates(model, space) as gates:
        gates.set_units(gates_v)
        loss = outputs_with_grad(model, batch).pow(2).mean()
        loss.backward()
    modules = dict(model.named_modules())
    for i, b in enumerate(space.blocks):
        sl = slice(space.dim_offsets[i], space.dim_offsets[i] + b.num_heads * b.head_dim)
        o, q = modules[b.o], modules[b.q]
        vo_score = (o.weight.grad * o.weight).sum(0)
        qk_score = (q.weight.grad * q.weight).sum(1) + q.bias.grad * q.bias
        torch.testing.assert_close(gates_v["vo"].grad[sl].abs(), vo_score.abs(), atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(gates_v["qk"].grad[sl].abs(), qk_score.abs(), atol=1e-6, rtol=1e-4)
    for f in space.ffns:
        w2 = modules[f.output]
        torch.testing.assert_close(gates_v["ffn"].grad[f.offset:f.offset + f.width].abs(),
                                   (w2.weight.grad * w2.weight).sum(0).abs(), atol=1e-6, rtol=1e-4)


def outputs_with_grad(model, batch):
    out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_space_counts_and_density():
    model = tiny_model("bert")
    space = UnitSpace.from_model(model)
    d = model.config.hidden_size
    assert space.dims_total == sum(b.num_heads * b.head_dim for b in space.blocks)
    assert space.ffn_total == model.config.intermediate_size * model.config.num_hidden_layers
    kept, dense = space.weights()
    assert kept == dense == model.config.num_hidden_layers * (4 * d * d + 2 * d * model.config.intermediate_size)
    half = space.with_masks({"ffn": torch.arange(space.ffn_total) % 2 == 0})
    removed = int((torch.arange(space.ffn_total) % 2 == 1).sum()) * 2 * d  # a row of W1 + a column of W2
    assert half.density() == pytest.approx(1 - removed / dense)
    # a head with no value dimension left loses its query/key dimensions too
    vo = torch.ones(space.dims_total, dtype=torch.bool)
    vo[: space.blocks[0].head_dim] = False
    gone = space.with_masks({"vo": vo})
    assert not gone.kept("qk")[: space.blocks[0].head_dim].any()
    assert int(gone.kept("head").sum()) == space.total - 1


def test_ranges_round_trip_and_units_parsing():
    ids = [0, 1, 2, 5, 7, 8, 31]
    assert ranges(ids) == "0-2,5,7-8,31"
    assert unranges(ranges(ids)) == ids
    assert unranges("") == []
    assert parse_units("dims_ffn") == ("qk", "vo", "ffn")
    assert parse_units(["ffn", "head"]) == ("head", "ffn")
    with pytest.raises(Exception, match="units"):
        parse_units(["head", "qk", "vo"])
    with pytest.raises(Exception, match="units"):
        parse_units("neurons")


def test_encoder_decoder_blocks_and_ffns_are_found():
    for arch in ENC_DEC:
        space = UnitSpace.from_model(tiny_model(arch))
        assert {f.kind for f in space.ffns} == {"encoder", "decoder"}
        assert len(space.ffns) == len({(f.kind, f.layer) for f in space.ffns})


@pytest.mark.parametrize("kinds", [("qk", "vo", "ffn"), ("head", "ffn"), ("head",), ("ffn",), ("qk", "vo")])
@pytest.mark.parametrize("density", [0.9, 0.5, 0.1])
def test_one_global_ranking_keeps_the_budget_to_one_unit(kinds, density):
    """Kept weights >= the budget and less than one unit above it, whatever the mix of kinds; a
    query/key dimension never survives in a head without values."""
    from prune_cli.methods import select_units

    space = UnitSpace.from_model(tiny_model("bert"))
    g = torch.Generator().manual_seed(0)
    scores = {k: torch.rand(space.size(k), generator=g, dtype=torch.float64) for k in kinds}
    candidates = {k: space.kept(k) for k in kinds}
    kept, dense = space.weights()
    fixed = kept - sum(int(space.unit_sizes(k).sum()) for k in ("qk", "vo", "ffn")
                       if k in kinds or (k != "ffn" and "head" in kinds))
    budget = max(round(density * dense), fixed)
    out = select_units(space, scores, candidates, budget)
    unit = max(int(space.unit_sizes("head").max()) if "head" in kinds else 0, 2 * 32)
    got = out.weights()[0]
    assert budget <= got < budget + unit, (budget, got)
    heads_alive = out.kept("head")[space.head_of("qk")]
    assert not (out.kept("qk") & ~heads_alive).any()
    for k in ("qk", "vo", "ffn"):  # nothing outside the ranked kinds moved
        if k not in kinds and not (k != "ffn" and "head" in kinds):
            assert torch.equal(out.kept(k), space.kept(k))


def test_ranking_prefers_high_scores_across_kinds():
    from prune_cli.methods import select_units

    space = UnitSpace.from_model(tiny_model("bert"))
    scores = {"vo": torch.zeros(space.size("vo")), "qk": torch.zeros(space.size("qk")),
              "ffn": torch.ones(space.size("ffn"))}
    kept_ffn = int(space.unit_sizes("ffn").sum())
    out = select_units(space, scores, {k: space.kept(k) for k in scores}, kept_ffn)
    assert bool(out.kept("ffn").all()) and not out.kept("vo").any()  # FFN first: it scored higher
    assert int(out.kept("head").sum()) == 0


def test_a_recorded_structure_rebuilds_with_the_same_shapes():
    """prune_cli.reports.bench_records (scripts/bench_records.py) times records that keep no model:
    the counts of heads.json's `units` entry, laid on the dense model, give a model of exactly the
    recorded shapes (the same kept weights, heads and per-head dimensions) -- what its speed depends on."""
    from prune_cli.reports.bench_records import structure_of

    model = tiny_model("bert")
    space = UnitSpace.from_model(model)
    g = torch.Generator().manual_seed(0)
    pruned = space.with_masks({"qk": torch.rand(space.dims_total, generator=g) < 0.5,
                               "vo": torch.rand(space.dims_total, generator=g) < 0.6,
                               "ffn": torch.rand(space.ffn_total, generator=g) < 0.3})
    rebuilt = structure_of(space, pruned.summary())
    assert rebuilt.summary() == pruned.summary()
    from_record, from_masks = copy.deepcopy(model), copy.deepcopy(model)
    remove_units(from_record, rebuilt, space)
    remove_units(from_masks, pruned, space)
    assert count_params(from_record) == count_params(from_masks)
    assert UnitSpace.from_model(from_record).summary() == pruned.summary()


def test_bench_records_times_committed_records_per_task(tmp_path):
    """The script end to end on records kept in git (no model in them): one row per run with its
    task, the pruned shapes faster in FLOPs than the dense model, and a table per task."""
    import json
    from pathlib import Path

    from prune_cli.reports.bench_records import main

    root = Path(__file__).resolve().parents[1]
    records = root / "docs" / "results" / "runs" / "grain"
    picked = [records / "sst2" / "grain_d0.05_s1", records / "mrpc" / "heads_ffn_d0.2_s1"]
    out = tmp_path / "speed"
    main([*map(str, picked), "--label", "units", "--batch", "2", "--seq-len", "16", "--repeats", "1", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["results"]
    assert sorted(r["task"] for r in rows) == ["mrpc", "sst2"]
    assert all(r["flop_speedup"] > 4 for r in rows)  # 5 % and 20 % of the encoder's weights
    table = out.with_suffix(".md").read_text()
    assert "| mrpc | grain units=heads_ffn" in table and "| sst2 | grain |" in table


@pytest.mark.parametrize("arch", ["bert", "t5", "llama"])
def test_every_kind_of_the_table_indexes_alike(arch):
    """Each kind's entry (units.KIND_TABLE) agrees with itself: size, kept, unit_sizes and scope
    over one index; a kept mask of any kind only shrinks the space and keeps that kind's mask;
    the weights every stored kind holds add up to `weights()`; the config schema allows exactly
    these kinds (issue 33: unit kinds as a table)."""
    from prune_cli.schema import _UNITS
    from prune_cli.units import KIND_TABLE, KINDS, STORED

    assert tuple(_UNITS) == KINDS and set(STORED) == {"qk", "vo", "ffn"}
    space = UnitSpace.from_model(tiny_model(arch))
    g = torch.Generator().manual_seed(0)
    for name, kind in KIND_TABLE.items():
        n = space.size(name)
        assert n == kind.size(space) > 0
        assert space.kept(name).shape == space.unit_sizes(name).shape == space.scope(name, "all").shape == (n,)
        assert bool(space.kept(name).all()) and bool((space.unit_sizes(name) > 0).all())
        mask = torch.rand(n, generator=g) > 0.5
        pruned = space.with_masks({name: mask})
        assert torch.equal(pruned.kept(name), mask)
        for other in STORED:
            assert bool((pruned.kept(other) <= space.kept(other)).all())
    kept, dense = space.weights("all")
    assert kept == dense == sum(int(space.unit_sizes(k).sum()) for k in STORED) + int(space.group_cost().sum())
