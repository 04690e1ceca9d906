from __future__ import annotations

from pathlib import Path

import pytest

from editkit.testing.pairs import make_pair_dataset


@pytest.fixture
def pairs(tmp_path) -> Path:
    return make_pair_dataset(tmp_path / "dataset")


@pytest.fixture
def cpu_bf16(monkeypatch):
    """cpu_bf16(native): make torch report this CPU as having native bf16 or not (the
    hardware, not our code)."""
    import torch

    def report(native: bool) -> None:
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)

    return report
