"""The console scripts named in pyproject.toml exist and start."""

import importlib
import pathlib
import shutil
import subprocess
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_cli_module_has_a_console_script():
    assert set(SCRIPTS) == {
        "cmseg-sweep",
        "cmseg-report",
        "cmseg-predict",
        "cmseg-check",
        "cmseg-phantom",
    }


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_targets_are_callables(name):
    module, _, attr = SCRIPTS[name].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


@pytest.mark.parametrize("name", ["cmseg-report", "cmseg-check", "cmseg-phantom"])
def test_installed_console_scripts_print_their_help(name):
    exe = shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} not installed (pip install -e . installs it)")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
