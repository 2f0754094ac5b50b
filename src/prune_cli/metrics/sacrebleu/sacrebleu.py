"""Corpus BLEU with sacreBLEU (prune-cli's translation metric) and its signature string.
`compute(..., tokenize="13a")` takes any sacreBLEU tokenizer ("none" for text tokenised
beforehand, as fairseq's tokenised BLEU). References: one list per sentence, all lists of the
same length (several references per sentence allowed).
"""

import datasets
import evaluate

from prune_cli.tasks.translation import corpus_bleu

_DESCRIPTION = "sacreBLEU corpus BLEU (prune-cli)"
_KWARGS = """
Args:
    predictions: [str] one hypothesis per sentence.
    references: [[str, ...]] the references of each sentence (the same number for every sentence).
    tokenize: sacreBLEU tokenizer name (default 13a).
Returns: {"bleu": float, "signature": str}.
"""
_CITATION = """@inproceedings{post-2018-call, title={A Call for Clarity in Reporting {BLEU} Scores},
author={Post, Matt}, booktitle={WMT}, year={2018}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Sacrebleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references, tokenize="13a"):
        bleu, signature = corpus_bleu(predictions, [list(r) for r in references], tokenize)
        return {"bleu": bleu, "signature": signature}
