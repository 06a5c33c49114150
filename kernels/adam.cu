// Adam and AdamW over the flat parameter buffer, PyTorch's rule, step t >= 1:
//
//   p     *= decay                        AdamW: decay = 1 - lr * weight_decay; Adam: 1
//   m      = m + (1 - beta1) (g - m)      (torch's lerp)
//   v      = beta2 v + (1 - beta2) g^2
//   p     -= step_size * m / (sqrt(v) / bc2_sqrt + eps)
//
// with step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t).
// The step count lives on the device, so that a step replayed from a CUDA
// graph uses the right t: adam_schedule (one thread) advances t and writes
// coef = {step_size, bc2_sqrt} in double; adam reads them.
// NumPy reference: NumpyBackend.adam.
#include "common.cuh"

extern "C" __global__ void adam_schedule(int* step, double* coef, double lr, double beta1, double beta2) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        const int t = *step + 1;
        *step = t;
        coef[0] = lr / (1.0 - pow(beta1, (double)t));
        coef[1] = sqrt(1.0 - pow(beta2, (double)t));
    }
}

template <typename T>
__global__ void adam(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                     T* __restrict__ v, const double* __restrict__ coef, long long n,
                     T decay, T beta1, T beta2, T eps) {
    const T step_size = (T)coef[0];
    const T bc2_sqrt = (T)coef[1];
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T gi = g[i];
        const T mi = m[i] + (T(1) - beta1) * (gi - m[i]);
        const T vi = beta2 * v[i] + (T(1) - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (gpubp_sqrt(vi) / bc2_sqrt + eps);
    }
}

template __global__ void adam<float>(float*, const float*, float*, float*, const double*, long long,
                                     float, float, float, float);
template __global__ void adam<double>(double*, const double*, double*, double*, const double*,
                                      long long, double, double, double, double);
