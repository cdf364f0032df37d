// The definitions every kernels/*.cu file starts with (each file is compiled
// on its own): the grid-stride loop, the sn_* math overloads that the kernels
// and activations.cuh call, and sn_divmod. Like activations.cuh it is inlined
// by cupy_ops for NVRTC, which reads no files.

// Grid-stride loop over [0, n): correct for any grid and block size.
#define SN_GRID_STRIDE(i, n)                                                   \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;       \
         i < (long long)(n); i += (long long)blockDim.x * gridDim.x)

// ---------------------------------------------------------------- math
__device__ __forceinline__ float sn_exp(float x) { return expf(x); }
__device__ __forceinline__ double sn_exp(double x) { return exp(x); }
__device__ __forceinline__ float sn_log(float x) { return logf(x); }
__device__ __forceinline__ double sn_log(double x) { return log(x); }
__device__ __forceinline__ float sn_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double sn_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float sn_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double sn_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float sn_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double sn_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float sn_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double sn_abs(double x) { return fabs(x); }

// q = i / d, r = i % d for 0 <= i, 0 < d: in 32 bits whenever i fits, since
// 64-bit division is emulated on GPUs and costs more than the memory traffic.
__device__ __forceinline__ void sn_divmod(long long i, int d, long long& q, int& r) {
    if (i <= 0xffffffffLL) {
        const unsigned int ui = (unsigned int)i, ud = (unsigned int)d;
        q = ui / ud;
        r = (int)(ui - (unsigned int)q * ud);
    } else {
        q = i / d;
        r = (int)(i - q * d);
    }
}
