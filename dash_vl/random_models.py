"""Models built from configuration values with random weights, and a tiny offline processor.

For tests (tiny shapes on the CPU) and speed benchmarks (the public checkpoints' shapes on a
GPU: speed does not depend on weight values). Nothing here reaches the Hugging Face Hub.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

QWEN2_VL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN2_VL_7B_TEXT: dict[str, Any] = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
)
QWEN2_VL_7B_VISION: dict[str, Any] = dict(
    depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2
)


def byte_level_tokenizer(special_tokens: tuple[str, ...] = QWEN2_VL_SPECIAL_TOKENS) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens, no merges) plus ``special_tokens``, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    return tokenizer


def tiny_qwen2_vl_processor(min_pixels: int = 56 * 56, max_pixels: int = 224 * 224) -> Qwen2VLProcessor:
    """A Qwen2-VL processor with the real image processor and chat layout and a byte-level tokenizer."""
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=byte_level_tokenizer(),
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def tiny_qwen2_vl_config(tokenizer: PreTrainedTokenizerFast | None = None, num_layers: int = 6, **text: Any) -> Qwen2VLConfig:
    """A few-layer Qwen2-VL (real M-RoPE, ViT and merger) whose special ids match ``tokenizer``."""
    tokenizer = tokenizer or byte_level_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_VL_SPECIAL_TOKENS}
    text_config = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
    )
    text_config.update(text)
    vision_config = dict(depth=2, embed_dim=32, hidden_size=text_config["hidden_size"], num_heads=4, mlp_ratio=2)
    return Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def qwen2_vl_7b_config(num_layers: int | None = None) -> Qwen2VLConfig:
    """Qwen2-VL-7B-Instruct's shapes (optionally fewer layers), for random-weight speed runs."""
    text = dict(QWEN2_VL_7B_TEXT)
    if num_layers is not None:
        text["num_hidden_layers"] = num_layers
    return Qwen2VLConfig(text_config=text, vision_config=QWEN2_VL_7B_VISION)


def random_qwen2_vl(
    config: Qwen2VLConfig,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Qwen2VLForConditionalGeneration:
    """``Qwen2VLForConditionalGeneration`` with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration(config)
    return model.to(dtype).eval()
