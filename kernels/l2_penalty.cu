// L2 regularization over every weight (never the biases: gpubp lays all
// weights out first in the flat parameter buffer, so they are one prefix):
//
//   g[i]  += coef * w[i]                 coef = l2 / m
//   loss  += half_l2 * sum_i w[i]^2      half_l2 = l2 / 2 (a double; each
//                                         w[i]^2 in T, the sum in double)
//
// The loss accumulator holds m times the batch objective, so this adds
// m * (l2 / 2m) sum ||W||^2, as in the course's J = ... + (l2/2m) sum ||W||^2.
// NumPy reference: NumpyBackend.l2_penalty.
#include "common.cuh"

template <typename T>
__global__ void l2_penalty(const T* __restrict__ w, T* __restrict__ g, double* __restrict__ loss,
                           long long n, T coef, double half_l2) {
    double acc = 0.0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T wi = w[i];
        g[i] += coef * wi;
        acc += (double)(wi * wi);
    }
    gpubp_block_sum_into(half_l2 * acc, loss);
}

template __global__ void l2_penalty<float>(const float*, float*, double*, long long, float, double);
template __global__ void l2_penalty<double>(const double*, double*, double*, long long, double, double);
