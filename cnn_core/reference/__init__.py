"""The NumPy twin of every compiled kernel in ``cnn_core``: the math, in a few readable lines.

Each function here has the same name, signature and argument checks as its compiled
counterpart (``cnn_core.gemm`` <-> ``cnn_core.reference.gemm``, ...), so that a student can
read the formula of every forward and backward pass in plain NumPy, the tests can hold the
compiled kernels against these lines, and ``nnscratch.set_backend("numpy")`` can run a
whole model on them. Each twin reads: its formula, one call that checks the arguments
(``_checks.py``), then the math.

The kernel contract both follow (in full in ``docs/design.md``): arrays are
``numpy.ndarray`` of float32 or float64, one dtype per call (labels: any integer dtype),
else a ``TypeError`` naming the argument; shapes that do not fit are a ``ValueError``
naming it; ``out=`` / ``grad=`` buffers and arrays updated in place must be C-contiguous,
writeable, of the exact shape and dtype (they are written and returned: a training step
allocates nothing), and must not share memory with the inputs or each other -- except
exactly the input they are computed from, where a kernel allows it in place (its docstring
says so); an ndarray subclass is read as the memory it views, whatever its properties say;
zero-size dimensions give NumPy's result, but a loss over an empty batch is an error.

=================  ==============================  ===================================
module             compiled kernels it mirrors     twins
=================  ==============================  ===================================
``gemm``           ``cnn_core/_gemm.pyx``          gemm, gemm_naive, gemm_kernel_name
``linear``         ``cnn_core/_linear.pyx``        linear_forward/backward, the chains
``activations``    ``cnn_core/_activations.pyx``   ReLU, leaky ReLU, sigmoid, tanh,
                                                   softmax, dropout, add
``losses``         ``cnn_core/_losses.pyx``        softmax_cross_entropy, mse,
                                                   bce_with_logits
``optim``          ``cnn_core/_optim.pyx``         SGD, Adam(W), all_finite
``conv``           ``cnn_core/_conv.pyx``          conv2d, maxpool2d, avgpool2d
``norm``           ``cnn_core/_norm.pyx``          batchnorm
``data``           ``cnn_core/_data.pyx``          take_rows
``parallel``       ``cnn_core/_parallel.pyx``      the thread count, cpu_features
``_checks``        ``cnn_core/_checks.pyx``        the contract's argument checks
=================  ==============================  ===================================
"""
from cnn_core.reference.gemm import gemm, gemm_naive, gemm_kernel_name
from cnn_core.reference.linear import (linear_forward, linear_backward, linear_chain_forward,
                                       linear_chain_backward)
from cnn_core.reference.activations import (
    relu_forward, relu_backward, leaky_relu_forward, leaky_relu_backward,
    sigmoid_forward, sigmoid_backward, tanh_forward, tanh_backward,
    softmax_forward, softmax_backward, dropout_forward, dropout_backward, add,
)
from cnn_core.reference.losses import softmax_cross_entropy, mse, bce_with_logits
from cnn_core.reference.optim import sgd_update, adam_update, sgd_step, adam_step, all_finite
from cnn_core.reference.conv import (conv2d_forward, conv2d_backward, maxpool2d_forward,
                                     maxpool2d_backward, avgpool2d_forward, avgpool2d_backward)
from cnn_core.reference.norm import batchnorm_forward, batchnorm_backward
from cnn_core.reference.data import take_rows
from cnn_core.reference.parallel import (set_num_threads, get_num_threads, openmp_enabled,
                                         cpu_features)

__all__ = [
    "gemm", "gemm_naive", "linear_forward", "linear_backward", "linear_chain_forward",
    "linear_chain_backward",
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
    "softmax_forward", "softmax_backward", "dropout_forward", "dropout_backward", "add",
    "softmax_cross_entropy", "mse", "bce_with_logits", "sgd_update", "adam_update",
    "sgd_step", "adam_step", "all_finite", "conv2d_forward", "conv2d_backward",
    "maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward",
    "batchnorm_forward", "batchnorm_backward", "take_rows",
    "set_num_threads", "get_num_threads", "openmp_enabled", "cpu_features",
    "gemm_kernel_name",
]
