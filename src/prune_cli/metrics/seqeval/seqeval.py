"""Entity-level precision / recall / F1 (micro), F1 per entity type and token accuracy of IOB
tag sequences, with seqeval's default (conlleval) semantics, as prune-cli's CoNLL-2003 task
reports them. `compute(..., types=[...])` gives every listed type an `f1_<type>` key (0.0 when
it never occurs), so runs scoring different subsets log the same keys.
"""

import datasets
import evaluate

from prune_cli.tasks.conll import entity_metrics

_DESCRIPTION = "seqeval entity F1 of IOB tag sequences (prune-cli)"
_KWARGS = """
Args:
    predictions: [[tag, ...], ...] predicted IOB tags per sentence.
    references: [[tag, ...], ...] gold tags.
    types: optional entity types that always get an f1_<type> key.
Returns: {"precision", "recall", "f1", "accuracy", "f1_<type>"...}.
"""
_CITATION = """@misc{seqeval, title={{seqeval}: A Python framework for sequence labeling evaluation},
url={https://github.com/chakki-works/seqeval}, author={Hiroki Nakayama}, year={2018}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Seqeval(evaluate.Metric):
    def _info(self):
        tags = datasets.Sequence(datasets.Value("string"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS,
            features=datasets.Features({"predictions": tags, "references": tags}),
        )

    def _compute(self, predictions, references, types=()):
        return entity_metrics(references, predictions, list(types))
