"""The Python API (prune_cli.prune, prune_cli.PruneCallback) and its runnable example."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from conftest import minilm_path, padded_batch, tiny_model

import prune_cli
from prune_cli import api
from prune_cli.errors import ConfigError
from prune_cli.gates import Gates
from prune_cli.heads import HeadSpace
from prune_cli.units import UnitSpace

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "prune_in_python.py"


def _gated_logits(model, target: UnitSpace, batch):
    space = UnitSpace.from_model(model)
    with Gates(model, space) as gates, torch.no_grad():
        gates.set_units({k: target.kept(k).float() for k in ("head", "qk", "vo", "ffn")})
        return model(**batch).logits


def _lm_batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 99, (4, 10), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


def test_the_example_runs(tmp_path):
    result = runpy.run_path(str(EXAMPLE))["main"](minilm_path(), str(tmp_path))
    assert result["heads"] == 36
    assert result["label"] in ("LABEL_0", "LABEL_1")
    assert 0.5 < result["share"] < 1


@pytest.mark.parametrize("units,budget", [(None, {"heads": 7}), ("kv", {"heads": 6}), ("heads_ffn", {"density": 0.6})])
def test_prune_keeps_the_budget_and_equals_the_gated_model(units, budget):
    model = tiny_model("llama_lm", "sdpa")
    reference = tiny_model("llama_lm", "sdpa")
    data = _lm_batches()
    target, _ = api.choose(reference, "taylor", units=units, data=data, **budget)
    pruned = prune_cli.prune(model, method="taylor", units=units, data=data, **budget)
    assert pruned is model
    assert UnitSpace.from_model(model) == target
    if "heads" in budget:
        assert HeadSpace.from_model(model).total == budget["heads"]
    else:
        assert target.density() >= budget["density"]
    batch = _lm_batches(1, seed=5)[0]
    with torch.no_grad():
        got = model(**batch).logits
    assert (got - _gated_logits(reference, target, batch)).abs().max().item() < 1e-5


def test_texts_train_a_causal_lm_to_predict_their_next_tokens():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())  # any tokenizer with a vocabulary the model shares
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=8, intermediate_size=37, pad_token_id=tokenizer.pad_token_id)
    model = tf.LlamaForCausalLM(config).eval()
    batches = api.batches_from(["a short text", "and a longer one with more words"], model, tokenizer)
    assert (batches[0]["labels"][batches[0]["attention_mask"] == 0] == -100).all()
    prune_cli.prune(model, tokenizer, "taylor", sparsity=0.5, data=["a short text", "and a longer one"])
    assert HeadSpace.from_model(model).total == 4


@pytest.mark.parametrize("kwargs,key", [
    ({"method": "dsp", "heads": 4}, "method"),
    ({"method": "taylor", "heads": 4, "sparsity": 0.5}, "budget"),
    ({"method": "taylor", "heads": 99}, "heads"),
    ({"method": "michel", "units": "kv", "heads": 6}, "units"),
    ({"method": "taylor", "heads": 4, "data": ["texts for a classifier"]}, "data"),
    ({"method": "taylor", "heads": 4, "method_options": {"no_such_key": 1}}, "method.no_such_key"),
])
def test_bad_arguments_are_one_line_naming_the_key(kwargs, key):
    model = tiny_model("llama") if kwargs.get("units") == "kv" else tiny_model("bert")
    with pytest.raises(ConfigError) as err:
        prune_cli.prune(model, object(), **kwargs)
    assert err.value.key == key and "\n" not in str(err.value)


def test_the_callback_prunes_inside_a_users_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny_model("bert")
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(3, 99, (9,), generator=g).tolist(), "label": i % 2} for i in range(24)]
    callback = prune_cli.PruneCallback("taylor", heads=5, at_step=2, score_batches=2)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=1, per_device_train_batch_size=4,
                             report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True)
    seen = []
    # the gates hold the removed heads at 0 from step 2 on: the gated model's logits as training ends,
    # before the callback removes the heads (callbacks run in the order given)
    peek = type("Peek", (api.TrainerCallback,), {
        "on_train_end": lambda self, *a, **k: seen.append(model.eval()(**padded_batch("bert")).logits.detach())})()
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[peek, callback])
    trainer.train()
    assert HeadSpace.from_model(trainer.model).total == 5
    with torch.no_grad():
        after = trainer.model.eval()(**padded_batch("bert")).logits
    assert (after - seen[0]).abs().max().item() < 1e-5  # physically removed == gated, after training
