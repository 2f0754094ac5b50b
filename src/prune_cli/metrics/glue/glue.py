"""GLUE metrics as prune-cli computes them (accuracy, binary F1 of class 1, Matthews correlation,
Pearson and Spearman correlation; an undefined correlation is 0.0, as sklearn's MCC).

Config names: a GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, mnli_matched, mnli_mismatched,
qnli, rte, wnli, ax) gives that task's metric set, as the Hub's `glue` metric does; `default`
(class ids) and `regression` (scores) give accuracy / Pearson + Spearman. `compute(...,
metrics=[...])` asks for any names from accuracy, f1, matthews_correlation, pearson, spearmanr.
"""

import datasets
import evaluate
import numpy as np

from prune_cli.tasks.glue import METRICS

TASK_METRICS = {
    "cola": ["matthews_correlation"],
    "stsb": ["pearson", "spearmanr"],
    "mrpc": ["accuracy", "f1"],
    "qqp": ["accuracy", "f1"],
    "regression": ["pearson", "spearmanr"],
}
CLASSIFICATION = ("sst2", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli", "ax", "default")

_DESCRIPTION = "GLUE metrics (prune-cli): " + ", ".join(METRICS)
_KWARGS = """
Args:
    predictions: class ids (scores for stsb / regression).
    references: gold class ids (scores).
    metrics: optional list of metric names; default: the config's set.
Returns: {name: float} for each metric.
"""
_CITATION = """@inproceedings{wang2019glue, title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural
Language Understanding}, author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer
and Bowman, Samuel R.}, booktitle={ICLR}, year={2019}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Glue(evaluate.Metric):
    def _info(self):
        name = self.config_name
        if name not in TASK_METRICS and name not in CLASSIFICATION:
            raise KeyError(f"config name {name!r}: one of {', '.join([*TASK_METRICS, *CLASSIFICATION])}")
        value = "float64" if name in ("stsb", "regression") else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value(value), "references": datasets.Value(value)}),
        )

    def _compute(self, predictions, references, metrics=None):
        names = list(metrics or TASK_METRICS.get(self.config_name, ["accuracy"]))
        unknown = [m for m in names if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown GLUE metrics {unknown}: names from {', '.join(METRICS)}")
        preds, refs = np.asarray(predictions), np.asarray(references)
        return {m: METRICS[m](preds, refs) for m in names}
