// The batch gather of an epoch, reading its place from the device, so that a
// step replayed from a CUDA graph takes the next batch without the host:
//
//   gather_rows:    out[i, j] = src[order[*offset + i], j]    i < m, j < cols
//   advance_offset: *offset += m                               (one thread)
//
// order is the epoch's permutation (int64), offset an int64 counter set to 0
// at the start of the epoch; src is float, double (inputs, one-hot targets) or
// int (class labels, cols = 1).
// T = gpubp_row_pack moves rows 16 bytes at a time, whatever their element
// type: the CuPy backend takes it for rows whose bytes are a multiple of 16,
// with src and out 16-byte aligned (cols then counts packs).
// NumPy reference: NumpyBackend.gather_rows and NumpyBackend.advance_offset.
#include "common.cuh"
// A 2-D grid: threadIdx.x/blockIdx.x stride over the columns, threadIdx.y/
// blockIdx.y over the rows, so no thread divides by cols.
template <typename T>
__global__ void gather_rows(const T* __restrict__ src, const long long* __restrict__ order,
                            const long long* __restrict__ offset, T* __restrict__ out,
                            int m, int cols) {
    const long long base = *offset;
    for (int i = blockIdx.y * blockDim.y + threadIdx.y; i < m; i += gridDim.y * blockDim.y) {
        const T* row = src + order[base + i] * cols;
        T* dst = out + (long long)i * cols;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < cols; j += gridDim.x * blockDim.x) {
            dst[j] = row[j];
        }
    }
}

extern "C" __global__ void advance_offset(long long* offset, long long m) {
    if (blockIdx.x == 0 && threadIdx.x == 0) *offset += m;
}

typedef gpubp_pack<float> gpubp_row_pack;   // 16 bytes of any row

template __global__ void gather_rows<float>(const float*, const long long*, const long long*, float*, int, int);
template __global__ void gather_rows<double>(const double*, const long long*, const long long*, double*, int, int);
template __global__ void gather_rows<int>(const int*, const long long*, const long long*, int*, int, int);
template __global__ void gather_rows<gpubp_row_pack>(const gpubp_row_pack*, const long long*, const long long*,
                                                        gpubp_row_pack*, int, int);
