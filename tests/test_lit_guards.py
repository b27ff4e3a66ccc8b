"""The NaN guard of the LightningModules: a clear error naming the quantity, the step and the batch."""

from __future__ import annotations

import pytest
import torch

from s2svr_lightning.lit.guards import NonFiniteError, raise_if_nonfinite


def test_raise_if_nonfinite_names_the_quantity_step_and_batch():
    batch = {"hq": torch.zeros(1), "lq": torch.zeros(1), "key": ["seq_a/0001", "seq_b/0007"]}
    raise_if_nonfinite({"a": torch.ones(3), "b": [1.0, torch.zeros(2)]}, what="loss", step=3, batch=batch)
    bad = torch.tensor([1.0, float("nan"), float("inf"), float("nan")])
    with pytest.raises(NonFiniteError) as info:
        raise_if_nonfinite({"photo": torch.ones(2), "flow": bad}, what="teacher", step=17, batch=batch)
    message = str(info.value)
    for part in (
        "teacher['flow']",
        "step 17",
        "'hq'",
        "'lq'",
        "seq_a/0001",
        "seq_b/0007",
        "2 NaN",
        "1 infinite",
    ):
        assert part in message
    with pytest.raises(NonFiniteError, match="step 0"):
        raise_if_nonfinite(float("inf"), what="loss", step=0)
