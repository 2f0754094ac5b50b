"""Multiple-choice accuracy from per-choice log-likelihoods, as lm-evaluation-harness (v0.4.x,
`lm_eval/api/task.py` `process_results` for `multiple_choice`) scores its zero-shot tasks:
`acc` = argmax of the summed log-likelihoods, `acc_norm` = argmax of each divided by its choice's
length in characters; ties go to the first choice.

    zs = evaluate.load(<prune_cli/metrics/zeroshot>)
    zs.compute(predictions=[[-4.1, -3.9], ...], references=[1, ...], choices=[[" no", " yes"], ...])
    # {"acc": ..., "acc_norm": ...}
"""

import datasets
import evaluate

from prune_cli.tasks.zeroshot import choice_metrics, choose

_DESCRIPTION = "Zero-shot multiple choice (prune-cli, as lm-evaluation-harness): acc and acc_norm"
_KWARGS = """
Args:
    predictions: per example, the summed log-likelihood of each choice's continuation.
    references: per example, the index of the gold choice.
    choices: per example, the choice strings (without the target delimiter): acc_norm divides by
        their lengths in characters.
    metrics: optional subset of ["acc", "acc_norm"] (default: both).
Returns: {name: float}.
"""
_CITATION = """@software{eval-harness, author={Gao, Leo and Tow, Jonathan and others}, title={A framework for few-shot
language model evaluation}, publisher={Zenodo}, year={2024}, url={https://github.com/EleutherAI/lm-evaluation-harness}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class ZeroShot(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, choices=None, metrics=None):
        if choices is None or len(choices) != len(predictions):
            raise ValueError("choices: one list of choice strings per example (acc_norm divides by their lengths)")
        picks = [choose(lls, c) for lls, c in zip(predictions, choices)]
        return choice_metrics(picks, references, tuple(metrics or ("acc", "acc_norm")))
