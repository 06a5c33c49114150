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
//
// pointwise_loss_bias_grad<T, LOSS, GATHERED> is the whole output layer after
// its product z = A W (rows, cols), in one pass over wide rows: the bias, the
// loss and delta, and the delta's column sums (the bias gradient),
//
//   zb[i, j]    = z[i, j] + b[j]             (bias_activation.cu, identity)
//   loss       += l(zb[i, j], y[i, j])        (the variants above; y gathered
//   delta[i, j] = scale * dl/dzb[i, j]         from Y where GATHERED)
//   partial[r, j] = sum of delta[i, j] over block row r's rows
//
// laid out as bias_grad.cu's bias_grad_packed (a (32, 8) block over 32 packs
// of columns, rows i and i + S in two accumulators, S = 8 gridDim.y), so that
// delta and partial are bit for bit what bias_activation, pointwise_loss and
// bias_grad_packed make one after another on the same grid (the loss to its
// rounding: its blocks add up in another order); bias_grad_finish then makes
// db from partial (with one block row, partial is db). It reads z and y and
// writes delta, 12 bytes per float where the three kernels move 24: the
// logits with their bias are never stored (z keeps the product) and delta is
// not read again for its sums. cols is a multiple of the pack, every operand
// 16-byte aligned (gpubp_pack).
// NumPy reference: NumpyBackend.pointwise_loss, NumpyBackend.loss_bias_grad.
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

template <typename T, int LOSS, bool GATHERED>
__global__ void pointwise_loss_bias_grad(const T* __restrict__ z, const T* __restrict__ b,
                                         const T* __restrict__ y,
                                         const long long* __restrict__ order,
                                         const long long* __restrict__ offset,
                                         T* __restrict__ delta, double* __restrict__ loss,
                                         T* __restrict__ partial, int rows, int cols, T scale) {
    constexpr int P = gpubp_pack<T>::n;
    const int pc = blockIdx.x * 32 + threadIdx.x;            // this thread's pack of columns
    const long long step = (long long)gridDim.y * 8;
    double acc = 0.0;
    gpubp_pack<T> s0, s1;
#pragma unroll
    for (int k = 0; k < P; ++k) s0.v[k] = s1.v[k] = T(0);
    if (pc < cols / P) {
        const long long col = (long long)pc * P;
        const long long base = GATHERED ? *offset : 0;
        const gpubp_pack<T> bj = gpubp_load_pack(b + col);
        long long i = (long long)blockIdx.y * 8 + threadIdx.y;
        for (; i < rows; i += 2 * step) {
            const bool second = i + step < rows;
            const long long at0 = i * cols + col, at1 = (i + step) * cols + col;
            gpubp_pack<T> z0 = gpubp_load_pack(z + at0), z1;
            gpubp_pack<T> y0 = gpubp_load_pack(y + (GATHERED ? order[base + i] : i) * cols + col), y1;
            if (second) {
                z1 = gpubp_load_pack(z + at1);
                y1 = gpubp_load_pack(y + (GATHERED ? order[base + i + step] : i + step) * cols + col);
            }
#pragma unroll
            for (int k = 0; k < P; ++k) z0.v[k] = pointwise_element<T, LOSS>(z0.v[k] + bj.v[k], y0.v[k], scale, acc);
            gpubp_store_pack(delta + at0, z0);
            if (second) {
#pragma unroll
                for (int k = 0; k < P; ++k) z1.v[k] = pointwise_element<T, LOSS>(z1.v[k] + bj.v[k], y1.v[k], scale, acc);
                gpubp_store_pack(delta + at1, z1);
            }
            // delta is a product (scale * ...): a plain += could become an FMA with it,
            // and the sums would then differ from bias_grad_packed's over the stored delta
#pragma unroll
            for (int k = 0; k < P; ++k) {
                s0.v[k] = gpubp_add_rn(s0.v[k], z0.v[k]);
                if (second) s1.v[k] = gpubp_add_rn(s1.v[k], z1.v[k]);
            }
        }
    }
    gpubp_pack_column_partial(s0, s1, pc, partial, cols);
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
template __global__ void pointwise_loss_bias_grad<float, 0, false>(const float*, const float*, const float*, const long long*, const long long*, float*, double*, float*, int, int, float);
template __global__ void pointwise_loss_bias_grad<float, 0, true>(const float*, const float*, const float*, const long long*, const long long*, float*, double*, float*, int, int, float);
template __global__ void pointwise_loss_bias_grad<float, 1, false>(const float*, const float*, const float*, const long long*, const long long*, float*, double*, float*, int, int, float);
template __global__ void pointwise_loss_bias_grad<float, 1, true>(const float*, const float*, const float*, const long long*, const long long*, float*, double*, float*, int, int, float);
template __global__ void pointwise_loss_bias_grad<float, 2, false>(const float*, const float*, const float*, const long long*, const long long*, float*, double*, float*, int, int, float);
template __global__ void pointwise_loss_bias_grad<float, 2, true>(const float*, const float*, const float*, const long long*, const long long*, float*, double*, float*, int, int, float);
template __global__ void pointwise_loss_bias_grad<double, 0, false>(const double*, const double*, const double*, const long long*, const long long*, double*, double*, double*, int, int, double);
template __global__ void pointwise_loss_bias_grad<double, 0, true>(const double*, const double*, const double*, const long long*, const long long*, double*, double*, double*, int, int, double);
template __global__ void pointwise_loss_bias_grad<double, 1, false>(const double*, const double*, const double*, const long long*, const long long*, double*, double*, double*, int, int, double);
template __global__ void pointwise_loss_bias_grad<double, 1, true>(const double*, const double*, const double*, const long long*, const long long*, double*, double*, double*, int, int, double);
template __global__ void pointwise_loss_bias_grad<double, 2, false>(const double*, const double*, const double*, const long long*, const long long*, double*, double*, double*, int, int, double);
template __global__ void pointwise_loss_bias_grad<double, 2, true>(const double*, const double*, const double*, const long long*, const long long*, double*, double*, double*, int, int, double);
