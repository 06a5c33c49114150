"""The multi-layer perceptron: parameters in one flat buffer, batched backprop
on the device through the backend's fused operations."""

from __future__ import annotations

import itertools
import json
import numbers
import os
import uuid
import zipfile
from functools import partial
from pathlib import Path

import numpy as np

from . import _validation as v
from .backends import get_backend
from .losses import OUTPUTS, resolve_loss
from .precision import PRECISIONS

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "identity")
DTYPES = ("float32", "float64")


# Evaluation (forward, predict, evaluate, validation) holds at most this many
# bytes of activations and deltas at once: larger inputs go through in chunks of rows.
EVAL_BYTES = 256 << 20


class _Buffers:
    """Per-batch-shape work arrays: each layer's activation and delta, and a
    float64 loss accumulator. Allocated once per batch size and reused."""

    def __init__(self, xp, sizes, m, dtype):
        self.acts = [None] + [xp.empty((m, n), dtype=dtype) for n in sizes[1:]]
        self.deltas = [None] + [xp.empty((m, n), dtype=dtype) for n in sizes[1:]]
        self.loss = xp.zeros((), dtype=np.float64)

    def head(self, m):
        """The same buffers cut to their first m rows (still C-contiguous)."""
        cut = object.__new__(_Buffers)
        cut.acts = [None] + [a[:m] for a in self.acts[1:]]
        cut.deltas = [None] + [d[:m] for d in self.deltas[1:]]
        cut.loss = self.loss
        return cut


class MLP:
    """A fully connected network trained by backpropagation.

    >>> model = MLP([64, 32, 10], activation="tanh", output="softmax")
    >>> probabilities = model.predict(X)          # NumPy array, shape (n, 10)

    ``layer_sizes`` lists the width of every layer, input first. Hidden layers use
    ``activation`` (sigmoid, tanh, relu, leaky_relu with slope 0.01, identity); the
    last layer uses ``output`` (softmax, sigmoid, identity). ``backend`` is "auto",
    "numpy" or "cupy"; ``dtype`` float32 or float64; ``seed`` fixes the
    initialisation (Glorot uniform for sigmoid, tanh and identity layers and the
    output layer; He normal for relu and leaky_relu), the same on every backend.

    All weights, then all biases, live in one contiguous buffer ``params`` (each W
    of shape ``(n_in, n_out)`` and b of shape ``(n_out,)`` is a view into it), and
    their gradients likewise in ``grads``, so an optimizer updates every parameter
    in one launch.

    ``precision`` sets the matrix products: "float32" (exact), "tf32" (tensor-core
    TF32 operands, fp32 accumulation) or "bf16" (bfloat16 operands, fp32
    accumulation, fp32 master weights); see :mod:`gpubp.precision`.
    """

    def __init__(self, layer_sizes, activation="sigmoid", output="softmax", backend="auto",
                 dtype="float32", seed=0, precision="float32"):
        sizes = _check_layer_sizes(layer_sizes)
        v.check_choice("activation", activation, ACTIVATIONS)
        v.check_choice("output", output, OUTPUTS)
        dtype = _check_dtype(dtype)
        v.check_choice("precision", precision, PRECISIONS)
        if output == "softmax" and sizes[-1] < 2:
            raise ValueError("output 'softmax' needs at least 2 outputs (over one output it is "
                             f"always 1); got layer_sizes {sizes}: use output 'sigmoid' for one")
        if precision != "float32" and dtype != np.float32:
            raise ValueError(f"precision {precision!r} needs dtype float32 (fp32 storage); got {dtype.name}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        self.layer_sizes = sizes
        self.activation = activation
        self.output = output
        self.dtype = dtype
        self.precision = precision

        shapes = list(zip(sizes[:-1], sizes[1:]))
        self.n_weights = sum(i * o for i, o in shapes)
        n_params = self.n_weights + sum(o for _, o in shapes)
        self.params = self.backend.asarray(self._initial_params(int(seed)), dtype=dtype)
        self.grads = self.xp.zeros(n_params, dtype=dtype)
        self.weights, self.biases = self._views(self.params)
        self.grad_weights, self.grad_biases = self._views(self.grads)
        self._buffers = {}
        self._spare_buffers = None

    # -- layout --------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        """The number of weight layers (one less than ``len(layer_sizes)``)."""
        return len(self.layer_sizes) - 1

    def _layer_ranges(self, layer):
        """The ``(start, stop)`` ranges of layer's W and b in the flat buffer."""
        sizes = self.layer_sizes
        w_at = sum(i * o for i, o in zip(sizes[:layer], sizes[1:layer + 1]))
        b_at = self.n_weights + sum(sizes[1:layer + 1])
        n_in, n_out = sizes[layer], sizes[layer + 1]
        return [(w_at, w_at + n_in * n_out), (b_at, b_at + n_out)]

    def _views(self, flat):
        weights, biases = [], []
        for layer, (n_in, n_out) in enumerate(zip(self.layer_sizes[:-1], self.layer_sizes[1:])):
            (w0, w1), (b0, b1) = self._layer_ranges(layer)
            weights.append(flat[w0:w1].reshape(n_in, n_out))
            biases.append(flat[b0:b1])
        return weights, biases

    def _initial_params(self, seed):
        rng = np.random.default_rng(seed)
        ws, bs = [], []
        for layer, (n_in, n_out) in enumerate(zip(self.layer_sizes[:-1], self.layer_sizes[1:])):
            hidden = layer < self.n_layers - 1
            if hidden and self.activation in ("relu", "leaky_relu"):
                w = rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_in, n_out))
            else:
                limit = np.sqrt(6.0 / (n_in + n_out))
                w = rng.uniform(-limit, limit, size=(n_in, n_out))
            ws.append(w.ravel())
            bs.append(np.zeros(n_out))
        return np.concatenate(ws + bs).astype(self.dtype)

    def get_params(self):
        """``[(W, b), ...]`` per layer as NumPy copies, W ``(n_in, n_out)``, b ``(n_out,)``."""
        return [(_host_copy(self.backend, w), _host_copy(self.backend, b))
                for w, b in zip(self.weights, self.biases)]

    def set_params(self, params):
        """Load ``[(W, b), ...]`` as returned by :meth:`get_params`; shapes are
        checked for every layer before anything is written, values cast to the dtype."""
        if not isinstance(params, (list, tuple)) or len(params) != self.n_layers:
            raise ValueError(
                f"params must be a list of {self.n_layers} (W, b) pairs; got "
                f"{len(params) if isinstance(params, (list, tuple)) else type(params).__name__}"
            )
        checked = []
        for layer, pair in enumerate(params):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"params[{layer}] must be a (W, b) pair")
            n_in, n_out = self.layer_sizes[layer], self.layer_sizes[layer + 1]
            w = v.as_checked_array(f"params[{layer}][0] (W)", pair[0])
            b = v.as_checked_array(f"params[{layer}][1] (b)", pair[1])
            if w.shape != (n_in, n_out):
                raise ValueError(f"params[{layer}][0] (W) must have shape {(n_in, n_out)}; got {w.shape}")
            if b.shape != (n_out,):
                raise ValueError(f"params[{layer}][1] (b) must have shape {(n_out,)}; got {b.shape}")
            v.check_fits(f"params[{layer}][0] (W)", w, self.dtype)
            v.check_fits(f"params[{layer}][1] (b)", b, self.dtype)
            checked.append((w, b))
        for (w, b), wv, bv in zip(checked, self.weights, self.biases):
            wv[...] = self.backend.asarray(w, dtype=self.dtype)
            bv[...] = self.backend.asarray(b, dtype=self.dtype)

    # -- validation ----------------------------------------------------------
    def _device_inputs(self, X, name="X"):
        """Validate inputs alone, then move them to the device."""
        X = v.check_X(X, self.layer_sizes[0], name)
        v.check_fits(name, X, self.dtype)
        return self.backend.asarray(X, dtype=self.dtype)

    def _device_data(self, X, Y, loss, names=("X", "Y")):
        """Validate inputs and targets, then move them to the device:
        ``(X, dense Y, int32 labels)``, one of the last two None."""
        X = v.check_X(X, self.layer_sizes[0], names[0])
        dense, labels = v.check_Y(Y, X.shape[0], self.layer_sizes[-1], loss, names[1])
        v.check_fits(names[0], X, self.dtype)
        if dense is not None:
            v.check_fits(names[1], dense, self.dtype)
        X = self.backend.asarray(X, dtype=self.dtype)
        if dense is not None:
            dense = self.backend.asarray(dense, dtype=self.dtype)
        if labels is not None:
            labels = self.backend.asarray(labels, dtype=np.int32)
        return X, dense, labels

    def _buffers_for(self, m, keep=True):
        """The work arrays for batches of m rows: kept per size for training's
        sizes; with ``keep=False`` (loss_and_grads, called with any size) one set
        only, the latest size's, so that calls with many sizes do not pile up."""
        bufs = self._buffers.get(m)
        if bufs is None and not keep:
            spare = self._spare_buffers
            if spare is None or spare[0] != m:
                spare = self._spare_buffers = (m, _Buffers(self.xp, self.layer_sizes, m, self.dtype))
            return spare[1]
        if bufs is None:
            bufs = self._buffers[m] = _Buffers(self.xp, self.layer_sizes, m, self.dtype)
        return bufs

    # -- the algorithm -------------------------------------------------------
    def _forward(self, X, bufs, last="identity"):
        """Every layer's activation into ``bufs.acts``; the last layer gets ``last``
        (identity gives the logits the fused loss kernels start from; None, its
        product alone, without the bias: backend.loss_bias_grad adds it)."""
        a = X
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = bufs.acts[layer + 1]
            if layer == self.n_layers - 1 and last is None:
                self.backend.matmul(a, w, out=z, precision=self.precision)
                return z
            act = self.activation if layer < self.n_layers - 1 else last
            self.backend.dense_forward(a, w, b, act, out=z, precision=self.precision)
            a = z
        return a

    def _output_delta(self, logits, dense, labels, kind, delta, loss_acc, scale, rows=None):
        if kind == "softmax_ce":
            assert rows is None, "softmax targets are gathered first"
            self.backend.softmax_cross_entropy(logits, dense, labels, delta, loss_acc, scale)
        else:
            self.backend.pointwise_loss(logits, dense, kind, delta, loss_acc, scale, rows=rows)

    def _backprop(self, X, dense, labels, kind, l2, bufs, loss_acc, rows=None, ready=None,
                  slabs=1):
        """One batch: forward, loss and output delta, backward into ``grads``.

        Adds m times the batch objective (summed per-example losses plus
        (l2/2) sum ||W||^2) to ``loss_acc`` on the device; reads nothing back.
        With ``rows = (order, offset)`` (elementwise losses only), ``dense`` is
        the whole data set's targets, the batch's its rows ``order[offset :
        offset + m]``, read in place by the loss. ``ready(layer)`` is called
        once a layer's gradients are final and its weights read no more;
        with ``slabs`` > 1 (and ``ready``), the first layer's weight gradient
        is made in that many slabs of rows (``_slab_rows``), and
        ``ready(0, (lo, hi))`` called as each but the last is final.
        """
        m, backend, top = X.shape[0], self.backend, self.n_layers - 1
        # Layers whose per-element backward work runs beside their GEMMs (on a
        # GPU, where asked: CupyBackend._BACKWARD_BESIDE); the same kernels, so the same bits.
        split = backend.backward_beside(self.layer_sizes)
        delta = bufs.deltas[self.n_layers]
        sums = below = None                 # tokens of work beside: output bias sums, next delta
        if backend.fuses_output(kind, delta):
            # the output layer's bias, loss, delta and bias sums in one pass
            product = self._forward(X, bufs, last=None)
            backend.loss_bias_grad(product, self.biases[-1], dense, kind, delta, loss_acc, 1.0 / m,
                                   db=self.grad_biases[-1], rows=rows)
        else:
            logits = self._forward(X, bufs)
            self._output_delta(logits, dense, labels, kind, delta, loss_acc, 1.0 / m, rows)
            if top in split:
                sums = backend.beside(partial(backend.bias_grad, delta, out=self.grad_biases[-1]),
                                      lane="backward")
            else:
                backend.bias_grad(delta, out=self.grad_biases[-1])
        for layer in reversed(range(self.n_layers)):
            if below is not None:           # this layer's delta, made beside the layer above
                backend.join(below)
                below = None
            a_prev = X if layer == 0 else bufs.acts[layer]
            err = bufs.deltas[layer] if layer > 0 else None     # the delta of the layer below
            split_here = err is not None and layer in split
            if split_here:
                # the error product first, then the delta below and its db
                # beside the product for this layer's dW
                backend.matmul(delta, self.weights[layer], out=err, transb=True,
                               precision=self.precision)
                below = backend.beside(
                    partial(backend.activation_backward_bias_grad, err, a_prev, self.activation,
                            out=err, db=self.grad_biases[layer - 1]), lane="backward")
            parts = [None]                  # the whole of dW, or the first layer's slabs
            if layer == 0 and slabs > 1 and ready is not None:
                parts = _slab_rows(a_prev.shape[1], slabs)
            for part in parts:
                w, gw, a = self.weights[layer], self.grad_weights[layer], a_prev
                if part is not None:        # a slab of the first layer's rows
                    w, gw, a = w[part[0]:part[1]], gw[part[0]:part[1]], a[:, part[0]:part[1]]
                backend.matmul(a, delta, out=gw, transa=True, precision=self.precision)
                if l2 and ready is not None:    # layer by layer: its update may start at once
                    backend.l2_penalty(w, gw, loss_acc, l2, m)
                if part is not None and part != parts[-1]:
                    ready(0, part)
            if err is not None and not split_here:      # the delta below and its db, here
                backend.dense_backward(delta, self.weights[layer], a_prev, self.activation,
                                       out=err, db=self.grad_biases[layer - 1],
                                       precision=self.precision)
            if err is not None:
                delta = err
            if sums is not None and layer == top:   # the output layer's db, final
                backend.join(sums)
                sums = None
            if ready is not None:
                ready(layer)
        if l2 and ready is None:
            n = self.n_weights
            self.backend.l2_penalty(self.params[:n], self.grads[:n], loss_acc, l2, m)

    def _train_step(self, X, dense, labels, kind, l2, bufs, loss_acc, optimizer, rows=None):
        """One training step: ``_backprop``, then ``optimizer``'s update.

        On the CuPy backend a layer with many weights (``overlap_layers``) is
        updated on a second stream as soon as its gradients are final, beside
        the backward pass of the layers below it, and, with
        ``first_layer_slabs`` > 1, each slab of the first layer's rows but the
        last beside the product for the next slab; the rest of the parameters
        after the backward pass. Each parameter gets the same update either
        way, the same bits (but a GPU's cuBLAS may round the slabs' products
        otherwise than the whole one's); the stream waits for both before the
        step ends.
        """
        early = set(self.backend.overlap_layers(self.layer_sizes))
        slabs = self.backend.first_layer_slabs(self.layer_sizes, self.precision)
        if not early and slabs == 1:
            self._backprop(X, dense, labels, kind, l2, bufs, loss_acc, rows)
            optimizer.step(self)
            return
        optimizer._begin_step(self)
        done = []

        def ready(layer, part=None):
            if part is not None:            # rows lo:hi of the first layer's weights
                start, n_out = self._layer_ranges(layer)[0][0], self.layer_sizes[layer + 1]
                ranges = [(start + part[0] * n_out, start + part[1] * n_out)]
            elif layer in early:
                ranges = self._layer_ranges(layer)
            else:
                return
            self.backend.beside(lambda: optimizer._update(self, ranges))
            done.extend(ranges)

        self._backprop(X, dense, labels, kind, l2, bufs, loss_acc, rows, ready, slabs)
        optimizer._update(self, _gaps(done, self.params.size))
        self.backend.rejoin()

    def _chunks(self, n):
        """Evaluation buffers for n rows and the row ranges to run through them:
        one range unless the activations would take more than EVAL_BYTES."""
        per_row = 2 * self.dtype.itemsize * sum(self.layer_sizes[1:])
        rows = max(1, min(n, EVAL_BYTES // per_row))
        bufs = _Buffers(self.xp, self.layer_sizes, rows, self.dtype)
        return bufs, [(s, min(s + rows, n)) for s in range(0, n, rows)]

    def _objective(self, X, dense, labels, kind, l2):
        """Device scalars ``(m * objective, correct predictions or None)`` for
        evaluation; leaves ``grads`` alone."""
        xp = self.xp
        m = X.shape[0]
        bufs, chunks = self._chunks(m)
        correct = None if self.output not in ("softmax", "sigmoid") else 0
        for s, e in chunks:
            part = bufs.head(e - s)
            d = None if dense is None else dense[s:e]
            t = None if labels is None else labels[s:e]
            logits = self._forward(X[s:e], part)
            self._output_delta(logits, d, t, kind, part.deltas[-1], bufs.loss, 1.0 / m)
            if self.output == "softmax":
                truth = t if t is not None else xp.argmax(d, axis=1)
                correct = correct + xp.count_nonzero(xp.argmax(logits, axis=1) == truth)
            elif self.output == "sigmoid":
                # Over every output: each counts 1/k of an example.
                correct = correct + xp.count_nonzero((logits > 0) == (d > 0.5)) / logits.shape[1]
        total = bufs.loss
        if l2:
            w = self.params[: self.n_weights]
            w64 = w.astype(np.float64)                 # accumulate in double, as the kernel does
            total = total + 0.5 * l2 * xp.dot(w64, w64)
        return total, correct

    # -- public --------------------------------------------------------------
    def forward(self, X):
        """The network's output for X (after the output activation), as an array
        on the model's backend. Inputs whose activations would take more than
        ``gpubp.model.EVAL_BYTES`` (256 MiB) go through in chunks of rows."""
        X = self._device_inputs(X)
        bufs, chunks = self._chunks(X.shape[0])
        if len(chunks) == 1:
            out = bufs.deltas[-1]
        else:
            out = self.xp.empty((X.shape[0], self.layer_sizes[-1]), dtype=self.dtype)
        for s, e in chunks:
            part = bufs.head(e - s)
            if self.output == "softmax":
                self.backend.softmax(self._forward(X[s:e], part), out=out[s:e])
            else:
                part.acts[-1] = out[s:e]      # the output layer writes straight into out
                self._forward(X[s:e], part, last=self.output)
        return out

    def predict(self, X):
        """The network's output for X as a NumPy array on the host."""
        return self.backend.to_numpy(self.forward(X))

    def loss_and_grads(self, X, Y, loss=None, l2=0.0):
        """``(loss, [(dW, db), ...])`` for one batch, as a float and NumPy arrays;
        the parameters are not changed.

        The loss is the batch mean of the per-example loss plus
        (l2 / 2m) sum ||W||^2; the gradients include (l2 / m) W; biases are never
        regularized. ``loss`` defaults to the output's natural loss.
        """
        loss, kind = resolve_loss(self.output, loss)
        l2 = v.check_real("l2", l2, low=0.0)
        X, dense, labels = self._device_data(X, Y, loss)
        bufs = self._buffers_for(X.shape[0], keep=False)
        bufs.loss.fill(0)
        self._backprop(X, dense, labels, kind, l2, bufs, bufs.loss)
        value = float(bufs.loss) / X.shape[0]
        grads = [(_host_copy(self.backend, w), _host_copy(self.backend, b))
                 for w, b in zip(self.grad_weights, self.grad_biases)]
        return value, grads

    def evaluate(self, X, Y, loss=None, l2=0.0):
        """``{"loss": ..., "accuracy": ...}`` on (X, Y) without changing anything.
        ``accuracy`` is given for softmax outputs (argmax against the label) and
        sigmoid outputs (threshold 0.5 against targets > 0.5, over every output)."""
        loss, kind = resolve_loss(self.output, loss)
        l2 = v.check_real("l2", l2, low=0.0)
        X, dense, labels = self._device_data(X, Y, loss)
        total, correct = self._objective(X, dense, labels, kind, l2)
        result = {"loss": float(total) / X.shape[0]}
        if correct is not None:
            result["accuracy"] = float(correct) / X.shape[0]
        return result

    # -- saving --------------------------------------------------------------
    _FORMAT = "gpubp.MLP/1"

    def save(self, path):
        """Write the model to ``path`` (exactly that name) as a NumPy ``.npz``:
        ``W0, b0, W1, b1, ...`` as arrays of the model's dtype and the
        architecture as JSON under ``gpubp_model``; no pickles. The file is
        replaced atomically, so a checkpoint written during training is never
        half-written, and parameters that hold NaN or Inf (a diverged run) are
        refused before the file is touched, so an earlier checkpoint at ``path``
        is kept. The optimizer's state is not saved. Returns the path."""
        path = _check_path(path)
        if not bool(self.xp.isfinite(self.params).all()):
            raise ValueError("the model's parameters hold NaN or Inf (training diverged; "
                             "a smaller learning rate?): not saved, as MLP.load would refuse them")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot save to {str(path)!r}: the folder {str(path.parent)!r} "
                                    "does not exist")
        config = {"format": self._FORMAT, "layer_sizes": self.layer_sizes,
                  "activation": self.activation, "output": self.output,
                  "dtype": self.dtype.name, "precision": self.precision}
        arrays = {"gpubp_model": np.array(json.dumps(config))}
        for layer, (w, b) in enumerate(self.get_params()):
            arrays[f"W{layer}"], arrays[f"b{layer}"] = w, b
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")   # same folder: replace is atomic
        try:
            with open(tmp, "xb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path, backend="auto"):
        """The model written by :meth:`save`, on ``backend`` (any backend: a model
        saved from the GPU loads on the CPU and back)."""
        path = _check_path(path)
        not_ours = f"path {str(path)!r} is not a model saved by gpubp"
        try:
            # Opened here, not by np.load, which leaves its own file open when the
            # archive turns out to be broken.
            with open(path, "rb") as f:
                magic = f.read(6)
                if magic[:4] != b"PK\x03\x04" and magic != b"\x93NUMPY":
                    # np.load would take it for a pickle and suggest allow_pickle
                    raise ValueError("not an .npz archive")
                f.seek(0)
                data = np.load(f, allow_pickle=False)
                if not isinstance(data, np.lib.npyio.NpzFile):
                    raise ValueError("it holds one array, not an .npz archive")
                with data:
                    arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{not_ours} ({exc})") from exc
        try:
            config = json.loads(str(arrays.pop("gpubp_model")))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{not_ours} (no readable 'gpubp_model' entry)") from exc
        if not isinstance(config, dict) or config.get("format") != cls._FORMAT:
            found = config.get("format") if isinstance(config, dict) else config
            raise ValueError(f"path {str(path)!r} holds format {found!r}; this gpubp reads {cls._FORMAT!r}")
        missing = {"layer_sizes", "activation", "output", "dtype", "precision"} - set(config)
        if missing:
            raise ValueError(f"{not_ours} (its 'gpubp_model' entry lacks {sorted(missing)})")
        model = cls(config["layer_sizes"], activation=config["activation"], output=config["output"],
                    backend=backend, dtype=config["dtype"], precision=config["precision"])
        expected = {f"{k}{layer}" for layer in range(model.n_layers) for k in "Wb"}
        if set(arrays) != expected:
            raise ValueError(f"path {str(path)!r} holds arrays {sorted(arrays)}; "
                             f"a {model.layer_sizes} model has {sorted(expected)}")
        model.set_params([(arrays[f"W{layer}"], arrays[f"b{layer}"])
                          for layer in range(model.n_layers)])
        return model

    def __repr__(self):
        extra = "" if self.precision == "float32" else f", precision={self.precision!r}"
        return (f"MLP({self.layer_sizes}, activation={self.activation!r}, output={self.output!r}, "
                f"backend={self.backend.name!r}, dtype={self.dtype.name!r}{extra})")


def _slab_rows(n, slabs):
    """``(lo, hi)`` for ``slabs`` slabs of rows ``range(n)`` as even as they can
    be with every edge a multiple of 4 (16-byte aligned float32 operands); fewer
    where n is too small."""
    edges = sorted({0, n} | {n * j // slabs // 4 * 4 for j in range(1, slabs)})
    return list(itertools.pairwise(edges))


def _gaps(ranges, n):
    """The ``(start, stop)`` ranges of ``range(n)`` that the disjoint ``ranges`` leave out."""
    gaps, at = [], 0
    for a, b in sorted(ranges):
        if a > at:
            gaps.append((at, a))
        at = b
    return gaps + ([(at, n)] if at < n else [])


def _host_copy(backend, a):
    """A NumPy array that shares no memory with the model's buffers."""
    return np.array(a, copy=True) if backend.name == "numpy" else backend.to_numpy(a)


def _check_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    return Path(path)


def _check_layer_sizes(layer_sizes):
    if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__len__"):
        raise TypeError(f"layer_sizes must be a sequence of positive integers; got {layer_sizes!r}")
    sizes = list(layer_sizes)
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes must name at least an input and an output layer; got {sizes}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"layer_sizes must hold integers; got {s!r} in {sizes}")
        if s <= 0:
            raise ValueError(f"layer_sizes must all be positive; got {sizes}")
    return [int(s) for s in sizes]


def _check_dtype(dtype):
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64; got {dtype!r}")
    return dt
