"""Synthetic scenes: seeded and split, drawn as described, with answers that follow from the scene."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dash_vl.suites.scenes import (
    BACKGROUND_BLUE,
    BACKGROUND_RANGE,
    COLOURS,
    IMAGE_SIZE,
    NUMBERS,
    QUESTION_KINDS,
    Scene,
    balanced_questions,
    first_word,
    scene_questions,
    scene_rng,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "eval"))
import make_scenes_task as task_files  # noqa: E402

sys.path.pop(0)
SCENES = [scene_questions("train", 0, index) for index in range(40)]


def test_scenes_are_seeded_and_splits_differ():
    assert scene_questions("train", 0, 7) == scene_questions("train", 0, 7)
    assert scene_questions("train", 0, 7)[0] != scene_questions("heldout", 0, 7)[0]
    assert scene_questions("train", 0, 7)[0] != scene_questions("train", 1, 7)[0]
    with pytest.raises(ValueError, match="split must be one of"):
        scene_rng("test", 0, 0)


def test_background_washes_red_across_and_green_down():
    low, high = BACKGROUND_RANGE
    image = Scene(objects=()).render()
    assert image.getpixel((0, 0)) == (low, low, BACKGROUND_BLUE)
    assert image.getpixel((IMAGE_SIZE - 1, IMAGE_SIZE - 1)) == (high, high, BACKGROUND_BLUE)
    row = [image.getpixel((x, 100)) for x in range(IMAGE_SIZE)]
    column = [image.getpixel((100, y)) for y in range(IMAGE_SIZE)]
    assert [red for red, _, _ in row] == sorted(red for red, _, _ in row) and len({green for _, green, _ in row}) == 1
    assert [green for _, green, _ in column] == sorted(green for _, green, _ in column)
    assert len({red for red, _, _ in column}) == 1
    assert Scene(objects=()).render().tobytes() == image.tobytes()  # drawing never touches the cached background


def test_every_object_is_drawn_in_its_colour_and_nothing_overlaps():
    for scene, _ in SCENES:
        image = scene.render()
        assert image.size == (scene.size, scene.size)
        for item in scene.objects:
            # the centre of each shape (inside circles, squares and these triangles) keeps its colour,
            # so no later shape or label was drawn over it
            assert image.getpixel((item.x, item.y)) == COLOURS[item.colour], item
        if scene.word is not None:
            assert image.getpixel((scene.word_xy[0] + 1, scene.word_xy[1] + 1)) == (255, 255, 255)


def test_answers_follow_from_the_scene():
    for scene, questions in SCENES:
        for question in questions:
            words = question.question.rstrip("?").split()
            if question.kind == "count_all":
                assert question.answer == NUMBERS[len(scene.objects)]
            elif question.kind == "count":
                shape = words[2].removesuffix("s")
                assert question.answer == NUMBERS[sum(item.shape == shape for item in scene.objects)]
            elif question.kind == "colour":
                matching = [item for item in scene.objects if item.shape == words[-1]]
                assert len(matching) == 1 and matching[0].colour == question.answer
            elif question.kind == "shape":
                matching = [item for item in scene.objects if item.colour == words[4]]
                assert len(matching) == 1 and matching[0].shape == question.answer
            elif question.kind == "exists":
                present = any(item.name == f"{words[3]} {words[4]}" for item in scene.objects)
                assert question.answer == ("yes" if present else "no")
            elif question.kind == "word":
                assert question.answer == scene.word
            else:
                first = next(item for item in scene.objects if item.name == " ".join(words[2:4]))
                second = next(item for item in scene.objects if item.name == " ".join(words[-2:]))
                axis = "x" if question.kind == "left_right" else "y"
                before = getattr(first, axis) < getattr(second, axis)
                assert question.answer == {"left_right": ("left", "right"), "above_below": ("above", "below")}[
                    question.kind][0 if before else 1]
    kinds = {question.kind for _, questions in SCENES for question in questions}
    assert kinds == set(QUESTION_KINDS)


def test_json_round_trip_draws_the_same_image():
    scene, _ = SCENES[3]
    again = Scene.from_json(scene.to_json())
    assert again == scene and again.render().tobytes() == scene.render().tobytes()


def test_balanced_questions_cycle_through_the_kinds():
    pairs = balanced_questions("heldout", 0, 10, kinds=("word", "count"))
    assert [question.kind for _, question in pairs] == ["word", "count"] * 5
    with pytest.raises(ValueError, match="unknown question kinds"):
        balanced_questions("heldout", 0, 2, kinds=("colour", "texture"))


def test_first_word_reads_a_one_word_reply():
    assert first_word(" Blue.") == "blue"
    assert first_word("three shapes") == "three"
    assert first_word("") == first_word(" . ") == ""


def test_committed_scene_tasks_are_what_the_generator_writes():
    committed = [json.loads(line) for line in task_files.TASK_FILE.read_text().splitlines()]
    assert committed == task_files.single_question_documents(200, QUESTION_KINDS, seed=0)
    assert {document["kind"] for document in committed} == set(QUESTION_KINDS)
    rounds = [json.loads(line) for line in task_files.ROUNDS_TASK_FILE.read_text().splitlines()]
    assert rounds == task_files.multi_round_documents(40, 4, QUESTION_KINDS, seed=0)
    for document in rounds:
        assert 2 <= len(document["questions"]) == len(document["answers"]) <= 4
        assert len(set(document["kinds"])) == len(document["kinds"])


def test_scenes_hold_at_most_max_objects():
    counts = [len(scene_questions("train", 0, index, max_objects=2)[0].objects) for index in range(40)]
    assert set(counts) == {1, 2}
