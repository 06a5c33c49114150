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
// adam_packed is the same update, bit for bit, a 16-byte pack of each array
// at a time (see gpubp_pack; the last n mod P elements one by one), where p,
// g, m and v are 16-byte aligned.
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

// One parameter's update (every Adam kernel's arithmetic, in one place).
template <typename T>
__device__ __forceinline__ void adam_element(T& p, T g, T& m, T& v, T step_size, T bc2_sqrt,
                                             T decay, T beta1, T beta2, T eps) {
    m = m + (T(1) - beta1) * (g - m);
    v = beta2 * v + (T(1) - beta2) * g * g;
    p = p * decay - step_size * m / (gpubp_sqrt(v) / bc2_sqrt + eps);
}

template <typename T>
__global__ void adam(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                     T* __restrict__ v, const double* __restrict__ coef, long long n,
                     T decay, T beta1, T beta2, T eps) {
    const T step_size = (T)coef[0];
    const T bc2_sqrt = (T)coef[1];
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        adam_element(p[i], g[i], m[i], v[i], step_size, bc2_sqrt, decay, beta1, beta2, eps);
    }
}

template <typename T>
__global__ void adam_packed(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                            T* __restrict__ v, const double* __restrict__ coef, long long n,
                            T decay, T beta1, T beta2, T eps) {
    constexpr int P = gpubp_pack<T>::n;
    const T step_size = (T)coef[0];
    const T bc2_sqrt = (T)coef[1];
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n_packs = n / P;
    for (long long i = first; i < n_packs; i += stride) {
        gpubp_pack<T> pi = gpubp_load_pack(p + i * P), mi = gpubp_load_pack(m + i * P),
                      vi = gpubp_load_pack(v + i * P);
        const gpubp_pack<T> gi = gpubp_load_pack(g + i * P);
#pragma unroll
        for (int k = 0; k < P; ++k) {
            adam_element(pi.v[k], gi.v[k], mi.v[k], vi.v[k], step_size, bc2_sqrt, decay, beta1, beta2, eps);
        }
        gpubp_store_pack(m + i * P, mi);
        gpubp_store_pack(v + i * P, vi);
        gpubp_store_pack(p + i * P, pi);
    }
    for (long long i = n_packs * P + first; i < n; i += stride) {
        adam_element(p[i], g[i], m[i], v[i], step_size, bc2_sqrt, decay, beta1, beta2, eps);
    }
}

template __global__ void adam<float>(float*, const float*, float*, float*, const double*, long long,
                                     float, float, float, float);
template __global__ void adam<double>(double*, const double*, double*, double*, const double*,
                                      long long, double, double, double, double);
template __global__ void adam_packed<float>(float*, const float*, float*, float*, const double*,
                                            long long, float, float, float, float);
template __global__ void adam_packed<double>(double*, const double*, double*, double*, const double*,
                                             long long, double, double, double, double);
