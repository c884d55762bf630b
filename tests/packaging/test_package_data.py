"""The offline lmms-eval tasks and the scenes model are package data: every file of theirs matches a
``package-data`` pattern of ``pyproject.toml``, so an installed dash-vl finds them from any folder."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[2]


def test_tasks_and_scenes_model_are_package_data():
    from dash_vl.integrations.lmms_eval.offline_tasks import TASKS_DIRECTORY
    from dash_vl.model_source import SCENES_DIRECTORY

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = ROOT / "dash_vl"
    data = {
        path for folder in (TASKS_DIRECTORY, SCENES_DIRECTORY) for path in folder.glob("**/*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert {"dash_scenes", "dash_scenes_rounds", "dash_shapes"} <= {path.parent.name for path in data}

    def packaged(path: Path) -> bool:
        for name, patterns in package_data.items():
            owner = package.joinpath(*name.split(".")[1:])
            if owner in path.parents and any(path.relative_to(owner).match(pattern) for pattern in patterns):
                return True
        return False

    unmatched = [str(path.relative_to(package)) for path in data if not packaged(path)]
    assert unmatched == []


def test_task_folder_names_the_shipped_tasks_on_a_typo():
    from dash_vl.integrations.lmms_eval.offline_tasks import task_folder

    with pytest.raises(ValueError, match=r"no offline task 'dash_scene' .*known: \['dash_scenes', 'dash_scenes_rounds', 'dash_shapes'\]"):
        task_folder("dash_scene")


def test_shipped_model_resolves_by_name_from_any_folder(tmp_path, monkeypatch):
    from dash_vl.model_source import SCENES_DIRECTORY, resolve

    monkeypatch.chdir(tmp_path)
    assert resolve("dash-vl/scenes") == SCENES_DIRECTORY == resolve("scenes")
    (tmp_path / "scenes").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):  # a local folder of the same name wins
        resolve("scenes")
