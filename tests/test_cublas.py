"""The capturable GEMM: cuBLAS located and bound on any machine; without a GPU,
gpubp.cublas.Gemm against a stand-in for libcublas built from cuBLAS's header
(tests/_fake_cublas.py); on a GPU, equal to cupy.matmul and replayed correctly
from a CUDA graph."""

import numpy as np
import pytest

from _fake_cublas import SOURCE, FakeCupy, build, fake_cublas, host, host_cupy, last_call
from _helpers import max_rel_error, requires_cupy
from gpubp.precision import round_to

cublas = pytest.importorskip("gpubp.cublas")


def _library_or_skip():
    try:
        return cublas.library()
    except Exception as exc:  # no cuda-pathfinder, or no libcublas to find
        pytest.skip(f"libcublas is not available here: {exc}")


def test_libcublas_is_found_and_bound():
    lib = _library_or_skip()
    for name in ("cublasCreate_v2", "cublasSetStream_v2", "cublasSetWorkspace_v2",
                 "cublasSetSmCountTarget", "cublasGemmEx"):
        assert getattr(lib, name).restype is not None
    assert lib.cublasGetStatusString(0).decode().lower().startswith("success")


@pytest.mark.skipif("cupy" in __import__("gpubp").available_backends(), reason="a GPU is usable here")
def test_without_a_gpu_the_handle_fails_with_a_clear_error():
    _library_or_skip()
    with pytest.raises(cublas.CublasError, match="cublasCreate_v2 failed"):
        cublas.Gemm()


# -- without a GPU: a stand-in for libcublas, held to cublas_api.h -------------

@pytest.fixture
def stand_in():
    """(the stand-in library, the fake CuPy that Gemm sees, a Gemm on both)."""
    lib = fake_cublas()
    if lib is None:
        pytest.skip("the cuBLAS stand-in needs a C compiler and a set of cuBLAS headers that compiles")
    with host_cupy(FakeCupy()) as fake:
        gemm = cublas.Gemm(lib=lib)
    yield lib, fake, gemm
    gemm.close()


def test_constants_equal_those_of_cublas_api_h(stand_in):
    lib, _, _ = stand_in
    for name in ("STATUS_SUCCESS", "OP_N", "OP_T", "CUDA_R_32F", "CUDA_R_64F", "COMPUTE_32F",
                 "COMPUTE_32F_FAST_TF32", "COMPUTE_64F", "GEMM_DEFAULT"):
        assert getattr(cublas, name) == lib.fake_cublas_constant(name.encode()), name


def test_the_stand_in_is_held_to_cublas_api_h(tmp_path, stand_in):
    """Its functions are checked against the header's prototypes: one parameter
    of another type does not compile."""
    source = SOURCE.read_text()
    wrong = source.replace("cudaDataType Atype,\n                                         int lda,",
                           "cudaDataType Atype,\n                                         long lda,")
    assert wrong != source
    code, messages = build(wrong, tmp_path / "wrong.so")
    messages = messages.replace("\u2018", "'").replace("\u2019", "'")    # gcc's quotes
    assert code != 0 and "conflicting types for 'cublasGemmEx'" in messages


def test_a_header_set_that_does_not_compile_is_passed_over(tmp_path, monkeypatch):
    """On the H200 machine, cuda-pathfinder found a wheel's cublas_api.h whose runtime
    headers lacked crt/host_defines.h: such a set is skipped, not built and failed."""
    import _fake_cublas

    if _fake_cublas.c_compiler() is None:
        pytest.skip("no C compiler")
    good = tmp_path / "good"
    broken = tmp_path / "broken"
    for folder, body in ((good, "typedef int cublasStatus_t;\n"),
                         (broken, '#include "crt/host_defines.h"\n')):
        folder.mkdir()
        (folder / "cublas_api.h").write_text(body)
    sets = [[str(broken)], [str(good)]]
    monkeypatch.setattr(_fake_cublas, "_candidate_header_folders", lambda: iter(sets))
    _fake_cublas.header_folders.cache_clear()
    try:
        assert _fake_cublas.header_folders() == [str(good)]
        sets.pop()
        _fake_cublas.header_folders.cache_clear()
        assert _fake_cublas.header_folders() is None
    finally:
        _fake_cublas.header_folders.cache_clear()


# The stand-in sums in double and rounds once: only the output's rounding is left.
TOL_STAND_IN = {"float32": 1e-6, "float64": 1e-14}


@pytest.mark.parametrize("dtype,precision", [("float32", "float32"), ("float64", "float32"),
                                             ("float32", "tf32")])
@pytest.mark.parametrize("transa,transb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("M,K,N", [(67, 129, 33), (1, 5, 1), (3, 1, 4)])
def test_gemm_computes_op_a_op_b_through_cublas_gemm_ex(rng, stand_in, dtype, precision,
                                                        transa, transb, M, K, N):
    """Row-major op(a) @ op(b) as column-major op(b)^T op(a)^T: cublasGemmEx's
    arguments, leading dimensions and scalars as cuBLAS documents them."""
    lib, _, gemm = stand_in
    a = host(rng.normal(size=(K, M) if transa else (M, K)).astype(dtype))
    b = host(rng.normal(size=(N, K) if transb else (K, N)).astype(dtype))
    flat = host(np.full(M * N + 7, np.nan, dtype=dtype))
    out = flat[7:].reshape(M, N)                        # a view inside a bigger buffer
    assert gemm(a, b, out, transa=transa, transb=transb, precision=precision) is out
    x, y = (a.T if transa else a), (b.T if transb else b)
    if precision == "tf32":                             # the operands as the tensor cores see them
        x = round_to(np, np.ascontiguousarray(x), "tf32", np.empty(x.shape, np.float32))
        y = round_to(np, np.ascontiguousarray(y), "tf32", np.empty(y.shape, np.float32))
        exact = np.asarray(a.T if transa else a, np.float64) @ np.asarray(b.T if transb else b, np.float64)
        if M * K * N > 1000:                            # the rounding is there to see
            assert max_rel_error(out, exact) > 1e-6
    expected = np.asarray(x, np.float64) @ np.asarray(y, np.float64)
    # relative to the magnitudes each output adds up, not to the output: a 1 x 1 product of
    # 5 terms can cancel to near 0 (failed once in CI-like runs for float64 at 1e-14)
    magnitudes = np.abs(np.asarray(x, np.float64)) @ np.abs(np.asarray(y, np.float64))
    assert np.max(np.abs(out - expected)) / np.max(magnitudes) < TOL_STAND_IN[dtype]
    assert np.isnan(flat[:7]).all()                     # nothing written outside out
    call = last_call(lib)
    assert (call.alpha, call.beta, call.algo) == (1.0, 0.0, cublas.GEMM_DEFAULT)
    assert call.compute == {("float32", "float32"): cublas.COMPUTE_32F, ("float64", "float32"):
                            cublas.COMPUTE_64F, ("float32", "tf32"): cublas.COMPUTE_32F_FAST_TF32}[
                                (dtype, precision)]


@pytest.mark.parametrize("transa,transb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_reads_slices_of_columns_with_their_row_stride(rng, stand_in, transa, transb):
    """An operand that is a slice of a matrix's columns (rows each contiguous,
    the next row a whole row of the matrix further on: MLP's first layer in
    slabs takes X[:, lo:hi]) goes to cuBLAS with that stride as its leading
    dimension; an operand whose rows are not contiguous, or an out that is not
    C-contiguous, is refused."""
    lib, _, gemm = stand_in
    M, K, N = 13, 9, 6
    a_full = host(rng.normal(size=(K, M + 7) if transa else (M, K + 7)).astype(np.float32))
    b_full = host(rng.normal(size=(N, K + 5) if transb else (K, N + 5)).astype(np.float32))
    a = a_full[:, 3:3 + M] if transa else a_full[:, 3:3 + K]
    b = b_full[:, 2:2 + K] if transb else b_full[:, 2:2 + N]
    assert not a.flags.c_contiguous and not b.flags.c_contiguous
    out = host(np.full((M, N), np.nan, np.float32))
    gemm(a, b, out, transa=transa, transb=transb)
    x, y = (a.T if transa else a), (b.T if transb else b)
    assert max_rel_error(out, np.asarray(x, np.float64) @ np.asarray(y, np.float64)) < 1e-6
    call = last_call(lib)
    assert (call.lda, call.ldb) == (b_full.shape[1], a_full.shape[1])    # B first: column-major
    with pytest.raises(ValueError, match="rows are each contiguous"):
        gemm(host(np.ones((K, M), np.float32)).T, host(np.ones((K, N), np.float32)), out)
    with pytest.raises(ValueError, match="out must be a C-contiguous"):
        gemm(host(np.ones((M, K), np.float32)), host(np.ones((K, N), np.float32)),
             host(np.ones((M, N + 1), np.float32))[:, :N])


def test_gemm_sets_its_workspace_again_after_every_change_of_stream(rng, stand_in):
    """cublasSetStream drops the workspace (cuBLAS would then allocate from its
    pool, which a capture cannot): Gemm sets it again each time, one per stream."""
    lib, fake, gemm = stand_in
    a = host(rng.normal(size=(8, 5)).astype(np.float32))
    b = host(rng.normal(size=(5, 3)).astype(np.float32))
    out = host(np.empty((8, 3), np.float32))
    seen = []
    for stream in (0x10, 0x20, 0x10, 0x10, 0x30):
        fake.stream = type(fake.stream)(ptr=stream)
        gemm(a, b, out)
        assert max_rel_error(out, np.asarray(a, np.float64) @ np.asarray(b, np.float64)) < 1e-6
        call = last_call(lib)
        assert call.stream == stream and call.workspace_bytes == cublas.WORKSPACE_BYTES
        seen.append(call.workspace)
    assert seen[0] == seen[2] == seen[3] and len(set(seen)) == 3
    assert fake.allocations == 3                        # one workspace per stream, kept


def test_gemm_asks_cublas_for_the_sm_count_it_is_given(rng, stand_in):
    """``sms`` reaches cublasSetSmCountTarget before the GEMM it is given for
    (0: every SM), set only when it changes and again after a change of stream;
    the product is the same. A bad count never reaches cuBLAS."""
    lib, fake, gemm = stand_in
    a = host(rng.normal(size=(9, 6)).astype(np.float32))
    b = host(rng.normal(size=(6, 4)).astype(np.float32))
    out = host(np.empty((9, 4), np.float32))
    exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    sets = lib.fake_cublas_sm_target_calls()
    fake.stream = type(fake.stream)(ptr=0x10)
    for sms, stream, sets_more in ((0, 0x10, 1), (120, 0x10, 1), (120, 0x10, 0), (0, 0x10, 1),
                                   (0, 0x10, 0), (7, 0x20, 1), (7, 0x20, 0), (7, 0x10, 1)):
        fake.stream = type(fake.stream)(ptr=stream)
        out.fill(np.nan)
        gemm(a, b, out, sms=sms)
        assert max_rel_error(out, exact) < 1e-6
        call = last_call(lib)
        assert (call.sm_count_target, call.stream) == (sms, stream)
        assert lib.fake_cublas_sm_target_calls() == sets + sets_more, (sms, stream)
        sets += sets_more
    calls = lib.fake_cublas_gemm_calls()
    for bad in (-1, 1.5, True, 2**31, "8"):
        with pytest.raises(ValueError, match="sms must be an int"):
            gemm(a, b, out, sms=bad)
    assert (lib.fake_cublas_gemm_calls(), lib.fake_cublas_sm_target_calls()) == (calls, sets)


def test_the_stand_in_refuses_a_gemm_without_a_workspace(stand_in):
    """The stand-in's own check, which the test above relies on."""
    import ctypes

    lib, _, _ = stand_in
    handle = ctypes.c_void_p()
    assert lib.cublasCreate_v2(ctypes.byref(handle)) == 0
    x, one = host(np.ones((2, 2), np.float32)), ctypes.c_float(1.0)
    try:
        assert lib.cublasSetStream_v2(handle, 0x10) == 0
        status = lib.cublasGemmEx(handle, 0, 0, 2, 2, 2, ctypes.byref(one), x.data.ptr, 0, 2,
                                  x.data.ptr, 0, 2, ctypes.byref(one), x.data.ptr, 0, 2, 68, -1)
        assert status == 15 and b"no workspace" in lib.fake_cublas_problem()
    finally:
        lib.cublasDestroy_v2(handle)


def test_gemm_of_empty_shapes_and_errors(rng, stand_in):
    lib, _, gemm = stand_in
    calls = lib.fake_cublas_gemm_calls()
    a, b = host(np.empty((4, 0), np.float32)), host(np.empty((0, 3), np.float32))
    out = host(np.full((4, 3), np.nan, np.float32))
    gemm(a, b, out)                                     # K = 0: a sum of nothing
    np.testing.assert_array_equal(out, 0.0)
    gemm(host(np.empty((0, 2), np.float32)), host(np.ones((2, 3), np.float32)),
         host(np.empty((0, 3), np.float32)))
    assert lib.fake_cublas_gemm_calls() == calls        # neither reached cuBLAS

    a, b = host(np.ones((4, 3), np.float32)), host(np.ones((3, 2), np.float32))
    lib.fake_cublas_fail_next(13)
    with pytest.raises(cublas.CublasError, match="cublasGemmEx failed with cuBLAS status 13: "
                                                 "the function failed to launch"):
        gemm(a, b, host(np.empty((4, 2), np.float32)))
    with pytest.raises(ValueError, match="do not chain"):
        gemm(a, b, host(np.empty((4, 3), np.float32)))
    with pytest.raises(TypeError, match="share a dtype"):
        gemm(a, b.astype(np.float64), host(np.empty((4, 2), np.float32)))
    with pytest.raises(ValueError, match="precision 'bf16'"):
        gemm(a, b, host(np.empty((4, 2), np.float32)), precision="bf16")


def test_gemm_close_destroys_its_handle_once(stand_in):
    lib, fake, _ = stand_in
    live = lib.fake_cublas_live_handles()
    with host_cupy(fake):
        with cublas.Gemm(lib=lib) as gemm:
            assert lib.fake_cublas_live_handles() == live + 1
    assert lib.fake_cublas_live_handles() == live
    gemm.close()                                        # again: nothing to do
    with pytest.raises(RuntimeError, match="closed"):
        gemm(host(np.ones((2, 2), np.float32)), host(np.ones((2, 2), np.float32)),
             host(np.empty((2, 2), np.float32)))


# -- on a GPU ------------------------------------------------------------------

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
@pytest.mark.parametrize("precision", ["float32", "tf32"])
def test_gemm_on_fewer_sms_equals_matmul_and_replays(rng, precision):
    """A GEMM asked to leave SMs free (what runs beside the backward pass uses)
    computes the same product, eagerly and replayed from a graph, and a GEMM
    after it on every SM too."""
    import cupy

    gemm = cublas.Gemm()
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        a = cupy.asarray(rng.normal(size=(512, 384)).astype(np.float32))
        b = cupy.asarray(rng.normal(size=(384, 256)).astype(np.float32))
        few, every = cupy.empty((512, 256), np.float32), cupy.empty((512, 256), np.float32)

        def both():
            gemm(a, b, few, precision=precision, sms=max(1, sms - 16))
            gemm(a, b, every, precision=precision)

        both()
        stream.synchronize()
        expected = cupy.asnumpy(a).astype(np.float64) @ cupy.asnumpy(b).astype(np.float64)
        for out in (few, every):
            assert max_rel_error(cupy.asnumpy(out), expected) < TOL[("float32", precision)]
        stream.begin_capture()
        both()
        graph = stream.end_capture()
        a[...] = cupy.asarray(rng.normal(size=a.shape).astype(np.float32))
        few.fill(np.nan)
        every.fill(np.nan)
        graph.launch()
        stream.synchronize()
        expected = cupy.asnumpy(a).astype(np.float64) @ cupy.asnumpy(b).astype(np.float64)
        for out in (few, every):
            assert max_rel_error(cupy.asnumpy(out), expected) < TOL[("float32", precision)]


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
    with pytest.raises(ValueError, match="rows are each contiguous"):
        gemm(a.T, cupy.ones((4, 2), np.float32), cupy.empty((3, 2), np.float32))
