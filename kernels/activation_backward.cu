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
