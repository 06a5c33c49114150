"""Each fused kernel against what it replaces, one operation at a time.

For every case, the CuPy backend's fused kernel and the same operation written
as plain array expressions (the NumPy backend's definition on CuPy arrays:
``gpubp-cupy-unfused``) are timed side by side, on operands the size of a
benchmark config's. The table gives both medians, the speedup, and the
fused kernel's effective bandwidth: the bytes it must move at the least (each
operand read once, each result written once) over its time. That is the figure
to hold against the card's peak (about 3.35 TB/s on an H100 SXM).

The kernels that move 16-byte packs (``gpubp_pack`` in ``kernels/common.cuh``)
are also timed one element at a time, the CuPy backend's path for operands
that are not 16-byte aligned. The narrow-layer cases are also timed as the
CuPy backend's own variants: its composed path (cuBLAS, then the separate
per-element kernels), which it takes for wider layers and, forward, for
layers of 16 outputs or fewer; ``kernels/dense_layer.cu`` itself (``fused``);
and that kernel on grids of 2, 4 and 8 blocks per SM (6 is the default).
These decide which layers take the kernel, and how it runs::

    gpubp bench --kernels [--quick] [--json PATH]
"""

from __future__ import annotations

import contextlib

import numpy as np

from .timing import measure

F32 = 4


def _cases(m_narrow=262144, wide=4096):
    """(name, config it comes from, minimal bytes, setup(backend, rng) -> call)."""
    n = m_narrow

    def dense_forward(act, K, N):
        def setup(b, rng):
            a, w = _rand(b, rng, n, K), _rand(b, rng, K, N)
            bias, out = _rand(b, rng, N), b.xp.empty((n, N), dtype=np.float32)
            return lambda: b.dense_forward(a, w, bias, act, out)
        return setup

    def dense_backward(act, K, N):
        def setup(b, rng):
            e, w, a = _rand(b, rng, n, N), _rand(b, rng, K, N), _rand(b, rng, n, K)
            out, db = b.xp.empty((n, K), dtype=np.float32), b.xp.empty(K, dtype=np.float32)
            return lambda: b.dense_backward(e, w, a, act, out, db)
        return setup

    def bias_activation(act, rows, cols):
        def setup(b, rng):
            z, bias = _rand(b, rng, rows, cols), _rand(b, rng, cols)
            return lambda: b.bias_activation(z, bias, act)
        return setup

    def activation_backward(act, rows, cols):
        def setup(b, rng):
            err, a = _rand(b, rng, rows, cols), _rand(b, rng, rows, cols)
            out = b.xp.empty((rows, cols), dtype=np.float32)
            return lambda: b.activation_backward(err, a, act, out)
        return setup

    def backward_sums(act, rows, cols):
        def setup(b, rng):
            err, a = _rand(b, rng, rows, cols), _rand(b, rng, rows, cols)
            out, db = b.xp.empty((rows, cols), dtype=np.float32), b.xp.empty(cols, dtype=np.float32)
            return lambda: b.activation_backward_bias_grad(err, a, act, out, db)
        return setup

    def bias_grad(rows, cols):
        def setup(b, rng):
            delta, out = _rand(b, rng, rows, cols), b.xp.empty(cols, dtype=np.float32)
            return lambda: b.bias_grad(delta, out)
        return setup

    def softmax_ce(rows, k):
        def setup(b, rng):
            z = _rand(b, rng, rows, k)
            labels = b.asarray(rng.integers(0, k, size=rows).astype(np.int32))
            delta, loss = b.xp.empty((rows, k), dtype=np.float32), b.xp.zeros((), dtype=np.float64)
            return lambda: b.softmax_cross_entropy(z, None, labels, delta, loss, 1.0 / rows)
        return setup

    def mse(rows, k):
        def setup(b, rng):
            z, y = _rand(b, rng, rows, k), _rand(b, rng, rows, k)
            delta, loss = b.xp.empty((rows, k), dtype=np.float32), b.xp.zeros((), dtype=np.float64)
            return lambda: b.pointwise_loss(z, y, "mse_identity", delta, loss, 1.0 / rows)
        return setup

    def mse_bias_grad(rows, k):
        def setup(b, rng):
            z, y, bias = _rand(b, rng, rows, k), _rand(b, rng, rows, k), _rand(b, rng, k)
            delta, loss = b.xp.empty((rows, k), dtype=np.float32), b.xp.zeros((), dtype=np.float64)
            db = b.xp.empty(k, dtype=np.float32)
            return lambda: b.loss_bias_grad(z, bias, y, "mse_identity", delta, loss, 1.0 / rows, db)
        return setup

    def adam(size):
        def setup(b, rng):
            p, g, m = (_rand(b, rng, size) for _ in range(3))
            v = b.xp.abs(_rand(b, rng, size))
            step, coef = b.xp.zeros(1, dtype=np.int32), b.xp.zeros(2, dtype=np.float64)
            b.adam_schedule(step, coef, 1e-3, 0.9, 0.999)
            return lambda: b.adam(p, g, m, v, coef, 1.0, 0.9, 0.999, 1e-8)
        return setup

    def gather(rows, cols):
        def setup(b, rng):
            src = _rand(b, rng, rows, cols)
            order = b.asarray(rng.permutation(rows).astype(np.int64))
            offset, out = b.xp.zeros(1, dtype=np.int64), b.xp.empty((rows, cols), dtype=np.float32)
            return lambda: b.gather_rows(src, order, offset, out)
        return setup

    big = wide * wide
    rows_ce = min(1024, wide)                            # medium's batch (scaled down with wide)
    n_adam = 3 * wide * wide + 3 * wide                  # the large config's parameters
    return [
        ("dense_forward relu 64->64", "narrow", F32 * (2 * n * 64 + 64 * 64 + 64),
         dense_forward("relu", 64, 64)),
        ("dense_forward identity 64->16", "narrow", F32 * (n * 64 + n * 16 + 64 * 16 + 16),
         dense_forward("identity", 64, 16)),
        ("dense_backward relu 64<-64", "narrow", F32 * (3 * n * 64 + 64 * 64 + 64),
         dense_backward("relu", 64, 64)),
        ("dense_backward relu 64<-16", "narrow", F32 * (n * 16 + 2 * n * 64 + 64 * 16 + 64),
         dense_backward("relu", 64, 16)),
        ("bias_activation sigmoid", "large", F32 * (2 * big + wide),
         bias_activation("sigmoid", wide, wide)),
        ("activation_backward sigmoid", "large", F32 * 3 * big,
         activation_backward("sigmoid", wide, wide)),
        ("activation_backward+bias_grad sigmoid", "large", F32 * (3 * big + wide),
         backward_sums("sigmoid", wide, wide)),
        ("activation_backward+bias_grad 256x256", "small", F32 * (3 * 256 * 256 + 256),
         backward_sums("sigmoid", 256, 256)),
        ("bias_grad 262144x64", "narrow", F32 * (n * 64 + 64), bias_grad(n, 64)),
        ("bias_grad 4096x4096", "large", F32 * (big + wide), bias_grad(wide, wide)),
        (f"softmax_cross_entropy {rows_ce}x10", "medium", F32 * 2 * rows_ce * 10 + 4 * rows_ce,
         softmax_ce(rows_ce, 10)),
        ("pointwise_loss mse 262144x16", "narrow", F32 * 3 * n * 16, mse(n, 16)),
        ("pointwise_loss mse 4096x4096", "large", F32 * 3 * big, mse(wide, wide)),
        ("bias+pointwise_loss+bias_grad mse 4096x4096", "large", F32 * (3 * big + 2 * wide),
         mse_bias_grad(wide, wide)),
        ("adam 50M parameters", "large", F32 * 7 * n_adam, adam(n_adam)),
        ("gather_rows 262144x64", "narrow", F32 * 2 * n * 64 + 8 * n, gather(n, 64)),
        ("gather_rows 4096x4096", "large", F32 * 2 * big + 8 * wide, gather(wide, wide)),
    ]


# (label, the CuPy backend's attributes for it) for the dense_layer.cu cases.
DENSE_VARIANTS = [("composed", {"_DL_MAX": 0, "_DL_FORWARD_MIN_N": 0}),
                  ("fused", {"_DL_FORWARD_MIN_N": 0}),
                  ("2 blocks/SM", {"_dl_blocks_per_sm": 2, "_DL_FORWARD_MIN_N": 0}),
                  ("4 blocks/SM", {"_dl_blocks_per_sm": 4, "_DL_FORWARD_MIN_N": 0}),
                  ("8 blocks/SM", {"_dl_blocks_per_sm": 8, "_DL_FORWARD_MIN_N": 0})]


# The cases whose kernels move 16-byte packs (gpubp_pack), also timed one element at a time;
# the packed column sums also with a block row per 256 rows (CupyBackend._BG_BLOCK_ROWS: 32).
PACKED_VARIANTS = [("one element at a time", {"_packed": lambda *arrays: False})]
PACKED_CASES = ("bias_activation sigmoid", "activation_backward sigmoid",
                "activation_backward+bias_grad sigmoid", "activation_backward+bias_grad 256x256",
                "bias_grad 4096x4096", "adam 50M parameters", "gather_rows 262144x64",
                "gather_rows 4096x4096")
COLUMN_SUM_VARIANTS = PACKED_VARIANTS + [("256 rows per block row", {"_BG_BLOCK_ROWS": 256})]


def _variants_of(name, backend):
    """The backend variants a case is also timed as (none for plain CuPy)."""
    if not hasattr(backend, "_dl_blocks_per_sm"):
        return []
    if name.startswith("dense_"):
        return DENSE_VARIANTS
    if name in PACKED_CASES:
        return COLUMN_SUM_VARIANTS if "bias_grad" in name else PACKED_VARIANTS
    return []


@contextlib.contextmanager
def _backend_settings(backend, settings):
    """The backend with ``settings`` as instance attributes, put back after."""
    before = {k: backend.__dict__[k] for k in settings if k in backend.__dict__}
    try:
        for k, value in settings.items():
            setattr(backend, k, value)
        yield backend
    finally:
        for k in settings:
            if k in before:
                setattr(backend, k, before[k])
            else:
                delattr(backend, k)


def _rand(backend, rng, *shape):
    return backend.asarray(rng.standard_normal(shape, dtype=np.float32))


def run_kernels(fused, unfused, clock, quick=False, log=print, scale=1):
    """Times every case on both backends; ``scale`` divides the operand sizes
    (for smoke tests). Returns a list of JSON-ready rows."""
    rows = []
    rng = np.random.default_rng(0)
    repeat = 5 if quick else 30
    for name, config, nbytes, setup in _cases(262144 // scale, 4096 // scale):
        log(f"  kernel {name} ...")
        row = {"kernel": name, "config": config, "bytes": nbytes}
        for label, backend in (("fused", fused), ("unfused", unfused)):
            try:  # an operation one side cannot set up or run is reported; the table goes on
                call = setup(backend, rng)
                row[label] = measure(call, clock, repeat=repeat, warmup=2, budget_s=5.0).to_dict()
                variants = _variants_of(name, backend) if label == "fused" else []
                if variants:
                    row["variants"] = _variants(backend, variants, call, clock, repeat, log)
                del call
            except Exception as exc:
                row[f"{label}_error"] = f"{type(exc).__name__}: {exc}"
                log(f"  kernel {name}: {label} failed: {row[f'{label}_error']}")
        if "fused" in row:
            row["fused_gb_s"] = row["bytes"] / (row["fused"]["median_us"] * 1e3)
            if "unfused" in row:
                row["speedup"] = row["unfused"]["median_us"] / row["fused"]["median_us"]
        rows.append(row)
    return rows


def _variants(backend, variants, call, clock, repeat, log):
    """The same call under each of ``variants``: {label: timing, or {"error": ...}}."""
    out = {}
    for label, settings in variants:
        try:
            with _backend_settings(backend, settings):
                out[label] = measure(call, clock, repeat=repeat, warmup=2, budget_s=5.0).to_dict()
        except Exception as exc:
            out[label] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"    variant {label} failed: {out[label]['error']}")
    return out


def kernel_table(rows, meta):
    lines = [f"gpubp bench --kernels  {meta['date']}  gpu: {meta['gpu'] or 'none'}",
             f"  {'kernel':<32}{'config':>8}{'fused µs':>11}{'unfused µs':>12}{'speedup':>9}"
             f"{'fused GB/s':>12}"]
    for r in rows:
        fused = f"{r['fused']['median_us']:.1f}" if "fused" in r else "failed"
        unfused = f"{r['unfused']['median_us']:.1f}" if "unfused" in r else "failed"
        speed = f"{r['speedup']:.2f}" if "speedup" in r else "-"
        bw = f"{r['fused_gb_s']:.0f}" if "fused_gb_s" in r else "-"
        lines.append(f"  {r['kernel']:<32}{r['config']:>8}{fused:>11}{unfused:>12}{speed:>9}{bw:>12}")
        if r.get("variants"):
            lines.append("    the backend's own variants (fused above: its default): " + ", ".join(
                f"{label} {v['median_us']:.1f} µs" if "median_us" in v else f"{label} failed"
                for label, v in r["variants"].items()))
        for label in ("fused", "unfused"):
            if f"{label}_error" in r:
                lines.append(f"    {label}: {r[f'{label}_error']}")
    return "\n".join(lines)
