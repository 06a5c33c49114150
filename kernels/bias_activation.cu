// Forward pass of one layer after its GEMM: bias add fused with the activation.
//
//   z[i, j] <- g(z[i, j] + b[j])        in place, z is (rows, cols) C-order
//
// Variants (template ACT, codes in common.cuh): identity (the output layer's
// logits, or an identity output), sigmoid, tanh, relu, leaky_relu.
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
