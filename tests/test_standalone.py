"""Every kind of export loads with plain transformers where prune-cli cannot be imported.

The exports are made here (tiny random models of every family, pruned as each kind of run prunes
them: whole heads with a layer emptied, heads of unequal sizes with FFN neurons, GRAIN's factorised
embeddings, encoder-decoders with T5's shared and UMT5's own position bias, grouped-query LLMs with
unequal groups, fused q/k/v projections). ONE subprocess, in which importing prune_cli raises, loads
each with `AutoModel*.from_pretrained(folder, trust_remote_code=True)` (and `pipeline(...)` for a
real MiniLM export with its tokenizer), runs it and generates; its outputs must equal those of
`prune_cli.load_pruned` on the same folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import minilm_path, padded_batch, tiny_model
from test_llm_arch import gqa_mask, left_padded

from prune_cli import load_pruned
from prune_cli.methods.grain.factorize import factorize_embeddings
from prune_cli.standalone import MODELING_FILE
from prune_cli.surgery import remove_units, save_pruned
from prune_cli.units import UnitSpace

#: case -> (tiny_model arch, unit kinds pruned, factorise the embeddings, auto class the folder names)
CASES = {
    "bert_heads": ("bert", ("head",), False, "AutoModelForSequenceClassification"),
    "bert_dims_ffn": ("bert", ("qk", "vo", "ffn"), False, "AutoModelForSequenceClassification"),
    "bert_grain": ("bert", ("qk", "vo", "ffn"), True, "AutoModelForSequenceClassification"),
    "distilbert_heads_ffn": ("distilbert", ("head", "ffn"), False, "AutoModelForSequenceClassification"),
    "bart_dims": ("bart", ("qk", "vo", "ffn"), False, "AutoModelForSeq2SeqLM"),
    "marian_heads": ("marian", ("head",), False, "AutoModelForSeq2SeqLM"),
    "t5_heads_ffn": ("t5", ("head", "ffn"), False, "AutoModelForSeq2SeqLM"),
    "umt5_heads": ("umt5", ("head",), False, "AutoModelForSeq2SeqLM"),
    "opt_lm_heads_ffn": ("opt_lm", ("head", "ffn"), False, "AutoModelForCausalLM"),
    "llama_lm_heads_ffn": ("llama_lm", ("head", "ffn"), False, "AutoModelForCausalLM"),
    "qwen2_lm_heads": ("qwen2_lm", ("head",), False, "AutoModelForCausalLM"),
    "gemma2_lm_heads": ("gemma2_lm", ("head",), False, "AutoModelForCausalLM"),
    "phi3_lm_heads_ffn": ("phi3_lm", ("head", "ffn"), False, "AutoModelForCausalLM"),
    "gpt2_lm_heads_ffn": ("gpt2_lm", ("head", "ffn"), False, "AutoModelForCausalLM"),
    "gpt_neox_lm_heads": ("gpt_neox_lm", ("head",), False, "AutoModelForCausalLM"),
}
GENERATES = {"AutoModelForSeq2SeqLM", "AutoModelForCausalLM"}

#: runs where prune_cli cannot be imported: every folder of the manifest, loaded by plain transformers
LOADER = r'''
import importlib.abc, json, sys

class Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "prune_cli" or name.startswith("prune_cli."):
            raise ImportError("prune_cli is hidden from this process")

sys.meta_path.insert(0, Hidden())
import torch, transformers

manifest = json.load(open(sys.argv[1]))
for case, item in manifest["cases"].items():
    io = torch.load(item["io"])
    model = getattr(transformers, item["auto"]).from_pretrained(item["path"], trust_remote_code=True).eval()
    bare = transformers.AutoModel.from_pretrained(item["path"], trust_remote_code=True).eval()
    out = {"class": type(model).__module__, "params": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        out["logits"] = model(**io["batch"]).logits
        hidden = bare(**io["batch"])
        out["hidden"] = getattr(hidden, "last_hidden_state", None)
        if "generate" in io:
            out["tokens"] = model.generate(**io["generate"])
    torch.save(out, item["out"])
text = manifest["pipeline"]
if text:
    classify = transformers.pipeline("text-classification", model=text["path"], trust_remote_code=True)
    json.dump(classify(text["inputs"]), open(text["out"], "w"))
'''


def _masks(units: UnitSpace, kinds, seed: int) -> dict[str, torch.Tensor]:
    """Random kept units of `kinds`; with heads, block 0 keeps none (the stand-in forward), and under
    grouped-query attention a group is emptied and others keep 1 and 3 query heads (`gqa_mask`)."""
    g = torch.Generator().manual_seed(seed)
    masks = {k: torch.rand(units.size(k), generator=g) > 0.4 for k in kinds}
    if "head" in masks and units.blocks[0].group_size > 1:
        masks["head"] = gqa_mask(units, 0)
    elif "head" in masks:
        masks["head"][: len(units.blocks[0].heads)] = False
    return masks


def _prune(case: str):
    arch, kinds, factorise, auto = CASES[case]
    model = tiny_model(arch, "eager" if arch.startswith("gemma2") else "sdpa", seed=3)  # gemma2: no sdpa
    if factorise:
        factorize_embeddings(model, 12)
    units = UnitSpace.from_model(model)
    remove_units(model, units.with_masks(_masks(units, kinds, seed=len(case))), units)
    return model, auto


def _batch(arch: str) -> dict:
    return left_padded(2) if arch.endswith("_lm") else padded_batch(arch)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """(case -> (what plain transformers computed, what load_pruned computes)), pipeline outputs."""
    root = tmp_path_factory.mktemp("standalone")
    manifest, expected = {"cases": {}, "pipeline": None}, {}
    for case in CASES:
        model, auto = _prune(case)
        folder = save_pruned(model, root / case)
        arch = CASES[case][0]
        io = {"batch": _batch(arch)}
        if auto in GENERATES:
            io["generate"] = {**io["batch"], "max_new_tokens": 4, "do_sample": False, "num_beams": 2,
                              "pad_token_id": model.config.pad_token_id}
        torch.save(io, root / f"{case}.io.pt")
        again = load_pruned(folder)
        with torch.no_grad():
            want = {"logits": again(**io["batch"]).logits, "params": sum(p.numel() for p in again.parameters())}
            if "generate" in io:
                want["tokens"] = again.generate(**io["generate"])
        expected[case] = want
        manifest["cases"][case] = {"path": str(folder), "auto": auto, "io": str(root / f"{case}.io.pt"),
                                   "out": str(root / f"{case}.out.pt")}
    # a real model with its tokenizer through pipeline(): MiniLM with uneven heads and FFN widths
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    minilm = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    units = UnitSpace.from_model(minilm)
    remove_units(minilm, units.with_masks(_masks(units, ("qk", "vo", "ffn"), seed=5)), units)
    text = save_pruned(minilm, root / "minilm", tokenizer)
    inputs = ["a gripping, funny film", "dull and far too long"]
    manifest["pipeline"] = {"path": str(text), "inputs": inputs, "out": str(root / "pipeline.json")}
    expected["pipeline"] = pipeline("text-classification", model=load_pruned(text), tokenizer=tokenizer)(inputs)
    (root / "manifest.json").write_text(json.dumps(manifest))
    run = subprocess.run([sys.executable, "-c", LOADER, str(root / "manifest.json")], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    got = {case: torch.load(item["out"]) for case, item in manifest["cases"].items()}
    got["pipeline"] = json.loads((root / "pipeline.json").read_text())
    return got, expected, manifest


@pytest.mark.parametrize("case", list(CASES))
def test_plain_transformers_loads_runs_and_generates_like_load_pruned(loaded, case):
    got, expected, _ = loaded
    mine, want = got[case], expected[case]
    assert mine["class"].endswith(".modeling_pruned")  # the folder's own code, not the stock class
    assert mine["params"] == want["params"]
    assert (mine["logits"] - want["logits"]).abs().max().item() < 1e-5
    if "tokens" in want:
        assert torch.equal(mine["tokens"], want["tokens"])
    assert mine["hidden"] is None or mine["hidden"].isfinite().all()


def test_pipeline_classifies_like_load_pruned(loaded):
    got, expected, _ = loaded
    assert [r["label"] for r in got["pipeline"]] == [r["label"] for r in expected["pipeline"]]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(got["pipeline"], expected["pipeline"]))


def test_an_unpruned_export_needs_no_remote_code(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama_lm", "sdpa")
    folder = save_pruned(model, tmp_path / "dense")
    assert not (folder / MODELING_FILE).exists()
    config = json.loads((folder / "config.json").read_text())
    assert "auto_map" not in config and "prune_cli_structure" not in config
    assert type(AutoModelForCausalLM.from_pretrained(folder)) is type(model)


def test_a_reloaded_export_saved_again_describes_itself_afresh(tmp_path):
    """load_pruned drops the folder's remote-code keys; saving the model again writes them anew."""
    model, _ = _prune("llama_lm_heads_ffn")
    first = save_pruned(model, tmp_path / "a")
    again = load_pruned(first)
    assert not hasattr(again.config, "prune_cli_structure") and not hasattr(again.config, "auto_map")
    second = save_pruned(again, tmp_path / "b")
    configs = [json.loads((folder / "config.json").read_text()) for folder in (first, second)]
    for key in ("auto_map", "prune_cli_structure", "prune_cli_kept_heads", "prune_cli_kept_units"):
        assert configs[0].get(key) == configs[1].get(key), key
    assert (first / MODELING_FILE).read_text() == (second / MODELING_FILE).read_text()


def test_the_runtime_module_imports_nothing_of_prune_cli():
    """It is shipped verbatim with every export, where prune-cli is not installed."""
    import ast
    import inspect

    from prune_cli.arch import runtime

    names = set()
    for node in ast.walk(ast.parse(inspect.getsource(runtime))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0] if not node.level else ".")
    assert names - set(sys.stdlib_module_names) <= {"torch", "transformers"}, names
