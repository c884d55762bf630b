"""Opening images and videos for the Python API, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch
from PIL import Image, UnidentifiedImageError

ImageSource = Union[str, Path, Image.Image]
VideoSource = Union[str, Path, list[Image.Image]]


def open_image(source: ImageSource) -> Image.Image:
    """An RGB ``PIL.Image`` from a path or an image.

    Raises:
        ValueError: if the file is missing or is not an image Pillow can read.
        TypeError: for any other kind of ``source``.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if not isinstance(source, (str, Path)):
        raise TypeError(f"image must be a path or a PIL.Image, got {type(source).__name__}")
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise ValueError(f"image {str(source)!r} does not exist") from error
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"image {str(source)!r} cannot be opened: {error}") from error


def load_video(source: VideoSource, fps: float = 2.0, max_frames: int = 64) -> torch.Tensor | list[Image.Image]:
    """Frames of a video: a file decoded and sampled by qwen-vl-utils, or a list of images as given.

    Args:
        source: a video file path, or the frames as ``PIL.Image`` objects.
        fps: frames sampled per second of video (qwen-vl-utils' rule).
        max_frames: upper bound on sampled frames.

    Returns:
        ``(frames, 3, H, W)`` uint8 tensor for a file, or the list of RGB images.

    Raises:
        ValueError: if the file is missing or cannot be decoded; TypeError for other sources.
    """
    if isinstance(source, list):
        return [open_image(frame) for frame in source]
    if not isinstance(source, (str, Path)):
        raise TypeError(f"video must be a path or a list of PIL images, got {type(source).__name__}")
    if not Path(source).is_file():
        raise ValueError(f"video {str(source)!r} does not exist")
    from qwen_vl_utils import fetch_video

    request: dict[str, Any] = {"video": str(source), "fps": fps, "max_frames": max_frames}
    try:
        return fetch_video(request)
    except Exception as error:  # decoders raise many types; all mean the same to the caller
        raise ValueError(f"video {str(source)!r} cannot be decoded: {error}") from error
