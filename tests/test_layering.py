"""The package's layers hold: GUI code only where it belongs, torch only where needed.

Headless: nothing here opens a window. Every ``python_name`` of the manifest
must import; the core must not import napari or a Qt binding; ``io``,
``lesions``, ``metrics`` and ``phantom`` must not import torch (pre-processing
runs in torch on the model's device since issue 15)
(checked in the source and, in a fresh interpreter, at run time).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import napari_metseg

PACKAGE = Path(napari_metseg.__file__).parent
GUI_MODULES = {
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "magicgui",
    "superqt",
    "vispy",
}
TORCH_MODULES = {"torch", "torchvision"}
TORCH_FREE = ("io", "lesions", "metrics", "phantom")


def _manifest_python_names() -> list[str]:
    manifest = yaml.safe_load((PACKAGE / "napari.yaml").read_text())
    return [command["python_name"] for command in manifest["contributions"]["commands"]]


def _imported_roots(path: Path, top_level_only: bool = False) -> set[str]:
    """Top-level package names a module imports (absolute imports)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    roots = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _modules(*parts: str) -> list[Path]:
    found = []
    for part in parts:
        target = PACKAGE / part
        if target.is_dir():
            found.extend(sorted(target.rglob("*.py")))
        elif target.with_suffix(".py").is_file():
            found.append(target.with_suffix(".py"))
    return found


def _core_modules() -> list[Path]:
    gui = [PACKAGE / "widgets", PACKAGE / "cli"]
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "_napari.py" and not any(path.is_relative_to(g) for g in gui)
    ]


@pytest.mark.parametrize("python_name", _manifest_python_names())
def test_every_manifest_command_imports(python_name):
    module_name, _, attribute = python_name.partition(":")
    assert callable(getattr(importlib.import_module(module_name), attribute))


def test_manifest_names_the_hooks():
    names = _manifest_python_names()
    assert "napari_metseg.widgets.workbench:Workbench" in names
    assert "napari_metseg._napari:napari_get_reader" in names


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_imports_no_gui(path):
    assert not _imported_roots(path) & GUI_MODULES


@pytest.mark.parametrize("path", _modules("cli"), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_cli_imports_napari_only_lazily(path):
    assert not _imported_roots(path, top_level_only=True) & GUI_MODULES


@pytest.mark.parametrize("path", _modules(*TORCH_FREE), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_torch_free_modules_import_no_torch(path):
    assert not _imported_roots(path) & TORCH_MODULES


def test_torch_free_modules_load_no_torch_or_gui_at_run_time():
    modules = [
        f"napari_metseg.{name}"
        for name in TORCH_FREE
        if (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()
    ]
    modules += ["napari_metseg", "napari_metseg.case", "napari_metseg.cli"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in {sorted(GUI_MODULES | TORCH_MODULES)!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]", result.stdout
