// Backward pass through a hidden activation: the chain rule's elementwise
// product fused with the activation derivative,
//
//   delta = err * g'(z),   err = W(l+1) d(l+1) (the back-propagated error)
//
// with g'(z) written from the stored activation a = g(z):
//   sigmoid     delta = err * a * (1 - a)
//   tanh        delta = err * (1 - a^2)
//   relu        delta = err * [a > 0]
//   leaky_relu  delta = err * (a > 0 ? 1 : 0.01)
//   identity    delta = err
//
// This file is the preamble of a cupy.ElementwiseKernel (one per activation,
// built in gpubp/kernels.py) whose body is `delta = activation_backward<ACT>(err, a)`;
// CuPy generates the indexing and the float/double instantiation.
// activation_backward_packed is the same product, bit for bit, as a raw kernel
// over contiguous operands a 16-byte pack at a time (see gpubp_pack; the last
// n mod P elements one by one): the CuPy backend takes it where err, a and
// delta are 16-byte aligned. err and delta may be the same array.
// NumPy reference: NumpyBackend.activation_backward.
#include "common.cuh"

template <int ACT, typename T>
__device__ __forceinline__ T activation_backward(T err, T a) {
    return err * gpubp_activation_grad<ACT>(a);
}

// Instantiated here so that `nvcc -cubin` checks every variant.
template __device__ float activation_backward<0, float>(float, float);
template __device__ float activation_backward<1, float>(float, float);
template __device__ float activation_backward<2, float>(float, float);
template __device__ float activation_backward<3, float>(float, float);
template __device__ float activation_backward<4, float>(float, float);
template __device__ double activation_backward<0, double>(double, double);
template __device__ double activation_backward<1, double>(double, double);
template __device__ double activation_backward<2, double>(double, double);
template __device__ double activation_backward<3, double>(double, double);
template __device__ double activation_backward<4, double>(double, double);

template <typename T, int ACT>
__global__ void activation_backward_packed(const T* err, const T* __restrict__ a, T* delta,
                                           long long n) {
    constexpr int P = gpubp_pack<T>::n;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n_packs = n / P;
    for (long long i = first; i < n_packs; i += stride) {
        gpubp_pack<T> e = gpubp_load_pack(err + i * P);
        const gpubp_pack<T> ai = gpubp_load_pack(a + i * P);
#pragma unroll
        for (int k = 0; k < P; ++k) e.v[k] = activation_backward<ACT>(e.v[k], ai.v[k]);
        gpubp_store_pack(delta + i * P, e);
    }
    for (long long i = n_packs * P + first; i < n; i += stride) {
        delta[i] = activation_backward<ACT>(err[i], a[i]);
    }
}

template __global__ void activation_backward_packed<float, 0>(const float*, const float*, float*, long long);
template __global__ void activation_backward_packed<float, 1>(const float*, const float*, float*, long long);
template __global__ void activation_backward_packed<float, 2>(const float*, const float*, float*, long long);
template __global__ void activation_backward_packed<float, 3>(const float*, const float*, float*, long long);
template __global__ void activation_backward_packed<float, 4>(const float*, const float*, float*, long long);
template __global__ void activation_backward_packed<double, 0>(const double*, const double*, double*, long long);
template __global__ void activation_backward_packed<double, 1>(const double*, const double*, double*, long long);
template __global__ void activation_backward_packed<double, 2>(const double*, const double*, double*, long long);
template __global__ void activation_backward_packed<double, 3>(const double*, const double*, double*, long long);
template __global__ void activation_backward_packed<double, 4>(const double*, const double*, double*, long long);
