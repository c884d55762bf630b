"""Synthetic scenes drawn with Pillow, with questions that have one exact one-word answer.

A scene is a background with 1–6 coloured shapes (circles, squares, triangles) that do not
overlap, and in half of the scenes a short word on a white label. The background is a faint
coordinate wash (red rises from left to right, green from top to bottom): the small shipped model
has no absolute position embedding anywhere (Qwen2-VL's ViT uses 2-D rotary only, and M-RoPE gives
the width the slowest rotary frequencies), and it reads an object's horizontal place from the wash
(see ``eval/results/train_scenes_vlm.md``). Questions ask for a shape's colour, an object's
shape, counts, left/right and above/below relations, whether an object exists, and the written
word. Everything follows from a seed, so a split is a list of seeds: ``"train"`` and ``"heldout"``
draw from disjoint seed streams.

At the default 448 × 448 pixels a Qwen2-VL processor (14-pixel patches, 2 × 2 merge) makes
256 visual tokens per scene, most of them background.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from functools import cache
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (240, 210, 30),
    "purple": (140, 50, 170), "orange": (245, 140, 20), "black": (15, 15, 15), "cyan": (30, 200, 210),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "tree", "fish", "bird", "moon", "star", "book", "cake",
    "ship", "lamp", "rose", "king", "frog", "bell",
)
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")
BACKGROUND_RANGE: tuple[int, int] = (160, 240)  # red across the width, green down the height, 8-bit levels
BACKGROUND_BLUE = 200
IMAGE_SIZE = 448
MAX_OBJECTS = 6
FONT_SIZE = 40
LABEL_PADDING = 6
SPLITS: dict[str, int] = {"train": 0, "heldout": 1}
QuestionKind = Literal["colour", "shape", "count", "count_all", "left_right", "above_below", "exists", "word"]
QUESTION_KINDS: tuple[str, ...] = ("colour", "shape", "count", "count_all", "left_right", "above_below", "exists", "word")


@dataclass(frozen=True)
class SceneObject:
    """One shape: its kind, colour name, centre ``(x, y)`` and half-width ``radius``, in pixels."""

    shape: str
    colour: str
    x: int
    y: int
    radius: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Shapes and an optional word label on a ``size`` × ``size`` pixel background.

    Attributes:
        objects: the shapes, in drawing order (they never overlap).
        word: the written word, or ``None``; drawn black on a white label at ``word_xy``.
        word_xy: the label's top-left corner, pixels.
        size: width and height of the image, pixels.
    """

    objects: tuple[SceneObject, ...]
    word: str | None = None
    word_xy: tuple[int, int] = (0, 0)
    size: int = IMAGE_SIZE

    def render(self) -> Image.Image:
        """The scene as an RGB image of ``size`` × ``size`` pixels."""
        image = background(self.size).copy()
        draw = ImageDraw.Draw(image)
        for item in self.objects:
            box = (item.x - item.radius, item.y - item.radius, item.x + item.radius, item.y + item.radius)
            fill = COLOURS[item.colour]
            if item.shape == "circle":
                draw.ellipse(box, fill=fill)
            elif item.shape == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(item.x, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
        if self.word is not None:
            left, top, right, bottom = word_box(self.word, self.word_xy)
            draw.rectangle((left, top, right, bottom), fill=(255, 255, 255))
            draw.text((left + LABEL_PADDING, top + LABEL_PADDING), self.word, fill=(0, 0, 0), font=label_font())
        return image

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Scene:
        fields = json.loads(text)
        objects = tuple(SceneObject(**item) for item in fields.pop("objects"))
        return cls(objects=objects, word=fields["word"], word_xy=tuple(fields["word_xy"]), size=fields["size"])


@dataclass(frozen=True)
class SceneQuestion:
    """A question about a scene, its exact one-word answer and its kind (one of :data:`QUESTION_KINDS`)."""

    question: str
    answer: str
    kind: str


@cache
def background(size: int) -> Image.Image:
    """The ``size`` × ``size`` RGB background: red rises linearly across the width and green down the
    height over :data:`BACKGROUND_RANGE`, blue stays :data:`BACKGROUND_BLUE`. Cached: copy before drawing."""
    low, high = BACKGROUND_RANGE
    ramp = Image.linear_gradient("L").resize((size, size)).point(lambda level: low + level * (high - low) // 255)
    red = ramp.transpose(Image.Transpose.TRANSPOSE)
    return Image.merge("RGB", (red, ramp, Image.new("L", (size, size), BACKGROUND_BLUE)))


@cache
def label_font() -> ImageFont.FreeTypeFont:
    """Pillow's bundled font at :data:`FONT_SIZE` pixels (needs Pillow built with FreeType), loaded once."""
    return ImageFont.load_default(size=FONT_SIZE)


def word_box(word: str, corner: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the white label holding ``word`` with its top-left at ``corner``."""
    _, _, width, height = label_font().getbbox(word)
    return corner[0], corner[1], corner[0] + width + 2 * LABEL_PADDING, corner[1] + height + 2 * LABEL_PADDING


def overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 8) -> bool:
    """Whether two ``(left, top, right, bottom)`` boxes come within ``margin`` pixels of each other."""
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])


def random_scene(rng: random.Random, size: int = IMAGE_SIZE, max_objects: int = MAX_OBJECTS) -> Scene:
    """A scene of 1–``max_objects`` non-overlapping shapes (radius 22–44 px at 448 px) and,
    with probability 1/2, a word label; placement is retried until nothing overlaps."""
    scale = size / IMAGE_SIZE
    boxes: list[tuple[int, int, int, int]] = []
    word = rng.choice(WORDS) if rng.random() < 0.5 else None
    word_xy = (0, 0)
    if word is not None:
        width, height = word_box(word, (0, 0))[2:]
        word_xy = (rng.randint(4, size - width - 4), rng.randint(4, size - height - 4))
        boxes.append(word_box(word, word_xy))
    objects: list[SceneObject] = []
    wanted = rng.randint(1, max_objects)
    while len(objects) < wanted:
        radius = int(rng.randint(22, 44) * scale)
        x, y = rng.randint(radius + 4, size - radius - 4), rng.randint(radius + 4, size - radius - 4)
        box = (x - radius, y - radius, x + radius, y + radius)
        if any(overlaps(box, other) for other in boxes):
            continue
        boxes.append(box)
        objects.append(SceneObject(rng.choice(SHAPES), rng.choice(list(COLOURS)), x, y, radius))
    return Scene(tuple(objects), word, word_xy, size)


def unique(objects: tuple[SceneObject, ...], key: str) -> list[SceneObject]:
    """The objects whose ``key`` (``"shape"``, ``"colour"`` or ``"name"``) no other object shares."""
    values = [getattr(item, key) for item in objects]
    return [item for item, value in zip(objects, values) if values.count(value) == 1]


def candidate_questions(scene: Scene, rng: random.Random) -> dict[str, SceneQuestion]:
    """At most one question of each kind that has a single exact answer in ``scene``."""
    found: dict[str, SceneQuestion] = {}
    if by_shape := unique(scene.objects, "shape"):
        item = rng.choice(by_shape)
        found["colour"] = SceneQuestion(f"What colour is the {item.shape}?", item.colour, "colour")
    if by_colour := unique(scene.objects, "colour"):
        item = rng.choice(by_colour)
        found["shape"] = SceneQuestion(f"What shape is the {item.colour} object?", item.shape, "shape")
    shape = rng.choice(SHAPES)
    count = sum(item.shape == shape for item in scene.objects)
    found["count"] = SceneQuestion(f"How many {shape}s are there?", NUMBERS[count], "count")
    found["count_all"] = SceneQuestion("How many shapes are there?", NUMBERS[len(scene.objects)], "count_all")
    named = unique(scene.objects, "name")
    if len(named) >= 2:
        first, second = rng.sample(named, 2)
        if abs(first.x - second.x) > first.radius + second.radius:
            answer = "left" if first.x < second.x else "right"
            found["left_right"] = SceneQuestion(
                f"Is the {first.name} left or right of the {second.name}?", answer, "left_right"
            )
        if abs(first.y - second.y) > first.radius + second.radius:
            answer = "above" if first.y < second.y else "below"
            found["above_below"] = SceneQuestion(
                f"Is the {first.name} above or below the {second.name}?", answer, "above_below"
            )
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    present = any(item.colour == colour and item.shape == shape for item in scene.objects)
    if rng.random() < 0.5 and scene.objects:
        item = rng.choice(scene.objects)
        colour, shape, present = item.colour, item.shape, True
    found["exists"] = SceneQuestion(f"Is there a {colour} {shape}?", "yes" if present else "no", "exists")
    if scene.word is not None:
        found["word"] = SceneQuestion("What word is written in the image?", scene.word, "word")
    return found


def first_word(reply: str) -> str:
    """A reply read as a one-word answer (how the offline tasks score): its first word,
    lower-cased, full stops dropped; ``""`` for an empty reply."""
    words = reply.strip().lower().replace(".", " ").split()
    return words[0] if words else ""


def scene_rng(split: str, seed: int, index: int) -> random.Random:
    """The random stream of scene ``index`` of ``split`` under ``seed`` (splits never share a stream)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return random.Random(f"dash-scenes/{SPLITS[split]}/{seed}/{index}")


def scene_questions(
    split: str, seed: int, index: int, size: int = IMAGE_SIZE, max_objects: int = MAX_OBJECTS
) -> tuple[Scene, list[SceneQuestion]]:
    """Scene ``index`` of ``split`` (at most ``max_objects`` shapes) and its questions, one of each
    kind it supports, in random order."""
    rng = scene_rng(split, seed, index)
    scene = random_scene(rng, size, max_objects)
    questions = list(candidate_questions(scene, rng).values())
    rng.shuffle(questions)
    return scene, questions


def balanced_questions(
    split: str, seed: int, count: int, size: int = IMAGE_SIZE, kinds: tuple[str, ...] = QUESTION_KINDS
) -> list[tuple[Scene, SceneQuestion]]:
    """``count`` (scene, question) pairs of ``split``, cycling through ``kinds`` so each kind is
    about equally frequent; scenes that lack the next kind are skipped.

    Raises:
        ValueError: for a kind not in :data:`QUESTION_KINDS`.
    """
    if unknown := set(kinds) - set(QUESTION_KINDS):
        raise ValueError(f"unknown question kinds {sorted(unknown)}; choose from {QUESTION_KINDS}")
    pairs: list[tuple[Scene, SceneQuestion]] = []
    index = 0
    while len(pairs) < count:
        kind = kinds[len(pairs) % len(kinds)]
        scene, questions = scene_questions(split, seed, index, size)
        index += 1
        match = next((question for question in questions if question.kind == kind), None)
        if match is not None:
            pairs.append((scene, match))
    return pairs
