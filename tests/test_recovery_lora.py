"""trainer.recovery_lora: the recovery fine-tune as LoRA adapters (LLM-Pruner's recovery), merged
into the pruned weights before anything is committed or exported."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file
from test_cli import TINY, prune_run
from test_llm_methods import llama_folder  # noqa: F401  (the tiny Llama fixture)
from test_training_exact import RESUME, _drive, _losses

TARGETS = ("q_proj", "v_proj", "down_proj")


def _run(folder, tmp_path, name, *args):
    run_dir = tmp_path / name
    res = prune_run([*TINY, f"model.path={folder}", "task.max_length=32", "method=magnitude", "heads=4",
                     "trainer.batch_size=4", f"hydra.run.dir={run_dir}", *args], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_only_the_target_modules_change_and_the_export_is_a_plain_model(llama_folder, tmp_path):  # noqa: F811
    """The same magnitude pruning, then no fine-tune vs a LoRA recovery on q/v/down: every weight
    outside those modules is bit-identical, each of theirs moved, the stage reports the adapters'
    size (r x (in + out) per target), and the exported model loads without peft."""
    from prune_cli.surgery import load_pruned

    plain = _run(llama_folder, tmp_path, "plain", "pipeline=[prune,export]")
    lora = _run(llama_folder, tmp_path, "lora", "pipeline=[prune,finetune,export]", "trainer.max_steps=3",
                "trainer.lr=1e-2", "trainer.recovery_lora.r=4", f"trainer.recovery_lora.target_modules=[{','.join(TARGETS)}]")
    a, b = (load_file(d / "model" / "model.safetensors") for d in (plain, lora))
    assert a.keys() == b.keys()
    moved = {k for k in a if not torch.equal(a[k], b[k])}
    targeted = {k for k in a if k.endswith(".weight") and k.split(".")[-2] in TARGETS and a[k].numel()}
    assert moved == targeted and targeted
    model = load_pruned(lora / "model")
    assert not any("lora" in n for n, _ in model.named_parameters())
    want = sum(4 * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in TARGETS)
    finetune = next(s for s in json.loads((lora / "metrics.json").read_text())["stages"] if s["stage"] == "finetune")
    assert finetune["lora_params"] == want and finetune["steps"] == 3


def test_lora_without_a_recovery_fine_tune_is_refused_in_one_line(tmp_path):
    res = prune_run([*TINY, "method=magnitude", "heads=4", "pipeline=[finetune,prune,evaluate]",
                     "trainer.recovery_lora.r=8"], cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith(
        "prune-run: error: trainer.recovery_lora.r=8: 0, or a finetune stage after the pruning stage")
    res = prune_run([*TINY, "trainer.recovery_lora.dropout=1.5"], cwd=tmp_path)
    assert res.returncode == 2 and "trainer.recovery_lora.dropout=1.5" in res.stderr


@pytest.mark.slow
def test_a_preempted_lora_recovery_resumes_exactly(tmp_path):
    """SIGUSR2 at step 3 of the LoRA recovery: the step checkpoint holds the adapters; the rerun
    wraps the committed pruned model again, resumes at step 3 and ends equal to the whole run."""
    overrides = [o for o in RESUME if o != "method=none"] + [
        "method=magnitude", "heads=8", "pipeline=[prune,finetune,evaluate,export]", "trainer.recovery_lora.r=4"]
    whole = _drive(tmp_path, tmp_path / "whole", "none:0", overrides)
    assert whole.returncode == 0, whole.stderr[-2000:]
    cut = tmp_path / "cut"
    res = _drive(tmp_path, cut, "signal:3", overrides)
    assert res.returncode == 128 + signal.SIGUSR2, res.stderr[-2000:]
    res = _drive(tmp_path, cut, "none:0", overrides)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "prune-run: resuming stage finetune at step 3/6 from" in res.stderr
    assert _losses(cut) == _losses(tmp_path / "whole")
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", cut))
    assert a["eval"] == b["eval"]
    wa, wb = (load_file(d / "model" / "model.safetensors") for d in (tmp_path / "whole", cut))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
