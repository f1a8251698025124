"""The grid-VQA task generator: deterministic per seed, answers derivable from what is drawn."""

import itertools

import pytest

from vlmodels.grid_vqa.eval_sets import SETTINGS, eval_samples, follow_up_samples
from vlmodels.grid_vqa.scoring import exact_match, token_f1
from vlmodels.grid_vqa.task import (
    BACKGROUND,
    CAPTION_RANGE,
    CELL,
    COLOURS,
    FORM,
    FORMS,
    LIST_RANGE,
    MAX_COUNT,
    QUESTION_TYPES,
    SHAPES,
    answer_units,
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
    held_out = eval_samples(1)
    assert [(FORM[s.qtype], s.setting) for s in held_out] == [(f, x.name) for f in FORMS for x in SETTINGS]
    follow = follow_up_samples(4)
    assert follow and all(FORM[s.qtype] != "sentence" and s.history for s in follow)  # asks what turn 1 did not


@pytest.mark.parametrize("qtype", QUESTION_TYPES)
def test_answer_is_derivable_from_the_pixels(qtype):
    """Each object is drawn in its cell (the centre pixel has its colour), every other cell is empty
    background, and the answer follows from the objects by the question's rule."""
    for seed in range(25):
        s = make_sample(seed, qtype, 3, (6, 7))
        assert derive_answer(s.qtype, s.target, s.objects) == s.answer
        assert answer_units(s.answer, s.question)  # something to score beyond what the question says
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
            assert 0 <= int(answer_units(s.answer, s.question)[0]) <= MAX_COUNT
        if qtype == "list":  # distinct red shapes, listed in SHAPES order
            red = [o.shape for o in s.objects if o.colour == "red"]
            assert LIST_RANGE[0] <= len(red) == len(set(red)) <= LIST_RANGE[1]
            assert answer_units(s.answer, s.question) == sorted(red, key=SHAPES.index)
        if qtype == "caption":  # sparse, every object named once as colour + shape
            assert CAPTION_RANGE[0] <= len(s.objects) <= CAPTION_RANGE[1]
            assert sorted(answer_units(s.answer)) == sorted(f"{o.colour} {o.shape}" for o in s.objects)


@pytest.mark.parametrize("qtype", QUESTION_TYPES)
def test_the_content_comes_after_the_first_answer_token(qtype):
    """What the plugin is tested on: every answer's first word is frame ("The", "I", "Objects"), so its
    content is decoded over the compressed cache, not computed at prefill."""
    for seed in range(10):
        s = make_sample(seed, qtype, 2, (8, 8))
        first = s.answer.split()[0].strip(":").lower()
        assert first in ("the", "i", "objects") and not answer_units(first), s.answer
        assert FORM[qtype] in ("sentence", "readout", "caption")


def test_scoring_counts_units_and_ignores_the_frame():
    q, gold = "List the red shapes.", "The red shapes are: circle, cross, star."
    assert exact_match("The red shapes are: circle, cross, star.", gold, q) and token_f1(gold, gold, q) == 1.0
    assert token_f1("The red shapes are: circle, star.", gold, q) == 0.8  # P 1, R 2/3
    assert token_f1("The red shapes are: square.", gold, q) == 0.0  # "red" comes from the question
    cap = "Objects: red square, blue circle."
    assert token_f1("Objects: blue square, red circle.", cap) == 0.0  # colours swapped: no object right
    assert (
        not exact_match("Objects: blue circle, red square.", cap)
        and token_f1("Objects: blue circle, red square.", cap) == 1.0
    )


def test_blank_control_keeps_question_and_answer_but_draws_nothing():
    s, blank = make_sample(5, "colour", 2, (8, 8)), make_sample(5, "colour", 2, (8, 8), blank=True)
    assert (s.question, s.answer, s.objects) == (blank.question, blank.answer, blank.objects)
    for img in blank.images:
        assert img.getcolors() == [(img.width * img.height, BACKGROUND)]


def test_follow_ups_are_answerable_and_never_repeat_the_first_question():
    for seed in range(30):
        s = make_sample(seed, QUESTION_TYPES[seed % len(QUESTION_TYPES)], 2, (6, 6))
        follow = follow_up_questions(s, seed, 3)
        assert len(follow) <= 3  # fewer when few questions are answerable about these images
        assert all(q != s.question for _, q, _ in follow)
        for qtype, question, answer in follow:
            words = [w.strip("?.") for w in question.split()]
            target = next((w for w in words if w in COLOURS or w in SHAPES), "")  # the one it names, if any
            assert derive_answer(qtype, target, s.objects) == answer


def test_bad_requests_name_what_is_allowed():
    with pytest.raises(ValueError, match="allowed"):
        make_sample(0, "size")
    with pytest.raises(ValueError, match="at least 2 images"):
        make_sample(0, "which", 1)
