"""cnn_core: the compiled kernels of nnscratch (Cython over typed memoryviews, compiled to C).

Every public function here has a NumPy twin of the same name and signature in
`cnn_core.reference`; the tests hold the two against each other. All arrays are float32
or float64 (one dtype per call); `out=`/`grad=` buffers are optional and, when given, are
written in place and returned. See docs/design.md, "The kernel contract".
"""
try:
    from cnn_core._parallel import set_num_threads, get_num_threads, openmp_enabled, cpu_features
except ImportError as _exc:  # pragma: no cover - the message is the point
    raise ImportError(
        f"cnn_core's compiled modules are missing ({_exc}). This is the source folder "
        f"{__path__[0]!r}, not an installed build: install with `pip install .` (or "
        f"`pip install -e .` to build in place), and run Python from outside the checkout "
        f"(or with the installed package first on sys.path).") from None
from cnn_core._gemm import gemm, gemm_naive, gemm_kernel_name
from cnn_core._linear import (linear_forward, linear_backward, linear_chain_forward,
                              linear_chain_backward)
from cnn_core._activations import (
    relu_forward, relu_backward, leaky_relu_forward, leaky_relu_backward,
    sigmoid_forward, sigmoid_backward, tanh_forward, tanh_backward,
    softmax_forward, softmax_backward, dropout_forward, dropout_backward, add,
)
from cnn_core._losses import softmax_cross_entropy, mse, bce_with_logits
from cnn_core._optim import sgd_update, adam_update, all_finite, sgd_step, adam_step
from cnn_core._conv import (conv2d_forward, conv2d_backward, maxpool2d_forward,
                            maxpool2d_backward, avgpool2d_forward, avgpool2d_backward)
from cnn_core._norm import batchnorm_forward, batchnorm_backward
from cnn_core._data import take_rows

__all__ = [
    "gemm", "gemm_naive", "linear_forward", "linear_backward", "linear_chain_forward",
    "linear_chain_backward",
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
    "softmax_forward", "softmax_backward", "dropout_forward", "dropout_backward", "add",
    "softmax_cross_entropy", "mse", "bce_with_logits", "sgd_update", "adam_update", "all_finite",
    "sgd_step", "adam_step",
    "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward",
    "batchnorm_forward", "batchnorm_backward", "take_rows",
    "set_num_threads", "get_num_threads", "openmp_enabled", "cpu_features", "gemm_kernel_name",
]
