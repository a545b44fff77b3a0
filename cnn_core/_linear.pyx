"""The linear layer's kernels: one layer forward and backward, and chains of layers.

    linear_forward         out (N, M) = act(x (N, D) @ w (D, M) + b (M,))
    linear_backward        grad_w (D, M) (+)= x.T @ g,   grad_b (M,) (+)= g.sum(axis=0),
                           grad_x (N, D) = g @ w.T       (g = grad_out, N x M)
    linear_chain_forward   h_l = act_l(h_(l-1) @ weights[l-1] + biases[l-1]), l = 1 .. L
    linear_chain_backward  the chain's backward, from the last layer down (ReLUs undone)

Every product is the GEMM of cnn_core/_gemm.pyx (BLIS's five loops, packing, the
micro-kernels, how a product is shared out among the threads); this module holds the layers
built on it. linear_forward and linear_backward check their arguments once, then call it
through _gemm's `_run`: the bias and ReLU fused into the GEMM's write-back (one pass over
out), x.T @ g and g @ w.T with no transpose made (packing reads swapped strides), the bias
gradient summed by columns, rows in order (_column_sums).

Chains of layers (Sequential's Linear[-ReLU] stacks)
----------------------------------------------------
`linear_chain_forward` runs several linear layers as a few jobs of the team
(src/nn_team.h), share t of each job being what `_split` (cnn_core/_gemm.pyx) gives thread t
per layer -- exactly what gemm_parallel would give it, so every output has the bits of one
linear_forward per layer. A new job starts only where one share reads what another wrote (a
"meeting point"); between two, a share is a "stretch" of its layers (_on_team,
_chain_share)::

    for each layer l:                           share t of `team`
        [meeting point, when l's input or its shares are not all share t's]
        SPLIT_SERIAL   share 0: gemm_slab on the whole product
        SPLIT_SLABS    share t: slabs t, t + team, ... (_slab)
        SPLIT_HALVES   share h % team: half h of k (_half_product); meeting point; the sum
                       (_sum_share: by rows on two shares when it is large)

There is no barrier: a stretch's shares are parts of one job, claimed by whichever thread is
awake (each thread its own share first: the same core keeps the same rows), so a thread the
OS has parked holds nobody up.

A chain of fewer than ROW_PATH_MAX_M rows (one sample) on 2 threads or more posts no job:
its layers run in order on the calling thread (_chain_on_duo), the second half of k of each
halved product offered to the team's workers (src/nn_team.h's split phase, _gemm's), a
product in slabs on the team (gemm_parallel). A halved first layer's half is offered while the other
layers are still being checked.

`linear_chain_backward` runs from the last layer down the same way (_chain_back_share):
layer l's dW = x^T @ g, its column sums and dX = g @ w^T -- which read only g, x and w -- side
by side, each product shared out as linear_backward's would be, the ReLU mask of the layer
below applied to each share of dX by the thread that wrote it; a meeting point before each
layer below. With check_finite each share of a gradient is tested for NaN/inf
by the thread that wrote it, while it is in that core's cache.

What this module uses of the GEMM is declared in cnn_core/_gemm.pxd.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.string cimport memchr, memset

from cnn_core._checks cimport (as_float_array, check_same_dtype, check_buffer, output,
                              is_ready, is_buffer, span, overlap_error, READ, WRITTEN)
from cnn_core._parallel cimport num_threads, MAX_PARTS, run_parts_on
from cnn_core._finite cimport all_finite_span
from cnn_core._gemm cimport (
    _skernel, _dkernel, NN_CHECK_FINITE, ROW_PATH_MAX_M, SPLIT_SERIAL, SPLIT_HALVES,
    SPLIT_SLABS, _Split, _HalfJob, _slab_bounds, _tile_shape, _sum_on_two, _rows_finite,
    gemm_slab, gemm_parallel, _split, _slab, _half_product, _sum_halves, _sum_share,
    _offer_half, _take_half, _first_half_and_take, _halves_on_duo, _duo_own, _duo_disown,
    _check_pair, _refuse_overlap, _run)

cnp.import_array()

cdef extern from "nn_scratch.h" nogil:
    # this module's own per-thread buffers (src/nn_scratch.h): 2 = the two partial products
    # of a chain's halves, 3 = those of a chain's first layer while its half is offered
    void *nn_scratch(int slot, size_t nbytes)


def linear_forward(x, w, b, out=None, *, activation=None):
    """Fully connected layer: out = act(x @ w + b), bias and activation fused into the
    GEMM's write-back (one pass over out).

    x (N, D) @ w (D, M) + b (M,) -> out (N, M); b may be None; activation None or "relu".
    """
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    x, w = _check_pair("x", x, "w", w)
    cdef Py_ssize_t n = x.shape[0], d = x.shape[1], m = w.shape[1]
    if w.shape[0] != d:
        raise ValueError(f"w has shape {w.shape}; x has {d} features, so w must be ({d}, M)")
    if b is not None:
        b = as_float_array("b", b, 1)
        check_same_dtype("b", b, x.dtype)
        if b.shape[0] != m:
            raise ValueError(f"b has shape {b.shape}, expected ({m},)")
    c = output("out", out, (n, m), x.dtype)
    if out is not None:
        _refuse_overlap("out", c, ("x", x, "w", w, "b", b))
    cdef int relu = activation == "relu"
    _run(x, False, w, False, c, d, 1.0, 0.0, b, relu, False)
    return c if out is None else out        # (the caller's object: a subclass was viewed)


# ---------------------------------------------------------------------------------------------
# A chain of linear layers in one call (Sequential's Linear[-ReLU] stacks)

ctypedef struct _Layer:
    void *w           # (k, n) row-major
    void *bias        # (n,) or NULL
    void *out         # (m, n) row-major: this layer's output, the next one's input
    Py_ssize_t k
    Py_ssize_t n
    int relu
    _Split split


ctypedef struct _BackLayer:
    void *x           # (m, k) row-major: the layer's forward input
    void *w           # (k, n)
    void *gw          # (k, n): grad_w (+)= x^T @ g
    void *gb          # (n,) or NULL: grad_b (+)= the column sums of g
    void *g           # (m, n): dL/dz of this layer, read
    void *gx          # (m, k) or NULL: g @ w^T -- the g of the layer below, or dL/dx
    void *mask        # (m, k) or NULL: gx[i, j] kept where mask[i, j] > 0, else 0 (a ReLU)
    Py_ssize_t k
    Py_ssize_t n
    bint accumulate
    _Split split_w    # x^T @ g: (k x n) = (k x m) @ (m x n)
    _Split split_x    # g @ w^T: (m x k) = (m x n) @ (n x k)
    int tid_w         # the thread of a serial dW product,
    int tid_x         # of a serial dX product,
    int tid_b         # of the column sums
    bint check        # check grad_w and grad_b for NaN/inf, each share as it is written:
    char bad_w[MAX_PARTS]   # thread t found one in its share of grad_w
    char bad_b              # ... in grad_b


ctypedef struct _Seg:
    # which stretch of a share to run: the stretches between two meeting points (where one
    # thread reads what another wrote) are counted from 0 as a share runs (`at`), and only
    # the statements of stretch `want` are executed
    int want
    int at


cdef int _chain_share(int tid, int team, _Seg *g, const floating *x, _Layer *layers, Py_ssize_t nl,
                      Py_ssize_t m, floating *part) noexcept nogil:
    # Share `tid` of every layer, in order, of `team` shares: each product is shared out
    # exactly as gemm_parallel would share it (so every output has the bits of one
    # linear_forward per layer); only stretch g.want runs, the stretches ending where one
    # share reads what another wrote (chains of fewer than
    # ROW_PATH_MAX_M rows take the duo instead: _chain_on_duo). Returns -1 if out of
    # memory.
    cdef int status = 0, h
    cdef Py_ssize_t l, t, k, n
    cdef bint prev_multi = False
    cdef const floating *a = x
    cdef const floating *w
    cdef const floating *bias
    cdef floating *c
    cdef _Layer *L
    for l in range(nl):
        L = &layers[l]
        k = L.k
        n = L.n
        w = <const floating *> L.w
        bias = <const floating *> L.bias
        c = <floating *> L.out
        if l > 0 and team > 1 and (prev_multi or L.split.kind != SPLIT_SERIAL):
            g.at += 1               # this layer's input, or its threads, are not all ours
        if L.split.kind == SPLIT_SERIAL:
            if g.at == g.want and tid == 0 and gemm_slab(a, k, 1, w, n, 1, c, n, m, n, k, 1,
                                                         0, bias, L.relu,
                                                         L.split.row_path) != 0:
                status = -1
            prev_multi = False
        elif L.split.kind == SPLIT_SLABS:
            for t in range(L.split.parts):
                if g.at == g.want and t % team == tid and _slab(
                        &L.split, t, a, k, 1, w, n, 1, c, n, m, n, k, 1, 0, bias,
                        L.relu) != 0:
                    status = -1
            prev_multi = True
        else:   # the halves of k, then their sum (as _k_halves)
            for h in range(2):
                if g.at == g.want and h % team == tid and _half_product(
                        h, a, k, 1, w, n, 1, part, m, n, k, L.split.row_path) != 0:
                    status = -1
            g.at += 1
            prev_multi = _sum_on_two(m, n, team)
            if g.at == g.want:
                _sum_share(tid, part, c, n, m, n, 1, 0, bias, L.relu, prev_multi)
        a = c
    return status


cdef int _chain_on_duo(const floating *x, _Layer *layers, Py_ssize_t nl, Py_ssize_t m, int threads,
                       _HalfJob *first) noexcept nogil:
    # The chain's layers in order on this thread, for few rows (m < ROW_PATH_MAX_M): each
    # product's halves of k with the duo (the first layer's second half maybe offered
    # already: `first`, by linear_chain_forward while it checked the other layers), a
    # product in slabs on the team (gemm_parallel). A one-sample forward through
    # 784-256-128-10 offers the duo one job and takes it back once. Each product shared
    # out as _chain_share would: the same bits.
    cdef Py_ssize_t l
    cdef int status
    cdef const floating *a = x
    cdef floating *part
    cdef _Layer *L
    for l in range(nl):
        L = &layers[l]
        if L.split.kind == SPLIT_SERIAL:
            status = gemm_slab(a, L.k, 1, <const floating *> L.w, L.n, 1, <floating *> L.out,
                               L.n, m, L.n, L.k, 1, 0, <const floating *> L.bias, L.relu,
                               L.split.row_path)
        elif L.split.kind == SPLIT_SLABS:
            status = gemm_parallel(a, L.k, 1, <const floating *> L.w, L.n, 1,
                                   <floating *> L.out, L.n, m, L.n, L.k, 1, 0,
                                   <const floating *> L.bias, L.relu, threads)
        else:
            if l == 0 and first.offered:    # (offered by linear_chain_forward's checks)
                part = <floating *> first.part
                status = _first_half_and_take(first, part)
            else:
                part = <floating *> nn_scratch(2, 2 * m * L.n * sizeof(floating))
                status = -1 if part == NULL else _halves_on_duo(
                    a, L.k, 1, <const floating *> L.w, L.n, 1, part, m, L.n, L.k,
                    L.split.row_path)
            if status == 0:
                _sum_halves(part, <floating *> L.out, L.n, 0, m, m, L.n, 1, 0,
                            <const floating *> L.bias, L.relu)
        if status != 0:
            return -1
        a = <const floating *> L.out
    return 0


cdef int _chain_run(const floating *x, _Layer *layers, Py_ssize_t nl, Py_ssize_t m, int threads,
                    _HalfJob *first) noexcept nogil:
    # Every layer of the chain (m >= 1 rows, every k and n >= 1; layers[l].split decided).
    # -1 if out of memory.
    cdef Py_ssize_t l, part_size = 0
    cdef int team = 1
    if _chain_uses_duo(m, threads):
        return _chain_on_duo(x, layers, nl, m, threads, first)
    for l in range(nl):
        _count_team(&layers[l].split, m * layers[l].n, threads, &team, &part_size)
    return _on_team(team, x, layers, NULL, nl, m, part_size)


cdef inline bint _chain_uses_duo(Py_ssize_t m, int threads) noexcept nogil:
    return threads >= 2 and m < ROW_PATH_MAX_M


cdef inline void _count_team(const _Split *s, Py_ssize_t c_size, int threads, int *team,
                             Py_ssize_t *part_size) noexcept nogil:
    # what a chain needs for a product of c_size elements shared out as `s`: threads, and
    # room for the two partial Cs of its halves
    if s.kind == SPLIT_HALVES:
        part_size[0] = max(part_size[0], 2 * c_size)
        team[0] = max(team[0], 2 if threads >= 2 else 1)
    elif s.kind == SPLIT_SLABS:
        team[0] = max(team[0], <int> s.parts)


cdef inline int _share(int tid, int team, _Seg *g, const floating *x, _Layer *layers,
                       _BackLayer *back, Py_ssize_t nl, Py_ssize_t m,
                       floating *part) noexcept nogil:
    if back != NULL:
        return _chain_back_share(tid, team, g, back, nl, m, part)
    return _chain_share(tid, team, g, x, layers, nl, m, part)


ctypedef struct _TeamJob:
    # one stretch of every share of a chain (_team_part: part tid = thread tid's share)
    int seg
    int team
    bint single
    const void *x
    _Layer *layers
    _BackLayer *back
    Py_ssize_t nl
    Py_ssize_t m
    void *part
    int status[MAX_PARTS]


cdef void _team_part(void *ctx, Py_ssize_t tid) noexcept nogil:
    cdef _TeamJob *j = <_TeamJob *> ctx
    cdef _Seg g
    cdef int r
    g.want = j.seg
    g.at = 0
    if j.single:
        r = _share(<int> tid, j.team, &g, <const float *> j.x, j.layers, j.back, j.nl, j.m,
                   <float *> j.part)
    else:
        r = _share(<int> tid, j.team, &g, <const double *> j.x, j.layers, j.back, j.nl, j.m,
                   <double *> j.part)
    if r != 0:
        j.status[tid] = r


cdef int _on_team(int team, const floating *x, _Layer *layers, _BackLayer *back, Py_ssize_t nl,
                  Py_ssize_t m, Py_ssize_t part_size) noexcept nogil:
    # The shares of a chain's forward (layers) or backward (back), thread t's share being
    # part t of `team`: stretch by stretch -- between two meeting points, one job of the
    # team (src/nn_team.h) each, so that a thread the OS has parked holds nobody up: its
    # share is run by whoever is free. -1 if out of memory.
    cdef floating *part = NULL
    cdef _TeamJob job
    cdef _Seg g
    cdef int tid, seg, segments
    if part_size > 0:
        part = <floating *> nn_scratch(2, part_size * sizeof(floating))
        if part == NULL:
            return -1
    g.want = -1                 # a dry run: counts the stretches, runs nothing
    g.at = 0
    _share(0, team, &g, x, layers, back, nl, m, part)
    segments = g.at + 1
    if team == 1:
        for seg in range(segments):
            g.want = seg
            g.at = 0
            if _share(0, 1, &g, x, layers, back, nl, m, part) != 0:
                return -1
        return 0
    job.team = team
    job.single = floating is float
    job.x = x
    job.layers = layers
    job.back = back
    job.nl = nl
    job.m = m
    job.part = part
    for tid in range(team):
        job.status[tid] = 0
    for seg in range(segments):
        job.seg = seg
        run_parts_on(_team_part, &job, team, team)
    for tid in range(team):
        if job.status[tid] != 0:
            return -1
    return 0


cdef list _W_NAMES = [f"weights[{i}]" for i in range(64)]
cdef list _B_NAMES = [f"biases[{i}]" for i in range(64)]
cdef list _OUT_NAMES = [f"outs[{i}]" for i in range(64)]


cdef inline str _item(list names, str what, Py_ssize_t i):
    return names[i] if i < 64 else f"{what}[{i}]"


cdef tuple _sequence(str name, object value):
    if isinstance(value, (tuple, list)):
        return tuple(value)
    if isinstance(value, (str, bytes, np.ndarray, dict, set, frozenset)) or not hasattr(
            value, "__iter__"):
        raise TypeError(f"{name} must be a list or tuple (one entry per layer), got "
                        f"{type(value).__name__}")
    return tuple(value)


def linear_chain_forward(x, weights, biases, activations, outs=None):
    """Linear layers one after the other in one call:

        h_0 = x,    h_l = act_l(h_(l-1) @ weights[l-1] + biases[l-1])    (l = 1 .. L)

    x (N, D); weights[l] (D_l, D_(l+1)) with D_0 = D; biases[l] (D_(l+1),) or None;
    activations[l] None or "relu"; outs None, or one buffer (or None) per layer for h_(l+1),
    sharing no memory with x, the weights, the biases or each other.
    Returns the tuple (h_1, ..., h_L). Every h_l has the bits of
    ``linear_forward(h_(l-1), weights[l-1], biases[l-1], activation=activations[l-1])``;
    the layers run as a few jobs of the team, a new one only where a share reads what
    another wrote -- or, for fewer than 4 rows (one sample) on 2 threads or more, on this
    thread with a worker taking the second half of k of each product halved
    (src/nn_team.h).
    """
    x = as_float_array("x", x, 2)
    dtype = <object> cnp.PyArray_DESCR(<cnp.ndarray> x)
    weights = _sequence("weights", weights)
    biases = _sequence("biases", biases)
    activations = _sequence("activations", activations)
    if outs is not None:
        outs = _sequence("outs", outs)
    cdef Py_ssize_t nl = len(weights), l
    if nl == 0:
        raise ValueError("weights is empty: the chain needs at least one layer")
    if len(biases) != nl:
        raise ValueError(f"biases has {len(biases)} entries for {nl} weights")
    if len(activations) != nl:
        raise ValueError(f"activations has {len(activations)} entries for {nl} weights")
    if outs is not None and len(outs) != nl:
        raise ValueError(f"outs has {len(outs)} entries for {nl} weights")
    cdef Py_ssize_t m = cnp.PyArray_DIM(<cnp.ndarray> x, 0), k = cnp.PyArray_DIM(
        <cnp.ndarray> x, 1), n
    cdef bint empty = m == 0 or k == 0
    cdef list keep = []          # the checked arrays (maybe copies), alive until the end
    cdef list bufs = []          # the layers' outputs as written (a subclass's view)
    cdef list results = []       # ... as returned (the caller's objects)
    cdef _Layer *layers = <_Layer *> PyMem_Malloc(nl * sizeof(_Layer))
    if layers == NULL:
        raise MemoryError()
    cdef int status = 0, threads = num_threads()
    cdef const void *px = cnp.PyArray_DATA(x)
    cdef bint single = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32
    cdef cnp.npy_intp dims[2]
    cdef int mr = _skernel.mr if single else _dkernel.mr
    cdef int nr = _skernel.nr if single else _dkernel.nr
    cdef bint duo = _chain_uses_duo(m, threads)
    cdef _HalfJob first         # the first layer's second half, offered to the duo early
    cdef void *part
    first.offered = False
    try:
        # the activations first (a str subclass's == may run Python code: before the offer)
        for l in range(nl):
            act = activations[l]
            if act is not None and not (isinstance(act, str) and act == "relu"):
                raise ValueError(f"activations[{l}] must be None or 'relu', got {act!r}")
        # (the usual arrays answered through the C API; the named checks make the messages)
        for l in range(nl):
            w = weights[l]
            if not is_ready(w, 2, dtype):
                w = as_float_array(_item(_W_NAMES, "weights", l), w, 2)
                check_same_dtype(_item(_W_NAMES, "weights", l), w, dtype)
            if cnp.PyArray_DIM(<cnp.ndarray> w, 0) != k:
                raise ValueError(f"weights[{l}] has shape {w.shape}; the input of layer {l} has "
                                 f"{k} features, so it must be ({k}, M)")
            n = cnp.PyArray_DIM(<cnp.ndarray> w, 1)
            b = biases[l]
            if b is not None:
                if not is_ready(b, 1, dtype):
                    b = as_float_array(_item(_B_NAMES, "biases", l), b, 1)
                    check_same_dtype(_item(_B_NAMES, "biases", l), b, dtype)
                if cnp.PyArray_DIM(<cnp.ndarray> b, 0) != n:
                    raise ValueError(f"biases[{l}] has shape {b.shape}, expected ({n},)")
            act = activations[l]        # (checked above)
            given = None if outs is None else outs[l]
            if given is None:       # (a new array made directly: `output`'s, without the tuple)
                dims[0] = m
                dims[1] = n
                out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32 if single else cnp.NPY_FLOAT64, 0)
            elif not is_buffer(given, m, n, dtype):
                out = output(_item(_OUT_NAMES, "outs", l), given, (m, n), dtype)
            else:
                out = given
            keep.append(w)
            keep.append(b)
            bufs.append(out)
            results.append(out if given is None else given)
            layers[l].w = cnp.PyArray_DATA(w)
            layers[l].bias = cnp.PyArray_DATA(b) if b is not None and n > 0 else NULL
            layers[l].out = cnp.PyArray_DATA(out)
            layers[l].k = k
            layers[l].n = n
            layers[l].relu = act is not None
            empty = empty or n == 0
            if not empty:
                layers[l].split = _split(m, n, k, 1, threads, mr, nr)
                if (l == 0 and duo and layers[0].split.kind == SPLIT_HALVES
                        and _duo_own()):
                    # offered now: the helper sees it while the other layers are checked.
                    # Python code may run meanwhile (an array subclass's properties, a
                    # finalizer) and call kernels on this thread: the partial products go
                    # to scratch slot 3, which only the duo's owner uses (they cannot own
                    # it now), not to slot 2, which theirs would take
                    part = nn_scratch(3, 2 * m * n * (sizeof(float) if single else
                                                      sizeof(double)))
                    if part == NULL:
                        _duo_disown()
                        raise MemoryError("linear_chain_forward: cannot allocate the "
                                          "partial products")
                    _offer_half(&first, single, px, k, 1, layers[0].w, n, 1, part, m, n, k,
                                layers[0].split.row_path, True)
            k = n
        if outs is not None:
            given = []
            for l in range(nl):
                if outs[l] is not None:
                    given.append(_item(_OUT_NAMES, "outs", l))
                    given.append(bufs[l])
            _check_chain_overlap([x] + keep, given, False)
        if empty:
            # a dimension is zero: layer by layer (NumPy's answers: empty, or bias + ReLU)
            if first.offered:
                with nogil:
                    _take_half(&first)      # (its partial Cs unused)
            inp = x
            for l in range(nl):
                _run(inp, False, keep[2 * l], False, bufs[l], layers[l].k, 1.0, 0.0,
                     keep[2 * l + 1], layers[l].relu, False)
                inp = bufs[l]
        else:
            with nogil:
                if single:
                    status = _chain_run(<const float *> px, layers, nl, m, threads, &first)
                else:
                    status = _chain_run(<const double *> px, layers, nl, m, threads, &first)
            if status != 0:
                raise MemoryError("linear_chain_forward: cannot allocate the packing buffers")
    finally:
        if first.offered:           # (a later layer's check raised): taken back first
            with nogil:
                _take_half(&first)
        PyMem_Free(layers)
    return tuple(results)


cdef void _column_sums(const floating *g, Py_ssize_t n, Py_ssize_t m, floating *acc,
                       bint accumulate) noexcept nogil:
    # acc (M,) (+)= g (N, M).sum(axis=0), rows in order (a fixed summation order)
    cdef Py_ssize_t i, j
    if not accumulate:
        for j in range(m):
            acc[j] = 0
    for i in range(n):
        for j in range(m):
            acc[j] += g[i * m + j]


cdef _add_column_sums(cnp.ndarray g, cnp.ndarray acc, bint accumulate):
    # (checked arrays of one dtype: their data pointers taken as they are)
    cdef Py_ssize_t n = cnp.PyArray_DIM(g, 0), m = cnp.PyArray_DIM(g, 1)
    cdef void *pg = cnp.PyArray_DATA(g)
    cdef void *pa = cnp.PyArray_DATA(acc)
    cdef bint single = cnp.PyArray_TYPE(g) == cnp.NPY_FLOAT32
    with nogil:
        if single:
            _column_sums(<const float *> pg, n, m, <float *> pa, accumulate)
        else:
            _column_sums(<const double *> pg, n, m, <double *> pa, accumulate)


def linear_backward(grad_out, x, w, grad_w, grad_b, grad_x=None, *, compute_grad_x=True,
                    accumulate=True):
    """Backward of out = x @ w + b, accumulating the parameter gradients (as PyTorch's .grad):

        grad_w (D, M) += x.T @ grad_out       grad_b (M,) += grad_out.sum(axis=0)
        grad_x (N, D)  = grad_out @ w.T       (returned; None when compute_grad_x is False)

    grad_out (N, M), x (N, D), w (D, M). grad_b may be None (no bias). accumulate=False
    overwrites grad_w and grad_b (= instead of +=: the GEMM runs with beta = 0, so a
    zero_grad needs no pass of its own; their old contents are never read).
    """
    grad_out, x = _check_pair("grad_out", grad_out, "x", x)
    w = as_float_array("w", w, 2)
    check_same_dtype("w", w, grad_out.dtype)
    dtype = grad_out.dtype
    cdef Py_ssize_t n = grad_out.shape[0], m = grad_out.shape[1], d = w.shape[0]
    if w.shape[1] != m:
        raise ValueError(f"w has shape {w.shape}, expected (D, {m}) to match grad_out")
    if x.shape != (n, d):
        raise ValueError(f"x has shape {x.shape}, expected ({n}, {d})")
    grad_w = check_buffer("grad_w", grad_w, (d, m), dtype)
    if grad_b is not None:
        grad_b = check_buffer("grad_b", grad_b, (m,), dtype)
    given = compute_grad_x and grad_x is not None
    gx = output("grad_x", grad_x, (n, d), dtype) if compute_grad_x else None
    _refuse_overlap("grad_w", grad_w, ("grad_out", grad_out, "x", x, "w", w, "grad_b", grad_b))
    if grad_b is not None:
        _refuse_overlap("grad_b", grad_b, ("grad_out", grad_out, "x", x, "w", w))
    if given:
        _refuse_overlap("grad_x", gx, ("grad_out", grad_out, "x", x, "w", w,
                                       "grad_w", grad_w, "grad_b", grad_b))
    # the arrays are checked: straight to the products (no second round of checks)
    _run(x, True, grad_out, False, grad_w, n, 1.0, 1.0 if accumulate else 0.0, None, 0, False)
    if grad_b is not None:
        _add_column_sums(grad_out, grad_b, accumulate)
    if not compute_grad_x:
        return None
    _run(grad_out, False, w, True, gx, m, 1.0, 0.0, None, 0, False)
    return grad_x if given else gx          # (the caller's object: a subclass was viewed)


# ---------------------------------------------------------------------------------------------
# The backward of a chain of linear layers in one call (Sequential's Linear[-ReLU] stacks)

cdef void _relu_mask(floating *c, const floating *mask, Py_ssize_t ld, Py_ssize_t i0, Py_ssize_t i1,
                     Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    # rows [i0, i1), columns [j0, j1) of c (leading dimension ld): c = c where mask > 0,
    # else 0 -- ReLU's backward (relu_backward's very select, so the same bits)
    cdef Py_ssize_t i, j
    cdef floating *row
    cdef const floating *keep
    for i in range(i0, i1):
        row = c + i * ld
        keep = mask + i * ld
        for j in range(j0, j1):
            row[j] = row[j] if keep[j] > 0 else 0


cdef int _share_product(int tid, int team, _Seg *g, const _Split *s, int serial_tid,
                        const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                        Py_ssize_t rsb, Py_ssize_t csb, floating *c, Py_ssize_t ldc, Py_ssize_t m,
                        Py_ssize_t n, Py_ssize_t k, floating beta, const floating *mask, bint check,
                        floating *part) noexcept nogil:
    # Thread tid's share of C (m x n) = A @ B + beta * C, shared out as gemm_parallel would
    # (so the same bits), then -- when mask is given -- ReLU's backward on what it wrote.
    # Every share calls this for every product (a halves product has a meeting point). With
    # `check`, each value written is tested for NaN/inf as it is written (in the
    # micro-kernels' registers; the sum of halves and the row kernel's rows in cache, by the
    # thread that wrote them). Returns -1 if out of memory, 1 if checked and a value of its
    # share is NaN or infinite, else 0.
    cdef int status = 0, h, r, flags = NN_CHECK_FINITE if check else 0
    cdef bint bad = False
    cdef Py_ssize_t t, start, size, rows = (m + 1) // 2
    cdef bint on_two
    if s.kind == SPLIT_SERIAL:
        if g.at == g.want and tid == serial_tid % team:
            r = gemm_slab(a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, 1, beta, NULL, flags,
                          s.row_path)
            status = -1 if r < 0 else 0
            bad = r > 0
            if mask != NULL:
                _relu_mask(c, mask, ldc, 0, m, 0, n)
    elif s.kind == SPLIT_SLABS:
        for t in range(s.parts):
            if g.at != g.want or t % team != tid:
                continue
            r = _slab(s, t, a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, 1, beta, NULL, flags)
            if r < 0:
                status = -1
            bad = bad or r > 0
            if mask != NULL:
                _slab_bounds(s, t, &start, &size)
                if size > 0 and s.split_n:
                    _relu_mask(c, mask, ldc, 0, m, start, start + size)
                elif size > 0:
                    _relu_mask(c, mask, ldc, start, start + size, 0, n)
    else:   # the halves of k, then their sum (as _k_halves), its rows checked after it
        for h in range(2):
            if g.at == g.want and h % team == tid and _half_product(
                    h, a, rsa, csa, b, rsb, csb, part, m, n, k, s.row_path) != 0:
                status = -1
        g.at += 1                   # (the sum reads both halves)
        on_two = _sum_on_two(m, n, team)
        if g.at == g.want:
            _sum_share(tid, part, c, ldc, m, n, 1, beta, NULL, 0, on_two)
        if g.at == g.want and ((not on_two and tid == 0) or (on_two and tid < 2)):
            start = 0 if not on_two or tid == 0 else rows
            size = (m if not on_two else rows) if tid == 0 else m - rows
            if mask != NULL:
                _relu_mask(c, mask, ldc, start, start + size, 0, n)
            if check and not _rows_finite(c, ldc, start, start + size, 0, n):
                bad = True
    if status < 0:
        return -1
    return 1 if bad else 0


cdef int _chain_back_share(int tid, int team, _Seg *g, _BackLayer *layers, Py_ssize_t nl,
                           Py_ssize_t m, floating *part) noexcept nogil:
    # Share tid of every layer's backward, from the last layer down, of `team` shares (only
    # stretch g.want runs). Layer l's three pieces -- dW = x^T @ g, the column sums,
    # dX = g @ w^T with the ReLU mask of the layer below -- read only g, x and w, so they
    # run side by side; a meeting point before each layer below, which reads the g the dX
    # shares wrote. Returns -1 if out of memory.
    cdef int status = 0, r
    cdef Py_ssize_t l
    cdef _BackLayer *L
    cdef floating beta
    for l in range(nl - 1, -1, -1):
        L = &layers[l]
        if l < nl - 1 and team > 1:
            g.at += 1               # this layer's g was written by the shares of the last
        beta = 1 if L.accumulate else 0
        # grad_w (k x n) (+)= x^T (k x m) @ g (m x n)
        r = _share_product(tid, team, g, &L.split_w, L.tid_w, <const floating *> L.x, 1, L.k,
                           <const floating *> L.g, L.n, 1, <floating *> L.gw, L.n, L.k, L.n,
                           m, beta, NULL, L.check, part)
        if r < 0:
            status = -1
        elif r > 0:
            L.bad_w[tid] = 1
        if g.at == g.want and L.gb != NULL and tid == L.tid_b % team:
            _column_sums(<const floating *> L.g, m, L.n, <floating *> L.gb, L.accumulate)
            if L.check and not all_finite_span(<const floating *> L.gb, L.n):
                L.bad_b = 1
        # gx (m x k) = g (m x n) @ w^T (n x k), then the ReLU below (mask)
        if L.gx != NULL and _share_product(
                tid, team, g, &L.split_x, L.tid_x, <const floating *> L.g, L.n, 1,
                <const floating *> L.w, 1, L.n, <floating *> L.gx, L.k, m, L.k, L.n, 0,
                <const floating *> L.mask, False, part) < 0:
            status = -1
    return status


cdef int _chain_back_run(_BackLayer *layers, Py_ssize_t nl, Py_ssize_t m, int threads,
                         const floating *dummy) noexcept nogil:
    # Every layer's backward (m >= 1 rows, every k and n >= 1). -1 if out of memory.
    cdef int mr, nr
    _tile_shape(dummy, &mr, &nr)
    cdef Py_ssize_t l, part_size = 0
    cdef int team = 1, serial = 0
    cdef _BackLayer *L
    for l in range(nl):
        L = &layers[l]
        L.split_w = _split(L.k, L.n, m, 1, threads, mr, nr)
        _count_team(&L.split_w, L.k * L.n, threads, &team, &part_size)
        L.split_x = _split(m, L.k, L.n, L.n, threads, mr, nr)
        if L.gx != NULL:
            _count_team(&L.split_x, m * L.k, threads, &team, &part_size)
    # the pieces one thread does (serial products, column sums) go round the team, from the
    # top layer down: in the same jobs, they run side by side
    for l in range(nl - 1, -1, -1):
        L = &layers[l]
        L.tid_w = serial % team
        serial += L.split_w.kind == SPLIT_SERIAL
        L.tid_b = serial % team
        serial += L.gb != NULL
        L.tid_x = serial % team
        serial += L.gx != NULL and L.split_x.kind == SPLIT_SERIAL
    return _on_team(team, dummy, NULL, layers, nl, m, part_size)


cdef list _X_NAMES = [f"xs[{i}]" for i in range(64)]
cdef list _GW_NAMES = [f"grads_w[{i}]" for i in range(64)]
cdef list _GB_NAMES = [f"grads_b[{i}]" for i in range(64)]
cdef list _MASK_NAMES = [f"masks[{i}]" for i in range(64)]
cdef list _WORK_NAMES = [f"work[{i}]" for i in range(64)]


cdef _apply_mask(cnp.ndarray c, cnp.ndarray mask):
    # c = c where mask > 0, else 0 (two checked arrays of one shape and dtype)
    cdef Py_ssize_t m = cnp.PyArray_DIM(c, 0), n = cnp.PyArray_DIM(c, 1)
    cdef void *pc = cnp.PyArray_DATA(c)
    cdef void *pm = cnp.PyArray_DATA(mask)
    with nogil:
        if cnp.PyArray_TYPE(c) == cnp.NPY_FLOAT32:
            _relu_mask(<float *> pc, <const float *> pm, n, 0, m, 0, n)
        else:
            _relu_mask(<double *> pc, <const double *> pm, n, 0, m, 0, n)


def linear_chain_backward(grad_out, xs, weights, grads_w, grads_b, masks, grad_x=None, *,
                          compute_grad_x=True, accumulate=True, work=None, check_finite=False):
    """The backward of `linear_chain_forward` in one call. From the last layer down, with
    g = grad_out and each layer's ReLU undone first::

        g_l = g * (masks[l] > 0)  (masks[l] given: layer l's output went through a ReLU)
        grads_w[l] (+)= xs[l].T @ g_l      grads_b[l] (+)= g_l.sum(axis=0)
        g = g_l @ weights[l].T             (dL/d(xs[l]); for l = 0 the returned grad_x)

    grad_out (N, D_L); xs[l] (N, D_l), layer l's forward input; weights[l] (D_l, D_(l+1));
    grads_w[l] of weights[l]'s shape; grads_b[l] (D_(l+1),) or None; masks[l] None or
    (N, D_(l+1)), the array layer l's ReLU keeps (its output); work None, or one buffer
    (or None) per layer for g_l. accumulate (a bool, or one per layer) False overwrites
    grads_w[l] and grads_b[l] (= instead of +=), as in `linear_backward`.

    Returns ``(grad_x, gs)``: dL/d(xs[0]) (N, D_0), or None when compute_grad_x is False,
    and the tuple (g_0, ..., g_(L-1)) (g_(L-1) is grad_out itself when the last layer has
    no ReLU); with check_finite, ``(grad_x, gs, finite)``, finite[l] the pair (grads_w[l]
    holds no NaN/inf, grads_b[l] holds none (True when None)) -- each share of a gradient
    checked by the thread that wrote it, while it is in that core's cache (fit's guard
    against a poisoned update, without a pass of its own over the gradients). Every array
    has the bits of one `relu_backward` and `linear_backward` per layer; the layers run as
    a few jobs of the team, each layer's dW and dX products side by side, the ReLU applied to
    each share of dX as it is written.
    """
    grad_out_arg = grad_out
    grad_out = as_float_array("grad_out", grad_out, 2)
    dtype = <object> cnp.PyArray_DESCR(<cnp.ndarray> grad_out)
    xs = _sequence("xs", xs)
    weights = _sequence("weights", weights)
    grads_w = _sequence("grads_w", grads_w)
    grads_b = _sequence("grads_b", grads_b)
    masks = _sequence("masks", masks)
    if work is not None:
        work = _sequence("work", work)
    cdef Py_ssize_t nl = len(weights), l
    if nl == 0:
        raise ValueError("weights is empty: the chain needs at least one layer")
    for name, seq in (("xs", xs), ("grads_w", grads_w), ("grads_b", grads_b),
                      ("masks", masks), ("work", work)):
        if seq is not None and len(seq) != nl:
            raise ValueError(f"{name} has {len(seq)} entries for {nl} weights")
    if isinstance(accumulate, (bool, np.bool_)):
        accumulate = (bool(accumulate),) * nl
    else:
        accumulate = _sequence("accumulate", accumulate)
        if len(accumulate) != nl:
            raise ValueError(f"accumulate has {len(accumulate)} entries for {nl} weights")
        for l in range(nl):
            if not isinstance(accumulate[l], (bool, np.bool_)):
                raise TypeError(f"accumulate[{l}] must be True or False, got "
                                f"{accumulate[l]!r}")
    cdef Py_ssize_t m = cnp.PyArray_DIM(<cnp.ndarray> grad_out, 0), k, n, above = -1
    cdef bint empty = m == 0
    cdef list ins = [grad_out]       # read (maybe copies): none may overlap an output
    cdef list outs = []              # written, given by the caller: (name, array) pairs
    cdef list ws = [], xl = [], gws = [], gbs = [], mks = [], gs = []
    cdef list returned = []          # gs as returned: the caller's objects
    # (the usual arrays answered through the C API; the named checks make the messages)
    for l in range(nl):
        w = weights[l]
        if not is_ready(w, 2, dtype):
            w = as_float_array(_item(_W_NAMES, "weights", l), w, 2)
            check_same_dtype(_item(_W_NAMES, "weights", l), w, dtype)
        k = cnp.PyArray_DIM(<cnp.ndarray> w, 0)
        n = cnp.PyArray_DIM(<cnp.ndarray> w, 1)
        if l > 0 and above != k:
            raise ValueError(f"weights[{l}] has shape {w.shape}; layer {l - 1} has "
                             f"{above} outputs, so it must be ({above}, M)")
        above = n
        x = xs[l]
        if not is_ready(x, 2, dtype):
            x = as_float_array(_item(_X_NAMES, "xs", l), x, 2)
            check_same_dtype(_item(_X_NAMES, "xs", l), x, dtype)
        if cnp.PyArray_DIM(<cnp.ndarray> x, 0) != m or cnp.PyArray_DIM(<cnp.ndarray> x, 1) != k:
            raise ValueError(f"xs[{l}] has shape {x.shape}, expected ({m}, {k})")
        gw = grads_w[l]
        if not is_buffer(gw, k, n, dtype):
            gw = check_buffer(_item(_GW_NAMES, "grads_w", l), gw, (k, n), dtype)
        gb = grads_b[l]
        if gb is not None and not is_buffer(gb, n, -1, dtype):
            gb = check_buffer(_item(_GB_NAMES, "grads_b", l), gb, (n,), dtype)
        mk = masks[l]
        if mk is not None:
            if not is_ready(mk, 2, dtype):
                mk = as_float_array(_item(_MASK_NAMES, "masks", l), mk, 2)
                check_same_dtype(_item(_MASK_NAMES, "masks", l), mk, dtype)
            if (cnp.PyArray_DIM(<cnp.ndarray> mk, 0) != m
                    or cnp.PyArray_DIM(<cnp.ndarray> mk, 1) != n):
                raise ValueError(f"masks[{l}] has shape {mk.shape}, expected ({m}, {n})")
        ws.append(w)
        xl.append(x)
        gws.append(gw)
        gbs.append(gb)
        mks.append(mk)
        ins.append(w)
        ins.append(x)
        ins.append(mk)
        outs.append(_item(_GW_NAMES, "grads_w", l))
        outs.append(gw)
        outs.append(_item(_GB_NAMES, "grads_b", l))
        outs.append(gb)
        empty = empty or k == 0 or n == 0
    if above != cnp.PyArray_DIM(<cnp.ndarray> grad_out, 1):
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected ({m}, {above}) "
                         f"(the last layer's output)")
    # g_l: a work buffer, except the last layer's without a ReLU (grad_out itself)
    for l in range(nl):
        n = cnp.PyArray_DIM(<cnp.ndarray> ws[l], 1)
        if l == nl - 1 and mks[l] is None:
            gs.append(grad_out)
            # grad_out itself (a subclass's view: the caller's object; a copy: the copy)
            returned.append(grad_out_arg if _is_view_of(grad_out, grad_out_arg) else grad_out)
            continue
        given = work[l] if work is not None else None
        if given is None:
            buf = output("", None, (m, n), dtype)
        else:
            buf = given
            if not is_buffer(buf, m, n, dtype):
                buf = check_buffer(_item(_WORK_NAMES, "work", l), buf, (m, n), dtype)
            outs.append(_item(_WORK_NAMES, "work", l))
            outs.append(buf)
        gs.append(buf)
        returned.append(buf if given is None else given)
    gx = None
    if compute_grad_x:
        k = cnp.PyArray_DIM(<cnp.ndarray> ws[0], 0)
        if grad_x is None:
            gx = grad_x = output("grad_x", None, (m, k), dtype)
        else:
            gx = grad_x
            if not is_buffer(gx, m, k, dtype):
                gx = check_buffer("grad_x", gx, (m, k), dtype)
            outs.append("grad_x")
            outs.append(gx)
    else:
        grad_x = None
    _check_chain_overlap(ins, outs, True)
    if empty or nl > 64:
        _chain_back_by_layer(grad_out, xl, ws, gws, gbs, mks, gs, gx, accumulate)
        if not check_finite:
            return grad_x, tuple(returned)
        return grad_x, tuple(returned), tuple(
            (_finite_array(gws[l]), gbs[l] is None or _finite_array(gbs[l])) for l in range(nl))
    cdef _BackLayer *layers = <_BackLayer *> PyMem_Malloc(nl * sizeof(_BackLayer))
    if layers == NULL:
        raise MemoryError()
    cdef int status = 0, threads = num_threads()
    cdef bint single = cnp.PyArray_TYPE(grad_out) == cnp.NPY_FLOAT32
    cdef _BackLayer *L
    try:
        if mks[nl - 1] is not None:     # the last layer's ReLU: g_(L-1) before the chain
            gs[nl - 1][...] = grad_out
            _apply_mask(gs[nl - 1], mks[nl - 1])
        for l in range(nl):
            L = &layers[l]
            L.x = cnp.PyArray_DATA(<cnp.ndarray> xl[l])
            L.w = cnp.PyArray_DATA(<cnp.ndarray> ws[l])
            L.gw = cnp.PyArray_DATA(<cnp.ndarray> gws[l])
            L.gb = cnp.PyArray_DATA(<cnp.ndarray> gbs[l]) if gbs[l] is not None else NULL
            L.g = cnp.PyArray_DATA(<cnp.ndarray> gs[l])
            below = gs[l - 1] if l > 0 else gx
            L.gx = cnp.PyArray_DATA(<cnp.ndarray> below) if below is not None else NULL
            L.mask = (cnp.PyArray_DATA(<cnp.ndarray> mks[l - 1])
                      if l > 0 and mks[l - 1] is not None else NULL)
            L.k = ws[l].shape[0]
            L.n = ws[l].shape[1]
            L.accumulate = accumulate[l]
            L.check = bool(check_finite)
            memset(L.bad_w, 0, sizeof(L.bad_w))
            L.bad_b = 0
        with nogil:
            if single:
                status = _chain_back_run(layers, nl, m, threads, <const float *> NULL)
            else:
                status = _chain_back_run(layers, nl, m, threads, <const double *> NULL)
        if status != 0:
            raise MemoryError("linear_chain_backward: cannot allocate the packing buffers")
        if check_finite:
            finite = tuple((memchr(layers[l].bad_w, 1, sizeof(layers[l].bad_w)) == NULL,
                            layers[l].bad_b == 0) for l in range(nl))
    finally:
        PyMem_Free(layers)
    if check_finite:
        return grad_x, tuple(returned), finite
    return grad_x, tuple(returned)


cdef bint _finite_array(cnp.ndarray a):
    # a C-contiguous float32/float64 array holds no NaN/inf
    cdef void *p = cnp.PyArray_DATA(a)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(a)
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32:
        return all_finite_span(<const float *> p, n)
    return all_finite_span(<const double *> p, n)


cdef bint _is_view_of(object view, object arg):
    # view (a checked array) is arg's memory as it is: arg itself, or its base-class view
    return view is arg or (cnp.PyArray_Check(arg)
                           and cnp.PyArray_DATA(<cnp.ndarray> view)
                           == cnp.PyArray_DATA(<cnp.ndarray> arg))


cdef _check_chain_overlap(list ins, list outs, bint backward):
    # every buffer a chain writes (outs: name, array pairs) shares no memory with what it
    # reads (ins) or with another buffer it writes: the byte spans compared in C, the names
    # made only for the message (_chain_input_name)
    cdef Py_ssize_t ni = len(ins), no = len(outs) // 2, i, j
    cdef char **spans = <char **> PyMem_Malloc(2 * (ni + no) * sizeof(char *))
    if spans == NULL:
        raise MemoryError()
    cdef char **ins_lo = spans
    cdef char **ins_hi = spans + ni
    cdef char **outs_lo = spans + 2 * ni
    cdef char **outs_hi = spans + 2 * ni + no
    try:
        for j in range(ni):
            span(ins[j], &ins_lo[j], &ins_hi[j])
        for i in range(no):
            span(outs[2 * i + 1], &outs_lo[i], &outs_hi[i])
        for i in range(no):
            if outs_lo[i] == NULL:
                continue
            for j in range(ni):
                if ins_lo[j] != NULL and outs_lo[i] < ins_hi[j] and ins_lo[j] < outs_hi[i]:
                    raise overlap_error(outs[2 * i], _chain_input_name(j, backward), READ)
            for j in range(no):
                if (j != i and outs_lo[j] != NULL and outs_lo[i] < outs_hi[j]
                        and outs_lo[j] < outs_hi[i]):
                    raise overlap_error(outs[2 * i], outs[2 * j], WRITTEN)
    finally:
        PyMem_Free(spans)


cdef str _chain_input_name(Py_ssize_t j, bint backward):
    # the name of ins[j]: linear_chain_backward's grad_out, then (weights, xs, masks) per
    # layer; linear_chain_forward's x, then (weights, biases) per layer
    if j == 0:
        return "grad_out" if backward else "x"
    if backward:
        return f"{('weights', 'xs', 'masks')[(j - 1) % 3]}[{(j - 1) // 3}]"
    return f"{('weights', 'biases')[(j - 1) % 2]}[{(j - 1) // 2}]"


cdef _chain_back_by_layer(grad_out, list xl, list ws, list gws, list gbs, list mks, list gs,
                          grad_x, tuple accumulate):
    # a dimension is zero (or very many layers): layer by layer (NumPy's answers)
    cdef Py_ssize_t nl = len(ws), l
    if mks[nl - 1] is not None:
        gs[nl - 1][...] = grad_out
        _apply_mask(gs[nl - 1], mks[nl - 1])
    for l in range(nl - 1, -1, -1):
        g = gs[l]
        _run(xl[l], True, g, False, gws[l], g.shape[0], 1.0, 1.0 if accumulate[l] else 0.0,
             None, 0, False)
        if gbs[l] is not None:
            _add_column_sums(g, gbs[l], accumulate[l])
        below = gs[l - 1] if l > 0 else grad_x
        if below is not None:
            _run(g, False, ws[l], True, below, g.shape[1], 1.0, 0.0, None, 0, False)
            if l > 0 and mks[l - 1] is not None:
                _apply_mask(below, mks[l - 1])
