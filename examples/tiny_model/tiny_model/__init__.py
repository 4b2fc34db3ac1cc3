"""A small digit classifier for grey 28x28 images: the model of optbench's "Your own model" walk-through.

`python -m producer sweep --model tiny_model:build` finds `build` on every worker once this package is
installed there (`pip install -e examples/tiny_model`). optbench calls the factory with `--model-kwargs`
(`'{"width": 32}'`) and feeds it inputs of the shape `build.input_shape` declares (one sample: channels,
height, width), unless `--input-shape` says otherwise.
"""

from __future__ import annotations

from torch import nn


def build(num_classes: int = 10, width: int = 16) -> nn.Module:
    """Two convolution blocks and a linear classifier; `width` channels in the first block, twice that in the second."""
    if width < 1:
        raise ValueError(f"width must be at least 1 (got {width})")
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


build.input_shape = (1, 28, 28)  # one sample: grey 28x28 images
