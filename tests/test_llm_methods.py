"""Every pruning method that applies to grouped-query attention, end to end through `prune-run` on a
tiny random Llama (3 layers x 6 query heads in 2 key/value groups; GLUE classification through
LlamaForSequenceClassification): the budget is exact (`heads=K` counts QUERY heads, `units=kv`
removes whole key/value groups, `density=` counts weights with each group's key/value rows once),
the export is physically that small, and methods that cannot apply are refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import minilm_path
from test_cli import TINY, prune_run

from prune_cli.arch import build_model
from prune_cli.heads import HeadSpace
from prune_cli.surgery import count_params, load_pruned
from prune_cli.units import UnitSpace, _dense_config


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny random LlamaForCausalLM with MiniLM's WordPiece tokenizer (it has a pad token)."""
    import transformers as tf

    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                         head_dim=8, intermediate_size=37, vocab_size=tokenizer.vocab_size, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                         eos_token_id=tokenizer.sep_token_id)
    tf.LlamaForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(folder, tmp_path, *args):
    run_dir = tmp_path / "run"
    res = prune_run([*TINY, f"model.path={folder}", "task.max_length=32", f"hydra.run.dir={run_dir}", *args],
                    cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", "magnitude", "taylor", "michel", "dsp", "ste", "voita", "apd"])
def test_methods_keep_exactly_k_query_heads(llama_folder, tmp_path, method):
    args = ["method.ending=top_k"] if method == "voita" else []
    run_dir = run(llama_folder, tmp_path, f"method={method}", "heads=7", *args)
    model = load_pruned(run_dir / "model")
    space = HeadSpace.from_model(model)
    assert space.total == 7
    assert json.loads((run_dir / "metrics.json").read_text())["heads_kept"] == 7
    with torch.device("meta"):  # the dense model of the same class: what surgery removed, exactly
        dense = build_model(_dense_config(model.config), type(model))
    assert count_params(model) == count_params(dense) - UnitSpace.from_model(model).removed_params()


@pytest.mark.slow
def test_units_kv_removes_whole_groups(llama_folder, tmp_path):
    run_dir = run(llama_folder, tmp_path, "method=taylor", "units=kv", "sparsity=0.5")
    space = HeadSpace.from_model(load_pruned(run_dir / "model"))
    assert space.total == 9  # 3 of 6 groups, 3 query heads each
    for block in space.blocks:
        assert all(sum(h // 3 == g for h in block.heads) == 3 for g in block.groups())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["taylor", "grain"])
def test_density_counts_group_rows_once_and_is_exact(llama_folder, tmp_path, method):
    args = ["distill=none", "pipeline=[prune_joint,evaluate,export]"] if method == "grain" else []
    run_dir = run(llama_folder, tmp_path, f"method={method}", "density=0.5", *args)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    units = UnitSpace.from_model(load_pruned(run_dir / "model"))
    kept, dense = units.weights()
    assert kept >= 0.5 * dense
    assert kept - 0.5 * dense < 2 * 48 * 8 + 2 * 48 * 8  # less than one unit: a head and its group's rows
    assert metrics["density"] == pytest.approx(kept / dense, abs=1e-6)


def test_dims_and_smp_are_refused_in_one_line(llama_folder, tmp_path):
    res = prune_run([*TINY, f"model.path={llama_folder}", "method=taylor", "density=0.5", "units=dims_ffn"],
                    cwd=tmp_path)
    assert res.returncode == 2
    assert "rotary embeddings rotate query/key dimensions in pairs" in res.stderr.strip().splitlines()[-1]
    res = prune_run([*TINY, f"model.path={llama_folder}", "method=taylor", "heads=8", "units=kv"], cwd=tmp_path)
    assert res.returncode == 2 and "a multiple of 3 with units=kv" in res.stderr, res.stderr[-2000:]
