"""Loss names, the output layers each one fits, and the fused kernel that computes it.

Every loss is the mean over the batch of a per-example loss summed over the outputs:

- ``mse``: 1/2 ||y_hat - y||^2, with an ``identity`` output (delta y_hat - y) or a
  ``sigmoid`` output (delta (y_hat - y) y_hat (1 - y_hat));
- ``binary_cross_entropy``: -sum[y log y_hat + (1 - y) log(1 - y_hat)] with a
  ``sigmoid`` output, from the logits (delta y_hat - y);
- ``cross_entropy``: -sum y log softmax(z) with a ``softmax`` output, from the
  logits with log-sum-exp (delta y_hat - y); Y one-hot ``(n, k)`` or labels ``(n,)``.
"""

from __future__ import annotations

LOSSES = ("mse", "binary_cross_entropy", "cross_entropy")
OUTPUTS = ("softmax", "sigmoid", "identity")

DEFAULT_LOSS = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy", "identity": "mse"}

# (output, loss) -> the kernel variant computing loss and output delta from the logits.
KERNEL_KIND = {
    ("softmax", "cross_entropy"): "softmax_ce",
    ("sigmoid", "binary_cross_entropy"): "bce_sigmoid",
    ("sigmoid", "mse"): "mse_sigmoid",
    ("identity", "mse"): "mse_identity",
}


def resolve_loss(output: str, loss: str | None) -> tuple[str, str]:
    """``(loss name, kernel kind)`` for a model output; None picks the output's natural loss."""
    if loss is None:
        loss = DEFAULT_LOSS[output]
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    kind = KERNEL_KIND.get((output, loss))
    if kind is None:
        fits = [o for (o, l) in KERNEL_KIND if l == loss]
        raise ValueError(
            f"loss {loss!r} does not fit output {output!r}: it needs output "
            f"{' or '.join(repr(o) for o in fits)}"
        )
    return loss, kind
