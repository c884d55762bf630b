"""Train the small Qwen2-VL that ships with dash_vl on synthetic scenes (resumable), then score it.

Each training example is one scene (``dash_vl.suites.scenes``, split ``train``) and up to ``--turns``
of its questions as a multi-turn chat; the loss covers the answers and their ``<|im_end|>``.
Scenes are drawn and processed by the real Qwen2-VL processor in DataLoader workers. The run
stops after ``--steps`` optimizer steps or ``--minutes`` of wall time, whichever comes first,
and saves everything needed to go on (weights, AdamW state, step, scenes seen) to
``--checkpoint``; the next run with the same ``--checkpoint`` continues from there. At the
end the model is scored on ``--heldout`` balanced questions of split ``heldout`` (greedy,
exact match, per kind) and saved with its processor to ``--output`` (``from_pretrained``).

    python eval/train_scenes_vlm.py --device cuda --checkpoint /tmp/scenes.pt --output /tmp/scenes_vlm
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dash_vl.api import Query, VisionLanguageModel
from dash_vl.hf_compat import vision_rotary
from dash_vl.suites.scenes import (
    IMAGE_SIZE,
    MAX_OBJECTS,
    QUESTION_KINDS,
    Scene,
    SceneQuestion,
    balanced_questions,
    scene_questions,
)
from dash_vl.weights.scenes_vlm import POST_PROMPT, build_processor, untrained_model

IGNORED = -100


@dataclass(frozen=True)
class TrainingExample:
    """One tokenized chat about one scene.

    Attributes:
        tokens: ``(S,)`` per-token tensors: ``input_ids`` (image placeholder expanded), ``labels``
            (the ids to predict at the answers, ``-100`` elsewhere; unshifted, as HF models take
            them) and the other per-token fields the processor returns (``attention_mask``, and
            ``mm_token_type_ids`` in newer transformers).
        pixels: ``(H, W, 3)`` uint8 scene image; :func:`qwen2_vl_patches` turns a batch of them
            into the processor's ``pixel_values`` on the GPU.
    """

    tokens: dict[str, torch.Tensor]
    pixels: torch.Tensor


def conversation(question_texts: list[str], answers: list[str]) -> list[dict[str, Any]]:
    """Chat messages: the image and the first question, then the other questions, each answered."""
    messages: list[dict[str, Any]] = []
    for turn, (question, answer) in enumerate(zip(question_texts, answers)):
        content: list[dict[str, Any]] = [{"type": "image"}] if turn == 0 else []
        content.append({"type": "text", "text": question})
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def answer_labels(input_ids: torch.Tensor, start_id: int, end_id: int, header: list[int]) -> torch.Tensor:
    """``(S,)`` labels: ``input_ids`` inside each assistant turn (after ``<|im_start|>`` and the
    ``header`` ids of ``"assistant\\n"``, up to and including ``<|im_end|>``), ``-100`` elsewhere."""
    ids = input_ids.tolist()
    labels = torch.full_like(input_ids, IGNORED)
    position = 0
    while position < len(ids):
        after_header = position + 1 + len(header)
        if ids[position] == start_id and ids[position + 1 : after_header] == header:
            end = ids.index(end_id, after_header)
            labels[after_header : end + 1] = input_ids[after_header : end + 1]
            position = end
        position += 1
    return labels


def qwen2_vl_patches(pixels: torch.Tensor, image_processor: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The Qwen2-VL image processor's output for equal-size images, computed on their device.

    Args:
        pixels: ``(B, H, W, 3)`` uint8 images whose sides are multiples of patch × merge size and
            within the processor's pixel bounds (so the processor does not resize them).
        image_processor: the Qwen2-VL image processor whose rescale, mean, std and patch layout apply.

    Returns:
        ``pixel_values`` ``(B · H/p · W/p, 3 · t · p · p)`` float32 (p: patch size, t: temporal
        patch size; patches ordered by merge window as the processor orders them) and
        ``image_grid_thw`` ``(B, 3)``.
    """
    patch, merge, frames = image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size
    images, height, width, _ = pixels.shape
    mean = torch.tensor(image_processor.image_mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std, device=pixels.device).view(1, 3, 1, 1)
    scaled = (pixels.permute(0, 3, 1, 2).float() * image_processor.rescale_factor - mean) / std
    grid_h, grid_w = height // patch, width // patch
    tiled = scaled.unsqueeze(1).expand(images, frames, 3, height, width)
    blocks = tiled.reshape(images, frames, 3, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    blocks = blocks.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = blocks.reshape(images * grid_h * grid_w, 3 * frames * patch * patch)
    grid = torch.tensor([[1, grid_h, grid_w]] * images, device=pixels.device)
    return pixel_values, grid


class SceneChats(IterableDataset):
    """Endless training chats from scene ``first_scene`` on; worker ``w`` of ``W`` takes scenes
    ``first_scene + w``, ``+ W``, ... (so a resumed run sees new scenes). Workers draw and
    tokenize; the patches are cut on the GPU by :func:`qwen2_vl_patches`. Questions of the
    ``focus`` kinds come first in every chat, so each scene that has one is asked it. Scenes hold
    at most ``max_objects`` shapes (fewer make a curriculum for the relations)."""

    def __init__(
        self, processor: Any, seed: int, first_scene: int, turns: int, focus: tuple[str, ...] = (),
        max_objects: int = MAX_OBJECTS,
    ) -> None:
        self.processor, self.seed, self.first_scene, self.turns = processor, seed, first_scene, turns
        self.focus, self.max_objects = focus, max_objects
        tokenizer = processor.tokenizer
        self.start_id, self.end_id, self.image_id = tokenizer.convert_tokens_to_ids(
            ["<|im_start|>", "<|im_end|>", "<|image_pad|>"]
        )
        self.header = tokenizer("assistant\n", add_special_tokens=False)["input_ids"]
        merge = processor.image_processor.merge_size * processor.image_processor.patch_size
        self.image_tokens = (IMAGE_SIZE // merge) ** 2
        probe_image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
        probe = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[[probe_image]])
        self.token_fields = [name for name in probe if name not in ("pixel_values", "image_grid_thw")]

    def tokens(self, text: str) -> dict[str, torch.Tensor]:
        """The processor's per-token fields for ``text`` holding one 448² image (placeholder expanded here)."""
        expanded = text.replace("<|image_pad|>", "<|image_pad|>" * self.image_tokens)
        input_ids = torch.tensor(self.processor.tokenizer(expanded, add_special_tokens=False)["input_ids"])
        fields = dict(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            mm_token_type_ids=(input_ids == self.image_id).long(),
        )
        return {name: fields[name] for name in self.token_fields}

    def example(self, scene: Scene, questions: list[SceneQuestion], rng: random.Random) -> TrainingExample:
        texts = [question.question + (POST_PROMPT if rng.random() < 0.5 else "") for question in questions]
        messages = conversation(texts, [question.answer for question in questions])
        tokens = self.tokens(self.processor.apply_chat_template(messages, tokenize=False))
        tokens["labels"] = answer_labels(tokens["input_ids"], self.start_id, self.end_id, self.header)
        return TrainingExample(tokens, torch.from_numpy(np.array(scene.render())))

    def __iter__(self):
        worker = get_worker_info()
        offset, stride = (worker.id, worker.num_workers) if worker else (0, 1)
        index = self.first_scene + offset
        while True:
            scene, questions = scene_questions("train", self.seed, index, max_objects=self.max_objects)
            questions.sort(key=lambda question: question.kind not in self.focus)
            rng = random.Random(index)
            yield self.example(scene, questions[: rng.randint(1, self.turns)], rng)
            index += stride


def collate(examples: list[TrainingExample], pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch: every per-token field ``(B, S_max)`` (``input_ids`` padded with
    ``pad_id``, ``labels`` with -100, the rest with 0) and ``pixels`` ``(B, H, W, 3)``."""
    length = max(len(example.tokens["input_ids"]) for example in examples)
    padding = defaultdict(int, input_ids=pad_id, labels=IGNORED)
    batch = {
        name: torch.full((len(examples), length), padding[name], dtype=values.dtype)
        for name, values in examples[0].tokens.items()
    }
    for row, example in enumerate(examples):
        for name, values in example.tokens.items():
            batch[name][row, : len(values)] = values
    return dict(batch, pixels=torch.stack([example.pixels for example in examples]))


def batched_vision_attention(attention: nn.Module) -> None:
    """Make a Qwen2-VL ViT attention layer attend within equal-length images in one SDPA call
    (the same result as its per-image loop under SDPA, with one kernel launch instead of one per
    image). Training only: every image in a batch must have the same patch grid."""
    def forward(hidden_states: torch.Tensor, cu_seqlens: torch.Tensor, position_embeddings=None, **kwargs):
        patches, images = hidden_states.shape[0], cu_seqlens.numel() - 1
        query, key, value = attention.qkv(hidden_states).reshape(patches, 3, attention.num_heads, -1).unbind(1)
        query, key = vision_rotary(attention)(query, key, *position_embeddings)
        per_image = [state.reshape(images, patches // images, attention.num_heads, -1).transpose(1, 2)
                     for state in (query, key, value)]
        output = nn.functional.scaled_dot_product_attention(*per_image, scale=attention.scaling)
        return attention.proj(output.transpose(1, 2).reshape(patches, -1))

    attention.forward = forward


def learning_rate(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % of ``peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def heldout_accuracy(vlm: VisionLanguageModel, seed: int, count: int, batch_size: int) -> dict[str, float]:
    """Exact-match accuracy of greedy answers on ``count`` balanced held-out questions: overall and per kind."""
    pairs = balanced_questions("heldout", seed, count)
    correct: dict[str, list[bool]] = defaultdict(list)
    for start in range(0, count, batch_size):
        chunk = pairs[start : start + batch_size]
        answers = vlm.answer([Query(question.question, (scene.render(),)) for scene, question in chunk], max_new_tokens=4)
        for (_, question), answer in zip(chunk, answers):
            correct[question.kind].append(answer.strip().lower() == question.answer)
    scores = {kind: sum(hits) / len(hits) for kind, hits in sorted(correct.items())}
    scores["all"] = sum(sum(hits) for hits in correct.values()) / count
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="resume from this file if it exists; save to it at the end")
    parser.add_argument("--output", required=True, help="folder for the trained model and processor")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=12000, help="total optimizer steps of the schedule")
    parser.add_argument("--minutes", type=float, default=8.0, help="stop this run after this much training time")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--turns", type=int, default=3, help="at most this many questions per scene and example")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--workers", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout", type=int, default=800, help="held-out questions scored at the end (0: none)")
    parser.add_argument("--focus", nargs="*", default=[], choices=QUESTION_KINDS, help="question kinds asked first")
    parser.add_argument("--init", default=None, help="a saved model folder to start from when no checkpoint exists")
    parser.add_argument("--max-objects", type=int, default=MAX_OBJECTS, help="at most this many shapes a training scene")
    args = parser.parse_args()

    processor = build_processor()
    model = untrained_model(processor, args.seed).to(args.device)
    for block in model.model.visual.blocks:
        batched_vision_attention(block.attn)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.05, betas=(0.9, 0.98))
    step, scenes_seen = 0, 0
    if Path(args.checkpoint).is_file():
        state = torch.load(args.checkpoint, map_location=args.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, scenes_seen = state["step"], state["scenes_seen"]
        print(f"resumed at step {step} ({scenes_seen} scenes seen)", flush=True)
    elif args.init:
        model.load_state_dict(type(model).from_pretrained(args.init).state_dict())
        print(f"started from the weights in {args.init}", flush=True)

    pad_id = processor.tokenizer.pad_token_id
    loader = DataLoader(
        SceneChats(processor, args.seed, scenes_seen, args.turns, tuple(args.focus), args.max_objects),
        batch_size=args.batch_size,
        num_workers=args.workers, collate_fn=partial(collate, pad_id=pad_id), prefetch_factor=4,
        persistent_workers=False,
    )
    model.train()
    started, losses = time.perf_counter(), []
    for batch in loader:
        if step >= args.steps or time.perf_counter() - started > 60 * args.minutes:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.learning_rate, args.warmup, args.steps)
        batch = {name: value.to(args.device, non_blocking=True) for name, value in batch.items()}
        batch["pixel_values"], batch["image_grid_thw"] = qwen2_vl_patches(batch.pop("pixels"), processor.image_processor)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda")):
            loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step, scenes_seen = step + 1, scenes_seen + args.batch_size
        losses.append(loss.item())
        if step % 200 == 0:
            elapsed = time.perf_counter() - started
            print(f"step {step}: loss {sum(losses) / len(losses):.4f}, lr {group['lr']:.2e}, {elapsed:.0f} s", flush=True)
            losses = []
    torch.save(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), step=step, scenes_seen=scenes_seen), args.checkpoint)
    print(f"saved step {step} to {args.checkpoint}", flush=True)

    model.eval()
    model.save_pretrained(args.output)
    processor.save_pretrained(args.output)
    if args.heldout:
        scores = heldout_accuracy(VisionLanguageModel(model, processor, None), args.seed, args.heldout, 64)
        print("held-out exact match: " + ", ".join(f"{kind} {score:.3f}" for kind, score in scores.items()), flush=True)


if __name__ == "__main__":
    main()
