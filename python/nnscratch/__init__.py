"""nnscratch: a neural-network library written from scratch.

Every number a model computes passes through the kernels of ``cnn_core`` (Cython,
compiled to C) or their NumPy twins in ``cnn_core.reference``; this package is the thin
Python layer on top, with the names PyTorch and Keras users know::

    import nnscratch as nn
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    history = model.fit(X, y, loss=nn.CrossEntropyLoss(),
                        optimizer=nn.SGD(model.parameters(), lr=0.1),
                        epochs=5, batch_size=64)
"""
import importlib

from . import metrics, models
from ._random import seed
from .backend import get_backend, get_num_threads, set_backend, set_num_threads
from .callbacks import Callback, EarlyStopping, History
from .conv import AvgPool2d, Conv2d, GlobalAvgPool2d, MaxPool2d
from .gradcheck import gradcheck
from .layers import (Dropout, Flatten, Identity, LeakyReLU, Linear, ReLU, Residual, Sigmoid,
                     Softmax, Tanh)
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
from .model import Sequential
from .module import Module, ModuleList, Parameter, register
from .norm import BatchNorm1d, BatchNorm2d
from .optim import SGD, Adam, AdamW, Optimizer
from .schedules import CosineAnnealingLR, LRScheduler, OneCycleLR, StepLR, WarmupCosineLR
from .serialization import load

__version__ = "0.1.0"

__all__ = [
    "Parameter", "Module", "ModuleList", "Sequential", "register",
    "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Dropout", "Flatten",
    "Identity", "Residual", "Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
    "BatchNorm1d", "BatchNorm2d",
    "Loss", "CrossEntropyLoss", "MSELoss", "BCEWithLogitsLoss",
    "Optimizer", "SGD", "Adam", "AdamW",
    "LRScheduler", "StepLR", "CosineAnnealingLR", "OneCycleLR", "WarmupCosineLR",
    "Callback", "EarlyStopping", "History",
    "seed", "set_backend", "get_backend", "set_num_threads", "get_num_threads",
    "gradcheck", "load", "models", "metrics", "datasets", "__version__",
]

# imported on first use: `nnscratch.datasets`, `nnscratch.images` (Pillow), and the bridges
# to other libraries, which import their optional package (onnx, torch, scikit-learn) only
# when used
_LAZY_SUBMODULES = ("data", "datasets", "images", "inspect", "onnx", "interop", "sklearn",
                    "tensorboard", "transforms")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
