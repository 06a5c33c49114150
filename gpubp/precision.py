"""Precision modes of the matrix products: what the tensor cores compute, defined in NumPy.

- ``float32``: exact fp32 products (the default).
- ``tf32``: fp32 storage; each GEMM operand rounded to TF32 (10 explicit mantissa
  bits, round to nearest even), products accumulated in fp32. On the GPU this is
  cuBLAS's ``CUBLAS_COMPUTE_32F_FAST_TF32`` on the tensor cores.
- ``bf16``: fp32 master weights and activations; each GEMM operand rounded to
  bfloat16 (7 mantissa bits), products accumulated in fp32.

Everything outside the products (activations, losses, the optimizer) stays in fp32.
"""

from __future__ import annotations

import numpy as np

PRECISIONS = ("float32", "tf32", "bf16")
MANTISSA_BITS = {"tf32": 10, "bf16": 7}


def round_to(xp, x, precision, out):
    """``out`` = float32 ``x`` rounded to ``precision``'s mantissa, to nearest, ties to even.

    On the bits: add half an ulp of the kept mantissa (less one, plus the lowest
    kept bit, which makes ties go to even), then clear the dropped bits.
    """
    if out is x:
        raise ValueError("round_to needs an out array other than x")
    drop = 23 - MANTISSA_BITS[precision]
    u = x.view(np.uint32)
    o = out.view(np.uint32)
    xp.right_shift(u, np.uint32(drop), out=o)
    xp.bitwise_and(o, np.uint32(1), out=o)
    o += np.uint32((1 << (drop - 1)) - 1)
    o += u
    xp.bitwise_and(o, np.uint32((0xFFFFFFFF >> drop) << drop), out=o)
    return out
