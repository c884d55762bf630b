"""Opening images and videos for the Python API, with errors that name the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError

from dash_vl.model_source import URL_PREFIXES

ImageSource = str | Path | Image.Image
VideoSource = str | Path | list[Image.Image]


def open_image(source: ImageSource) -> Image.Image:
    """An RGB ``PIL.Image`` from a path or an image.

    Raises:
        ValueError: if the file is missing or is not an image Pillow can read.
        TypeError: for any other kind of ``source``.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    check_image_path(source)
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise ValueError(f"image {str(source)!r} is too large to open safely ({error}); resize it first") from error
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"image {str(source)!r} cannot be opened: {error}") from error


def check_image_path(source: str | Path) -> None:
    """``source`` names a local image file (checked before a model is loaded).

    Raises:
        ValueError: for a URL (images are not downloaded), a missing file or a folder.
        TypeError: for anything but a path.
    """
    if not isinstance(source, (str, Path)):
        raise TypeError(f"image must be a path or a PIL.Image, got {type(source).__name__}")
    if str(source).startswith(URL_PREFIXES):
        raise ValueError(f"image {str(source)!r} is a URL; URLs are not fetched: download the image and give its path")
    if not Path(source).exists():
        raise ValueError(f"image {str(source)!r} does not exist (looked in {Path(source).resolve().parent})")
    if Path(source).is_dir():
        raise ValueError(f"image {str(source)!r} is a folder; give an image file")


@dataclass(frozen=True)
class FrameSampling:
    """How many frames a model family takes from a video file (always evenly spaced over it).

    Attributes:
        rule: ``"qwen"``: qwen-vl-utils' ``smart_nframes`` (``fps`` frames per second of video,
            an even count within its bounds and ``max_frames``), as Qwen2-VL expects;
            ``"uniform"``: ``max_frames`` frames (all of them if the video has fewer), as the
            LLaVA-OneVision and InternVL evaluation code samples.
        max_frames: the most frames taken.
        fps: frames per second of video under the ``"qwen"`` rule.
    """

    rule: Literal["qwen", "uniform"] = "qwen"
    max_frames: int = 64
    fps: float = 2.0

    def __post_init__(self) -> None:
        if self.rule not in ("qwen", "uniform"):
            raise ValueError(f"rule must be 'qwen' or 'uniform', got {self.rule!r}")
        if self.max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, got {self.max_frames}")

    def count(self, total_frames: int, video_fps: float) -> int:
        """Frames to take from a video of ``total_frames`` frames at ``video_fps``."""
        if self.rule == "uniform":
            return min(self.max_frames, total_frames)
        from qwen_vl_utils.vision_process import smart_nframes

        bounds = {"fps": self.fps, "min_frames": 2, "max_frames": min(self.max_frames, total_frames)}
        return smart_nframes(bounds, total_frames, video_fps)


def check_video_path(source: str | Path) -> None:
    """``source`` names a local video file (checked before a model is loaded).

    Raises:
        ValueError: for a URL (videos are not downloaded) or a missing file.
    """
    if str(source).startswith(URL_PREFIXES):
        raise ValueError(f"video {str(source)!r} is a URL; URLs are not fetched: download the video and give its path")
    if not Path(source).is_file():
        raise ValueError(f"video {str(source)!r} does not exist")


def load_video(source: VideoSource, sampling: FrameSampling = FrameSampling()) -> list[Image.Image]:
    """Frames of a video: a file decoded with PyAV and sampled by ``sampling``, or images as given.

    (qwen-vl-utils' own readers need decord, torchcodec, or a torchvision with ``read_video``,
    so the file is decoded here and only qwen-vl-utils' frame-count rule is used.)

    Raises:
        ValueError: if the file is missing or cannot be decoded; TypeError for other sources.
    """
    if isinstance(source, list):
        return [open_image(frame) for frame in source]
    if not isinstance(source, (str, Path)):
        raise TypeError(f"video must be a path or a list of PIL images, got {type(source).__name__}")
    check_video_path(source)
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
    import torch

    count = sampling.count(len(frames), video_fps)
    picks = torch.linspace(0, len(frames) - 1, count).round().long().tolist()
    return [frames[index].convert("RGB") for index in picks]
