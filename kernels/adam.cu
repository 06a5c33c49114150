// Adam and AdamW over the flat parameter buffer, PyTorch's rule, step t >= 1:
//
//   p     *= decay                        AdamW: decay = 1 - lr * weight_decay; Adam: 1
//   m      = m + (1 - beta1) (g - m)      (torch's lerp)
//   v      = beta2 v + (1 - beta2) g^2
//   p     -= step_size * m / (sqrt(v) / bc2_sqrt + eps)
//
// with step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t),
// computed on the host in double and passed in the parameter dtype.
// NumPy reference: NumpyBackend.adam.
#include "common.cuh"

template <typename T>
__global__ void adam(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                     T* __restrict__ v, long long n, T decay, T beta1, T beta2,
                     T step_size, T bc2_sqrt, T eps) {
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

template __global__ void adam<float>(float*, const float*, float*, float*, long long,
                                     float, float, float, float, float, float);
template __global__ void adam<double>(double*, const double*, double*, double*, long long,
                                      double, double, double, double, double, double);
