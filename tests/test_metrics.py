"""The measures that judge pictures (nst_ext.metrics), on their own ends: the content scores 1 and
the style 0 on the independent style measure."""

import pytest
import torch

from nst_ext.metrics import independent_style
from nst_ext.stylizer import Stylizer


@pytest.fixture(scope="module")
def vgg():
    return Stylizer(size=64, device="cpu", mixed_precision=False).vgg


def test_independent_style_runs_from_the_content_to_the_style(vgg, seed):
    content, style = torch.rand(3, 60, 80), torch.rand(3, 50, 50) ** 3
    assert independent_style(vgg, content, content, style) == pytest.approx(1.0)
    assert independent_style(vgg, style, content, style) == pytest.approx(0.0, abs=1e-6)
