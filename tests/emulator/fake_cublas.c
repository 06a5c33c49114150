/* A stand-in for libcublas on the CPU, for tests/test_cublas.py.
 *
 * It is compiled against cuBLAS's own cublas_api.h, so the compiler holds each
 * function below to cuBLAS's prototype, and gpubp.cublas calls it through the
 * ctypes signatures it declares for the real library. Each call checks what the
 * cuBLAS documentation asks of its arguments, and the GEMM computes, in double,
 * what cublasGemmEx is documented to compute on column-major matrices:
 *
 *   C = alpha op(A) op(B) + beta C        C is m x n with leading dimension ldc;
 *   op(A) = A (m x k, lda >= m) or A^T (A stored k x m, lda >= k); B likewise;
 *   alpha, beta are float for CUBLAS_COMPUTE_32F*, double for CUBLAS_COMPUTE_64F;
 *   beta == 0: C is not read (it may hold NaN);
 *   CUBLAS_COMPUTE_32F_FAST_TF32: A and B rounded to TF32 (10 mantissa bits,
 *   to nearest, ties to even), as gpubp/precision.py defines it.
 *
 * cublasSetStream resets the workspace to cuBLAS's own pool, as in cuBLAS. A
 * GEMM would then allocate from that pool, which a CUDA graph capture cannot
 * do: the stand-in refuses a GEMM until a workspace is set again, which holds
 * gpubp.cublas to setting it after every change of stream.
 * cublasSetSmCountTarget keeps its value on the handle (0: every SM; cuBLAS
 * refuses a negative one), and each GEMM records the value it ran under.
 * fake_cublas_last() tells the tests what the last GEMM was called with, and
 * fake_cublas_problem() why the last call was refused. With fake_cublas_defer(1)
 * a GEMM checks its arguments and records them without computing: the CPU
 * emulation of CUDA graphs (tests/_cuda_emulator.py) then runs the recorded
 * call, fake_cublas_compute(), when the graph is launched, with the scalars and
 * pointers it was given at capture, as a CUDA graph would.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CUBLASAPI   /* as cublas_v2.h defines it for host code */
#include <cublas_api.h>

#define MAGIC 0x6370756270ULL

struct cublasContext {
    unsigned long long magic;
    cudaStream_t stream;
    void* workspace;
    size_t workspace_bytes;
    int sm_count_target;
};

typedef struct {
    int transa, transb, m, n, k, lda, ldb, ldc, atype, btype, ctype, compute, algo;
    double alpha, beta;
    const void* A;
    const void* B;
    void* C;
    void* stream;
    void* workspace;
    size_t workspace_bytes;
    int sm_count_target;
} FakeGemmCall;

static FakeGemmCall last;
static const char* problem = "";
static int gemm_calls, products, live_handles, fail_next, defer, sm_target_calls;

const FakeGemmCall* fake_cublas_last(void) { return &last; }
const char* fake_cublas_problem(void) { return problem; }
int fake_cublas_gemm_calls(void) { return gemm_calls; }
int fake_cublas_sm_target_calls(void) { return sm_target_calls; }
int fake_cublas_products(void) { return products; }
int fake_cublas_live_handles(void) { return live_handles; }
void fake_cublas_fail_next(int status) { fail_next = status; }
void fake_cublas_defer(int on) { defer = on; }

/* The header's values of the constants gpubp/cublas.py writes out by hand. */
long long fake_cublas_constant(const char* name) {
    static const struct { const char* name; long long value; } table[] = {
        {"STATUS_SUCCESS", CUBLAS_STATUS_SUCCESS},
        {"OP_N", CUBLAS_OP_N}, {"OP_T", CUBLAS_OP_T},
        {"CUDA_R_32F", CUDA_R_32F}, {"CUDA_R_64F", CUDA_R_64F},
        {"COMPUTE_32F", CUBLAS_COMPUTE_32F}, {"COMPUTE_32F_FAST_TF32", CUBLAS_COMPUTE_32F_FAST_TF32},
        {"COMPUTE_64F", CUBLAS_COMPUTE_64F}, {"GEMM_DEFAULT", CUBLAS_GEMM_DEFAULT},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i].name, name) == 0) return table[i].value;
    return -999999;
}

static cublasStatus_t refuse(cublasStatus_t status, const char* why) {
    problem = why;
    return status;
}

static int valid(cublasHandle_t handle) { return handle != NULL && handle->magic == MAGIC; }

cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t* handle) {
    if (handle == NULL) return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasCreate: handle is NULL");
    struct cublasContext* h = calloc(1, sizeof *h);
    h->magic = MAGIC;
    *handle = h;
    live_handles++;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle) {
    if (!valid(handle)) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "cublasDestroy: not a live handle");
    handle->magic = 0;
    free(handle);
    live_handles--;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
    if (!valid(handle)) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "cublasSetStream: not a live handle");
    handle->stream = stream;
    handle->workspace = NULL;          /* as cuBLAS does: back to its own pool */
    handle->workspace_bytes = 0;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace,
                                                  size_t workspaceSizeInBytes) {
    if (!valid(handle)) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "cublasSetWorkspace: not a live handle");
    if (workspace == NULL && workspaceSizeInBytes != 0)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasSetWorkspace: NULL workspace of non-zero size");
    handle->workspace = workspace;
    handle->workspace_bytes = workspaceSizeInBytes;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasSetSmCountTarget(cublasHandle_t handle, int smCountTarget) {
    if (!valid(handle)) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "cublasSetSmCountTarget: not a live handle");
    if (smCountTarget < 0) return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasSetSmCountTarget: a negative count");
    handle->sm_count_target = smCountTarget;
    sm_target_calls++;
    return CUBLAS_STATUS_SUCCESS;
}

const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
        case CUBLAS_STATUS_SUCCESS: return "success";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
        case CUBLAS_STATUS_INVALID_VALUE: return "an unsupported value or parameter was passed to the function";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "the function failed to launch on the GPU";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "the requested functionality is not supported";
        default: return "unknown error";
    }
}

static float round_tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = (u + ((u >> 13) & 1u) + 0xFFFu) & ~0x1FFFu;
    memcpy(&x, &u, sizeof u);
    return x;
}

static double element(const void* p, cudaDataType type, int tf32, size_t at) {
    if (type == CUDA_R_64F) return ((const double*)p)[at];
    float x = ((const float*)p)[at];
    return tf32 ? round_tf32(x) : x;
}

/* What cublasGemmEx computes, for a call whose arguments have been checked. */
void fake_cublas_compute(const FakeGemmCall* call) {
    int tf32 = call->compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    products++;
    for (int j = 0; j < call->n; j++)
        for (int i = 0; i < call->m; i++) {
            double sum = 0.0;
            for (int l = 0; l < call->k; l++) {
                size_t at_a = call->transa == CUBLAS_OP_N ? (size_t)i + (size_t)l * call->lda
                                                          : (size_t)l + (size_t)i * call->lda;
                size_t at_b = call->transb == CUBLAS_OP_N ? (size_t)l + (size_t)j * call->ldb
                                                          : (size_t)j + (size_t)l * call->ldb;
                sum += element(call->A, call->atype, tf32, at_a) * element(call->B, call->btype, tf32, at_b);
            }
            size_t at_c = (size_t)i + (size_t)j * call->ldc;
            double c = call->alpha * sum;
            if (call->beta != 0.0) c += call->beta * element(call->C, call->ctype, 0, at_c);
            if (call->ctype == CUDA_R_64F) ((double*)call->C)[at_c] = c;
            else ((float*)call->C)[at_c] = (float)c;
        }
}

static int max1(int x) { return x > 1 ? x : 1; }

cublasStatus_t CUBLASWINAPI cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const void* alpha, const void* A, cudaDataType Atype,
                                         int lda, const void* B, cudaDataType Btype, int ldb,
                                         const void* beta, void* C, cudaDataType Ctype, int ldc,
                                         cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    if (!valid(handle)) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "cublasGemmEx: not a live handle");
    if (handle->workspace == NULL)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED,
                      "cublasGemmEx: no workspace set since the last cublasSetStream "
                      "(cuBLAS would allocate from its own pool: not capturable)");
    if (fail_next) {
        cublasStatus_t status = (cublasStatus_t)fail_next;
        fail_next = 0;
        return refuse(status, "cublasGemmEx: failure planted by the test");
    }
    if ((transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) || (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasGemmEx: transa/transb not N or T");
    if (m < 0 || n < 0 || k < 0) return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasGemmEx: m, n or k < 0");
    if (lda < max1(transa == CUBLAS_OP_N ? m : k))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasGemmEx: lda < max(1, m if transa == N else k)");
    if (ldb < max1(transb == CUBLAS_OP_N ? k : n))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasGemmEx: ldb < max(1, k if transb == N else n)");
    if (ldc < max1(m)) return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasGemmEx: ldc < max(1, m)");
    if (alpha == NULL || beta == NULL || A == NULL || B == NULL || C == NULL)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasGemmEx: a NULL pointer");
    if (Atype != Btype || Atype != Ctype)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "cublasGemmEx: Atype, Btype and Ctype differ");
    int single = computeType == CUBLAS_COMPUTE_32F || computeType == CUBLAS_COMPUTE_32F_FAST_TF32;
    if (!((Ctype == CUDA_R_32F && single) || (Ctype == CUDA_R_64F && computeType == CUBLAS_COMPUTE_64F)))
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "cublasGemmEx: no such type / compute type pair here");
    if (algo != CUBLAS_GEMM_DEFAULT && algo != CUBLAS_GEMM_DEFAULT_TENSOR_OP)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "cublasGemmEx: an algorithm other than the default");

    last = (FakeGemmCall){transa, transb, m, n, k, lda, ldb, ldc, Atype, Btype, Ctype, computeType,
                          algo, single ? *(const float*)alpha : *(const double*)alpha,
                          single ? *(const float*)beta : *(const double*)beta,
                          A, B, C, handle->stream, handle->workspace, handle->workspace_bytes,
                          handle->sm_count_target};
    gemm_calls++;
    problem = "";
    if (!defer) fake_cublas_compute(&last);
    return CUBLAS_STATUS_SUCCESS;
}
