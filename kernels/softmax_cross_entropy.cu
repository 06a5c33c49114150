// Softmax output fused with the cross-entropy loss and its delta, one warp per
// row, straight from the logits z (rows, k):
//
//   lse_i   = max_j z_ij + log sum_j exp(z_ij - max_j z_ij)     (log-sum-exp)
//   p_ij    = exp(z_ij - lse_i)                                  (softmax)
//   loss   += sum_i sum_j y_ij (lse_i - z_ij)   = -sum y log softmax(z)
//   delta_ij = scale * (p_ij * sum_j y_ij - y_ij)                (dLoss/dz)
//
// delta is p - y for one-hot rows; scale is 1/m for a batch mean. The loss is
// summed unscaled, in double, into *loss with one atomic per block.
//
// Variants (template TARGET):
//   0  dense targets y (rows, k): one-hot or any non-negative weights
//   1  integer labels (int32, rows): y_ij = [j == label_i]
//   2  forward only: delta <- p, y and loss unused (inference)
// NumPy reference: NumpyBackend.softmax_cross_entropy and NumpyBackend.softmax.
#include "common.cuh"

template <typename T, int TARGET>
__global__ void softmax_cross_entropy(const T* __restrict__ z, const T* __restrict__ y,
                                      const int* __restrict__ labels, T* __restrict__ delta,
                                      double* __restrict__ loss, int rows, int k, T scale) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    double row_loss = 0.0;
    if (row < rows) {
        const T* zr = z + (long long)row * k;
        T* dr = delta + (long long)row * k;
        T zmax = zr[0];
        for (int j = lane; j < k; j += 32) zmax = zr[j] > zmax ? zr[j] : zmax;
        for (int offset = 16; offset > 0; offset >>= 1) {
            T other = __shfl_xor_sync(0xffffffffu, zmax, offset);
            zmax = other > zmax ? other : zmax;
        }
        T sum = T(0);
        for (int j = lane; j < k; j += 32) sum += gpubp_exp(zr[j] - zmax);
        for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
        const T lse = zmax + gpubp_log(sum);
        if (TARGET == 2) {
            for (int j = lane; j < k; j += 32) dr[j] = gpubp_exp(zr[j] - lse);
        } else if (TARGET == 1) {
            const int label = labels[row];
            for (int j = lane; j < k; j += 32) {
                const T p = gpubp_exp(zr[j] - lse);
                dr[j] = scale * (j == label ? p - T(1) : p);
            }
            if (lane == 0) row_loss = (double)(lse - zr[label]);
        } else {
            const T* yr = y + (long long)row * k;
            T ysum = T(0);
            for (int j = lane; j < k; j += 32) {
                ysum += yr[j];
                row_loss += (double)(yr[j] * (lse - zr[j]));
            }
            for (int offset = 16; offset > 0; offset >>= 1) ysum += __shfl_xor_sync(0xffffffffu, ysum, offset);
            for (int j = lane; j < k; j += 32) {
                dr[j] = scale * (gpubp_exp(zr[j] - lse) * ysum - yr[j]);
            }
        }
    }
    if (TARGET != 2) gpubp_block_sum_into(row_loss, loss);
}

template __global__ void softmax_cross_entropy<float, 0>(const float*, const float*, const int*, float*, double*, int, int, float);
template __global__ void softmax_cross_entropy<float, 1>(const float*, const float*, const int*, float*, double*, int, int, float);
template __global__ void softmax_cross_entropy<float, 2>(const float*, const float*, const int*, float*, double*, int, int, float);
template __global__ void softmax_cross_entropy<double, 0>(const double*, const double*, const int*, double*, double*, int, int, double);
template __global__ void softmax_cross_entropy<double, 1>(const double*, const double*, const int*, double*, double*, int, int, double);
template __global__ void softmax_cross_entropy<double, 2>(const double*, const double*, const int*, double*, double*, int, int, double);
