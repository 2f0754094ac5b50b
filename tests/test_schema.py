"""The config schema: every key of every packaged group file has a rule, and the rules refuse
wrong types (strict booleans, int vs float, list elements), non-finite numbers and out-of-range
values with one line naming the key -- for keys that before were read only after a stage trained."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from conftest import group_cfg
from hydra import compose, initialize_config_module

from prune_cli.errors import ConfigError
from prune_cli.groups import options
from prune_cli.schema import GROUPS, SCHEMA, keys_of, value_of
from prune_cli.validate import validate

CONF = Path(__file__).resolve().parents[1] / "conf"
RTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "RTE"


#: folders of conf/ that are no group of keys: whole recipes and size presets written at the top
#: level (@package _global_; `debug` is checked below), Hydra's own, this machine's settings
NOT_GROUPS = ("experiment", "debug", "hydra", "local")


def packaged_keys() -> set[str]:
    """`group.key` for every key of every group option as Hydra composes it (a base file such as
    task/_glue.yaml merged into the options that extend it; a base is no option of its own), and
    the top-level keys of config.yaml as they are."""
    keys = set()
    for key, value in (yaml.safe_load((CONF / "config.yaml").read_text()) or {}).items():
        if key in ("defaults", "hydra"):
            continue
        keys.add(key)
        if isinstance(value, dict):
            keys.update(f"{key}.{k}" for k in value)
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_")):
        if folder.name in NOT_GROUPS:
            continue
        names = options(folder.name)
        assert names, folder
        for name in names:
            composed = group_cfg(folder.name, name)
            keys.update(f"{folder.name}.{k}" for k in composed)
            # a mapping whose own keys have rules (trainer.recovery_lora) is checked key by key: so are they here
            keys.update(f"{folder.name}.{k}.{kk}" for k, v in composed.items_ex(resolve=False) if isinstance(v, Mapping)
                        and any(rule.startswith(f"{folder.name}.{k}.") for rule in SCHEMA) for kk in v)
    return keys


def test_every_key_of_every_group_file_has_a_rule():
    keys = packaged_keys()
    missing = sorted(k for k in keys if k not in SCHEMA)
    assert not missing, f"keys without a rule in prune_cli/schema.py: {missing}"
    assert set(GROUPS) <= {k.partition(".")[0] for k in SCHEMA}
    assert {"task.hub", "task.local", "task.max_length"} <= keys  # GLUE keys that only task/_glue.yaml holds


def set_keys(data: dict) -> dict:
    """The dotted keys a @package _global_ file sets, with their values (a group's keys one level down)."""
    out = {}
    for top, value in data.items():
        if top == "defaults":
            continue
        if top in GROUPS and isinstance(value, dict):
            out.update({f"{top}.{k}": v for k, v in value.items()})
        else:
            out[top] = value
    return out


@pytest.mark.parametrize("name", options("debug"))
def test_every_key_a_debug_option_sets_has_a_rule_its_value_passes_and_wins(name):
    """debug=tiny sets keys of other groups: each has a rule, the composed run passes them all, and
    the option's values are the run's (it comes after the task, trainer and experiment defaults)."""
    values = set_keys(yaml.safe_load((CONF / "debug" / f"{name}.yaml").read_text()))
    assert values and not [k for k in values if k not in SCHEMA]
    for extra in ([], ["experiment=demo"]):
        composed = cfg(f"debug={name}", *extra)
        validate(composed)
        assert {k: value_of(composed, k) for k in values} == values, extra


def cfg(*overrides):
    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        return compose("config", overrides=["model=minilm", "task=rte", f"task.data_dir={RTE}", *overrides])


def test_every_composed_key_of_every_method_is_known():
    for method in options("method"):
        composed = cfg(f"method={method}")
        unknown = [k for k in keys_of(composed) if k not in SCHEMA and k != "hydra"]
        assert not unknown, (method, unknown)


BAD = [
    (["trainer.progress_bar=no"], "trainer.progress_bar='no': true or false"),
    (["export_model=maybe"], "export_model='maybe': true or false"),
    (["method=grain", "density=0.1", "method.grad_sep=no"], "method.grad_sep='no': true or false"),
    (["trainer.batch_size=32.0"], "trainer.batch_size=32.0"),
    (["trainer.max_steps=2.5"], "trainer.max_steps=2.5"),
    (["bench.batches=[1,2.5]"], "bench.batches=[1, 2.5]"),
    (["trainer.adam_betas=[0.9,inf]"], "trainer.adam_betas=[0.9, inf]"),
    (["method=dsp", "heads=36", "method.lr=inf"], "method.lr=inf"),
    (["method=dsp", "heads=36", "method.tau_start=abc"], "method.tau_start='abc'"),
    (["method=grain", "density=0.1", "method.beta=null"], "method.beta=None"),
    (["method=grain", "density=0.1", "distill.hidden_layers=[0,x]"], "distill.hidden_layers=[0, 'x']"),
    (["method=grain", "density=0.1", "distill.hidden_layers=[-1,2]"], "distill.hidden_layers=[-1, 2]"),
    (["pipeline=[]"], "pipeline=[]"),
    (["curve_step=0"], "curve_step=0"),
    (["task.subsample_seed=1.5"], "task.subsample_seed=1.5"),
    (["logger.tags=[1,2]"], "logger.tags=[1, 2]"),
]


@pytest.mark.parametrize("overrides, start", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_wrong_type_or_value_is_one_line_naming_the_key(overrides, start):
    with pytest.raises(ConfigError) as err:
        validate(cfg(*overrides))
    assert str(err.value).startswith(start) and "\n" not in str(err.value), str(err.value)


def test_keys_checked_against_the_model_and_the_machine_before_anything_loads(tmp_path):
    import torch

    a_file = tmp_path / "cache"
    a_file.write_text("not a folder")
    bad = [
        (["method=grain", "density=0.1", "distill.hidden_layers=[0,9]"], "distill.hidden_layers=[0, 9]: layer indices in 0..6"),
        (["method=grain", "density=0.1", "distill.logit_weight=0", "distill.hidden_weight=0"], "distill.logit_weight=0"),
        (["method=michel", "heads=36", "distill=logits", "distill.logit_weight=0", "distill.teacher=null"],
         "distill.logit_weight=0"),
        (["method=grain", "density=0.1", "method.embed_rank=384"], "method.embed_rank=384: null or a rank below"),
        (["method=michel", "heads=36", "heads_scope=cross"], "heads_scope='cross': a scope where minilm has heads"),
        ([f"cache.dir={a_file}"], "cache.dir="),
    ]
    if not torch.cuda.is_available():
        bad.append((["pipeline=[bench]", "bench.device=cuda"], "bench.device='cuda': auto or cpu"))
        bad.append((["model.attn_implementation=flash_attention_2"], "model.attn_implementation='flash_attention_2'"))
    for overrides, start in bad:
        with pytest.raises(ConfigError) as err:
            validate(cfg(*overrides))
        assert str(err.value).startswith(start), (overrides, str(err.value))
