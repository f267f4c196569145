from pathlib import Path

import pytest

from shufflenet_trainer.data.prep.demo_data import write_digits_imagefolder


@pytest.fixture(scope="session")
def digits32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real digits dataset at 32 pixels: the smallest size multi-rank runs train on."""
    return write_digits_imagefolder(tmp_path_factory.mktemp("data") / "digits32", size=32)
