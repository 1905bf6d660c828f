"""The Dockerfile's pins must agree with pyproject.toml, or the image runs code nobody tested."""

import re

import tomllib
from conftest import REPO
from packaging.requirements import Requirement


def _dockerfile_pins() -> dict[str, str]:
    text = (REPO / "Dockerfile").read_text()
    pins = {}
    for name, version in re.findall(r'"?([A-Za-z0-9_.\-]+)(?:\[[a-z,]+\])?==([0-9][^\s"\\]*)"?', text):
        pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_runtime_dependency_is_pinned_in_a_version_pyproject_allows():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _dockerfile_pins()
    assert pins, "no name==version pins found in the Dockerfile"
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is a dependency in pyproject.toml but is not pinned in the Dockerfile"
        assert req.specifier.contains(pins[name]), f"Dockerfile pins {name}=={pins[name]}, pyproject wants {req.specifier}"


def test_default_command_runs_the_one_shot_recipe_on_a_cuda_image():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+", text, re.M)
    assert 'CMD ["python", "-m", "reprokit.recipes.one_shot"]' in text
