"""How a generated answer is scored against the sample's: exact match and answer-unit F1.

One place for the metric, used by the trainer's held-out figures and by every study in `bench/`.
"""

from __future__ import annotations

from collections import Counter

from vlmodels.grid_vqa.task import answer_units

# The figure a study reports per form: a sentence has one content word to get right (exact match), a
# readout or caption many (F1 gives credit for each).
HEADLINE_METRIC = {"sentence": "exact", "readout": "f1", "caption": "f1"}


def exact_match(prediction: str, answer: str, question: str = "") -> bool:
    """The answer units agree, in order (the sentence frame and punctuation are not scored)."""
    return answer_units(prediction, question) == answer_units(answer, question)


def token_f1(prediction: str, answer: str, question: str = "") -> float:
    """F1 of the answer-unit multisets (SQuAD-style token F1 over colours, shapes, numbers and
    colour-shape pairs). A readout or caption that names 3 of 4 objects right scores 0.86, not 0."""
    pred, gold = Counter(answer_units(prediction, question)), Counter(answer_units(answer, question))
    if not pred and not gold:
        return 1.0
    common = sum((pred & gold).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(pred.values()), common / sum(gold.values())
    return 2 * precision * recall / (precision + recall)
