// Elementwise output layers fused with their loss and delta, from the logits
// z (n elements, C-order), targets y of the same shape:
//
//   variant LOSS  output    loss per element                     delta = scale * dLoss/dz
//   0 mse         identity  1/2 (z - y)^2                        z - y
//   1 mse         sigmoid   1/2 (s - y)^2, s = sigmoid(z)        (s - y) s (1 - s)
//   2 bce         sigmoid   max(z,0) - z y + log(1 + exp(-|z|))  s - y
//
// The bce form equals -[y log s + (1 - y) log(1 - s)] and never takes log(0).
// The loss is summed unscaled, in double, into *loss with one atomic per block;
// scale is 1/m for a batch mean.
// NumPy reference: NumpyBackend.pointwise_loss.
#include "common.cuh"

template <typename T, int LOSS>
__global__ void pointwise_loss(const T* __restrict__ z, const T* __restrict__ y,
                               T* __restrict__ delta, double* __restrict__ loss,
                               long long n, T scale) {
    double acc = 0.0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T zi = z[i];
        const T yi = y[i];
        if (LOSS == 0) {
            const T d = zi - yi;
            acc += 0.5 * (double)(d * d);
            delta[i] = scale * d;
        } else if (LOSS == 1) {
            const T s = gpubp_sigmoid(zi);
            const T d = s - yi;
            acc += 0.5 * (double)(d * d);
            delta[i] = scale * d * s * (T(1) - s);
        } else {
            const T s = gpubp_sigmoid(zi);
            const T absz = zi >= T(0) ? zi : -zi;
            acc += (double)((zi > T(0) ? zi : T(0)) - zi * yi + gpubp_log1p(gpubp_exp(-absz)));
            delta[i] = scale * (s - yi);
        }
    }
    gpubp_block_sum_into(acc, loss);
}

template __global__ void pointwise_loss<float, 0>(const float*, const float*, float*, double*, long long, float);
template __global__ void pointwise_loss<float, 1>(const float*, const float*, float*, double*, long long, float);
template __global__ void pointwise_loss<float, 2>(const float*, const float*, float*, double*, long long, float);
template __global__ void pointwise_loss<double, 0>(const double*, const double*, double*, double*, long long, double);
template __global__ void pointwise_loss<double, 1>(const double*, const double*, double*, double*, long long, double);
template __global__ void pointwise_loss<double, 2>(const double*, const double*, double*, double*, long long, double);
