"""Shipping a run's exported model: its Hub model card, an ONNX graph, and the push to the Hub.

The `export` stage writes `<run>/model` (surgery.save_pruned); what a person needs beyond the
weights to trust and use them -- where they came from, the budget, what it scored, how to load
them -- lives in the run folder's JSON files, which do not travel with the model. The card carries
it along, so a model found on the Hub can be traced back to the one command that made it.

Everything here runs after training: a failure is `ShippingError`, one line and exit status 1,
with the saved model kept (the stage is not committed, so the same command resumes at `export`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml

#: the Hub's task tag for what each task family trains (its widget and search filter)
PIPELINE_TAGS = {"glue": "text-classification", "conll": "token-classification", "squad": "question-answering",
                 "translation": "translation", "lm": "text-generation", "zeroshot": "text-generation"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
ONNX_EXTRA = "pip install 'prune-cli[onnx]'"
#: largest |onnxruntime - torch| accepted on the float32 check batches (pruned BERT and Llama: ~1e-7)
ONNX_TOLERANCE = 1e-4
ONNX_FILE = "model.onnx"


class ShippingError(SystemExit):
    """A step after training failed (a push, an ONNX check). A SystemExit, like
    checkpoints.DiskFull: one line and exit status 1 through Hydra, and a sweep records it."""

    def __init__(self, message: str):
        self.prune_cli_message = message
        super().__init__(f"prune-run: error: {message}")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


# ---------------------------------------------------------------------------- the card
def budget(cfg, units: tuple[str, ...] = ("head",)) -> str:
    """The budget as it was typed (the card must say what was ASKED, next to what was reached)."""
    parts = [f"{key}={cfg.get(key)}" for key in ("heads", "sparsity", "density") if cfg.get(key) is not None]
    given = cfg.get("units")
    if parts and (given is not None or units != ("head",)):
        given = given if given is None or isinstance(given, str) else f"[{','.join(map(str, given))}]"
        parts.append(f"units={given if given is not None else '+'.join(units)}")
    if parts and cfg.get("heads_scope", "all") != "all":
        parts.append(f"heads_scope={cfg.heads_scope}")
    return " ".join(parts)


def command_of(run_dir) -> str:
    """`prune-run` with the run's own overrides (Hydra's record: what a rerun needs, quoted for a shell)."""
    saved = Path(run_dir) / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(saved.read_text()) if saved.is_file() else None
    return shlex.join(["prune-run", *(overrides or [])])


def auto_class_of(folder) -> tuple[str | None, bool]:
    """(the auto class to load the folder with, whether it needs the folder's own code): the
    class config.json's `auto_map` names for the task head, else None (the stock class reads it)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    names = list(config.get("auto_map") or {})
    heads = [n for n in names if n.startswith("AutoModelFor")]
    return (heads or names or [None])[0], bool(names)


def model_card(folder, cfg, outcome: Mapping, *, command: str, version: str, stages: list[str],
               units: tuple[str, ...] = ("head",), auto_class: str = "AutoModel", onnx: Mapping | None = None,
               repo_id: str | None = None) -> str:
    """The folder's README.md for the Hub: YAML front matter (library, base model, tags, task tag),
    then the budget asked for, what the run reached, its final metrics and the command.

    `outcome` holds the keys of metrics.json that describe the model (Pipeline._outcome builds both
    from the same state): the card and metrics.json never disagree. `auto_class` is the task's
    class, named when the folder loads with the stock one (no `auto_map`)."""
    model, task, method = cfg.model, cfg.task, cfg.method
    meta = {"library_name": "transformers"}
    if model.get("hub"):
        meta["base_model"] = str(model.hub)
    meta["tags"] = ["prune-cli", "pruned", str(method.name)]
    if task.get("family") in PIPELINE_TAGS:
        meta["pipeline_tag"] = PIPELINE_TAGS[task.family]
    base = f"`{model.hub}` (`model={model.name}`)" if model.get("hub") else f"`model={model.name}`"
    asked = budget(cfg, units)
    if asked:
        asked = f"`{asked}`"
    else:
        asked = "none: the dense model" if method.get("kind") == "none" else "none: the method chooses"
    params, dense = outcome["params"], outcome["params_dense"]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
             f"# {model.name} for {task.name}, pruned with {method.name}", "",
             (f"{base} for `{task.name}`, with attention heads physically removed by prune-cli "
              f"(`method={method.name}`): the removed heads' weights are gone, not masked, so the model is smaller "
              "and faster as it is."), "",
             "| | |", "|---|---|",
             f"| Base model | {base} |",
             f"| Task | `{task.name}` ({task.get('family')}) |",
             f"| Method | `{method.name}` |",
             f"| Pipeline | {' → '.join(stages)} |",
             f"| Budget asked for | {asked} |",
             f"| Heads kept | {outcome['heads_kept']} / {outcome['heads_total']} |",
             f"| Attention + FFN weights kept (density) | {outcome['density']:.4f} |",
             (f"| Parameters | {params:,} of {dense:,} dense ({params / dense:.1%}) |" if dense else
              f"| Parameters | {params:,} |"),
             "", "## Results", ""]
    metrics = outcome.get("eval") or {}
    if metrics:
        primary = outcome.get("primary_metric")
        lines += [f"On `{task.name}`'s evaluation data, as the run's metrics.json reports them (primary: `{primary}`):",
                  "", "| metric | value |", "|---|---|"]
        lines += [f"| {'**' + k + '**' if k == primary else k} | {_value(v)} |" for k, v in metrics.items()]
    else:
        lines.append("None: the run's pipeline evaluated nothing.")
    lines += ["", "## How it was made", "", "```bash", command, "```", "",
              (f"prune-cli {version}. The run folder's metrics.json, heads.json and .hydra/config.yaml hold the rest "
               "(every stage and its compute, every head's score)."), ""]
    lines += _how_to_load(folder, repo_id, auto_class)
    if onnx:
        lines += _onnx_section(onnx, repo_id, folder)
    return "\n".join(lines).rstrip("\n") + "\n"


def _value(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _how_to_load(folder, repo_id: str | None, fallback: str) -> list[str]:
    auto, remote = auto_class_of(folder)
    auto = auto or fallback
    where = repo_id or str(folder)
    code = ", trust_remote_code=True" if remote else ""
    lines = ["## How to load", "", "```python", f"from transformers import {auto}, AutoTokenizer", "",
             f"model = {auto}.from_pretrained({where!r}{code})",
             f"tokenizer = AutoTokenizer.from_pretrained({where!r})", "```", ""]
    if remote:
        lines += [("Layers keep different numbers of heads, which the stock class cannot hold: `modeling_pruned.py` "
                   "(beside the weights; it needs only torch and transformers) builds those shapes, hence "
                   "`trust_remote_code=True`."), ""]
    lines += ["With prune-cli installed, `load_pruned` rebuilds the same model from the record in config.json:", "",
              "```python", "import prune_cli", ""]
    if repo_id:
        lines += ["from huggingface_hub import snapshot_download", "",
                  f"model = prune_cli.load_pruned(snapshot_download({repo_id!r}))"]
    else:
        lines.append(f"model = prune_cli.load_pruned({where!r})")
    return [*lines, "```", ""]


def _onnx_section(onnx: Mapping, repo_id: str | None, folder) -> list[str]:
    feeds = ", ".join(f'"{n}": batch["{n}"]' for n in onnx["inputs"])
    names = ", ".join(f"`{n}`" for n in onnx["inputs"])
    if repo_id:
        where = ["from huggingface_hub import hf_hub_download", "",
                 f"session = onnxruntime.InferenceSession(hf_hub_download({repo_id!r}, {onnx['file']!r}))"]
    else:
        where = [f"session = onnxruntime.InferenceSession({str(Path(folder) / onnx['file'])!r})"]
    return ["## ONNX", "",
            (f"`{onnx['file']}` is the same model as an ONNX graph: inputs {names} (any batch size and length), "
             f"outputs {', '.join(f'`{n}`' for n in onnx['outputs'])}, no key/value cache. Checked with onnxruntime "
             f"against PyTorch on two batches of different shapes: largest difference {onnx['max_abs_diff']:.2e}."), "",
            "```python", "import onnxruntime", *where, "",
            'batch = tokenizer(["some text"], return_tensors="np")  # (the tokenizer above)',
            f"outputs = session.run(None, {{{feeds}}})", "```", ""]


# ---------------------------------------------------------------------------- ONNX
#: sentences (source, target) to export with: two of different lengths, padded inside the batch
SAMPLE = (("The cat sat on the mat.", "A longer sentence, so that this batch needs padding."),
          ("Die Katze.", "Ein etwas längerer Satz."))
#: three others -- another batch size, longer lengths -- to prove the axes really are dynamic
CHECK = (("Short.", ("Three sentences of three lengths run the graph at a batch size and a length that it was not "
          "exported with, which a graph with fixed axes would refuse."), "A middle one, neither short nor long."),
         ("Kurz.", "Drei Sätze von drei Längen, auch für den Decoder, der seine eigene Länge hat.", "Ein Satz."))


class _Logits(torch.nn.Module):
    """The model as ONNX sees it: token ids and mask in, the `*logits` tensors out, no cache (a
    graph of fixed outputs; key/value caches are a runtime's business)."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names
        self.extra = {"use_cache": False} if "use_cache" in _parameters(model) else {}

    def run(self, **inputs) -> tuple[torch.Tensor, ...]:
        out = self.model(**inputs, **self.extra)
        return tuple(out[n] for n in self.names)

    def forward(self, input_ids, attention_mask):
        return self.run(input_ids=input_ids, attention_mask=attention_mask)


class _Seq2SeqLogits(_Logits):
    def forward(self, input_ids, attention_mask, decoder_input_ids):
        return self.run(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)


def _parameters(model) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _batch(model, tokenizer, texts, targets) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(texts), padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if model.config.is_encoder_decoder:
        dec = tokenizer(list(targets), padding=True, return_tensors="pt")["input_ids"]
        start = model.config.decoder_start_token_id
        start = tokenizer.pad_token_id if start is None else start
        batch["decoder_input_ids"] = torch.cat([torch.full_like(dec[:, :1], start), dec[:, :-1]], dim=1)
    return batch


def _padding_tokenizer(tokenizer):
    """A decoder-only LM's tokenizer often has no pad token: a copy that pads with its end token."""
    if tokenizer.pad_token is not None:
        return tokenizer
    import copy

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def write_onnx(model: torch.nn.Module, tokenizer, path) -> dict:
    """`model` as an ONNX graph at `path` (dynamic batch and lengths; dynamo export), checked with
    onnxruntime against torch on the export sample and on a batch of another size and length.
    Returns what the stage records and the card quotes; a larger difference than ONNX_TOLERANCE
    (or an export that fails) is a ShippingError: a graph that computes something else is worse
    than none."""
    import onnxruntime

    path = Path(path)
    param = next(model.parameters())
    device, training = param.device, model.training
    tokenizer = _padding_tokenizer(tokenizer)
    model.to("cpu").eval()
    try:
        sample, check = _batch(model, tokenizer, *SAMPLE), _batch(model, tokenizer, *CHECK)
        with torch.no_grad():
            out = model(**sample, **({"use_cache": False} if "use_cache" in _parameters(model) else {}))
        if not isinstance(out, Mapping):
            raise ShippingError(f"export.onnx=true: {type(model).__name__} returns a tuple, not named outputs")
        names = [k for k, v in out.items() if k.endswith("logits") and torch.is_tensor(v)]
        wrapper = (_Seq2SeqLogits if "decoder_input_ids" in sample else _Logits)(model, names).eval()
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        dims = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
        if "decoder_input_ids" in sample:
            dims["decoder_input_ids"] = {0: batch, 1: torch.export.Dim("decoder_seq")}
        # weights beside the graph (model.onnx.data) only where protobuf's 2 GiB limit needs it
        external = sum(p.numel() * p.element_size() for p in model.parameters()) > 1 << 30
        try:
            with _quiet():
                torch.onnx.export(wrapper, tuple(sample.values()), str(path), dynamo=True, dynamic_shapes=dims,
                                  input_names=list(sample), output_names=names, verbose=False,
                                  external_data=external)
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            diff = max(_max_diff(wrapper, session, b) for b in (sample, check))
        except Exception as err:  # the exporter's errors run to pages: their first line, one error
            raise ShippingError(f"export.onnx=true: the ONNX export of {type(model).__name__} failed "
                                f"({_first_line(err)}); export.onnx=false skips it") from err
    finally:
        model.to(device).train(training)
    if not diff <= ONNX_TOLERANCE:
        raise ShippingError(f"export.onnx=true: {path} computes other outputs than the model (max |onnxruntime - "
                            f"torch| = {diff:.3g} > {ONNX_TOLERANCE}); export.onnx=false skips it")
    return {"file": path.name, "files": sorted(p.name for p in path.parent.glob(path.name + "*")),
            "max_abs_diff": diff, "inputs": list(sample), "outputs": names,
            "checked": [{k: list(v.shape) for k, v in b.items()} for b in (sample, check)]}


@contextlib.contextmanager
def _quiet():
    """The exporter's warnings and its optimiser's INFO lines (a hundred for a small model) are not
    the user's to act on; the onnxruntime check after it is what tells a good graph from a bad one."""
    logs = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def _max_diff(wrapper: _Logits, session, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        expected = wrapper(*batch.values())
    got = session.run(wrapper.names, {k: v.numpy() for k, v in batch.items()})
    return max(float((torch.from_numpy(g).double() - e.double()).abs().max()) for g, e in zip(got, expected))


# ---------------------------------------------------------------------------- the Hub
def push(folder, repo_id: str, private: bool, message: str) -> str:
    """Every file of `folder` in one commit to the Hub model repo `repo_id` (created if absent;
    `private` applies to a new repo only). Returns the repo's URL.

    create_commit, not upload_folder: one commit whatever the file count, and the server decides
    per file (its preupload answer) whether the bytes go inline or through LFS."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise ShippingError(f"export.push_to_hub={repo_id!r}: HF_HUB_OFFLINE=1 is set, nothing can be pushed; "
                            "unset it (HF_HUB_OFFLINE=0) or give export.push_to_hub=null")
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(repo_id, operations=[CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(),
                                                                  path_or_fileobj=str(p)) for p in files],
                          commit_message=message)
    except Exception as err:  # network, auth, quota: one line, and the model stays
        raise ShippingError(f"export.push_to_hub={repo_id!r}: the push to {constants.ENDPOINT} failed "
                            f"({_first_line(err)}); the model stays in {folder}: the same command again "
                            "resumes at the export stage and pushes it") from err
    return str(url)
