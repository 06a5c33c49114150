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
// pointwise_loss_gathered is the same with the targets read in place from the
// whole data set, y = Y[order[*offset + i], :] for row i (the batch gather of
// gather_rows.cu, fused: the trainer's step then never copies Y's rows).
// NumPy reference: NumpyBackend.pointwise_loss.
#include "common.cuh"

// One element: returns its delta and adds its loss to acc.
template <typename T, int LOSS>
__device__ __forceinline__ T pointwise_element(T zi, T yi, T scale, double& acc) {
    if (LOSS == 0) {
        const T d = zi - yi;
        acc += 0.5 * (double)(d * d);
        return scale * d;
    } else if (LOSS == 1) {
        const T s = gpubp_sigmoid(zi);
        const T d = s - yi;
        acc += 0.5 * (double)(d * d);
        return scale * d * s * (T(1) - s);
    } else {
        const T s = gpubp_sigmoid(zi);
        const T absz = zi >= T(0) ? zi : -zi;
        acc += (double)((zi > T(0) ? zi : T(0)) - zi * yi + gpubp_log1p(gpubp_exp(-absz)));
        return scale * (s - yi);
    }
}

template <typename T, int LOSS>
__global__ void pointwise_loss(const T* __restrict__ z, const T* __restrict__ y,
                               T* __restrict__ delta, double* __restrict__ loss,
                               long long n, T scale) {
    double acc = 0.0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        delta[i] = pointwise_element<T, LOSS>(z[i], y[i], scale, acc);
    }
    gpubp_block_sum_into(acc, loss);
}

template <typename T, int LOSS>
__global__ void pointwise_loss_gathered(const T* __restrict__ z, const T* __restrict__ Y,
                                        const long long* __restrict__ order,
                                        const long long* __restrict__ offset,
                                        T* __restrict__ delta, double* __restrict__ loss,
                                        long long n, int cols, T scale) {
    double acc = 0.0;
    const long long base = *offset;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    // Row r = i / cols and column j = i mod cols, kept up to date without a division.
    long long r = i / cols;
    int j = (int)(i % cols);
    const long long dr = stride / cols;
    const int dj = (int)(stride % cols);
    for (; i < n; i += stride) {
        delta[i] = pointwise_element<T, LOSS>(z[i], Y[order[base + r] * cols + j], scale, acc);
        r += dr;
        j += dj;
        if (j >= cols) {
            j -= cols;
            ++r;
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
template __global__ void pointwise_loss_gathered<float, 0>(const float*, const float*, const long long*, const long long*, float*, double*, long long, int, float);
template __global__ void pointwise_loss_gathered<float, 1>(const float*, const float*, const long long*, const long long*, float*, double*, long long, int, float);
template __global__ void pointwise_loss_gathered<float, 2>(const float*, const float*, const long long*, const long long*, float*, double*, long long, int, float);
template __global__ void pointwise_loss_gathered<double, 0>(const double*, const double*, const long long*, const long long*, double*, double*, long long, int, double);
template __global__ void pointwise_loss_gathered<double, 1>(const double*, const double*, const long long*, const long long*, double*, double*, long long, int, double);
template __global__ void pointwise_loss_gathered<double, 2>(const double*, const double*, const long long*, const long long*, double*, double*, long long, int, double);
