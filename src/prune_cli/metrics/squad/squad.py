"""SQuAD v1.1 / v2.0 exact match and F1 (0-100) as the official evaluation scripts compute them
(prune-cli's `squad_metrics`: best gold answer per question; a question without a prediction
counts as wrong; v2 scores "no answer" as the empty string and adds has-answer / no-answer
subsets). Config names: `v1` (default) or `v2`.

Inputs as the Hub's `squad` metric: predictions [{"id", "prediction_text"}], references
[{"id", "answers": {"text": [...], "answer_start": [...]}}].
"""

import datasets
import evaluate

from prune_cli.tasks.squad import squad_metrics

_DESCRIPTION = "SQuAD v1.1 / v2.0 exact match and F1 (prune-cli, the official scripts' semantics)"
_KWARGS = """
Args:
    predictions: [{"id": str, "prediction_text": str}] ("" = no answer, v2).
    references: [{"id": str, "answers": {"text": [str], "answer_start": [int]}}].
Returns: {"exact_match", "f1"} (+ has_ans_* / no_ans_* with v2).
"""
_CITATION = """@inproceedings{rajpurkar2016squad, title={{SQuAD}: 100,000+ Questions for Machine Comprehension of
Text}, author={Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy}, booktitle={EMNLP},
year={2016}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Squad(evaluate.Metric):
    def _info(self):
        if self.config_name not in ("default", "v1", "v2"):
            raise KeyError(f"config name {self.config_name!r}: v1 or v2")
        answers = {"text": datasets.Sequence(datasets.Value("string")),
                   "answer_start": datasets.Sequence(datasets.Value("int32"))}
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS,
            features=datasets.Features({
                "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                "references": {"id": datasets.Value("string"), "answers": answers},
            }),
        )

    def _compute(self, predictions, references):
        answers = {p["id"]: p["prediction_text"] for p in predictions}
        return squad_metrics(answers, references, version_2=self.config_name == "v2")
