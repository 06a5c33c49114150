"""The benchmark's named networks, and the count of their floating-point work."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Config:
    name: str
    layers: tuple
    batch: int
    activation: str = "sigmoid"
    output: str = "softmax"
    loss: str = "cross_entropy"
    cpu_by_default: bool = True      # large runs on the CPU only when asked for by name
    epoch_batches: int = 8           # batches in the synthetic epoch data set

    def gemm_shapes(self, m=None):
        """(rows, inner, cols) of every GEMM in one training step, in order:
        per layer the forward product, then dW = A^T D and, past the first
        layer, the error product D W^T."""
        m = self.batch if m is None else m
        shapes = []
        for i, (n_in, n_out) in enumerate(zip(self.layers[:-1], self.layers[1:])):
            shapes.append(("forward", i, (m, n_in, n_out)))
        for i, (n_in, n_out) in reversed(list(enumerate(zip(self.layers[:-1], self.layers[1:])))):
            shapes.append(("dW", i, (n_in, m, n_out)))
            if i > 0:
                shapes.append(("dX", i, (m, n_out, n_in)))
        return shapes

    def flops(self, workload):
        """Floating-point operations of the GEMMs (2 m k n each) in a forward
        pass or a training step; the per-element work is not counted."""
        kinds = ("forward",) if workload == "forward" else ("forward", "dW", "dX")
        return sum(2 * a * b * c for kind, _, (a, b, c) in self.gemm_shapes() if kind in kinds)

    def to_dict(self):
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d


CONFIGS = {
    c.name: c
    for c in [
        Config("small", (784, 256, 256, 10), 256),
        Config("medium", (1024, 1024, 1024, 10), 1024),
        Config("large", (4096, 4096, 4096, 4096), 4096, output="identity", loss="mse",
               cpu_by_default=False),
        Config("narrow", (64, 64, 64, 64, 64, 16), 262144, activation="relu", output="identity",
               loss="mse", epoch_batches=4),
        # For smoke tests: every code path in well under a second.
        Config("tiny", (16, 12, 12, 4), 8),
    ]
}
DEFAULT_CONFIGS = ("small", "medium", "large", "narrow")


def custom_config(layers, batch, activation="sigmoid", output="softmax", loss=None):
    from ..losses import DEFAULT_LOSS

    return Config("custom-" + "-".join(str(n) for n in layers), tuple(layers), batch, activation,
                  output, loss or DEFAULT_LOSS[output])
