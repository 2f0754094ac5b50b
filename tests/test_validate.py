"""Every key is checked before any model loads: one ConfigError naming the key, the value and
what is allowed (the CLI prints it as one line, exit 2: tests/test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from prune_cli.errors import ConfigError
from prune_cli.schema import SCHEMA
from prune_cli.validate import validate

RTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "RTE"


def cfg(*overrides):
    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        return compose("config", overrides=["model=minilm", "task=rte", f"task.data_dir={RTE}", *overrides])


BAD = [
    (["trainer.log_every=0"], "trainer.log_every"),
    (["trainer.lr=0"], "trainer.lr"),
    (["trainer.lr=-1e-5"], "trainer.lr"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["trainer.max_steps=-3"], "trainer.max_steps"),
    (["trainer.warmup_ratio=1.5"], "trainer.warmup_ratio"),
    (["trainer.label_smoothing=1.0"], "trainer.label_smoothing"),
    (["trainer.label_smoothing=-0.1"], "trainer.label_smoothing"),
    (["trainer.eval_every=-1"], "trainer.eval_every"),
    (["trainer.save_every=-1"], "trainer.save_every"),
    (["trainer.num_workers=-2"], "trainer.num_workers"),
    (["trainer.adam_betas=[0.9]"], "trainer.adam_betas"),
    (["trainer.adam_betas=[0.9,1.5]"], "trainer.adam_betas"),
    (["trainer.adam_betas=fast"], "trainer.adam_betas"),
    (["trainer.recovery_epochs=0"], "trainer.recovery_epochs"),
    (["method=dsp", "heads=36", "method.gate_epochs=0"], "method.gate_epochs"),
    (["method=michel", "heads=36", "method.score_batches=-1"], "method.score_batches"),
    (["method=michel", "heads=36", "pipeline=[evaluate,export,prune]"], "pipeline"),
    (["method=michel", "heads=36", "pipeline=[finetune,evaluate,prune]"], "pipeline"),
    (["method=dsp", "heads=36", "method.regime=pipelined", "pipeline=[prune_joint,evaluate]"], "pipeline"),
    (["method=michel", "heads=36", "schedule=cubic"], "schedule='cubic'"),
    (["method=random", "heads=36", "schedule=linear"], "schedule='linear'"),
    (["model.attn_implementation=flash"], "model.attn_implementation"),
    (["bench.device=tpu"], "bench.device"),
    (["bench.batches=[0]"], "bench.batches"),
    (["bench.threads=0"], "bench.threads"),
    (["method=taylor", "density=0.1", "heads=36"], "density"),
    (["method=taylor", "density=0"], "density"),
    (["method=taylor", "density=1.5"], "density"),
    (["method=taylor", "heads=36", "units=dims_ffn"], "units"),  # heads=K counts whole heads
    (["method=taylor", "density=0.1", "units=neurons"], "units"),
    (["method=taylor", "density=0.1", "units=[head,qk,vo]"], "units"),
    (["method=taylor", "density=0.1", "units=[qk,ffn]"], "units"),
    (["method=michel", "density=0.5"], "units"),  # michel ranks whole heads; density= alone means dims_ffn
    (["method=dsp", "density=0.5", "units=heads"], "density"),  # learners keep exactly K heads
    (["method=taylor", "density=0.1", "units=heads"], "density=0.1: >= 0.667"),  # the FFN stays
    (["method=taylor", "density=0.1", "units=ffn"], "density=0.1: >= 0.333"),  # the attention stays
    (["method=none", "density=0.5"], "method"),
    (["method=taylor", "density=0.5", "model.attn_implementation=flash_attention_2"], "model.attn_implementation"),
    (["method=grain", "heads=36"], "heads=36: density=FRACTION instead"),  # GRAIN prunes to a density
    (["method=dsp", "heads=36", "pipeline=[prune_curve,evaluate]"], "pipeline"),
    (["method=michel", "heads=36", "pipeline=[finetune,prune_curve,evaluate]", "curve_step=0"], "curve_step"),
    (["method=grain"], "heads"),
    (["method=grain", "density=0.1", "distill.temperature=0"], "distill.temperature"),
    (["method=grain", "density=0.1", "distill.hard_weight=-1"], "distill.hard_weight"),
    (["method=grain", "density=0.1", "distill.teacher=/nonexistent"], "distill.teacher"),
    (["method=grain", "density=0.1", "distill=none", "pipeline=[teacher,prune_joint,evaluate]"], "pipeline"),
    (["method=michel", "heads=36", "distill=logits", "pipeline=[finetune,prune,finetune,evaluate]"], "distill.teacher"),
    (["method=grain", "density=0.1", "method.alpha=-1"], "method.alpha"),
    (["method=grain", "density=0.1", "method.p_start=0.5", "method.p_end=0.4"], "method.p_start"),
    (["method=grain", "density=0.1", "method.importance=magnitude"], "method.importance"),
    (["method=grain", "density=0.1", "method.schedule_rounding=round"], "method.schedule_rounding"),
    (["method=grain", "density=0.1", "distill.hidden_reduce=max"], "distill.hidden_reduce"),
    (["method=grain", "density=0.1", "distill.maps_lr_schedule=cosine"], "distill.maps_lr_schedule"),
    (["method=grain", "density=0.1", "distill.maps_weight_decay=-1"], "distill.maps_weight_decay"),
    (["method=grain", "density=0.1", "distill.temperature=inf"], "distill.temperature"),
    (["trainer.lr=inf"], "trainer.lr"),
    (["trainer.lr=nan"], "trainer.lr"),
    (["trainer.weight_decay=inf"], "trainer.weight_decay"),
    (["trainer.max_nonfinite_steps=-1"], "trainer.max_nonfinite_steps"),
]


@pytest.mark.parametrize("overrides, key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_is_one_error_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(cfg(*overrides))
    line = str(err.value)
    assert line.startswith(key) and "\n" not in line


def test_every_rule_names_a_key_the_packaged_config_has():
    """No rule for a key that does not exist (a renamed key would silently go unchecked)."""
    from test_schema import packaged_keys

    known = packaged_keys()
    for key in SCHEMA:
        group, _, name = key.partition(".")
        assert key in known or f"{group}.{name.partition('.')[2]}" in known, key


def test_good_configs_pass_and_keeping_every_head_says_so(capsys):
    validate(cfg("method=michel", "heads=36", "schedule=iterative"))
    validate(cfg("method=dsp", "heads=36", "schedule=cubic", "method.regime=pipelined"))
    validate(cfg("method=dsp_pipelined", "heads=36", "pipeline=[finetune,learn_gates,finetune,evaluate,export]"))
    assert "warning" not in capsys.readouterr().err
    validate(cfg("method=michel", "heads=72"))
    err = capsys.readouterr().err.strip().splitlines()
    want = "prune-run: warning: heads=72 keeps all 72 heads of minilm: nothing is pruned (heads=K counts heads KEPT)"
    assert err == [want]


def test_density_plan_and_its_defaults():
    plan = validate(cfg("method=taylor", "density=0.1"))
    assert plan.density == 0.1 and plan.units == ("qk", "vo", "ffn") and plan.keep is None
    assert validate(cfg("method=magnitude", "density=0.7", "units=heads")).units == ("head",)
    assert validate(cfg("method=random", "density=0.5", "units=[head,ffn]")).units == ("head", "ffn")
    assert validate(cfg("method=michel", "heads=36")).units == ("head",)


def test_head_dimensions_refused_up_front_where_attention_cannot_run_them(tmp_path):
    """UMT5 views its projections with its head count: dimensions cannot be pruned there (one
    line before loading); its FFN neurons can."""
    import transformers as tf

    config = tf.UMT5Config(d_model=32, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2, d_ff=37,
                           vocab_size=99, architectures=["UMT5ForConditionalGeneration"])
    config.save_pretrained(tmp_path)
    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        c = compose("config", overrides=["model=t5_small", f"model.path={tmp_path}", "task=wmt16_en_ro",
                                         "method=taylor", "density=0.5"])
    from prune_cli.units import DIM_MODEL_TYPES, UnitSpace

    assert "umt5" not in DIM_MODEL_TYPES
    from prune_cli.validate import _check_units

    class Task:
        def model_config(self, _):
            return tf.AutoConfig.from_pretrained(tmp_path)

    from prune_cli.arch.t5 import UMT5

    with pytest.raises(ConfigError, match="^units=.*heads, kv or ffn kinds"):
        _check_units(c, Task(), ("qk", "vo", "ffn"), 0.5, "all", UMT5)
    _check_units(c, Task(), ("ffn",), 0.8, "all", UMT5)  # FFN neurons are fine
    assert len(UnitSpace.from_config(tf.AutoConfig.from_pretrained(tmp_path)).ffns) == 4


def test_distillation_plans_a_teacher_stage_first():
    assert validate(cfg("method=grain", "density=0.1")).stages == ["teacher", "prune_joint", "evaluate", "export"]
    assert validate(cfg("method=grain", "density=0.1", "distill=none")).stages == ["prune_joint", "evaluate", "export"]
    assert validate(cfg("method=michel", "heads=36", "distill=logits")).stages[:2] == ["teacher", "finetune"]
    assert validate(cfg("method=michel", "heads=36")).stages[0] == "finetune"


def test_translation_is_refused_for_distillation():
    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        c = compose("config", overrides=["model=transformer_tiny", "task=multi30k_de_en", "method=random",
                                         "heads=10", "distill=logits"])
    with pytest.raises(ConfigError, match="^distill=.*translation"):
        validate(c)


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "experiment")
                                        .glob("*.yaml")))
def test_every_experiment_composes_and_validates_here(name):
    """Each experiment file composes, and passes every up-front check with the local model and
    data (the README's "here" overrides; SMP's meta tasks: the GLUE sets that are local)."""
    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    mt = ["task=multi30k_de_en", "trainer.epochs=2", "task.max_train_samples=3000"]  # the model stays transformer_iwslt
    here = {"smp": ["model=minilm", "task=rte", "method.meta_tasks=[cola,sst2,mrpc,stsb]"],
            "michel_curve": ["model=minilm", "task=sst2"], "dsp_mnli": ["model=minilm", "task=sst2", "task.primary_metric=accuracy"],
            "dsp_mnli_pipelined": ["model=minilm", "task=sst2", "task.primary_metric=accuracy"], "dsp_iwslt": [*mt, "method.cooldown_steps=null"],
            "dsp_iwslt_pipelined": mt, "voita": mt}.get(name, ["model=minilm"])
    sweep_keys = {"dsp_iwslt": "heads=36", "dsp_iwslt_pipelined": "heads=36", "dsp_mnli": "heads=36",
                  "dsp_mnli_pipelined": "heads=36", "voita": "method.l0_penalty=0.1"}
    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        c = compose("config", overrides=[f"experiment={name}", f"data_root={data}", *here,
                                         *([sweep_keys[name]] if name in sweep_keys else [])])
    plan = validate(c)
    assert plan.stages
    if name.endswith("_pipelined"):  # the official pipelined regime: no fine-tune after masking
        assert plan.stages[-3:] == ["learn_gates", "evaluate", "export"] and c.method.gate_dropout
    if name == "dsp_curve_equal":
        assert c.trainer.total_epochs == 3


@pytest.mark.parametrize("launcher", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "hydra"
                                                              / "launcher").glob("*.yaml")))
def test_every_launcher_config_composes(launcher):
    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        c = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert c.hydra.launcher._target_
