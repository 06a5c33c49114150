"""Where a training step's time goes: the trainer's step (gather, forward,
loss, backward, Adam, the offset), launched eagerly, with each backend
operation timed by events on the device (the host clock on the CPU). An
operation's time excludes the operations it calls (``dense_forward`` calls
``matmul`` on wide layers), so the rows add up to the step, less the gaps
between launches; operations run on the second stream (the updates of large
layers, beside the backward pass) are listed apart. Medians over the repeats,
per step::

    gpubp bench --profile --config large --backend cupy --precision tf32

On the CuPy backend every product goes through gpubp.cublas, as in a
graph-replayed step; the eager step is not graph-replayed, so on small
networks the gaps (host launch time) are large.
"""

from __future__ import annotations

import statistics
import time

from .workloads import synthetic_data

OPS = ("gather_rows", "matmul", "dense_forward", "dense_backward", "bias_activation",
       "activation_backward", "bias_grad", "pointwise_loss", "loss_bias_grad", "softmax_cross_entropy",
       "l2_penalty", "adam", "sgd", "advance_offset")


class _HostMarks:
    def mark(self):
        return time.perf_counter()

    @staticmethod
    def stream():
        return None

    @staticmethod
    def elapsed_us(start, end):
        return (end - start) * 1e6

    def sync(self):
        pass


class _EventMarks:
    """CUDA events recorded on the current stream, from a pool reused each step."""

    def __init__(self, cupy):
        self._cupy, self._pool, self._used = cupy, [], 0

    def mark(self):
        if self._used == len(self._pool):
            self._pool.append(self._cupy.cuda.Event())
        event = self._pool[self._used]
        self._used += 1
        event.record()
        return event

    def elapsed_us(self, start, end):
        return self._cupy.cuda.get_elapsed_time(start, end) * 1e3

    def stream(self):
        return self._cupy.cuda.get_current_stream().ptr

    def sync(self):
        self._cupy.cuda.get_current_stream().synchronize()
        self._used = 0


class _Recorder:
    """Wraps the backend's operations (as instance attributes, removed by
    ``close``) to mark each call's start and end; nested calls are children."""

    def __init__(self, backend, marks):
        self.backend, self.marks = backend, marks
        self.calls, self._stack = [], []
        self.main_stream = marks.stream()
        for name in OPS:
            if hasattr(backend, name) and name not in backend.__dict__:
                setattr(backend, name, self._wrap(name, getattr(backend, name)))

    def _wrap(self, name, method):
        def timed(*args, **kwargs):
            beside = self.marks.stream() != self.main_stream     # MLP._train_step's second stream
            call = {"op": f"{name} (beside)" if beside else name, "children": []}
            (self._stack[-1]["children"] if self._stack else self.calls).append(call)
            self._stack.append(call)
            call["start"] = self.marks.mark()
            try:
                return method(*args, **kwargs)
            finally:
                call["end"] = self.marks.mark()
                self._stack.pop()
        return timed

    def close(self):
        for name in OPS:
            self.backend.__dict__.pop(name, None)

    def totals(self):
        """{op: (calls, exclusive µs)} of the calls recorded since the last totals()."""
        out = {}

        def add(call):
            total = self.marks.elapsed_us(call["start"], call["end"])
            inner = sum(self.marks.elapsed_us(c["start"], c["end"]) for c in call["children"])
            n, us = out.get(call["op"], (0, 0.0))
            out[call["op"]] = (n + 1, us + total - inner)
            for child in call["children"]:
                add(child)

        for call in self.calls:
            add(call)
        self.calls = []
        return out


def profile_step(config, backend, precision="float32", repeat=30, warmup=3):
    """Per-operation medians of the trainer's eager step for ``config``:
    ``{"step_us": ..., "ops": [{"op", "calls", "median_us", "share"}, ...]}``."""
    import contextlib

    import numpy as np

    from ..model import MLP
    from ..optim import Adam
    from ..trainer import Trainer

    model = MLP(config.layers, config.activation, config.output, backend=backend,
                dtype="float32", seed=0, precision=precision)
    trainer = Trainer(model, loss=config.loss, optimizer=Adam(1e-3), batch_size=config.batch,
                      seed=0, cuda_graphs=False)
    m = config.batch
    X, Y = synthetic_data(config, m * 2)
    X, dense, labels = model._device_data(X, Y, config.loss)
    targets = dense if dense is not None else labels
    order = trainer._persistent("order", (X.shape[0],), np.int64)
    order[...] = model.xp.arange(X.shape[0], dtype=np.int64)
    offset = trainer._persistent("offset", (1,), np.int64)
    loss_sum = trainer._persistent("loss_sum", (), np.float64)
    step = trainer._step_fn(X, targets, dense is not None, m, order, offset, loss_sum)

    if model.backend.name == "cupy":
        import cupy

        marks, products = _EventMarks(cupy), model.backend.capturable()
    else:
        marks, products = _HostMarks(), contextlib.nullcontext()
    recorder = _Recorder(model.backend, marks)
    per_op, steps = {}, []
    try:
        with products:
            for i in range(warmup + repeat):
                offset.fill(0)
                marks.sync()
                start = marks.mark()
                step()
                end = marks.mark()
                marks.sync()
                totals = recorder.totals()
                if i < warmup:
                    continue
                steps.append(marks.elapsed_us(start, end))
                for op, (n, us) in totals.items():
                    per_op.setdefault(op, []).append((n, us))
    finally:
        recorder.close()
    step_us = statistics.median(steps)
    ops = [{"op": op, "calls": samples[0][0], "median_us": statistics.median(us for _, us in samples)}
           for op, samples in per_op.items()]
    ops.sort(key=lambda r: -r["median_us"])
    for r in ops:
        r["share"] = r["median_us"] / step_us
    return {"config": config.to_dict(), "backend": model.backend.name, "precision": precision,
            "repeats": len(steps), "step_us": step_us, "ops": ops}


def profile_table(profiles, meta):
    lines = [f"gpubp bench --profile  {meta['date']}  gpu: {meta['gpu'] or 'none'}  cpu: {meta['cpu']}"]
    for p in profiles:
        c = p["config"]
        lines.append(f"\n{c['name']}: {'-'.join(str(n) for n in c['layers'])}, batch {c['batch']}, "
                     f"{p['backend']}, {p['precision']} products: eager step {p['step_us']:.1f} µs "
                     f"(median of {p['repeats']})")
        lines.append(f"  {'operation':<24}{'calls':>6}{'µs/step':>11}{'share':>8}")
        for r in p["ops"]:
            lines.append(f"  {r['op']:<24}{r['calls']:>6}{r['median_us']:>11.1f}{r['share']:>8.1%}")
        rest = p["step_us"] - sum(r["median_us"] for r in p["ops"] if "(beside)" not in r["op"])
        lines.append(f"  {'between operations':<24}{'':>6}{rest:>11.1f}{rest / p['step_us']:>8.1%}"
                     + ("   (below 0: medians of the parts need not add up to the step's)"
                        if rest < 0 else ""))
        if any("(beside)" in r["op"] for r in p["ops"]):
            lines.append("  (beside): on the second stream, beside the backward pass; timed from "
                         "its start to its end there, waits included, and not in the sum")
    return "\n".join(lines)
