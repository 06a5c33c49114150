// Forward pass of one layer after its GEMM: bias add fused with the activation.
//
//   z[i, j] <- g(z[i, j] + b[j])        in place, z is (rows, cols) C-order
//
// Variants (template ACT, codes in common.cuh): identity (the output layer's
// logits, or an identity output), sigmoid, tanh, relu, leaky_relu.
// bias_activation_packed computes the same, bit for bit, a 16-byte pack of z
// and of b at a time (see gpubp_pack): for cols a multiple of the pack (4
// floats, 2 doubles) and z, b 16-byte aligned.
// NumPy reference: NumpyBackend.bias_activation in gpubp/backends/numpy_backend.py.
#include "common.cuh"

template <typename T, int ACT>
__global__ void bias_activation(T* __restrict__ z, const T* __restrict__ b,
                                long long n, int cols) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    // The column j = i mod cols, kept up to date without a division per element.
    int j = (int)(i % cols);
    const int dj = (int)(stride % cols);
    for (; i < n; i += stride) {
        z[i] = gpubp_activate<ACT>(z[i] + b[j]);
        j += dj;
        if (j >= cols) j -= cols;
    }
}

// The same, in packs: n_packs = n / P and cols_packs = cols / P, P = gpubp_pack<T>::n.
template <typename T, int ACT>
__global__ void bias_activation_packed(T* __restrict__ z, const T* __restrict__ b,
                                       long long n_packs, int cols_packs) {
    constexpr int P = gpubp_pack<T>::n;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int j = (int)(i % cols_packs);
    const int dj = (int)(stride % cols_packs);
    for (; i < n_packs; i += stride) {
        gpubp_pack<T> x = gpubp_load_pack(z + i * P);
        const gpubp_pack<T> bj = gpubp_load_pack(b + (long long)j * P);
#pragma unroll
        for (int k = 0; k < P; ++k) x.v[k] = gpubp_activate<ACT>(x.v[k] + bj.v[k]);
        gpubp_store_pack(z + i * P, x);
        j += dj;
        if (j >= cols_packs) j -= cols_packs;
    }
}

template __global__ void bias_activation<float, 0>(float*, const float*, long long, int);
template __global__ void bias_activation<float, 1>(float*, const float*, long long, int);
template __global__ void bias_activation<float, 2>(float*, const float*, long long, int);
template __global__ void bias_activation<float, 3>(float*, const float*, long long, int);
template __global__ void bias_activation<float, 4>(float*, const float*, long long, int);
template __global__ void bias_activation<double, 0>(double*, const double*, long long, int);
template __global__ void bias_activation<double, 1>(double*, const double*, long long, int);
template __global__ void bias_activation<double, 2>(double*, const double*, long long, int);
template __global__ void bias_activation<double, 3>(double*, const double*, long long, int);
template __global__ void bias_activation<double, 4>(double*, const double*, long long, int);
template __global__ void bias_activation_packed<float, 0>(float*, const float*, long long, int);
template __global__ void bias_activation_packed<float, 1>(float*, const float*, long long, int);
template __global__ void bias_activation_packed<float, 2>(float*, const float*, long long, int);
template __global__ void bias_activation_packed<float, 3>(float*, const float*, long long, int);
template __global__ void bias_activation_packed<float, 4>(float*, const float*, long long, int);
template __global__ void bias_activation_packed<double, 0>(double*, const double*, long long, int);
template __global__ void bias_activation_packed<double, 1>(double*, const double*, long long, int);
template __global__ void bias_activation_packed<double, 2>(double*, const double*, long long, int);
template __global__ void bias_activation_packed<double, 3>(double*, const double*, long long, int);
template __global__ void bias_activation_packed<double, 4>(double*, const double*, long long, int);
