import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The reference data: $REPROKIT_DATA_DIR, else ../shared/data beside the checkout."""
    return Path(os.environ.get("REPROKIT_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "eval").is_dir():
        pytest.fail(f"reference data not found at {path}: set REPROKIT_DATA_DIR to a folder laid out like shared/data")
    return path


@pytest.fixture(autouse=True)
def _two_threads():
    # CI has two cores; more threads than that only adds contention.
    torch.set_num_threads(2)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
