// Bias gradient: the column sums of the layer's delta (rows, cols), C-order,
//
//   db[j] = sum_i delta[i, j]
//
// A (32, 8) block covers 32 adjacent columns, so each warp reads 128
// contiguous bytes of a row; its 8 row lanes stride down the rows of the
// block's row range and are summed in shared memory. With one block row
// (gridDim.y == 1) the result is stored; with several, each block adds its
// partial sum atomically and the caller zeroes db first (tall matrices, e.g.
// 262144 x 64, need many blocks to fill the chip; x.sum(axis=0) is slow there).
// NumPy reference: NumpyBackend.bias_grad.
#include "common.cuh"

template <typename T>
__global__ void bias_grad(const T* __restrict__ delta, T* __restrict__ db, int rows, int cols) {
    __shared__ T partial[8][33];
    const int col = blockIdx.x * 32 + threadIdx.x;
    T acc = T(0);
    if (col < cols) {
        for (long long i = (long long)blockIdx.y * 8 + threadIdx.y; i < rows; i += (long long)gridDim.y * 8) {
            acc += delta[i * cols + col];
        }
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        T total = T(0);
        for (int r = 0; r < 8; ++r) total += partial[r][threadIdx.x];
        if (gridDim.y == 1) {
            db[col] = total;
        } else {
            atomicAdd(db + col, total);
        }
    }
}

template __global__ void bias_grad<float>(const float*, float*, int, int);
template __global__ void bias_grad<double>(const double*, double*, int, int);
