// Bias gradient: the column sums of the layer's delta (rows, cols), C-order,
//
//   db[j] = sum_i delta[i, j]
//
// Two deterministic passes (no atomics, so a run repeats bit for bit):
//   bias_grad_partial: a (32, 8) block covers 32 adjacent columns, so each warp
//     reads 128 contiguous bytes of a row. Block row y's row lane r takes the
//     rows i = 8 y + r, i + S, i + 2S, ... (S = 8 gridDim.y) into four
//     accumulators in turn (four loads in flight per thread), adds them as
//     (a0 + a1) + (a2 + a3), and the 8 lanes are summed in shared memory in a
//     fixed order. Block row y writes partial[y, j]. With one block row,
//     partial is db itself.
//   bias_grad_finish: db[j] = sum_y partial[y, j]: a (32, 32) block covers 32
//     columns; lane l sums the rows y = l, l + 32, ... in order, then the 32
//     lane sums are added in order of l.
//   bias_grad_packed<T, ACT, FUSED>: bias_grad_partial for wide rows (at least
//     32 packs, see gpubp_pack), each thread taking a 16-byte pack of adjacent
//     columns, rows i and i + S in two accumulators (the sums differ from
//     bias_grad_partial's within rounding). With FUSED it first computes and
//     stores the hidden layer's delta, the activation backward's product,
//
//       delta[i, j] = err[i, j] * g'(a[i, j])      (err may be delta itself)
//
//     so a wide layer's delta is read once for both (bit for bit the delta of
//     activation_backward.cu); without FUSED it reads delta (err unused).
// Tall matrices (e.g. 262144 x 64) need many block rows to fill the chip;
// x.sum(axis=0) is slow there.
// NumPy reference: NumpyBackend.bias_grad, NumpyBackend.activation_backward_bias_grad.
#include "common.cuh"

template <typename T>
__global__ void bias_grad_partial(const T* __restrict__ delta, T* __restrict__ partial,
                                  int rows, int cols) {
    __shared__ T lanes[8][32];
    const int col = blockIdx.x * 32 + threadIdx.x;
    const long long step = (long long)gridDim.y * 8;
    T a0 = T(0), a1 = T(0), a2 = T(0), a3 = T(0);
    if (col < cols) {
        long long i = (long long)blockIdx.y * 8 + threadIdx.y;
        for (; i + 3 * step < rows; i += 4 * step) {
            a0 += delta[i * cols + col];
            a1 += delta[(i + step) * cols + col];
            a2 += delta[(i + 2 * step) * cols + col];
            a3 += delta[(i + 3 * step) * cols + col];
        }
        for (; i < rows; i += step) a0 += delta[i * cols + col];
    }
    lanes[threadIdx.y][threadIdx.x] = (a0 + a1) + (a2 + a3);
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        T total = T(0);
        for (int r = 0; r < 8; ++r) total += lanes[r][threadIdx.x];
        partial[(long long)blockIdx.y * cols + col] = total;
    }
}

template <typename T>
__global__ void bias_grad_finish(const T* __restrict__ partial, T* __restrict__ db,
                                 int n_partial, int cols) {
    __shared__ T lanes[32][33];
    const int col = blockIdx.x * 32 + threadIdx.x;
    T acc = T(0);
    if (col < cols) {
        for (int y = threadIdx.y; y < n_partial; y += 32) acc += partial[(long long)y * cols + col];
    }
    lanes[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        T total = T(0);
        for (int l = 0; l < 32; ++l) total += lanes[l][threadIdx.x];
        db[col] = total;
    }
}

template <typename T, int ACT, bool FUSED>
__global__ void bias_grad_packed(const T* err, const T* __restrict__ a, T* delta,
                                 T* __restrict__ partial, int rows, int cols) {
    constexpr int P = gpubp_pack<T>::n;
    const int pc = blockIdx.x * 32 + threadIdx.x;            // this thread's pack of columns
    const long long step = (long long)gridDim.y * 8;
    gpubp_pack<T> s0, s1;
#pragma unroll
    for (int k = 0; k < P; ++k) s0.v[k] = s1.v[k] = T(0);
    if (pc < cols / P) {
        const T* src = FUSED ? err : delta;
        long long i = (long long)blockIdx.y * 8 + threadIdx.y;
        for (; i < rows; i += 2 * step) {
            const bool second = i + step < rows;
            const long long at0 = i * cols + (long long)pc * P, at1 = (i + step) * cols + (long long)pc * P;
            gpubp_pack<T> d0 = gpubp_load_pack(src + at0), d1;
            if (second) d1 = gpubp_load_pack(src + at1);
            if (FUSED) {
                const gpubp_pack<T> a0 = gpubp_load_pack(a + at0);
#pragma unroll
                for (int k = 0; k < P; ++k) d0.v[k] = d0.v[k] * gpubp_activation_grad<ACT>(a0.v[k]);
                gpubp_store_pack(delta + at0, d0);
                if (second) {
                    const gpubp_pack<T> a1 = gpubp_load_pack(a + at1);
#pragma unroll
                    for (int k = 0; k < P; ++k) d1.v[k] = d1.v[k] * gpubp_activation_grad<ACT>(a1.v[k]);
                    gpubp_store_pack(delta + at1, d1);
                }
            }
#pragma unroll
            for (int k = 0; k < P; ++k) {
                s0.v[k] += d0.v[k];
                if (second) s1.v[k] += d1.v[k];
            }
        }
    }
    gpubp_pack_column_partial(s0, s1, pc, partial, cols);
}

template __global__ void bias_grad_partial<float>(const float*, float*, int, int);
template __global__ void bias_grad_partial<double>(const double*, double*, int, int);
template __global__ void bias_grad_finish<float>(const float*, float*, int, int);
template __global__ void bias_grad_finish<double>(const double*, double*, int, int);
template __global__ void bias_grad_packed<float, 0, false>(const float*, const float*, float*, float*, int, int);
template __global__ void bias_grad_packed<float, 0, true>(const float*, const float*, float*, float*, int, int);
template __global__ void bias_grad_packed<float, 1, true>(const float*, const float*, float*, float*, int, int);
template __global__ void bias_grad_packed<float, 2, true>(const float*, const float*, float*, float*, int, int);
template __global__ void bias_grad_packed<float, 3, true>(const float*, const float*, float*, float*, int, int);
template __global__ void bias_grad_packed<float, 4, true>(const float*, const float*, float*, float*, int, int);
template __global__ void bias_grad_packed<double, 0, false>(const double*, const double*, double*, double*, int, int);
template __global__ void bias_grad_packed<double, 0, true>(const double*, const double*, double*, double*, int, int);
template __global__ void bias_grad_packed<double, 1, true>(const double*, const double*, double*, double*, int, int);
template __global__ void bias_grad_packed<double, 2, true>(const double*, const double*, double*, double*, int, int);
template __global__ void bias_grad_packed<double, 3, true>(const double*, const double*, double*, double*, int, int);
template __global__ void bias_grad_packed<double, 4, true>(const double*, const double*, double*, double*, int, int);
