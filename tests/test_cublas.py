"""The capturable GEMM: cuBLAS located and bound on any machine; on a GPU,
equal to cupy.matmul and replayed correctly from a CUDA graph."""

import numpy as np
import pytest

from _helpers import max_rel_error, requires_cupy

cublas = pytest.importorskip("gpubp.cublas")


def _library_or_skip():
    try:
        return cublas.library()
    except Exception as exc:  # no cuda-pathfinder, or no libcublas to find
        pytest.skip(f"libcublas is not available here: {exc}")


def test_libcublas_is_found_and_bound():
    lib = _library_or_skip()
    for name in ("cublasCreate_v2", "cublasSetStream_v2", "cublasSetWorkspace_v2", "cublasGemmEx"):
        assert getattr(lib, name).restype is not None
    assert lib.cublasGetStatusString(0).decode().lower().startswith("success")


@pytest.mark.skipif("cupy" in __import__("gpubp").available_backends(), reason="a GPU is usable here")
def test_without_a_gpu_the_handle_fails_with_a_clear_error():
    _library_or_skip()
    with pytest.raises(cublas.CublasError, match="cublasCreate failed"):
        cublas.Gemm()


TOL = {("float32", "float32"): 1e-5, ("float64", "float32"): 1e-12, ("float32", "tf32"): 3e-3}


@requires_cupy
@pytest.mark.parametrize("dtype,precision", list(TOL))
@pytest.mark.parametrize("transa,transb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_equals_matmul(rng, dtype, precision, transa, transb):
    import cupy

    gemm = cublas.Gemm()
    M, K, N = 67, 129, 33
    a = cupy.asarray(rng.normal(size=(K, M) if transa else (M, K)).astype(dtype))
    b = cupy.asarray(rng.normal(size=(N, K) if transb else (K, N)).astype(dtype))
    flat = cupy.full(M * N + 7, np.nan, dtype=dtype)
    out = flat[7:].reshape(M, N)                        # a view inside a bigger buffer
    gemm(a, b, out, transa=transa, transb=transb, precision=precision)
    expected = (a.T if transa else a).astype(np.float64) @ (b.T if transb else b).astype(np.float64)
    assert max_rel_error(cupy.asnumpy(out), cupy.asnumpy(expected)) < TOL[(dtype, precision)]
    assert np.isnan(cupy.asnumpy(flat[:7])).all()        # nothing written outside out


@requires_cupy
def test_gemm_captures_into_a_cuda_graph_and_replays(rng):
    import cupy

    gemm = cublas.Gemm()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:                                         # every array op on the capture stream
        a = cupy.asarray(rng.normal(size=(64, 48)).astype(np.float32))
        b = cupy.asarray(rng.normal(size=(48, 40)).astype(np.float32))
        out = cupy.empty((64, 40), dtype=np.float32)
        gemm(a, b, out)                                  # warm-up outside the capture
        stream.begin_capture()
        gemm(a, b, out)
        graph = stream.end_capture()
        for _ in range(3):
            a[...] = cupy.asarray(rng.normal(size=a.shape).astype(np.float32))
            out.fill(np.nan)
            graph.launch()
            stream.synchronize()
            assert max_rel_error(cupy.asnumpy(out), cupy.asnumpy(a) @ cupy.asnumpy(b)) < 1e-5


@requires_cupy
def test_gemm_on_two_streams_and_after_close(rng):
    import cupy

    with cublas.Gemm() as gemm:
        a = cupy.asarray(rng.normal(size=(8, 5)).astype(np.float32))
        b = cupy.asarray(rng.normal(size=(5, 3)).astype(np.float32))
        expected = cupy.asnumpy(a) @ cupy.asnumpy(b)
        for stream in (cupy.cuda.Stream(), cupy.cuda.Stream.null, cupy.cuda.Stream()):
            with stream:
                out = gemm(a, b, cupy.empty((8, 3), dtype=np.float32))
                assert max_rel_error(cupy.asnumpy(out), expected) < 1e-5
    with pytest.raises(RuntimeError, match="closed"):
        gemm(a, b, cupy.empty((8, 3), dtype=np.float32))


@requires_cupy
def test_gemm_rejects_operands_that_do_not_chain():
    import cupy

    gemm = cublas.Gemm()
    a, b = cupy.ones((4, 3), np.float32), cupy.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="do not chain"):
        gemm(a, b, cupy.empty((4, 2), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        gemm(a.T, cupy.ones((4, 2), np.float32), cupy.empty((3, 2), np.float32))
