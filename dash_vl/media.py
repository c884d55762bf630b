"""Opening images and videos for the Python API, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Union

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


def load_video(source: VideoSource, fps: float = 2.0, max_frames: int = 64) -> list[Image.Image]:
    """Frames of a video: a file decoded with PyAV and sampled as qwen-vl-utils does, or images as given.

    The frame count is qwen-vl-utils' ``smart_nframes`` (``fps`` frames per second of video, even,
    within its bounds and ``max_frames``), taken evenly spaced over the decoded frames.
    (qwen-vl-utils' own readers need decord, torchcodec, or a torchvision with ``read_video``.)

    Raises:
        ValueError: if the file is missing or cannot be decoded; TypeError for other sources.
    """
    if isinstance(source, list):
        return [open_image(frame) for frame in source]
    if not isinstance(source, (str, Path)):
        raise TypeError(f"video must be a path or a list of PIL images, got {type(source).__name__}")
    if not Path(source).is_file():
        raise ValueError(f"video {str(source)!r} does not exist")
    try:
        import av
    except ImportError as error:
        raise ImportError("decoding video files needs PyAV: pip install 'dash-vl[video]'") from error
    try:
        with av.open(str(source)) as container:
            stream = container.streams.video[0]
            video_fps = float(stream.average_rate or 1)
            frames = [frame.to_image() for frame in container.decode(stream)]
    except (av.error.FFmpegError, IndexError) as error:
        raise ValueError(f"video {str(source)!r} cannot be decoded: {error}") from error
    if len(frames) < 2:
        raise ValueError(f"video {str(source)!r} has {len(frames)} frames; at least 2 are needed")
    from qwen_vl_utils.vision_process import smart_nframes

    count = smart_nframes({"fps": fps, "min_frames": 2, "max_frames": min(max_frames, len(frames))}, len(frames), video_fps)
    picks = torch.linspace(0, len(frames) - 1, count).round().long().tolist()
    return [frames[index].convert("RGB") for index in picks]
