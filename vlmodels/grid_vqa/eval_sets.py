"""Held-out evaluation sets of the grid-VQA study, by form and prompt length (seeds disjoint from training).

Training sees 1-4 images of 4x4 to 10x10 cells; the study also asks about 4 images of 12x12 cells
(576 visual tokens) and of 16x16 cells (1,024), longer than anything trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vlmodels.grid_vqa.task import FORM, FORMS, ONE_REGION, QUESTION_TYPES, Sample, follow_up_questions, make_sample

EVAL_SEED = 20_000  # training draws seeds near seed * 1_000_003; the held-out sets stay far away


@dataclass(frozen=True)
class LengthSetting:
    name: str
    num_images: int
    grid: tuple[int, int]

    @property
    def visual_tokens(self) -> int:
        return self.num_images * self.grid[0] * self.grid[1]


SETTINGS = (
    LengthSetting("1x10x10", 1, (10, 10)),  # 100 visual tokens
    LengthSetting("2x10x10", 2, (10, 10)),  # 200
    LengthSetting("4x12x12", 4, (12, 12)),  # 576: longer than training
    LengthSetting("4x16x16", 4, (16, 16)),  # 1,024
)


def eval_samples(per_setting: int, settings=SETTINGS, seed: int = EVAL_SEED, blank: bool = False,
                 forms=FORMS) -> list[Sample]:  # fmt: skip
    """`per_setting` samples of each form and length setting, the form's question types in rotation
    ('which' needs 2+ images); `s.setting` names the setting."""
    out = []
    for fi, form in enumerate(forms):
        for si, setting in enumerate(settings):
            qtypes = [q for q in QUESTION_TYPES if FORM[q] == form and (q != "which" or setting.num_images >= 2)]
            for i in range(per_setting):
                s = make_sample(seed + 1_000_000 * fi + 100_000 * si + i, qtypes[i % len(qtypes)],
                                setting.num_images, setting.grid, blank=blank)  # fmt: skip
                s.setting = setting.name
                out.append(s)
    return out


def follow_up_samples(per_setting: int, settings=SETTINGS[:2], seed: int = EVAL_SEED + 50_000) -> list[Sample]:
    """Two-turn chats that ask after compression about what the first question did not: a one-region
    sentence question and its answer as the first turn, then a readout or a caption of the same images
    (every red object, or every object), which the sample asks and scores."""
    out = []
    for s in eval_samples(per_setting, settings, seed, forms=("sentence",)):
        if s.qtype not in ONE_REGION:
            continue
        later = [f for f in follow_up_questions(s, seed, 8) if FORM[f[0]] != "sentence"]
        if not later:
            continue
        qtype, question, answer = later[len(out) % len(later)]
        out.append(replace(s, qtype=qtype, question=question, answer=answer, history=[(s.question, s.answer)]))
    return out
