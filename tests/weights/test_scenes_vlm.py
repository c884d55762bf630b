"""The shipped scenes model and its training script: the package's weights answer held-out
scenes, the tokenizer rebuilds identically, the training pipeline equals the real processor and
model, and a training run resumes from its checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dash_vl
from dash_vl.api import Query
from dash_vl.cli import main
from dash_vl.suites.scenes import balanced_questions, scene_questions
from dash_vl.weights.scenes_vlm import SHIPPED_DIRECTORY, build_processor, shipped_model_directory, untrained_model

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "eval"))
import train_scenes_vlm as training  # noqa: E402

sys.path.pop(0)

@pytest.fixture(scope="module")
def shipped():
    return dash_vl.load(shipped_model_directory(), dtype="float32")


def test_shipped_weights_are_small_safetensors(shipped):
    assert (SHIPPED_DIRECTORY / "model.safetensors").stat().st_size <= 20 * 2**20
    assert sum(parameter.numel() for parameter in shipped.model.parameters()) < 5_000_000


def test_shipped_model_answers_held_out_scenes(shipped):
    pairs = balanced_questions("heldout", 0, 32)  # four of each of the eight kinds
    queries = [Query(question.question, (scene.render(),)) for scene, question in pairs]
    answers = shipped.answer(queries, max_new_tokens=4)
    assert answers == [question.answer for _, question in pairs]


def test_processor_rebuilds_the_shipped_tokenizer():
    rebuilt = build_processor().tokenizer
    shipped_tokenizer = dash_vl.load(SHIPPED_DIRECTORY).processor.tokenizer
    assert rebuilt.get_vocab() == shipped_tokenizer.get_vocab()
    text = "How many circles are there? Answer with one word."
    assert rebuilt(text)["input_ids"] == shipped_tokenizer(text)["input_ids"]


def test_cli_ask_defaults_to_the_shipped_model(tmp_path, capsys):
    image = tmp_path / "scene.png"
    assert main(["make-scene", str(image), "--index", "3"]) == 0
    scene, questions = scene_questions("heldout", 0, 3)
    printed = capsys.readouterr().out
    assert f"{questions[0].question} -> {questions[0].answer}" in printed
    count_all = next(question for question in questions if question.kind == "count_all")
    assert main(["ask", "-q", count_all.question, "--image", str(image), "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == count_all.answer
    assert "no model named: using the small scenes Qwen2-VL shipped with dash_vl" in captured.err


@pytest.fixture(scope="module")
def chats():
    processor = build_processor(scenes=300)
    return processor, training.SceneChats(processor, seed=0, first_scene=0, turns=3)


def test_training_examples_equal_the_processor_and_label_only_answers(chats):
    processor, dataset = chats
    for index, example in zip(range(3), iter(dataset)):
        scene, questions = scene_questions("train", 0, index)
        labelled = processor.tokenizer.decode(example.tokens["labels"][example.tokens["labels"] != -100])
        asked = questions[: labelled.count("<|im_end|>")]
        assert labelled == "".join(f"{question.answer}<|im_end|>" for question in asked)
        text = processor.tokenizer.decode(example.tokens["input_ids"]).replace("<|image_pad|>", "")
        expected = processor(
            text=[text.replace("<|vision_start|>", "<|vision_start|><|image_pad|>")], images=[[scene.render()]],
            return_tensors="pt",
        )
        for name, values in example.tokens.items():
            if name != "labels":
                assert torch.equal(values, expected[name][0]), name
        pixel_values, grid = training.qwen2_vl_patches(example.pixels[None], processor.image_processor)
        torch.testing.assert_close(pixel_values, expected["pixel_values"], rtol=0, atol=1e-6)
        assert torch.equal(grid, expected["image_grid_thw"])


def test_batched_vision_attention_equals_the_per_image_loop(chats):
    processor, dataset = chats
    batch = training.collate([example for _, example in zip(range(3), iter(dataset))], pad_id=0)
    pixel_values, grid = training.qwen2_vl_patches(batch["pixels"], processor.image_processor)
    model = untrained_model(processor).eval()
    with torch.no_grad():
        looped = model.model.visual(pixel_values, grid_thw=grid)
        for block in model.model.visual.blocks:
            training.batched_vision_attention(block.attn)
        batched = model.model.visual(pixel_values, grid_thw=grid)
    looped, batched = (getattr(output, "pooler_output", output) for output in (looped, batched))
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)


def test_collate_pads_tokens_and_labels(chats):
    _, dataset = chats
    examples = [example for _, example in zip(range(4), iter(dataset))]
    batch = training.collate(examples, pad_id=7)
    lengths = [len(example.tokens["input_ids"]) for example in examples]
    assert batch["input_ids"].shape == (4, max(lengths)) and batch["pixels"].shape == (4, 448, 448, 3)
    for row, length in enumerate(lengths):
        assert batch["attention_mask"][row].sum() == length
        assert (batch["input_ids"][row, length:] == 7).all() and (batch["labels"][row, length:] == -100).all()


@pytest.mark.slow
def test_training_resumes_from_its_checkpoint(tmp_path):
    checkpoint, output = tmp_path / "state.pt", tmp_path / "model"
    common = [sys.executable, str(ROOT / "eval" / "train_scenes_vlm.py"), "--device", "cpu", "--checkpoint",
              str(checkpoint), "--output", str(output), "--batch-size", "2", "--workers", "1", "--heldout", "0"]
    first = subprocess.run([*common, "--steps", "1"], capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    assert torch.load(checkpoint)["step"] == 1
    second = subprocess.run([*common, "--steps", "2"], capture_output=True, text=True, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed at step 1 (2 scenes seen)" in second.stdout
    assert torch.load(checkpoint)["scenes_seen"] == 4
    assert dash_vl.load(output).model.config.text_config.num_hidden_layers == 8


def test_focus_kinds_are_asked_first():
    processor = build_processor(scenes=300)
    focus = ("left_right", "word")
    dataset = training.SceneChats(processor, seed=0, first_scene=0, turns=1, focus=focus)
    asked_focus = 0
    for index, example in zip(range(12), iter(dataset)):
        _, questions = scene_questions("train", 0, index)
        text = processor.tokenizer.decode(example.tokens["input_ids"])
        available = [question for question in questions if question.kind in focus]
        if available:
            assert available[0].question in text
            asked_focus += 1
    assert asked_focus >= 3


@pytest.mark.slow
def test_training_starts_from_a_saved_model(tmp_path):
    output = tmp_path / "model"
    run = subprocess.run(
        [sys.executable, str(ROOT / "eval" / "train_scenes_vlm.py"), "--device", "cpu", "--checkpoint",
         str(tmp_path / "state.pt"), "--output", str(output), "--batch-size", "2", "--workers", "1", "--heldout", "0",
         "--steps", "0", "--init", str(SHIPPED_DIRECTORY)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"started from the weights in {SHIPPED_DIRECTORY}" in run.stdout
    started, shipped_model = (dash_vl.load(path, dtype="float32").model for path in (output, SHIPPED_DIRECTORY))
    for name, value in shipped_model.state_dict().items():
        assert torch.equal(started.state_dict()[name], value), name


def test_training_scenes_can_be_capped_at_two_objects():
    dataset = training.SceneChats(build_processor(scenes=300), seed=0, first_scene=0, turns=1, max_objects=2)
    for index, example in zip(range(6), iter(dataset)):
        scene, _ = scene_questions("train", 0, index, max_objects=2)
        assert len(scene.objects) <= 2
        assert torch.equal(example.pixels, torch.from_numpy(np.array(scene.render())))
