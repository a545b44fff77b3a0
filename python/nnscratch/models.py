"""Model recipes: the networks the command line, the benchmarks and the examples train.

    import nnscratch as nn
    model = nn.models.mlp()                 # 784-256-128-10, ReLU
    model = nn.models.cnn()                 # nnscratch train --model cnn
    model = nn.models.lenet()               # the benchmarks' LeNet-style CNN
    model = nn.models.resnet(depth=20)      # a residual network (He et al. 2016)

Each returns a new `Sequential` whose initial weights come from the library generator
(``nnscratch.seed``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import numpy.typing as npt

from . import _checks
from .conv import Conv2d, GlobalAvgPool2d, MaxPool2d
from .layers import Dropout, Flatten, Linear, ReLU, Residual
from .model import Sequential
from .norm import BatchNorm2d

__all__ = ["mlp", "cnn", "lenet", "resnet"]


def mlp(in_features: int = 784, hidden: Sequence[int] = (256, 128), num_classes: int = 10,
        dropout: float = 0.0, dtype: npt.DTypeLike = np.float32) -> Sequential:
    """A multilayer perceptron: ``Linear -> ReLU [-> Dropout]`` per hidden size, then a
    Linear to the classes (Glorot-initialised: its outputs are logits, not ReLU inputs).

    Parameters
    ----------
    in_features : int, default 784 (a flattened 28x28 image)
    hidden : sequence of int, default (256, 128)
    num_classes : int, default 10
    dropout : float in [0, 1), default 0 (no Dropout layers)
    dtype : np.float32 (default) or np.float64
    """
    width = _checks.integer("in_features", in_features, 1)
    dropout = _checks.real("dropout", dropout, 0.0, 1.0, high_open=True)
    layers = []
    for i, size in enumerate(hidden):
        size = _checks.integer(f"hidden[{i}]", size, 1)
        layers += [Linear(width, size, dtype=dtype), ReLU()]
        if dropout > 0:
            layers.append(Dropout(dropout))
        width = size
    layers.append(Linear(width, _checks.integer("num_classes", num_classes, 1), dtype=dtype,
                         init="xavier"))
    return Sequential(*layers)


def cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
        dropout: float = 0.25, dtype: npt.DTypeLike = np.float32) -> Sequential:
    """The command line's CNN: two blocks of conv3x3 (no bias) + batch norm + ReLU + 2x2 max
    pool, then Flatten, Linear(., 128), ReLU, Dropout, Linear(128, classes).

    For 28x28 images: (1, 28, 28) -> (32, 14, 14) -> (64, 7, 7) -> 128 -> 10, 421,738
    parameters. (A convolution followed by batch norm has no bias: the norm's beta takes its
    place.)
    """
    in_channels = _checks.integer("in_channels", in_channels, 1)
    side = _checks.integer("image_size", image_size, 4) // 4
    return Sequential(
        Conv2d(in_channels, 32, 3, padding=1, bias=False, dtype=dtype),
        BatchNorm2d(32, dtype=dtype), ReLU(), MaxPool2d(2),
        Conv2d(32, 64, 3, padding=1, bias=False, dtype=dtype),
        BatchNorm2d(64, dtype=dtype), ReLU(), MaxPool2d(2),
        Flatten(), Linear(64 * side * side, 128, dtype=dtype), ReLU(), Dropout(dropout),
        Linear(128, _checks.integer("num_classes", num_classes, 1), dtype=dtype,
               init="xavier"))


def lenet(in_channels: int = 1, num_classes: int = 10,
          dtype: npt.DTypeLike = np.float32) -> Sequential:
    """A LeNet-style CNN for 28x28 images: conv5x5 16, ReLU, 2x2 max pool, conv5x5 32, ReLU,
    2x2 max pool, Flatten, Linear(512, 128), ReLU, Linear(128, classes)."""
    in_channels = _checks.integer("in_channels", in_channels, 1)
    return Sequential(
        Conv2d(in_channels, 16, 5, dtype=dtype), ReLU(), MaxPool2d(2),
        Conv2d(16, 32, 5, dtype=dtype), ReLU(), MaxPool2d(2), Flatten(),
        Linear(32 * 4 * 4, 128, dtype=dtype), ReLU(),
        Linear(128, _checks.integer("num_classes", num_classes, 1), dtype=dtype))


def resnet(depth: int = 20, in_channels: int = 1, num_classes: int = 10, width: int = 16,
           dtype: npt.DTypeLike = np.float32) -> Sequential:
    """The CIFAR-style residual network of He et al. (2016), depth 6n + 2.

    conv3x3 (width) + batch norm + ReLU; three stages of n basic blocks with width, 2 *
    width and 4 * width channels; global average pool; Linear to the classes. A basic block
    is ``ReLU(body(x) + shortcut(x))`` with body = conv3x3-BN-ReLU-conv3x3-BN
    (`nnscratch.Residual`); the first block of stages 2 and 3 halves the image with stride
    2, and its shortcut is a 1x1 convolution with stride 2 + batch norm (elsewhere the
    identity). The convolutions have no bias: the batch norm's beta takes its place.

    For 28x28 images: (1, 28, 28) -> (16, 28, 28) -> (32, 14, 14) -> (64, 7, 7) -> 64 ->
    classes. ResNet-20 (n = 3) with width 16 has 272,186 parameters, as the same network
    in PyTorch.

    Parameters
    ----------
    depth : int, default 20
        6n + 2: 20, 32, 44, 56, 110, ...
    in_channels : int, default 1
    num_classes : int, default 10
    width : int, default 16
        The first stage's channels.
    dtype : np.float32 (default) or np.float64
    """
    depth = _checks.integer("depth", depth, 8)
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
    blocks_per_stage = (depth - 2) // 6
    channels = _checks.integer("in_channels", in_channels, 1)
    width = _checks.integer("width", width, 1)

    def conv(c_in, c_out, kernel, stride):
        return Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False,
                      dtype=dtype)

    layers = [conv(channels, width, 3, 1), BatchNorm2d(width, dtype=dtype), ReLU()]
    channels = width
    for stage in range(3):
        out = width * 2 ** stage
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            body = Sequential(conv(channels, out, 3, stride), BatchNorm2d(out, dtype=dtype),
                              ReLU(), conv(out, out, 3, 1), BatchNorm2d(out, dtype=dtype))
            shortcut = None
            if stride != 1 or channels != out:
                shortcut = Sequential(conv(channels, out, 1, stride),
                                      BatchNorm2d(out, dtype=dtype))
            layers += [Residual(body, shortcut), ReLU()]
            channels = out
    layers += [GlobalAvgPool2d(),
               Linear(channels, _checks.integer("num_classes", num_classes, 1), dtype=dtype,
                      init="xavier")]
    return Sequential(*layers)
