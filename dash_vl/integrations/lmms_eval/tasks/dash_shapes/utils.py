"""The ``dash_shapes`` task: one coloured shape on a plain background, drawn from the document.

Every document names a shape, its colour, its position and the image size; the image is
rendered from those fields (no image files, no network), so the whole lmms-eval path runs
offline. The answer is the colour, scored by exact match on the first word of the reply.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from dash_vl.suites.scenes import first_word

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
    "purple": (140, 50, 170), "orange": (240, 140, 20), "black": (10, 10, 10), "white": (250, 250, 250),
}
BACKGROUND = (128, 128, 128)


def dash_shapes_doc_to_visual(doc: dict) -> list[Image.Image]:
    size = int(doc["size"])
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    half = size // 6
    centre_x, centre_y = int(doc["x"] * size), int(doc["y"] * size)
    box = (centre_x - half, centre_y - half, centre_x + half, centre_y + half)
    colour = COLOURS[doc["colour"]]
    if doc["shape"] == "circle":
        draw.ellipse(box, fill=colour)
    elif doc["shape"] == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(centre_x, box[1]), (box[0], box[3]), (box[2], box[3])], fill=colour)
    return [image]


def dash_shapes_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}What colour is the {doc['shape']}?{kwargs.get('post_prompt', '')}"


def dash_shapes_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": float(first_word(results[0]) == doc["colour"])}
