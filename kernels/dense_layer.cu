// Narrow dense layers, at most 64 inputs and 64 outputs, in float32: the
// layer's matrix product fused with the per-element work around it, so that
// each activation is read and written once. (Batches of 10^5 rows through
// 64-wide layers, tiny-cuda-nn's regime, spend as long on such memory passes
// as on the products.)
//
//   dense_forward<ACT>:   z[i, j] = g(sum_k a[i, k] W[k, j] + b[j])
//                         a (m, K), W (K, N), b (N,), z (m, N)
//   dense_backward<ACT>:  d[i, k] = (sum_j e[i, j] W[k, j]) * g'(a[i, k])
//                         partial[y, k] = sum of d[i, k] over the rows i of block y
//                         e (m, N): the next layer's delta; a (m, K): this
//                         layer's stored activation; d (m, K): its delta
//
// The column sums db[k] = sum_y partial[y, k] are finished by bias_grad_finish
// (kernels/bias_grad.cu), in a fixed order: no atomics, so a run repeats bit
// for bit. g and g' as in common.cuh (ACT: 0 identity, 1 sigmoid, 2 tanh,
// 3 relu, 4 leaky_relu).
//
// A variant that sent each tile's outputs (and backward its activations and
// deltas) through shared memory, so that global memory was written and read
// in whole rows, changed no bit and was slower in every narrow case on an H100
// (141 -> 167, 135 -> 136, 161 -> 281, 121 -> 236 µs; 2026-11-26): not kept.
//
// K, N <= 64. W sits in shared memory for the whole kernel. A block of 128
// threads takes tiles of 64 rows in turn (grid-stride), staged transposed in
// shared memory (through cp.async on sm_80+). Each thread computes 4 rows x 8
// columns of a tile with fp32 FMAs: 12 shared loads per 32 FMAs.
// NumPy reference: NumpyBackend.dense_forward and NumpyBackend.dense_backward.
#include "common.cuh"

#define GPUBP_DL_ROWS 64
#define GPUBP_DL_MAX 64

// tile[k][r] = src[row0 + r, k] for the tile's rows (zero past m and past cols).
// On sm_80 and later through cp.async, so that a thread has all its copies in
// flight at once (a plain load-then-store loop keeps one, and is latency-bound);
// the caller's __syncthreads then makes the tile visible to the block.
__device__ __forceinline__ void gpubp_dl_stage(float (*tile)[GPUBP_DL_ROWS + 1], const float* src,
                                               long long row0, int m, int cols) {
    for (int i = threadIdx.x; i < GPUBP_DL_ROWS * GPUBP_DL_MAX; i += blockDim.x) {
        const int r = i / GPUBP_DL_MAX, k = i % GPUBP_DL_MAX;
        const long long row = row0 + r;
        const bool inside = row < m && k < cols;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        const float* from = inside ? src + row * cols + k : src;       // 0 bytes read: zero fill
        const unsigned to = (unsigned)__cvta_generic_to_shared(&tile[k][r]);
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                     :: "r"(to), "l"(from), "r"(inside ? 4 : 0));
#else
        tile[k][r] = inside ? src[row * cols + k] : 0.0f;
#endif
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// The 8 columns of a thread: 4 cg .. 4 cg + 3 and 32 + 4 cg .. 32 + 4 cg + 3, so
// that a warp's 4-wide shared loads hit distinct banks and its stores cover
// contiguous 128-byte runs.
__device__ __forceinline__ int gpubp_dl_col(int cg, int c) { return 4 * cg + (c & 3) + 32 * (c >> 2); }

// A thread's piece of the tile's product: acc[q][c] = sum over l < len of
// tile[l][4 rg + q] * wsh[l][gpubp_dl_col(cg, c)] (tile: the rows' inputs,
// transposed; wsh: the weights, l the summed index).
__device__ __forceinline__ void gpubp_dl_product(float (&acc)[4][8],
                                                 const float (*tile)[GPUBP_DL_ROWS + 1],
                                                 const float (*wsh)[GPUBP_DL_MAX],
                                                 int len, int rg, int cg) {
    for (int q = 0; q < 4; ++q)
        for (int c = 0; c < 8; ++c) acc[q][c] = 0.0f;
    for (int l = 0; l < len; ++l) {
        float x[4], y[8];
        for (int q = 0; q < 4; ++q) x[q] = tile[l][4 * rg + q];
        for (int c = 0; c < 8; ++c) y[c] = wsh[l][gpubp_dl_col(cg, c)];
        for (int q = 0; q < 4; ++q)
            for (int c = 0; c < 8; ++c) acc[q][c] += x[q] * y[c];
    }
}

template <int ACT>
__global__ void dense_forward(const float* __restrict__ a, const float* __restrict__ w,
                              const float* __restrict__ b, float* __restrict__ z,
                              int m, int K, int N) {
    __shared__ float ws[GPUBP_DL_MAX][GPUBP_DL_MAX];          // ws[k][j] = W[k, j]
    __shared__ float as[GPUBP_DL_MAX][GPUBP_DL_ROWS + 1];     // as[k][r] = a[row0 + r, k]
    const int rg = threadIdx.x / 8;                            // rows 4 rg .. 4 rg + 3
    const int cg = threadIdx.x % 8;                            // columns gpubp_dl_col(cg, 0..7)
    for (int i = threadIdx.x; i < GPUBP_DL_MAX * GPUBP_DL_MAX; i += blockDim.x) {
        const int k = i / GPUBP_DL_MAX, j = i % GPUBP_DL_MAX;
        ws[k][j] = (k < K && j < N) ? w[k * N + j] : 0.0f;
    }
    float bias[8];
    for (int c = 0; c < 8; ++c) bias[c] = gpubp_dl_col(cg, c) < N ? b[gpubp_dl_col(cg, c)] : 0.0f;
    for (long long row0 = (long long)blockIdx.x * GPUBP_DL_ROWS; row0 < m;
         row0 += (long long)gridDim.x * GPUBP_DL_ROWS) {
        __syncthreads();                                       // the last tile is read
        gpubp_dl_stage(as, a, row0, m, K);
        __syncthreads();
        float acc[4][8];
        gpubp_dl_product(acc, as, ws, K, rg, cg);
        for (int q = 0; q < 4; ++q) {
            const long long row = row0 + 4 * rg + q;
            if (row >= m) break;
            for (int c = 0; c < 8; ++c) {
                const int j = gpubp_dl_col(cg, c);
                if (j < N) z[row * N + j] = gpubp_activate<ACT>(acc[q][c] + bias[c]);
            }
        }
    }
}

template <int ACT>
__global__ void dense_backward(const float* __restrict__ e, const float* __restrict__ w,
                               const float* __restrict__ a, float* __restrict__ d,
                               float* __restrict__ partial, int m, int K, int N) {
    __shared__ float wt[GPUBP_DL_MAX][GPUBP_DL_MAX];          // wt[j][k] = W[k, j]
    __shared__ float es[GPUBP_DL_MAX][GPUBP_DL_ROWS + 1];     // es[j][r] = e[row0 + r, j]
    __shared__ float sums[16][GPUBP_DL_MAX];                   // per row group, for partial
    const int rg = threadIdx.x / 8;                            // rows 4 rg .. 4 rg + 3
    const int cg = threadIdx.x % 8;                            // columns k = gpubp_dl_col(cg, 0..7)
    for (int i = threadIdx.x; i < GPUBP_DL_MAX * GPUBP_DL_MAX; i += blockDim.x) {
        const int j = i / GPUBP_DL_MAX, k = i % GPUBP_DL_MAX;
        wt[j][k] = (k < K && j < N) ? w[k * N + j] : 0.0f;
    }
    float colsum[8] = {};
    for (long long row0 = (long long)blockIdx.x * GPUBP_DL_ROWS; row0 < m;
         row0 += (long long)gridDim.x * GPUBP_DL_ROWS) {
        __syncthreads();
        gpubp_dl_stage(es, e, row0, m, N);
        __syncthreads();
        float acc[4][8];
        gpubp_dl_product(acc, es, wt, N, rg, cg);
        for (int q = 0; q < 4; ++q) {
            const long long row = row0 + 4 * rg + q;
            if (row >= m) break;
            for (int c = 0; c < 8; ++c) {
                const int k = gpubp_dl_col(cg, c);
                if (k < K) {
                    const float dk = acc[q][c] * gpubp_activation_grad<ACT>(a[row * K + k]);
                    d[row * K + k] = dk;
                    colsum[c] += dk;
                }
            }
        }
    }
    for (int c = 0; c < 8; ++c) sums[rg][gpubp_dl_col(cg, c)] = colsum[c];
    __syncthreads();
    if (threadIdx.x < K) {
        float total = 0.0f;
        for (int g = 0; g < 16; ++g) total += sums[g][threadIdx.x];
        partial[(long long)blockIdx.x * K + threadIdx.x] = total;
    }
}

template __global__ void dense_forward<0>(const float*, const float*, const float*, float*, int, int, int);
template __global__ void dense_forward<1>(const float*, const float*, const float*, float*, int, int, int);
template __global__ void dense_forward<2>(const float*, const float*, const float*, float*, int, int, int);
template __global__ void dense_forward<3>(const float*, const float*, const float*, float*, int, int, int);
template __global__ void dense_forward<4>(const float*, const float*, const float*, float*, int, int, int);
template __global__ void dense_backward<0>(const float*, const float*, const float*, float*, float*, int, int, int);
template __global__ void dense_backward<1>(const float*, const float*, const float*, float*, float*, int, int, int);
template __global__ void dense_backward<2>(const float*, const float*, const float*, float*, float*, int, int, int);
template __global__ void dense_backward<3>(const float*, const float*, const float*, float*, float*, int, int, int);
template __global__ void dense_backward<4>(const float*, const float*, const float*, float*, float*, int, int, int);
