from __future__ import annotations

from pathlib import Path

import pytest

from editkit.testing.pairs import make_pair_dataset


@pytest.fixture
def pairs(tmp_path) -> Path:
    return make_pair_dataset(tmp_path / "dataset")
