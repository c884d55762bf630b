"""The offline lmms-eval tasks shipped inside the package (``dash_scenes``, ``dash_scenes_rounds``,
``dash_shapes``): their folder, for ``lmms-eval --include_path`` from any working directory
(``dash-vl lmms-eval-tasks`` prints it), and each task's own folder.

Each task folder holds ``<name>.yaml`` (lmms-eval resolves its ``data_files`` relative to the YAML),
``<name>.jsonl`` (the documents) and ``utils.py`` (rendering and scoring; images are drawn from the
documents, so nothing is downloaded).
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIRECTORY = Path(__file__).parent / "tasks"


def task_folder(name: str) -> Path:
    """The folder of the shipped task ``name``.

    Raises:
        ValueError: for a name that is not a shipped task, listing the shipped ones.
    """
    folder = TASKS_DIRECTORY / name
    if not (folder / f"{name}.yaml").is_file():
        known = sorted(path.name for path in TASKS_DIRECTORY.iterdir() if (path / f"{path.name}.yaml").is_file())
        raise ValueError(f"no offline task {name!r} in {TASKS_DIRECTORY}; known: {known}")
    return folder
