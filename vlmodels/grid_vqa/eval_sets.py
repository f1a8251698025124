"""Held-out evaluation sets of the grid-VQA study, by prompt length (seeds disjoint from training).

Training sees 1-2 images of 6x6 to 10x10 cells; the study also asks about 4 images of 12x12 cells
(576 visual tokens), longer than anything trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vlmodels.grid_vqa.task import QUESTION_TYPES, Sample, follow_up_questions, make_sample

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
)


def eval_samples(per_setting: int, settings=SETTINGS, seed: int = EVAL_SEED, blank: bool = False) -> list[Sample]:
    """`per_setting` samples of each length setting, question types in rotation ('which' needs 2+ images)."""
    out = []
    for si, setting in enumerate(settings):
        qtypes = [q for q in QUESTION_TYPES if q != "which" or setting.num_images >= 2]
        for i in range(per_setting):
            s = make_sample(seed + 100_000 * si + i, qtypes[i % len(qtypes)], setting.num_images, setting.grid,
                            blank=blank)  # fmt: skip
            s.setting = setting.name
            out.append(s)
    return out


def follow_up_samples(per_setting: int, settings=SETTINGS[:2], seed: int = EVAL_SEED + 50_000) -> list[Sample]:
    """Two-turn chats: `eval_samples`' question and its answer as the first turn, then a follow-up about
    the same images (another question of `follow_up_questions`) that the sample asks and scores."""
    out = []
    for i, s in enumerate(eval_samples(per_setting, settings, seed)):
        (qtype, question, answer), *_ = follow_up_questions(s, seed + i, 1) or [(None, None, None)]
        if qtype is None:
            continue  # nothing else to ask about these images
        out.append(replace(s, qtype=qtype, question=question, answer=answer, history=[(s.question, s.answer)]))
    return out
