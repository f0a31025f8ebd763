"""Where the tests run: ``--device`` (cpu by default) picks the device of the tests marked ``device``.

By default CUDA is hidden from the whole run (CUDA_VISIBLE_DEVICES=""), so the suite behaves on a GPU machine
exactly as on a CPU-only one: several code paths pick a GPU when they see one ("auto" devices, pinned memory,
loader workers), which changes numbers and timings that tests compare. ``--device cuda`` runs the tests marked
``device`` on the GPU and skips the rest, which assume a CPU: ``pytest -m device --device cuda``.
"""

from __future__ import annotations

import os

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"),
                     help="device of the tests marked 'device' (cpu: CUDA hidden from every test)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "device: tests that run on --device (cpu by default, cuda on a GPU)")
    if config.getoption("--device") == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything initialises CUDA; subprocesses inherit it


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--device") == "cpu":
        return
    skip = pytest.mark.skip(reason="assumes a CPU device; runs without --device cuda")
    for item in items:
        if item.get_closest_marker("device") is None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device of the tests marked ``device``."""
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.fail("--device cuda, but torch sees no CUDA device")
    return torch.device(name)
