"""The grid-VQA task generator: deterministic per seed, answers derivable from what is drawn."""

import itertools

import pytest

from vlmodels.grid_vqa.eval_sets import SETTINGS, eval_samples
from vlmodels.grid_vqa.task import (
    ANSWER_WORDS,
    BACKGROUND,
    CELL,
    COLOURS,
    MAX_COUNT,
    QUESTION_TYPES,
    derive_answer,
    follow_up_questions,
    make_sample,
    sample_stream,
)


def _fingerprint(sample):
    return sample.question, sample.answer, sample.objects, [img.tobytes() for img in sample.images]


@pytest.mark.parametrize("qtype", QUESTION_TYPES)
def test_same_seed_same_sample_other_seed_other_sample(qtype):
    a, b = make_sample(7, qtype, 2, (8, 8)), make_sample(7, qtype, 2, (8, 8))
    assert _fingerprint(a) == _fingerprint(b)
    others = [_fingerprint(make_sample(seed, qtype, 2, (8, 8))) for seed in range(8, 12)]
    assert all(o != _fingerprint(a) for o in others)


def test_streams_and_eval_sets_are_deterministic():
    first = [_fingerprint(s) for s in itertools.islice(sample_stream(3), 6)]
    again = [_fingerprint(s) for s in itertools.islice(sample_stream(3), 6)]
    assert first == again
    assert [_fingerprint(s) for s in eval_samples(2)] == [_fingerprint(s) for s in eval_samples(2)]
    assert [s.setting for s in eval_samples(1)] == [s.name for s in SETTINGS]


@pytest.mark.parametrize("qtype", QUESTION_TYPES)
def test_answer_is_derivable_from_the_pixels(qtype):
    """Each object is drawn in its cell (the centre pixel has its colour), every other cell is empty
    background, and the answer follows from the objects by the question's rule."""
    for seed in range(25):
        s = make_sample(seed, qtype, 3, (6, 7))
        assert s.answer in ANSWER_WORDS
        assert derive_answer(s.qtype, s.target, s.objects) == s.answer
        occupied = {(o.image, o.row, o.col): o for o in s.objects}
        assert len(occupied) == len(s.objects)  # one object per cell
        for i, img in enumerate(s.images):
            assert img.size == (7 * CELL, 6 * CELL)
            for row, col in itertools.product(range(6), range(7)):
                centre = img.getpixel((col * CELL + CELL // 2, row * CELL + CELL // 2))
                obj = occupied.get((i, row, col))
                assert centre == (COLOURS[obj.colour] if obj else BACKGROUND)
        if qtype in ("colour", "which"):
            assert sum(o.shape == s.target for o in s.objects) == 1
        if qtype == "shape":
            assert sum(o.colour == s.target for o in s.objects) == 1
        if qtype == "count":
            assert 0 <= int(s.answer) <= MAX_COUNT


def test_blank_control_keeps_question_and_answer_but_draws_nothing():
    s, blank = make_sample(5, "colour", 2, (8, 8)), make_sample(5, "colour", 2, (8, 8), blank=True)
    assert (s.question, s.answer, s.objects) == (blank.question, blank.answer, blank.objects)
    for img in blank.images:
        assert img.getcolors() == [(img.width * img.height, BACKGROUND)]


def test_follow_ups_are_answerable_and_never_repeat_the_first_question():
    for seed in range(30):
        s = make_sample(seed, QUESTION_TYPES[seed % 4], 2, (6, 6))
        follow = follow_up_questions(s, seed, 3)
        assert len(follow) <= 3  # fewer when few questions are answerable about these images
        assert all(q != s.question for _, q, _ in follow)
        for qtype, question, answer in follow:
            target = question.split()[-1].rstrip("?")  # the named shape or colour is always the last word
            assert derive_answer(qtype, target, s.objects) == answer


def test_bad_requests_name_what_is_allowed():
    with pytest.raises(ValueError, match="allowed"):
        make_sample(0, "size")
    with pytest.raises(ValueError, match="at least 2 images"):
        make_sample(0, "which", 1)
