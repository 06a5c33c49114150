// Helpers shared by every gpubp kernel. gpubp/kernels.py pastes this file in
// place of `#include "common.cuh"` before compiling, so CuPy's kernel cache
// sees the whole source; nvcc finds it beside the .cu file.
//
// Activation codes (gpubp/kernels.py ACTIVATION_CODES must match):
//   0 identity    g(z) = z                      g'(z) = 1
//   1 sigmoid     g(z) = 1 / (1 + exp(-z))      g'(z) = a (1 - a)
//   2 tanh        g(z) = tanh(z)                g'(z) = 1 - a^2
//   3 relu        g(z) = max(z, 0)              g'(z) = [a > 0]
//   4 leaky_relu  g(z) = z if z > 0 else 0.01 z g'(z) = 1 if a > 0 else 0.01
// Every derivative is written from the stored activation a = g(z), so the
// backward pass never needs z for a hidden layer.

#define GPUBP_LEAKY_SLOPE 0.01

__device__ __forceinline__ float gpubp_exp(float x) { return expf(x); }
__device__ __forceinline__ double gpubp_exp(double x) { return exp(x); }
__device__ __forceinline__ float gpubp_log(float x) { return logf(x); }
__device__ __forceinline__ double gpubp_log(double x) { return log(x); }
__device__ __forceinline__ float gpubp_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double gpubp_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float gpubp_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double gpubp_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float gpubp_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double gpubp_sqrt(double x) { return sqrt(x); }

// a + b rounded on its own: never contracted with a product before it into one
// fused multiply-add, as ptxas may do with a plain +. For sums that must give
// the bits of another kernel's, which adds the same values loaded from memory.
__device__ __forceinline__ float gpubp_add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double gpubp_add_rn(double a, double b) { return __dadd_rn(a, b); }

// Sigmoid that never overflows: exp() only ever sees a non-positive argument.
template <typename T>
__device__ __forceinline__ T gpubp_sigmoid(T z) {
    if (z >= T(0)) {
        return T(1) / (T(1) + gpubp_exp(-z));
    }
    T e = gpubp_exp(z);
    return e / (T(1) + e);
}

template <int ACT, typename T>
__device__ __forceinline__ T gpubp_activate(T z) {
    if (ACT == 1) return gpubp_sigmoid(z);
    if (ACT == 2) return gpubp_tanh(z);
    if (ACT == 3) return z > T(0) ? z : T(0);
    if (ACT == 4) return z > T(0) ? z : T(GPUBP_LEAKY_SLOPE) * z;
    return z;
}

// g'(z) from a = g(z).
template <int ACT, typename T>
__device__ __forceinline__ T gpubp_activation_grad(T a) {
    if (ACT == 1) return a * (T(1) - a);
    if (ACT == 2) return T(1) - a * a;
    if (ACT == 3) return a > T(0) ? T(1) : T(0);
    if (ACT == 4) return a > T(0) ? T(1) : T(GPUBP_LEAKY_SLOPE);
    return T(1);
}

// 16 bytes of T, moved as one access (ld/st.global.v4.f32 or .v2.f64): the
// "packed" kernels move a pack per thread and iteration, four times the bytes
// in flight of one float, which the per-element kernels need to come near the
// card's copy bandwidth. The address must be 16-byte aligned: the CuPy backend
// takes a packed kernel only where every operand is (gpubp_pack_ok there).
template <typename T>
struct alignas(16) gpubp_pack {
    static constexpr int n = 16 / sizeof(T);
    T v[n];
};

template <typename T>
__device__ __forceinline__ gpubp_pack<T> gpubp_load_pack(const T* p) {
    return *reinterpret_cast<const gpubp_pack<T>*>(p);
}

template <typename T>
__device__ __forceinline__ void gpubp_store_pack(T* p, const gpubp_pack<T>& x) {
    *reinterpret_cast<gpubp_pack<T>*>(p) = x;
}

// The end of a packed column-sum kernel on (32, 8) blocks (bias_grad_packed,
// pointwise_loss_bias_grad): each thread's two accumulators s0 + s1 for its pack
// pc of columns, then the block's 8 row lanes added in order (lane 0 first) into
// partial[blockIdx.y, pc's columns]. One order of additions for both kernels, so
// that they give the same bits. Every thread of the block must call it (a barrier).
template <typename T>
__device__ __forceinline__ void gpubp_pack_column_partial(gpubp_pack<T> s0, const gpubp_pack<T>& s1,
                                                          int pc, T* partial, int cols) {
    constexpr int P = gpubp_pack<T>::n;
    __shared__ gpubp_pack<T> lanes[8][32];
#pragma unroll
    for (int k = 0; k < P; ++k) s0.v[k] += s1.v[k];
    lanes[threadIdx.y][threadIdx.x] = s0;
    __syncthreads();
    if (threadIdx.y == 0 && pc < cols / P) {
        gpubp_pack<T> total = lanes[0][threadIdx.x];
        for (int r = 1; r < 8; ++r) {
#pragma unroll
            for (int k = 0; k < P; ++k) total.v[k] += lanes[r][threadIdx.x].v[k];
        }
        gpubp_store_pack(partial + (long long)blockIdx.y * cols + (long long)pc * P, total);
    }
}

__device__ __forceinline__ double gpubp_warp_sum(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_down_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Sum v over the block and add the total to *acc with one atomic per block.
// Every thread of the block must call it (it holds a barrier); the block's
// threads (blockDim.x blockDim.y, in the order x fastest) are a multiple of 32
// and at most 1024. The blocks' order of arrival varies, so
// a sum made this way (the loss figures, in double) can differ in its last
// bits from run to run; no parameter or gradient is summed this way.
__device__ __forceinline__ void gpubp_block_sum_into(double v, double* acc) {
    __shared__ double warp_totals[32];
    const int t_id = threadIdx.x + blockDim.x * threadIdx.y;
    const int lane = t_id & 31;
    const int warp = t_id >> 5;
    v = gpubp_warp_sum(v);
    if (lane == 0) warp_totals[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const int n_warps = (blockDim.x * blockDim.y) >> 5;
        double t = lane < n_warps ? warp_totals[lane] : 0.0;
        t = gpubp_warp_sum(t);
        if (lane == 0) atomicAdd(acc, t);
    }
}
