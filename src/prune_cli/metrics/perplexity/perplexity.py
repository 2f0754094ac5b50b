"""Corpus perplexity from per-window negative log-likelihoods, as the LLM pruning papers report
WikiText-2 (SparseGPT, Frantar & Alistarh 2023; Wanda, Sun et al. 2024): exp(total NLL / total
predicted tokens), never a mean of per-window perplexities.

Unlike the Hub's `perplexity` metric (which loads a model and scores texts itself), this module
takes what the model already scored, so a pruned model in memory is measured as it is:

    ppl = evaluate.load(<prune_cli/metrics/perplexity>)
    ppl.compute(predictions=[nll_sum_window_1, ...], references=[tokens_window_1, ...])
    # {"perplexity": ..., "nll": ..., "tokens": ..., "windows": ...}
"""

import datasets
import evaluate

from prune_cli.tasks.lm import perplexity_metrics

_DESCRIPTION = "Perplexity (prune-cli): exp(sum of token NLLs / number of predicted tokens) over windows"
_KWARGS = """
Args:
    predictions: the summed negative log-likelihood (natural log) of each window's predicted tokens.
    references: the number of predicted tokens of each window.
Returns: perplexity, nll (mean per token), tokens, windows.
"""
_CITATION = """@inproceedings{frantar2023sparsegpt, title={{SparseGPT}: Massive Language Models Can Be Accurately
Pruned in One-Shot}, author={Frantar, Elias and Alistarh, Dan}, booktitle={ICML}, year={2023}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return perplexity_metrics(predictions, references)
