"""dash_vl.load / ask and the dash-vl CLI on a tiny random VLM of each family saved to disk."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

import dash_vl
from dash_vl.adapters import adapter_class_for
from dash_vl.cli import main
from dash_vl.media import FrameSampling, load_video
from tests.conftest import ALL_FAMILY_NAMES, random_image


@pytest.fixture(scope="module", params=ALL_FAMILY_NAMES)
def saved_model(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"tiny-{request.param}")
    assert main(["make-random-model", str(directory), "--family", request.param]) == 0
    return directory


@pytest.fixture
def video_model(saved_model):
    """``saved_model`` where its family takes videos; skipped for LLaVA-1.5 and LLaVA-NeXT."""
    adapter = adapter_class_for(AutoConfig.from_pretrained(saved_model).model_type)
    if not adapter.takes_video:
        pytest.skip(f"{adapter.__name__} takes no video")
    return saved_model


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "noise.png"
    random_image(3, (112, 84)).save(path)
    return path


def test_load_from_directory_and_ask_about_an_image(saved_model, image_path):
    vlm = dash_vl.load(saved_model, ratio=0.5)
    answer = vlm.ask("What is shown?", images=image_path, max_new_tokens=4)
    assert isinstance(answer, str)
    report = vlm.last_report
    assert report.kept_tokens_per_layer[-1][0] < report.prompt_tokens[0]
    assert not vlm.halting.enabled


def test_ask_with_halting_off_equals_plain_generate_on_two_images(saved_model, image_path):
    vlm = dash_vl.load(saved_model, ratio=0.0)
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Describe."}]
    prompt = vlm.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    from PIL import Image

    images = [Image.open(image_path).convert("RGB"), random_image(4, (60, 90))]
    inputs = vlm.processor(text=[prompt], images=[images], return_tensors="pt")
    with torch.no_grad():
        plain = vlm.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = vlm.processor.decode(plain[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert vlm.ask("Describe.", images=[image_path, images[1]], max_new_tokens=6) == expected


def test_ask_about_video_frames_halts_video_tokens(video_model):
    vlm = dash_vl.load(video_model, ratio=0.75, scope="visual")
    frames = [random_image(seed, (112, 112)) for seed in range(4)]
    vlm.ask("What happens?", video=frames, max_new_tokens=2)
    report = vlm.last_report
    assert report.eligible_tokens[0] > 0
    assert report.prompt_tokens[0] - report.kept_tokens_per_layer[-1][0] == int(0.75 * report.eligible_tokens[0])


def test_video_for_a_family_that_takes_none_is_a_clear_error(saved_model):
    vlm = dash_vl.load(saved_model, ratio=0.5)
    if vlm.adapter.takes_video:
        pytest.skip(f"{type(vlm.model).__name__} takes videos")
    with pytest.raises(ValueError, match="takes no video; give its frames as images"):
        vlm.ask("What happens?", video=[random_image(seed, (112, 112)) for seed in range(4)], max_new_tokens=2)


def test_image_that_cannot_be_opened_is_a_clear_error(saved_model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    vlm = dash_vl.load(saved_model, ratio=0.5)
    with pytest.raises(ValueError, match="cannot be opened"):
        vlm.ask("What?", images=broken)
    with pytest.raises(ValueError, match="does not exist"):
        vlm.ask("What?", images=tmp_path / "missing.png")


def test_cli_ask_prints_answer_and_report(saved_model, image_path, capsys):
    assert main(["ask", str(saved_model), "--image", str(image_path), "-q", "Colour?", "--ratio", "0.5",
                 "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert "halted at layer 2" in captured.err and "ratio=0.5" in captured.err


def test_cli_reports_bad_knob_without_traceback(saved_model, image_path, capsys):
    assert main(["ask", str(saved_model), "--image", str(image_path), "-q", "x", "--ratio", "1.2"]) == 2
    assert "ratio must be in [0, 1)" in capsys.readouterr().err


def write_video(path, frames: int = 8, fps: int = 4) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 112, 112, "yuv420p"
        for index in range(frames):
            image = np.full((112, 112, 3), index * 30, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_file_frames_follow_the_sampling_rule(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path)
    assert len(load_video(path, FrameSampling("qwen", fps=2.0))) == 4  # 2 s of video at 2 frames per second
    assert len(load_video(path, FrameSampling("uniform", max_frames=32))) == 8  # every frame of a short video
    assert len(load_video(path, FrameSampling("uniform", max_frames=3))) == 3


def test_ask_about_a_video_file(video_model, tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path)
    vlm = dash_vl.load(video_model, ratio=0.5, scope="visual")
    assert isinstance(vlm.ask("What happens?", video=path, max_new_tokens=2), str)
    assert vlm.last_report.eligible_tokens[0] > 0


def test_cli_ask_about_a_video_file(video_model, tmp_path, capsys):
    path = tmp_path / "clip.mp4"
    write_video(path)
    assert main(["ask", str(video_model), "--video", str(path), "-q", "What happens?", "--ratio", "0.5",
                 "--scope", "visual", "--max-new-tokens", "2"]) == 0
    assert "scope=visual" in capsys.readouterr().err


def test_video_that_cannot_be_decoded_is_a_clear_error(video_model, tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"junk")
    vlm = dash_vl.load(video_model, ratio=0.5)
    with pytest.raises(ValueError, match="cannot be decoded"):
        vlm.ask("What?", video=path)
