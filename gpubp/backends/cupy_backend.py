"""The CuPy backend: the same methods as the NumPy backend, each one launch of
a fused kernel from ``kernels/`` (loaded through :mod:`gpubp.kernels`).

Scalars passed to raw kernels are NumPy scalars of the kernel's C types
(``np.float32``/``np.float64`` for ``T``, ``np.int32`` for ``int``,
``np.int64`` for ``long long``): a Python float would be taken as a double.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from .. import kernels
from . import BackendUnavailableError
from .numpy_backend import NumpyBackend, WorkArrays, round_operands

_THREADS = 256
_C_TYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


class CupyBackend:
    name = "cupy"

    def __init__(self):
        import cupy

        self.xp = cupy
        self._cupy = cupy
        device = cupy.cuda.Device()
        self._sms = device.attributes["MultiProcessorCount"]
        self._max_blocks = 32 * self._sms
        # dense_layer.cu's grid: 6 blocks per SM, the fastest of 2, 4, 6 and 8 on an H100 in
        # each narrow case (`gpubp bench --kernels` times the others).
        self._dl_blocks_per_sm = 6
        # Stand-ins for pointer arguments a kernel variant never reads.
        self._unused_labels = cupy.zeros(1, dtype=np.int32)
        self._unused_loss = cupy.zeros(1, dtype=np.float64)
        self._unused_order = cupy.zeros(1, dtype=np.int64)
        self._work = WorkArrays(cupy)
        self._kernels = kernels                     # where the compiled kernels come from
        self._local = threading.local()             # this thread's Gemm, capture flag
        self.gemm_problem = None
        self._graphs_checked, self._graphs_problem = False, None    # see graphs_problem

    # -- moving arrays -----------------------------------------------------
    def asarray(self, a, dtype=None):
        """``a`` as a C-contiguous CuPy array on the current device."""
        return self._cupy.ascontiguousarray(self._cupy.asarray(a, dtype=dtype))

    def to_numpy(self, a):
        return self._cupy.asnumpy(a)

    def synchronize(self):
        self._cupy.cuda.get_current_stream().synchronize()

    def synchronize_device(self):
        """Wait for the work of every stream on the device."""
        self._cupy.cuda.Device().synchronize()

    @staticmethod
    def address(a):
        """The device address of an array's data (what a CUDA graph bakes in)."""
        return a.data.ptr

    # The step's own kernels before the work beside them. Where a step's kernels
    # and Adam's both wait for an SM, CUDA places the blocks of the stream of
    # higher priority first. With this on, the step runs on a stream of the
    # highest priority, the lanes beside it keep the default (the lowest), and
    # captured steps launch with their kernels' own priorities (NodePriorityGraph:
    # a graph otherwise runs all of them at its launch stream's). On: graph steps
    # on an H100 in interleaved rounds (benchmarks/NOTES.md, "The eleventh
    # session"): large TF32 4260 against 4372 µs (0.974, faster in 39 of 40
    # rounds), large float32 21943 against 22237 (0.987, 10 of 10), small 94.4
    # against 94.6 (0.997, 42 of 50).
    _STEP_PRIORITY = True

    def new_stream(self, step=False):
        """A stream of its own (non-blocking: CUDA graphs cannot capture the
        legacy default stream); ``step``: the one training steps run on, of the
        highest priority where _STEP_PRIORITY is on."""
        if step and self._STEP_PRIORITY:
            return self._cupy.cuda.Stream(non_blocking=True, priority=-1000)   # clamped by CUDA
        return self._cupy.cuda.Stream(non_blocking=True)

    def launchable(self, graph):
        """A step's captured graph as it is to be launched: with its kernels'
        own priorities where _STEP_PRIORITY is on."""
        if not self._STEP_PRIORITY:
            return graph
        from ..graphs import NodePriorityGraph

        return NodePriorityGraph(graph)

    # -- the one seam for matrix products ----------------------------------
    def matmul(self, a, b, out, transa=False, transb=False, precision="float32"):
        """out = op(a) @ op(b) through cuBLAS, op a transpose where asked.

        cupy.matmul, except for tf32 (tensor cores) and inside ``capturable()``
        (CUDA-graph capture), which go through gpubp.cublas. bf16 rounds the
        operands first (gpubp/precision.py) and multiplies in fp32.
        """
        direct = precision == "tf32" or getattr(self._local, "capturable", False)
        gemm = self._direct_gemm() if direct else None
        if direct and gemm is None:
            raise BackendUnavailableError(
                f"precision {precision!r} or CUDA-graph capture needs cuBLAS: {self.gemm_problem}")
        if precision == "tf32":
            return gemm(a, b, out, transa=transa, transb=transb, precision="tf32",
                        sms=self._gemm_sms("tf32"))
        a, b = round_operands(self.xp, self._work, a, b, precision)
        if gemm is not None:
            return gemm(a, b, out, transa=transa, transb=transb, sms=self._gemm_sms(precision))
        return self._cupy.matmul(a.T if transa else a, b.T if transb else b, out=out)

    @contextlib.contextmanager
    def capturable(self):
        """Within this block (this thread), every product goes through gpubp.cublas,
        whose calls a CUDA graph can capture (CuPy refuses its own cuBLAS calls
        while a stream captures). Warm-up steps must run inside it too, so that
        the workspace for the stream exists before capture. No work array is
        dropped within it: a graph keeps the addresses it was captured with."""
        before = getattr(self._local, "capturable", False)
        self._local.capturable = True
        try:
            with self._work.pinned():
                yield self
        finally:
            self._local.capturable = before

    def _direct_gemm(self):
        """This thread's gpubp.cublas.Gemm; None (and the reason in
        ``gemm_problem``) where libcublas cannot be loaded."""
        gemm = getattr(self._local, "gemm", None)
        if gemm is None and self.gemm_problem is None:
            try:
                from ..cublas import Gemm

                gemm = self._local.gemm = Gemm()
            except Exception as exc:
                self.gemm_problem = f"{type(exc).__name__}: {exc}"
        return gemm

    def graphs_problem(self):
        """Why this backend cannot run training steps as CUDA graphs, or None.

        Graphs need gpubp.cublas (CuPy's cuBLAS calls cannot be captured), so
        once per backend its products (float32, float64, transposed operands)
        are checked against cupy.matmul before any graph relies on them."""
        if self._graphs_checked:
            return self._graphs_problem
        self._graphs_checked, self._graphs_problem = True, None
        gemm = self._direct_gemm()
        if gemm is None:
            self._graphs_problem = f"they need gpubp.cublas ({self.gemm_problem})"
            return self._graphs_problem
        cp = self._cupy
        rng = np.random.default_rng(0)
        try:
            for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
                a = cp.asarray(rng.standard_normal((37, 19)), dtype=dtype)
                b = cp.asarray(rng.standard_normal((23, 19)), dtype=dtype)
                out = cp.empty((37, 23), dtype=dtype)
                gemm(a, b, out, transb=True)
                expected = cp.matmul(a, b.T)
                error = float(cp.abs(out - expected).max() / cp.abs(expected).max())
                if not error < tol:
                    self._graphs_problem = (f"gpubp.cublas disagrees with cupy.matmul "
                                            f"({np.dtype(dtype).name}, relative error {error:.2g})")
                    break
        except Exception as exc:
            self._graphs_problem = f"gpubp.cublas failed its check: {type(exc).__name__}: {exc}"
        return self._graphs_problem

    # -- helpers ---------------------------------------------------------------
    def _blocks(self, n):
        return max(1, min((n + _THREADS - 1) // _THREADS, self._max_blocks))

    @staticmethod
    def _t(dtype):
        return _C_TYPE[np.dtype(dtype)]

    def _packed(self, *arrays):
        """Whether a kernel may move these arrays in 16-byte packs (gpubp_pack in
        kernels/common.cuh): each C-contiguous and 16-byte aligned. CuPy's own
        allocations are; a view that starts mid-pack is not."""
        return all(a.flags.c_contiguous and self.address(a) % 16 == 0 for a in arrays)

    # -- forward ------------------------------------------------------------
    def bias_activation(self, z, b, activation):
        code = kernels.ACTIVATION_CODES[activation]
        pack = 16 // z.dtype.itemsize
        if z.shape[1] % pack == 0 and self._packed(z, b):
            fn = self._kernels.function("bias_activation",
                                        f"bias_activation_packed<{self._t(z.dtype)}, {code}>")
            n = z.size // pack
            fn((self._blocks(n),), (_THREADS,), (z, b, np.int64(n), np.int32(z.shape[1] // pack)))
            return z
        fn = self._kernels.function("bias_activation", f"bias_activation<{self._t(z.dtype)}, {code}>")
        fn((self._blocks(z.size),), (_THREADS,), (z, b, np.int64(z.size), np.int32(z.shape[1])))
        return z

    # Narrow float32 layers take kernels/dense_layer.cu: the product and the
    # per-element work of a layer in one pass over its activations.
    _DL_MAX, _DL_ROWS, _DL_THREADS = 64, 64, 128

    def _dense_fused(self, w, precision, *arrays):
        return (precision == "float32" and w.shape[0] <= self._DL_MAX and w.shape[1] <= self._DL_MAX
                and all(x.dtype == np.float32 and x.flags.c_contiguous for x in (w, *arrays)))

    # Forward, a layer of this many outputs or fewer is composed (a product, then
    # bias_activation): dense_layer.cu computes its tile of 64 columns regardless,
    # and narrow's 64 -> 16 output layer took 124 µs fused, 111 µs composed (H100).
    _DL_FORWARD_MIN_N = 17

    def _dense_grid(self, m):
        return max(1, min((m + self._DL_ROWS - 1) // self._DL_ROWS, self._dl_blocks_per_sm * self._sms))

    def dense_forward(self, a, w, b, activation, out, precision="float32"):
        if w.shape[1] < self._DL_FORWARD_MIN_N or not self._dense_fused(w, precision, a, b, out):
            self.matmul(a, w, out=out, precision=precision)
            return self.bias_activation(out, b, activation)
        m, (K, N) = a.shape[0], w.shape
        code = kernels.ACTIVATION_CODES[activation]
        self._kernels.function("dense_layer", f"dense_forward<{code}>")(
            (self._dense_grid(m),), (self._DL_THREADS,),
            (a, w, b, out, np.int32(m), np.int32(K), np.int32(N)))
        return out

    def dense_backward(self, delta, w, a, activation, out, db, precision="float32"):
        if not self._dense_fused(w, precision, delta, a, out, db):
            self.matmul(delta, w, out=out, transb=True, precision=precision)
            return self.activation_backward_bias_grad(out, a, activation, out=out, db=db)
        m, (K, N) = delta.shape[0], w.shape
        grid = self._dense_grid(m)
        partial = self._work.empty((grid, K), np.float32, "dense_backward")
        code = kernels.ACTIVATION_CODES[activation]
        self._kernels.function("dense_layer", f"dense_backward<{code}>")(
            (grid,), (self._DL_THREADS,),
            (delta, w, a, out, partial, np.int32(m), np.int32(K), np.int32(N)))
        return self._finish_column_sums(partial, db)

    def _softmax_rows(self, z, y, labels, delta, loss, scale, target):
        rows, k = z.shape
        warps = _THREADS // 32
        y = z if y is None else y
        labels = self._unused_labels if labels is None else labels
        loss = self._unused_loss if loss is None else loss
        fn = self._kernels.function(
            "softmax_cross_entropy", f"softmax_cross_entropy<{self._t(z.dtype)}, {target}>"
        )
        fn(
            (max(1, (rows + warps - 1) // warps),),
            (_THREADS,),
            (z, y, labels, delta, loss, np.int32(rows), np.int32(k), z.dtype.type(scale)),
        )
        return delta

    def softmax(self, z, out):
        return self._softmax_rows(z, None, None, out, None, 1.0, 2)

    def softmax_cross_entropy(self, z, y, labels, delta, loss, scale):
        return self._softmax_rows(z, y, labels, delta, loss, scale, 0 if labels is None else 1)

    _POINTWISE = {"mse_identity": 0, "mse_sigmoid": 1, "bce_sigmoid": 2}

    def pointwise_loss(self, z, y, kind, delta, loss, scale, rows=None):
        variant = f"<{self._t(z.dtype)}, {self._POINTWISE[kind]}>"
        if rows is None:
            args = (z, y, delta, loss, np.int64(z.size), z.dtype.type(scale))
            fn = self._kernels.function("pointwise_loss", f"pointwise_loss{variant}")
        else:                                    # y's rows read in place: no gathered copy
            order, offset = rows
            args = (z, y, order, offset, delta, loss, np.int64(z.size), np.int32(z.shape[1]),
                    z.dtype.type(scale))
            fn = self._kernels.function("pointwise_loss", f"pointwise_loss_gathered{variant}")
        fn((self._blocks(z.size),), (_THREADS,), args)
        return delta

    # The output layer of an elementwise loss, over wide rows, in one pass:
    # its bias, loss, delta and bias gradient (pointwise_loss_bias_grad), where
    # MLP._backprop otherwise adds the bias (bias_activation), makes the loss
    # and delta (pointwise_loss), then reads delta again for its sums
    # (bias_grad): 12 bytes moved per float instead of 24, the same bits.
    # Predicted on large (4096 x 4096 logits, 201 MB fewer at about 2.9 TB/s):
    # about -70 µs per step. Off until measured on a GPU.
    _OUTPUT_FUSED = False

    def fuses_output(self, kind, delta):
        """Whether MLP._backprop hands this output layer's bias, loss, delta and
        bias gradient to ``loss_bias_grad`` in one call: with _OUTPUT_FUSED on,
        for an elementwise loss over wide rows (see _wide)."""
        return (self._OUTPUT_FUSED and kind in self._POINTWISE
                and self._wide(delta.shape[1], delta.dtype, delta))

    def loss_bias_grad(self, z, b, y, kind, delta, loss, scale, db, rows=None):
        """z + b, the loss and delta (pointwise_loss's), and db = delta's column
        sums, in one pass over wide rows (pointwise_loss_bias_grad; z keeps the
        product); else bias_activation, pointwise_loss and bias_grad."""
        rows_, cols = delta.shape
        if not (z.dtype == b.dtype == y.dtype == delta.dtype == db.dtype
                and z.shape == delta.shape and y.ndim == 2 and y.shape[1] == cols
                and (rows is not None or y.shape[0] == rows_)
                and self._wide(cols, delta.dtype, z, b, y, delta, db)):
            self.bias_activation(z, b, "identity")
            self.pointwise_loss(z, y, kind, delta, loss, scale, rows=rows)
            return self.bias_grad(delta, out=db)
        t = self._t(delta.dtype)
        grid_x, grid_y = self._column_sum_grid(rows_, cols, delta.dtype)
        partial = db if grid_y == 1 else self._partial(grid_y, cols, delta.dtype)
        order, offset = rows if rows is not None else (self._unused_order, self._unused_order)
        self._kernels.function(
            "pointwise_loss", f"pointwise_loss_bias_grad<{t}, {self._POINTWISE[kind]}, "
                              f"{'true' if rows is not None else 'false'}>")(
            (grid_x, grid_y), (32, 8),
            (z, b, y, order, offset, delta, loss, partial, np.int32(rows_), np.int32(cols),
             delta.dtype.type(scale)))
        return db if grid_y == 1 else self._finish_column_sums(partial, db)

    # -- backward -------------------------------------------------------------
    def activation_backward(self, err, a, activation, out):
        if not (err.dtype == a.dtype == out.dtype and self._packed(err, a, out)):
            return self._kernels.activation_backward(activation)(err, a, out)
        code = kernels.ACTIVATION_CODES[activation]
        self._kernels.function("activation_backward",
                               f"activation_backward_packed<{self._t(out.dtype)}, {code}>")(
            (self._blocks(out.size // (16 // out.dtype.itemsize)),), (_THREADS,),
            (err, a, out, np.int64(out.size)))
        return out

    # 32 rows per block row: small's step 82.9 against 94.8 µs with 256 (faster in 50
    # of 50 interleaved rounds on an H100), large TF32 4308 against 4314 (0.999).
    _BG_BLOCK_ROWS = 32

    def _wide(self, cols, dtype, *arrays):
        """Whether bias_grad.cu's packed kernels take these rows: 32 packs or
        more (a warp's worth across a row; narrower rows would leave lanes
        idle), every operand 16-byte aligned."""
        pack = 16 // np.dtype(dtype).itemsize
        return cols % pack == 0 and cols // pack >= 32 and self._packed(*arrays)

    def _column_sum_grid(self, rows, cols, dtype):
        """bias_grad_packed's grid (and pointwise_loss_bias_grad's): 32 packs of
        columns per block, a block row per _BG_BLOCK_ROWS rows (256 was
        bias_grad's rule, which gave small's 256 x 256 2 blocks), at most 16
        blocks per SM in all."""
        grid_x = (cols // (16 // np.dtype(dtype).itemsize) + 31) // 32
        grid_y = max(1, min(-(-rows // self._BG_BLOCK_ROWS), (16 * self._sms) // grid_x, 65535))
        return grid_x, grid_y

    def _bias_grad_packed(self, err, a, delta, db, activation):
        """db = column sums of delta, through bias_grad_packed; with an
        activation, delta = err * g'(a) first (FUSED), else err is unused."""
        rows, cols = delta.shape
        t = self._t(delta.dtype)
        grid_x, grid_y = self._column_sum_grid(rows, cols, delta.dtype)
        partial = db if grid_y == 1 else self._partial(grid_y, cols, delta.dtype)
        variant = ("0, false" if activation is None
                   else f"{kernels.ACTIVATION_CODES[activation]}, true")
        self._kernels.function("bias_grad", f"bias_grad_packed<{t}, {variant}>")(
            (grid_x, grid_y), (32, 8),
            (delta if err is None else err, delta if a is None else a, delta, partial,
             np.int32(rows), np.int32(cols)))
        return db if grid_y == 1 else self._finish_column_sums(partial, db)

    def activation_backward_bias_grad(self, err, a, activation, out, db):
        """out = err * g'(a) and db = its column sums: for wide rows in one pass
        (bias_grad_packed, FUSED), else activation_backward then bias_grad."""
        if (err.dtype == a.dtype == out.dtype == db.dtype and err.shape == a.shape == out.shape
                and self._wide(out.shape[1], out.dtype, err, a, out, db)):
            return self._bias_grad_packed(err, a, out, db, activation)
        self.activation_backward(err, a, activation, out=out)
        return self.bias_grad(out, out=db)

    def bias_grad(self, delta, out):
        rows, cols = delta.shape
        if delta.dtype == out.dtype and self._wide(cols, delta.dtype, delta, out):
            return self._bias_grad_packed(None, None, delta, out, None)
        t = self._t(delta.dtype)
        grid_x = (cols + 31) // 32
        # Up to one block row per 256 rows and some 16 blocks per SM in all, so
        # that a tall matrix (262144 x 64) keeps enough loads in flight.
        grid_y = max(1, min((rows + 255) // 256, (16 * self._sms) // grid_x, 65535))
        partial = out if grid_y == 1 else self._partial(grid_y, cols, delta.dtype)
        self._kernels.function("bias_grad", f"bias_grad_partial<{t}>")(
            (grid_x, grid_y), (32, 8), (delta, partial, np.int32(rows), np.int32(cols)))
        return out if grid_y == 1 else self._finish_column_sums(partial, out)

    def _finish_column_sums(self, partial, db):
        """db[j] = sum over the rows y of partial[y, j] (bias_grad_finish)."""
        n, cols = partial.shape
        self._kernels.function("bias_grad", f"bias_grad_finish<{self._t(db.dtype)}>")(
            ((cols + 31) // 32,), (32, 32), (partial, db, np.int32(n), np.int32(cols)))
        return db

    def _partial(self, n, cols, dtype):
        """The per-block-row sums of bias_grad (a work array: no allocation in a step)."""
        return self._work.empty((n, cols), dtype, "bias_grad")

    def l2_penalty(self, w, g, loss, l2, m):
        t = w.dtype.type
        fn = self._kernels.function("l2_penalty", f"l2_penalty<{self._t(w.dtype)}>")
        fn(
            (self._blocks(w.size),),
            (_THREADS,),
            (w, g, loss, np.int64(w.size), t(l2 / m), np.float64(0.5 * l2)),
        )

    # -- optimizers ------------------------------------------------------------
    def sgd(self, p, g, buf, lr, momentum, nesterov):
        t = p.dtype.type
        variant = 0 if momentum == 0.0 else (2 if nesterov else 1)
        fn = self._kernels.function("sgd", f"sgd<{self._t(p.dtype)}, {variant}>")
        if buf is None:
            buf = p  # never read by the plain variant
        fn((self._blocks(p.size),), (_THREADS,), (p, g, buf, np.int64(p.size), t(lr), t(momentum)))

    def adam_schedule(self, step, coef, lr, beta1, beta2):
        self._kernels.function("adam", "adam_schedule")(
            (1,), (32,), (step, coef, np.float64(lr), np.float64(beta1), np.float64(beta2)))

    def adam(self, p, g, m, v, coef, decay, beta1, beta2, eps):
        t = p.dtype.type
        packed = self._packed(p, g, m, v)
        self._kernels.function("adam", f"adam{'_packed' if packed else ''}<{self._t(p.dtype)}>")(
            (self._blocks(p.size // (16 // p.dtype.itemsize) if packed else p.size),),
            (_THREADS,),
            (p, g, m, v, coef, np.int64(p.size), t(decay), t(beta1), t(beta2), t(eps)),
        )

    # -- updates beside the backward pass ---------------------------------------
    # A layer with at least this many weights is updated on a second stream while
    # the layers below it go backward (MLP._train_step). Adam over large's two
    # upper 4096 x 4096 layers beside its GEMMs saved 165 µs (float32) and 40 µs
    # (TF32) of 486 and 461 on an H100 (benchmarks/overlap_probe.py), and large's
    # TF32 graph step about 62 µs; a layer of 1024 x 1024 (medium) would save less
    # than its extra launches cost (not measured).
    _OVERLAP_MIN_WEIGHTS = 1 << 22

    # SMs the GEMMs leave to the updates beside them, per precision of the
    # products. On an H100, Adam beside the backward GEMMs hid 40 of its 461 µs
    # (TF32) and 165 of 486 (float32) in the probe: cuBLAS's kernels fill every
    # SM, so Adam's blocks find room only between them. While updates run
    # beside the backward pass, the GEMMs then ask cuBLAS for kernels made for
    # this many SMs fewer (cublasSetSmCountTarget), so that Adam's blocks get
    # SMs of their own throughout. A precision not named here: every SM. None is
    # named: on an H100 (benchmarks/NOTES.md, "The eleventh session") the TF32 step
    # took 0.999, 1.028, 1.049 and 1.126 of main's with 4, 8, 16 and 32 SMs fewer,
    # float32's 0.998 with 4 and 16: the GEMMs lose more than Adam gains.
    _BESIDE_SMS = {}

    def _gemm_sms(self, precision):
        """The SM count the next GEMM in ``precision`` is made for: 0 (every
        SM), or _BESIDE_SMS[precision] fewer than the device has while updates
        run beside the backward pass."""
        fewer = self._BESIDE_SMS.get(precision, 0)
        if fewer and getattr(self._local, "pending", None):
            return max(1, self._sms - fewer)
        return 0

    def _large_layers(self, layer_sizes):
        """The layers with at least _OVERLAP_MIN_WEIGHTS weights."""
        return [layer for layer in range(len(layer_sizes) - 1)
                if layer_sizes[layer] * layer_sizes[layer + 1] >= self._OVERLAP_MIN_WEIGHTS]

    def overlap_layers(self, layer_sizes):
        """The layers, past the first, with at least _OVERLAP_MIN_WEIGHTS weights."""
        return [layer for layer in self._large_layers(layer_sizes) if layer > 0]

    # The first layer's weight gradient made in this many slabs of rows (1: one
    # product), each slab's update beside the product for the next (MLP._backprop).
    # The first layer's gradient is the last to be final, so its update otherwise
    # runs after the backward pass with nothing beside it: large TF32's step spent
    # 166 µs so on an H100 (h100-profile-2026-11-26-c.txt). Predicted for large
    # TF32, 2 and 4 slabs: -20 to -60 and -30 to -85 µs, as much of Adam beside the
    # products is hidden as was of the upper layers' (benchmarks/NOTES.md, "The
    # twelfth session"); for float32 the same at most. Off until measured.
    # On a GPU cuBLAS may choose other kernels for the narrower products, so dW0 agrees
    # with one product's within its rounding, not bit for bit. Not for bf16, whose
    # products round the error matrix again for each slab (benchmarks time float32 and
    # TF32 only); eager float32 products (cupy.matmul) may copy each slab's columns.
    _FIRST_SLABS = 1

    def first_layer_slabs(self, layer_sizes, precision="float32"):
        """The slabs of rows the first layer's weight gradient is made in:
        _FIRST_SLABS where that layer has at least _OVERLAP_MIN_WEIGHTS weights
        and the products are not bf16's, else 1."""
        if precision == "bf16" or 0 not in self._large_layers(layer_sizes):
            return 1
        return self._FIRST_SLABS

    # The per-element work of the backward pass beside its GEMMs (off: on an H100
    # the TF32 step took 1.015 to 1.186 of main's with it, in every combination
    # tried; benchmarks/NOTES.md, "The eleventh session"). For each layer in
    # backward_beside, the error product through its weights runs first, and
    # the delta of the layer below (with its bias sums) beside the product
    # for its weight gradient; the output layer's bias sums beside its products.
    # It gains only where the GEMMs leave SMs free (_BESIDE_SMS).
    _BACKWARD_BESIDE = False

    def backward_beside(self, layer_sizes):
        """The layers with at least _OVERLAP_MIN_WEIGHTS weights, where
        _BACKWARD_BESIDE is on (MLP._backprop)."""
        return self._large_layers(layer_sizes) if self._BACKWARD_BESIDE else []

    def beside(self, fn, lane="updates"):
        """Run fn's launches on this thread's stream for ``lane`` (one per lane:
        "updates", "backward"), after all work queued so far on the current
        stream, and beside whatever is queued there next. Returns a token:
        ``join(token)`` makes the current stream wait for that work, ``rejoin``
        for all of it. Inside a stream capture the lane's stream joins the
        graph as a branch."""
        cuda = self._cupy.cuda
        main = cuda.get_current_stream()
        sides = getattr(self._local, "sides", None)
        if sides is None:
            sides = self._local.sides = {}
            self._local.pending = []
        side = sides.get(lane)
        if side is None:
            side = sides[lane] = self.new_stream()
        start = cuda.Event(disable_timing=True)
        start.record(main)
        side.wait_event(start)
        with side:
            fn()
        done = cuda.Event(disable_timing=True)
        done.record(side)
        self._local.pending.append((done, main.is_capturing()))
        return done

    def join(self, token):
        """The current stream waits for the work ``beside`` returned ``token`` for."""
        self._cupy.cuda.get_current_stream().wait_event(token)
        self._local.pending = [p for p in self._local.pending if p[0] is not token]

    def rejoin(self):
        """The current stream waits for everything run ``beside`` it.

        Work put beside a capture that then failed (a step that raised while
        captured, before its own rejoin) is forgotten instead: its events were
        recorded into the dropped graph, never on the device, and CUDA refuses
        a wait on one outside that capture. So the eager step that follows a
        failed capture can still end."""
        main = self._cupy.cuda.get_current_stream()
        capturing = main.is_capturing()
        for done, captured in getattr(self._local, "pending", []):
            if capturing or not captured:
                main.wait_event(done)
        self._local.pending = []

    # -- the batch gather ------------------------------------------------------
    _GATHER_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
                     np.dtype(np.int32): "int"}

    def gather_rows(self, src, order, offset, out):
        m = out.shape[0]
        cols = out.size // m if m else 1
        kind = self._GATHER_TYPES[src.dtype]
        if (cols * src.dtype.itemsize) % 16 == 0 and self._packed(src, out):
            kind, cols = "gpubp_row_pack", cols * src.dtype.itemsize // 16    # rows in 16-byte packs
        fn = self._kernels.function("gather_rows", f"gather_rows<{kind}>")
        bx = 32 if cols >= 32 else 1 << (cols - 1).bit_length()   # threads across a row
        by = _THREADS // bx
        gx = (cols + bx - 1) // bx
        gy = max(1, min((m + by - 1) // by, max(1, self._max_blocks // gx), 65535))
        fn((gx, gy), (bx, by), (src, order, offset, out, np.int32(m), np.int32(cols)))
        return out

    def advance_offset(self, offset, m):
        self._kernels.function("gather_rows", "advance_offset")((1,), (32,), (offset, np.int64(m)))


class PlainCupyBackend(NumpyBackend):
    """CuPy without the fused kernels: the NumPy backend's plain array
    expressions run on the GPU (with cuBLAS for the products). The benchmarks
    time it beside :class:`CupyBackend` so that each kernel's worth is measured."""

    name = "cupy-unfused"
    PASS_CHUNK = None                                 # one launch per pass, as plain CuPy writes it

    def __init__(self):
        self._gpu = CupyBackend()
        self.xp = self._gpu.xp
        super().__init__(loops=None)                  # work arrays on the GPU; no CPU loops

    def asarray(self, a, dtype=None):
        return self._gpu.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        return self._gpu.to_numpy(a)

    def synchronize(self):
        self._gpu.synchronize()

    def matmul(self, a, b, out, transa=False, transb=False, precision="float32"):
        return self._gpu.matmul(a, b, out, transa=transa, transb=transb, precision=precision)

    # The NumPy backend's own forms of the reductions (products with ones, column
    # maxima) would each be a fused kernel's worth here: plain CuPy's instead.
    def bias_grad(self, delta, out):
        """out[j] = sum_i delta[i, j] as plain CuPy writes it."""
        return self.xp.sum(delta, axis=0, out=out)

    def _row_max(self, z, out):
        return self.xp.max(z, axis=1, keepdims=True, out=out)

    def _row_sum(self, z, out):
        return self.xp.sum(z, axis=1, keepdims=True, out=out)

    def gather_rows(self, src, order, offset, out):
        """out = src[order[offset : offset + m]] as plain CuPy writes it with the
        offset on the device: the NumPy backend's slice at int(offset[0]) would
        wait for the GPU at every step (and inside every timing of it)."""
        xp, m = self.xp, out.shape[0]
        at = self._work.empty((m,), np.int64, "gather_at")
        xp.add(self._row_numbers(m), offset, out=at)
        rows = self._work.empty((m,), order.dtype, "gather_rows")
        xp.take(order, at, out=rows)
        return xp.take(src, rows, axis=0, out=out)
