// SGD over the flat parameter buffer, PyTorch's rule (dampening 0, no weight
// decay: gpubp's L2 is added to the gradient before the step):
//
//   variant 0 plain      p -= lr * g
//   variant 1 momentum   buf = momentum * buf + g;  p -= lr * buf
//   variant 2 nesterov   buf = momentum * buf + g;  p -= lr * (g + momentum * buf)
//
// buf starts at zero, which gives PyTorch's first step buf = g.
// NumPy reference: NumpyBackend.sgd.
template <typename T, int VARIANT>
__global__ void sgd(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf,
                    long long n, T lr, T momentum) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T gi = g[i];
        if (VARIANT == 0) {
            p[i] -= lr * gi;
        } else {
            const T b = momentum * buf[i] + gi;
            buf[i] = b;
            p[i] -= lr * (VARIANT == 2 ? gi + momentum * b : b);
        }
    }
}

template __global__ void sgd<float, 0>(float*, const float*, float*, long long, float, float);
template __global__ void sgd<float, 1>(float*, const float*, float*, long long, float, float);
template __global__ void sgd<float, 2>(float*, const float*, float*, long long, float, float);
template __global__ void sgd<double, 0>(double*, const double*, double*, long long, double, double);
template __global__ void sgd<double, 1>(double*, const double*, double*, long long, double, double);
template __global__ void sgd<double, 2>(double*, const double*, double*, long long, double, double);
