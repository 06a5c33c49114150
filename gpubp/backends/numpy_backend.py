"""The NumPy backend: the CPU path, and the readable definition of every kernel.

Each method below computes what one CUDA kernel in ``kernels/`` computes (the
file is named in the docstring) with plain array expressions, in place with
``out=`` where the array module allows. The methods use ``self.xp`` only, so
the same code on CuPy arrays is the unfused GPU path the benchmarks compare the
kernels with (``PlainCupyBackend``). The CuPy backend has the same methods; the
tests hold the two to each other.

On the CPU, where Numba is installed, the optimizers, the activations and the
losses hand their arrays to ``numba_loops.py`` instead, which does the same
arithmetic in one loop per operation (the same bits, or for the two losses
within stated tolerances); the passes here stay the definition, and the path
without Numba.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict

import numpy as np

from ..precision import round_to

LEAKY_SLOPE = 0.01


class WorkArrays:
    """Work arrays kept from call to call, by shape, dtype and slot, so that a
    training step allocates nothing after its first call. Per thread (never
    shared between two trainings) and bounded: past ``LIMIT`` arrays the least
    recently used one is dropped (many evaluation sizes would otherwise pile
    up), except while ``pinned``: a CUDA graph being captured records the
    addresses of the arrays it is handed, which must then stay alive."""

    LIMIT = 64

    def __init__(self, xp):
        self.xp = xp
        self._local = threading.local()

    def _arrays(self):
        arrays = getattr(self._local, "arrays", None)
        if arrays is None:
            arrays = self._local.arrays = OrderedDict()
        return arrays

    def live(self):
        """The arrays held now (a captured CUDA graph keeps them alive)."""
        return list(self._arrays().values())

    @contextlib.contextmanager
    def pinned(self):
        """No array is dropped within this block (this thread)."""
        self._local.pins = getattr(self._local, "pins", 0) + 1
        try:
            yield
        finally:
            self._local.pins -= 1

    def __call__(self, like, slot=0):
        """A work array of ``like``'s shape and dtype."""
        return self.empty(like.shape, like.dtype, slot)

    def empty(self, shape, dtype, slot=0, init=None):
        """A work array; ``init(array)`` fills a new one (for constants such as
        row numbers: the slot must then never be written to)."""
        arrays = self._arrays()
        key = (tuple(shape), np.dtype(dtype).str, slot)
        buf = arrays.get(key)
        if buf is None:
            if not getattr(self._local, "pins", 0):
                while len(arrays) >= self.LIMIT:
                    arrays.popitem(last=False)
            buf = arrays[key] = self.xp.empty(shape, dtype=dtype)
            if init is not None:
                init(buf)
        else:
            arrays.move_to_end(key)
        return buf


def _take(xp, a, indices, out, axis=None):
    """out = a.take(indices, axis) for indices known to be in range. NumPy's
    default mode ("raise") writes into a copy of out first; "clip" does not."""
    if xp is np:
        return np.take(a, indices, axis=axis, out=out, mode="clip")
    return xp.take(a, indices, axis=axis, out=out)


def round_operands(xp, work, a, b, precision):
    """a and b rounded to a GEMM precision mode (tf32, bf16) in work arrays;
    unchanged for float32."""
    if precision == "float32":
        return a, b
    return (round_to(xp, a, precision, work(a, "gemm_a")),
            round_to(xp, b, precision, work(b, "gemm_b")))


def _sigmoid(xp, x, out):
    """out = 1 / (1 + exp(-x)), computed as (1 + tanh(x / 2)) / 2: the same
    function, never overflowing, and NumPy's tanh is vectorized (logaddexp,
    the other overflow-free form, is some 50 times slower)."""
    xp.multiply(x, 0.5, out=out)
    xp.tanh(out, out=out)
    xp.multiply(out, 0.5, out=out)
    return xp.add(out, 0.5, out=out)


def numba_loops():
    """gpubp.backends.numba_loops where Numba imports and ``$GPUBP_NUMBA`` is not
    0; else None, and the NumPy backend makes its passes one by one."""
    if os.environ.get("GPUBP_NUMBA", "").strip() in ("0", "false", "no", "off"):
        return None
    try:
        from . import numba_loops as loops
    except Exception:          # not installed, or a Numba that does not work with this NumPy
        return None
    return loops


def _fusable(*arrays):
    """The fused loops take C-contiguous float32 or float64 arrays of one dtype."""
    dt = arrays[0].dtype
    return dt in (np.float32, np.float64) and all(
        a.dtype == dt and a.flags.c_contiguous for a in arrays)


class NumpyBackend:
    name = "numpy"
    xp = np
    # The per-element passes of the optimizers (over the flat buffer) and of the
    # activations (by rows) run on chunks of at most this many elements: five
    # arrays of 64 Ki float32 (1.25 MiB) stay in a core's L2 cache from one pass
    # to the next, where whole arrays would be read from L3 or memory on every
    # pass (Adam alone in 0.77-0.87 of its one-pass time; benchmarks/NOTES.md,
    # CPU section 6). None: each pass over the whole array at once.
    PASS_CHUNK = 65536

    def __init__(self, loops="auto"):
        """``loops``: the fused per-element loops (gpubp.backends.numba_loops) or
        None for NumPy's passes; "auto" takes them where Numba imports."""
        self._work = WorkArrays(self.xp)
        self.loops = numba_loops() if loops == "auto" else loops

    def _chunks(self, n, per=1):
        """``(start, stop)`` ranges covering ``range(n)``, each of at most
        PASS_CHUNK elements when every item holds ``per`` of them (rows of
        ``per`` columns); one range where PASS_CHUNK is None."""
        c = max(1, (self.PASS_CHUNK or n * per) // max(per, 1))
        return [(a, min(a + c, n)) for a in range(0, n, c)]

    # -- moving arrays -------------------------------------------------
    def asarray(self, a, dtype=None):
        """``a`` as a C-contiguous NumPy array (no copy when it already is one)."""
        if hasattr(a, "__cuda_array_interface__") and hasattr(a, "get"):
            a = a.get()
        return np.ascontiguousarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.asarray(a)

    def synchronize(self):
        pass

    # -- the one seam for matrix products ------------------------------
    def matmul(self, a, b, out, transa=False, transb=False, precision="float32"):
        """out = op(a) @ op(b), op a transpose where asked; with precision tf32 or
        bf16 the operands are first rounded to it (gpubp/precision.py)."""
        a, b = round_operands(self.xp, self._work, a, b, precision)
        return self.xp.matmul(a.T if transa else a, b.T if transb else b, out=out)

    # -- forward ------------------------------------------------------------
    def bias_activation(self, z, b, activation):
        """z <- g(z + b) in place (kernels/bias_activation.cu), a block of rows
        at a time so that each block stays in cache over the passes (relu and
        leaky relu in one loop with Numba, the sigmoid in three)."""
        loops = self.loops if self.loops is not None and _fusable(z, b) else None
        if loops is not None and activation in ("relu", "leaky_relu"):
            if activation == "relu":
                loops.bias_relu(z, b)
            else:
                loops.bias_leaky_relu(z, b, z.dtype.type(LEAKY_SLOPE))
            return z
        for a, e in self._chunks(z.shape[0], per=z.shape[1]):
            self._bias_activation_rows(z[a:e], b, activation, loops)
        return z

    def _bias_activation_rows(self, z, b, activation, loops=None):
        xp = self.xp
        if loops is not None and activation == "sigmoid":   # _sigmoid's passes, in three
            loops.bias_half(z, b)
            xp.tanh(z, out=z)
            loops.half_plus_half(z.reshape(-1))
            return
        xp.add(z, b, out=z)
        if activation == "sigmoid":
            _sigmoid(xp, z, out=z)
        elif activation == "tanh":
            xp.tanh(z, out=z)
        elif activation == "relu":
            xp.maximum(z, 0, out=z)
        elif activation == "leaky_relu":              # max(z, 0.01 z)
            s = self._work(z)
            xp.multiply(z, LEAKY_SLOPE, out=s)
            xp.maximum(z, s, out=z)

    def dense_forward(self, a, w, b, activation, out, precision="float32"):
        """out = g(a @ w + b): a layer's product, then its bias and activation
        (kernels/dense_layer.cu fuses them for narrow float32 layers)."""
        self.matmul(a, w, out=out, precision=precision)
        return self.bias_activation(out, b, activation)

    def softmax(self, z, out):
        """out = softmax(z) row by row (kernels/softmax_cross_entropy.cu, variant 2)."""
        xp, m = self.xp, z.shape[0]
        zmax, sums = (self._work.empty((m, 1), z.dtype, slot) for slot in ("zmax", "sums"))
        xp.subtract(z, self._row_max(z, out=zmax), out=out)
        xp.exp(out, out=out)
        out /= self._row_sum(out, out=sums)
        return out

    def _row_max(self, z, out):
        """out[i, 0] = max_j z[i, j]. NumPy reduces a short row element by element
        (25 µs for 256 x 10); for k <= 16 columns, k - 1 vector maxima take 5."""
        xp, k = self.xp, z.shape[1]
        if k > 16 or k < 2:
            return xp.max(z, axis=1, keepdims=True, out=out)
        col = out[:, 0]
        xp.maximum(z[:, 0], z[:, 1], out=col)
        for j in range(2, k):
            xp.maximum(col, z[:, j], out=col)
        return out

    def _row_sum(self, z, out):
        """out[i, 0] = sum_j z[i, j], as BLAS's product z @ ones (1.8 against
        7.8 µs for 256 x 10), as bias_grad sums columns."""
        self.xp.matmul(z, self._ones(z.shape[1], z.dtype), out=out[:, 0])
        return out

    def _ones(self, n, dtype):
        """n ones (a constant work array), for sums as products."""
        return self._work.empty((n,), dtype, "ones", init=lambda a: a.fill(1))

    # -- loss and output delta ----------------------------------------------
    def softmax_cross_entropy(self, z, y, labels, delta, loss, scale):
        """Softmax + cross-entropy from the logits (kernels/softmax_cross_entropy.cu).

        ``y`` holds dense targets (variant 0) or is None and ``labels`` holds
        integer classes (variant 1). delta = scale (p sum(y) - y); loss += sum y (lse - z).
        """
        xp, (m, k) = self.xp, z.shape
        if self.loops is not None and k > 0 and _fusable(z, delta, *(() if y is None else (y,))) \
                and (y is not None or labels.flags.c_contiguous):
            if y is None:
                loss += self.loops.softmax_cross_entropy_labels(z, labels, delta, z.dtype.type(scale))
            else:
                loss += self.loops.softmax_cross_entropy_dense(z, y, delta, z.dtype.type(scale))
            return delta
        zmax, sums, lse = (self._work.empty((m, 1), z.dtype, slot) for slot in ("zmax", "sums", "lse"))
        xp.subtract(z, self._row_max(z, out=zmax), out=delta)
        xp.exp(delta, out=delta)
        self._row_sum(delta, out=sums)
        xp.log(sums, out=lse)                           # lse = zmax + log(sums)
        lse += zmax
        delta /= sums                                   # delta = p
        if y is None:                                   # row i's label at flat index i k + label
            at = self._work.empty((m,), np.int64, "label_at")
            xp.multiply(self._row_numbers(m), k, out=at)
            at += labels
            picked = self._work.empty((m,), z.dtype, "picked")
            _take(xp, z.reshape(-1), at, picked)        # z[i, label]
            xp.subtract(lse[:, 0], picked, out=picked)
            loss += xp.sum(picked, dtype=np.float64)
            flat = delta.reshape(-1)
            _take(xp, flat, at, picked)                 # delta[i, label] -= 1
            picked -= 1
            xp.put(flat, at, picked)
        else:
            s = self._work(z)
            xp.subtract(lse, z, out=s)
            s *= y
            loss += xp.sum(s, dtype=np.float64)
            delta *= self._row_sum(y, out=sums)
            delta -= y
        delta *= scale
        return delta

    def _row_numbers(self, m):
        """0, 1, ..., m - 1 as int64 (a constant work array)."""
        return self._work.empty((m,), np.int64, "row_numbers",
                                init=lambda a: self.xp.copyto(a, self.xp.arange(m)))

    def pointwise_loss(self, z, y, kind, delta, loss, scale, rows=None):
        """Elementwise output + loss from the logits (kernels/pointwise_loss.cu).

        kind "mse_identity": loss += 1/2 (z - y)^2, delta = z - y
        kind "mse_sigmoid":  loss += 1/2 (s - y)^2, delta = (s - y) s (1 - s)
        kind "bce_sigmoid":  loss += max(z,0) - z y + log(1 + exp(-|z|)), delta = s - y
        each delta then times scale. With ``rows = (order, offset)``, ``y`` is
        the whole data set's targets and the batch's are its rows
        ``order[offset : offset + m]`` (as gather_rows takes them).
        """
        xp = self.xp
        if rows is not None:
            y = self.gather_rows(y, *rows, out=self._work(z, slot=2))
        if kind == "mse_identity" and self.loops is not None and _fusable(z, y, delta):
            loss += self.loops.mse_identity(z.reshape(-1), y.reshape(-1), delta.reshape(-1), z.dtype.type(scale))
            return delta
        s = self._work(z)
        if kind == "mse_identity":
            xp.subtract(z, y, out=delta)
            loss += 0.5 * xp.sum(xp.square(delta, out=s), dtype=np.float64)
        elif kind == "mse_sigmoid":
            _sigmoid(xp, z, out=s)
            xp.subtract(s, y, out=delta)
            loss += 0.5 * xp.sum(xp.square(delta, out=self._work(z, slot=1)), dtype=np.float64)
            delta *= s
            xp.subtract(1, s, out=s)
            delta *= s
        elif kind == "bce_sigmoid":
            # s = (max(z,0) - z y) + log(1 + exp(-|z|)), in that order, as the kernel adds:
            # a well-classified row's loss (the last term alone, down to 1e-20) is kept,
            # where adding it to z first would round it away.
            xp.maximum(z, 0, out=s)
            s -= xp.multiply(z, y, out=delta)
            xp.abs(z, out=delta)
            xp.negative(delta, out=delta)
            xp.exp(delta, out=delta)
            xp.log1p(delta, out=delta)
            s += delta
            loss += xp.sum(s, dtype=np.float64)
            _sigmoid(xp, z, out=delta)
            delta -= y
        else:
            raise ValueError(f"unknown pointwise loss {kind!r}")
        delta *= scale
        return delta

    # -- backward -------------------------------------------------------------
    def activation_backward(self, err, a, activation, out):
        """out = err * g'(z), g' from a = g(z) (kernels/activation_backward.cu),
        a block of rows at a time as bias_activation."""
        if activation == "identity":
            if out is not err:
                self.xp.copyto(out, err)
            return out
        if self.loops is not None and _fusable(err, a, out):
            return self._activation_backward_loop(err, a, activation, out)
        for r, e in self._chunks(a.shape[0], per=a.shape[1]):
            self._activation_backward_rows(err[r:e], a[r:e], activation, out[r:e])
        return out

    def _activation_backward_loop(self, err, a, activation, out):
        """out = err * g'(a) as one loop in place (the step passes out=err)."""
        if out is not err:
            self.xp.copyto(out, err)
        t = a.dtype.type
        slopes = (t(LEAKY_SLOPE), t(1 - LEAKY_SLOPE)) if activation == "leaky_relu" else ()
        self.loops.BACKWARD[activation](out.reshape(-1), a.reshape(-1), *slopes)
        return out

    def _activation_backward_rows(self, err, a, activation, out):
        xp = self.xp
        if activation == "relu":                       # err [a > 0], the mask as bytes: a
            mask = self._work.empty(a.shape, np.bool_, "relu_mask")   # quarter of the traffic
            xp.greater(a, 0, out=mask)
            return xp.multiply(err, mask, out=out)
        s = self._work(a)                              # s = g'(z) from a
        if activation == "sigmoid":                    # a (1 - a)
            xp.subtract(1, a, out=s)
            s *= a
        elif activation == "tanh":                     # 1 - a^2
            xp.multiply(a, a, out=s)
            xp.subtract(1, s, out=s)
        elif activation == "leaky_relu":               # 1 if a > 0 else 0.01
            xp.greater(a, 0, out=s)
            s *= 1 - LEAKY_SLOPE
            s += LEAKY_SLOPE
        return xp.multiply(err, s, out=out)

    def dense_backward(self, delta, w, a, activation, out, db, precision="float32"):
        """out = (delta @ w.T) * g'(a), a hidden layer's delta from the next
        layer's; db = its column sums (kernels/dense_layer.cu fuses the three
        for narrow float32 layers)."""
        self.matmul(delta, w, out=out, transb=True, precision=precision)
        return self.activation_backward_bias_grad(out, a, activation, out=out, db=db)

    def fuses_output(self, kind, delta):
        """Whether MLP._backprop hands this output layer's bias, loss, delta and
        bias gradient to ``loss_bias_grad`` in one call: never on the CPU (the
        same passes, one after another, as dense_forward and pointwise_loss
        make them)."""
        return False

    def loss_bias_grad(self, z, b, y, kind, delta, loss, scale, db, rows=None):
        """The output layer of an elementwise loss after its product z = A W:
        z += b, then pointwise_loss (``kind``, ``rows`` as there), then db =
        the column sums of delta (kernels/pointwise_loss.cu,
        pointwise_loss_bias_grad, does all three in one pass over wide rows,
        leaving z as it was). Afterwards z holds the logits or the product."""
        self.bias_activation(z, b, "identity")
        self.pointwise_loss(z, y, kind, delta, loss, scale, rows=rows)
        return self.bias_grad(delta, out=db)

    def activation_backward_bias_grad(self, err, a, activation, out, db):
        """out = err * g'(a), then db = its column sums (kernels/bias_grad.cu,
        bias_grad_packed with FUSED, does both in one pass over wide rows)."""
        self.activation_backward(err, a, activation, out=out)
        return self.bias_grad(out, out=db)

    def bias_grad(self, delta, out):
        """out[j] = sum_i delta[i, j] (kernels/bias_grad.cu), as the product
        ones @ delta: BLAS's matrix-vector product reads delta once, on every
        core, where NumPy's sum over axis 0 adds it row by row on one (2.7
        times longer on a 262144 x 64 delta; benchmarks/NOTES.md)."""
        return self.xp.matmul(self._ones(delta.shape[0], delta.dtype), delta, out=out)

    def l2_penalty(self, w, g, loss, l2, m):
        """g += (l2 / m) w; loss += (l2 / 2) sum w^2 (kernels/l2_penalty.cu).

        Each w^2 in w's dtype; NumPy sums them pairwise in that dtype (the
        kernel in double: they agree to about float32 rounding), which needs no
        float64 copy of w."""
        xp, s = self.xp, self._work(w)
        loss += 0.5 * l2 * xp.sum(xp.multiply(w, w, out=s))
        xp.multiply(w, w.dtype.type(l2 / m), out=s)
        g += s

    # -- updates beside the backward pass ---------------------------------------
    def overlap_layers(self, layer_sizes):
        """The layers whose update MLP._train_step runs beside the backward
        pass: none on the CPU (one stream of work)."""
        return []

    def first_layer_slabs(self, layer_sizes, precision="float32"):
        """The slabs of rows MLP._backprop makes the first layer's weight
        gradient in: one on the CPU (nothing runs beside it)."""
        return 1

    def backward_beside(self, layer_sizes):
        """The layers whose per-element backward work MLP._backprop runs beside
        their GEMMs: none on the CPU."""
        return []

    def beside(self, fn, lane="updates"):
        fn()

    def join(self, token):
        pass

    def rejoin(self):
        pass

    # -- the batch gather ------------------------------------------------------
    def gather_rows(self, src, order, offset, out):
        """out = src[order[offset : offset + m]] (kernels/gather_rows.cu); ``offset``
        is a 1-element int64 array."""
        start = int(offset[0])                         # on CuPy arrays a read-back:
        rows = order[start:start + out.shape[0]]       # PlainCupyBackend has its own
        return _take(self.xp, src, rows, out, axis=0)

    def advance_offset(self, offset, m):
        """offset += m (kernels/gather_rows.cu)."""
        offset += m

    # -- optimizers ------------------------------------------------------------
    def sgd(self, p, g, buf, lr, momentum, nesterov):
        """PyTorch's SGD over the flat buffer (kernels/sgd.cu), chunk by chunk."""
        xp, t = self.xp, p.dtype.type
        if self.loops is not None and _fusable(p, g, *(() if momentum == 0.0 else (buf,))):
            if momentum == 0.0:
                self.loops.sgd(p, g, t(lr))
            else:
                self.loops.sgd_momentum(p, g, buf, t(lr), t(momentum), bool(nesterov))
            return
        work = self._work.empty((min(p.size, self.PASS_CHUNK or p.size),), p.dtype, "update")
        for a, e in self._chunks(p.size):
            pc, gc, s = p[a:e], g[a:e], work[:e - a]
            if momentum == 0.0:
                xp.multiply(gc, t(lr), out=s)          # p -= lr g
            else:
                bc = buf[a:e]
                bc *= t(momentum)                      # buf = momentum buf + g
                bc += gc
                if nesterov:                           # p -= lr (g + momentum buf)
                    xp.multiply(bc, t(momentum), out=s)
                    s += gc
                    s *= t(lr)
                else:                                  # p -= lr buf
                    xp.multiply(bc, t(lr), out=s)
            pc -= s

    def adam_schedule(self, step, coef, lr, beta1, beta2):
        """Advances Adam's step count ``step`` (int32, 1 element) and writes
        ``coef`` (float64, 2 elements) = lr / (1 - beta1^t), sqrt(1 - beta2^t)
        for every adam() of the step (kernels/adam.cu, adam_schedule). Array
        operations only: on CuPy arrays nothing is read back."""
        xp = self.xp
        step += 1
        t_now = step.astype(np.float64)
        coef[0:1] = lr / (1.0 - xp.power(beta1, t_now))
        coef[1:2] = xp.sqrt(1.0 - xp.power(beta2, t_now))

    def adam(self, p, g, m, v, coef, decay, beta1, beta2, eps):
        """PyTorch's Adam/AdamW over a range of the flat buffer (kernels/adam.cu),
        with the step's ``coef`` from adam_schedule, chunk by chunk."""
        xp, t = self.xp, p.dtype.type
        if self.loops is not None and _fusable(p, g, m, v):     # coef is on the host here
            self.loops.adam(p, g, m, v, t(coef[0]), t(coef[1]), t(decay), t(1) - t(beta1),
                            t(beta2), t(1) - t(beta2), t(eps))
            return
        step_size, bc2_sqrt = coef[0:1].astype(p.dtype), coef[1:2].astype(p.dtype)
        work = self._work.empty((min(p.size, self.PASS_CHUNK or p.size),), p.dtype, "update")
        for a, e in self._chunks(p.size):
            pc, gc, mc, vc, s = p[a:e], g[a:e], m[a:e], v[a:e], work[:e - a]
            xp.subtract(gc, mc, out=s)                 # m += (1 - beta1) (g - m)
            s *= t(1) - t(beta1)
            mc += s
            vc *= t(beta2)                             # v = beta2 v + (1 - beta2) g^2
            xp.multiply(gc, gc, out=s)
            s *= t(1) - t(beta2)
            vc += s
            if decay != 1.0:                           # AdamW: p *= 1 - lr weight_decay
                pc *= t(decay)
            xp.sqrt(vc, out=s)                         # p -= step_size m / (sqrt(v) / bc2_sqrt + eps)
            s /= bc2_sqrt
            s += t(eps)
            xp.divide(mc, s, out=s)
            s *= step_size
            pc -= s
