"""The grid-VQA task: seeded synthetic images of shapes on a grid, and questions about them.

An image is a `rows x cols` grid of 28x28-pixel cells (one Qwen2-VL visual token each, after the 2x2
merge); a few cells hold a coloured shape, the rest are background. Question types, in three forms
(`FORM`), each answered in a sentence whose content comes after its first decoded token, i.e. after
the plugin has compressed the prompt (a one-word answer would be computed before eviction and
test nothing about the kept set):

- form `sentence`, one region: `colour` "What colour is the star?" -> "The star is orange." (that
  shape occurs exactly once); `shape` "Which shape is red?" -> "The red shape is a circle.";
  several regions: `count` "How many shapes are red?" -> "I count 3 red shapes." (0 to 4);
  across images: `which` "Which image has the star?" -> "The star is in image 2." (2+ images).
- form `readout`: `list` "List the red shapes." -> "The red shapes are: circle, cross, star." Every red
  object (2 to 5 of them, distinct shapes), in `SHAPES` order: each content word is read from
  another cell.
- form `caption`: `caption` "Describe the image." -> "Objects: red square, blue circle, green star."
  Every object of a sparse prompt (2 to 6 in all images together, distinct shape-colour pairs), in
  `SHAPES` then `COLOURS` order: 4 to 12 content words.

Reading order (row-major) is not the order of readout and caption: Qwen2-VL places a visual token by
M-RoPE offsets relative to the query, so "the third cell of row 3" needs absolute positions a tiny
model trained for minutes on 2 CPU cores does not have; a fixed order over what cells hold needs
only content, and still makes every content word of the answer come from another cell.

Every answer is derivable from the sample's `objects` alone (`derive_answer`). Same seed -> same
samples (`make_sample` draws from its own `random.Random`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace

from PIL import Image, ImageDraw

CELL = 28  # pixels per grid cell = one merged Qwen2-VL visual token (14 px patches, 2x2 merge)
BACKGROUND = (245, 245, 245)
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (230, 200, 20),
    "purple": (140, 40, 180),
    "orange": (240, 130, 20),
}
SHAPES = ("square", "circle", "triangle", "cross", "star")
QUESTION_TYPES = ("colour", "shape", "count", "which", "list", "caption")
FORM = {"colour": "sentence", "shape": "sentence", "count": "sentence", "which": "sentence",
        "list": "readout", "caption": "caption"}  # fmt: skip
FORMS = ("sentence", "readout", "caption")
# The shapes and colours questions name. A tiny model trained from scratch on 2 shared CPU cores learns a
# fixed lookup ("find the star") within minutes, while learning to look up whatever the question names
# did not start within 300 steps; every shape and colour still appears, as distractors.
TARGET_SHAPES = ("star",)
TARGET_COLOURS = ("red",)
ONE_REGION = ("colour", "shape")
MAX_COUNT = 4
LIST_RANGE = (2, 5)  # red objects of a `list` question
CAPTION_RANGE = (2, 6)  # objects of a `caption` prompt, all images together
CONTENT_WORDS = tuple(COLOURS) + SHAPES + tuple(str(i) for i in range(MAX_COUNT + 1))


def answer_units(answer: str, question: str = "") -> list[str]:
    """What an answer is scored on, in order: each colour, shape and number it names, a colour directly
    followed by a shape being one unit ("red square": a caption that swaps colours between objects
    names none of them right). The sentence's frame ("The star is", "Objects:") and the words the
    question already says ("red" of "List the red shapes.") are left out: they carry no answer."""
    words = re.findall(r"[a-z0-9]+", answer.lower())
    given = set(re.findall(r"[a-z0-9]+", question.lower()))
    units, i = [], 0
    while i < len(words):
        if words[i] in COLOURS and i + 1 < len(words) and words[i + 1] in SHAPES:
            units.append(f"{words[i]} {words[i + 1]}")
            i += 2
            continue
        if words[i] in CONTENT_WORDS and words[i] not in given:
            units.append(words[i])
        i += 1
    return units


@dataclass(frozen=True)
class GridObject:
    image: int
    row: int
    col: int
    shape: str
    colour: str


@dataclass
class Sample:
    """One question: `images` (PIL), the `question` text, its one-word `answer`, and what drew them."""

    qtype: str
    question: str
    answer: str
    objects: list[GridObject]
    grids: list[tuple[int, int]]  # (rows, cols) per image
    target: str = ""  # the shape or colour the question names
    setting: str = ""  # the evaluation length setting it belongs to, if any
    images: list[Image.Image] = field(default_factory=list, repr=False)
    history: list[tuple[str, str]] = field(default_factory=list)  # earlier (question, answer) turns

    def first_turn(self) -> Sample:
        """The chat's first turn alone (the images and the first question), when `history` is set."""
        (question, answer), *_ = self.history
        return replace(self, question=question, answer=answer, history=[])

    @property
    def visual_tokens(self) -> int:
        return sum(r * c for r, c in self.grids)

    def messages(self) -> list[dict]:
        """The chat: the images with the first question, then each earlier answer and the next question."""
        questions = [q for q, _ in self.history] + [self.question]
        images = [{"type": "image"} for _ in self.grids]
        chat = [{"role": "user", "content": images + [{"type": "text", "text": questions[0]}]}]
        for (_, answer), question in zip(self.history, questions[1:], strict=True):
            chat += [{"role": "assistant", "content": answer}, {"role": "user", "content": question}]
        return chat


def question_text(qtype: str, target: str, num_images: int = 1) -> str:
    """The named shape or colour is always the same word of its question: a small model learns to look
    up a word at a fixed distance before the answer far sooner than a word whose place varies."""
    return {
        "colour": f"What colour is the {target}?",
        "shape": f"Which shape is {target}?",
        "count": f"How many shapes are {target}?",
        "which": f"Which image has the {target}?",
        "list": f"List the {target} shapes.",
        "caption": "Describe the image." if num_images == 1 else "Describe the images.",
    }[qtype]


def _canonical(objects: list[GridObject]) -> list[GridObject]:
    return sorted(objects, key=lambda o: (SHAPES.index(o.shape), list(COLOURS).index(o.colour), o.image, o.row, o.col))


def _images_of_distinct_cells(rng: random.Random, k: int, cells: int, num_images: int) -> list[int]:
    """The image of each of `k` distinct cells drawn from all images' cells: however many objects an
    image is given this way, each still has a free cell (`k <= cells * num_images`)."""
    return [i // cells for i in rng.sample(range(cells * num_images), k)]


def derive_answer(qtype: str, target: str, objects: list[GridObject]) -> str:
    """The answer sentence from the objects alone (the generator's contract; tests re-derive it)."""
    if qtype == "colour":
        (obj,) = [o for o in objects if o.shape == target]
        return f"The {target} is {obj.colour}."
    if qtype == "shape":
        (obj,) = [o for o in objects if o.colour == target]
        return f"The {target} shape is a {obj.shape}."
    if qtype == "count":
        return f"I count {sum(o.colour == target for o in objects)} {target} shapes."
    if qtype == "which":
        (obj,) = [o for o in objects if o.shape == target]
        return f"The {target} is in image {obj.image + 1}."
    if qtype == "list":
        listed = [o.shape for o in _canonical([o for o in objects if o.colour == target])]
        return f"The {target} shapes are: {', '.join(listed) or 'none'}."
    if qtype == "caption":
        return "Objects: " + ", ".join(f"{o.colour} {o.shape}" for o in _canonical(objects)) + "."
    raise ValueError(f"unknown question type {qtype!r}; allowed: {QUESTION_TYPES}")


def make_sample(
    seed: int,
    qtype: str,
    num_images: int = 1,
    grid: tuple[int, int] = (8, 8),
    objects_per_image: tuple[int, int] = (3, 6),
    blank: bool = False,
) -> Sample:
    """A sample of `qtype` over `num_images` grids of `grid` cells, from `seed` alone.

    `blank=True` draws the same question and answer but renders every image as empty background
    (the control: a model that answers from the images then falls to chance)."""
    if qtype not in QUESTION_TYPES:
        raise ValueError(f"unknown question type {qtype!r}; allowed: {QUESTION_TYPES}")
    if qtype == "which" and num_images < 2:
        raise ValueError("a 'which' question needs at least 2 images")
    rng = random.Random(seed)
    rows, cols = grid
    grids = [grid] * num_images
    colours, shapes = list(COLOURS), list(SHAPES)
    placed: list[tuple[str, str]] = []  # (shape, colour) in placement order, image index alongside
    where: list[int] = []
    if qtype == "caption":  # sparse: few objects in all images, each shape-colour pair once
        target = ""
        k = min(rng.randint(*CAPTION_RANGE), rows * cols * num_images)
        placed = rng.sample([(sh, c) for sh in shapes for c in colours], k)
        where = _images_of_distinct_cells(rng, k, rows * cols, num_images)
        others, objects_per_image = [], (0, 0)
    elif qtype in ("colour", "which"):
        target = rng.choice(TARGET_SHAPES)
        placed.append((target, rng.choice(colours)))
        where.append(rng.randrange(num_images))
        others = [(s, c) for s in shapes if s != target for c in colours]
    elif qtype == "shape":
        target = rng.choice(TARGET_COLOURS)
        placed.append((rng.choice(shapes), target))
        where.append(rng.randrange(num_images))
        others = [(s, c) for s in shapes for c in colours if c != target]
    elif qtype == "list":
        target = rng.choice(TARGET_COLOURS)
        k = min(rng.randint(*LIST_RANGE), rows * cols * num_images)
        placed = [(shape, target) for shape in rng.sample(shapes, k)]
        where = _images_of_distinct_cells(rng, k, rows * cols, num_images)
        others = [(s, c) for s in shapes for c in colours if c != target]
    else:  # count
        target = rng.choice(TARGET_COLOURS)
        n = min(rng.randint(0, MAX_COUNT), rows * cols * num_images)
        where = _images_of_distinct_cells(rng, n, rows * cols, num_images)
        for _ in range(n):
            placed.append((rng.choice(shapes), target))
        others = [(s, c) for s in shapes for c in colours if c != target]
    lo, hi = objects_per_image
    for image in range(num_images):
        have = where.count(image)
        for _ in range(max(0, min(rng.randint(lo, hi), rows * cols) - have)):
            placed.append(rng.choice(others))
            where.append(image)
    objects = []
    for image in range(num_images):
        idx = [i for i, w in enumerate(where) if w == image]
        cells = rng.sample(range(rows * cols), len(idx))
        for i, cell in zip(idx, cells, strict=True):
            shape, colour = placed[i]
            objects.append(GridObject(image, cell // cols, cell % cols, shape, colour))
    answer = derive_answer(qtype, target, objects)
    images = [render(grids[i], [] if blank else [o for o in objects if o.image == i]) for i in range(num_images)]
    return Sample(qtype, question_text(qtype, target, num_images), answer, objects, grids, target=target, images=images)


def render(grid: tuple[int, int], objects: list[GridObject]) -> Image.Image:
    rows, cols = grid
    img = Image.new("RGB", (cols * CELL, rows * CELL), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in objects:
        _draw_shape(draw, o.shape, COLOURS[o.colour], o.col * CELL, o.row * CELL)
    return img


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, rgb, x0: int, y0: int) -> None:
    m = 4  # margin inside the cell
    a, b = x0 + m, y0 + m
    c, d = x0 + CELL - 1 - m, y0 + CELL - 1 - m
    cx, cy = (a + c) / 2, (b + d) / 2
    if shape == "square":
        draw.rectangle((a, b, c, d), fill=rgb)
    elif shape == "circle":
        draw.ellipse((a, b, c, d), fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, b), (c, d), (a, d)], fill=rgb)
    elif shape == "cross":
        t = 3
        draw.rectangle((cx - t, b, cx + t, d), fill=rgb)
        draw.rectangle((a, cy - t, c, cy + t), fill=rgb)
    elif shape == "star":
        import math

        r_out, r_in = (c - a) / 2, (c - a) / 5
        pts = []
        for k in range(10):
            r = r_out if k % 2 == 0 else r_in
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(ang), cy + r * math.sin(ang)))
        draw.polygon(pts, fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: {SHAPES}")


def sample_stream(seed: int, qtypes=QUESTION_TYPES, num_images=(1, 2), grids=((8, 8),), blank=False,
                  objects_per_image=(3, 6)):  # fmt: skip
    """An endless deterministic stream of samples: sample `i` uses seed `seed * 1_000_003 + i`."""
    i = 0
    while True:
        rng = random.Random(seed * 1_000_003 + i)
        n = rng.choice(num_images)
        choices = [q for q in qtypes if q != "which" or n >= 2]
        grid = rng.choice(grids)
        yield make_sample(seed * 1_000_003 + i, rng.choice(choices), n, grid, objects_per_image, blank=blank)
        i += 1


def vocabulary_text() -> list[str]:
    """Every question and answer word, for the tokenizer to learn whole-word merges."""
    texts = [question_text("caption", "", 1), question_text("caption", "", 2), "Objects: none."]
    for s in SHAPES:
        texts += [question_text("colour", s), question_text("which", s), f"The {s} is in image 1."]
        texts += [f"The {s} is {c}." for c in COLOURS]
    for c in COLOURS:
        texts += [question_text(q, c) for q in ("shape", "count", "list")]
        texts += [f"I count 0 {c} shapes.", f"The {c} shapes are: " + ", ".join(SHAPES) + "."]
        texts += ["Objects: " + ", ".join(f"{c} {s}" for s in SHAPES) + "."]
        texts += [f"The {c} shape is a {s}." for s in SHAPES]
    return texts + [" ".join(CONTENT_WORDS), "You are a helpful assistant."]


def follow_up_questions(sample: Sample, seed: int, k: int) -> list[tuple[str, str, str]]:
    """Up to `k` further (qtype, question, answer) about the same images, each answerable from
    `sample.objects` (a shape or colour named by a one-region question occurs exactly once; a caption
    is asked only of prompts with at most `CAPTION_RANGE[1]` objects).

    Training asks them as later chat turns: more supervision per image at little extra cost."""
    rng = random.Random(seed)
    objs = sample.objects
    shape_once = [s for s in TARGET_SHAPES if sum(o.shape == s for o in objs) == 1]
    colour_once = [c for c in TARGET_COLOURS if sum(o.colour == c for o in objs) == 1]
    pool = [("colour", s) for s in shape_once] + [("shape", c) for c in colour_once]
    pool += [("count", c) for c in TARGET_COLOURS] + [("list", c) for c in TARGET_COLOURS]
    if len(sample.grids) >= 2:
        pool += [("which", s) for s in shape_once]
    if len(objs) <= CAPTION_RANGE[1]:
        pool.append(("caption", ""))
    pool = [(q, t) for q, t in pool if (q, t) != (sample.qtype, sample.target)]  # never the first again
    picked = rng.sample(pool, min(k, len(pool)))
    n = len(sample.grids)
    return [(q, question_text(q, t, n), derive_answer(q, t, objs)) for q, t in picked]
