// umup's elementwise `Cuda` kernels (ops/cuda/mod.rs), compiled at run time with NVRTC.
//
// No headers: NVRTC needs no include path for this file. f16 data is read and written as its bit
// pattern (`unsigned short`) through the PTX conversions `cuda_fp16.hpp` itself uses, and the
// arithmetic of the f16 kernels runs in f32 with the scale passed as an f32.
//
// Every kernel is a grid-stride loop over `n` elements, so any launch grid covers any `n`.

typedef unsigned long long umup_size;
typedef unsigned short umup_half;

__device__ __forceinline__ float umup_h2f(umup_half h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ umup_half umup_f2h(float f) {
    umup_half h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

#define UMUP_GRID_STRIDE(i, n) \
    for (umup_size i = blockIdx.x * (umup_size)blockDim.x + threadIdx.x; i < (n); \
         i += (umup_size)blockDim.x * gridDim.x)

// acc[i] += s * x[i]: the backward of scale_grad (grad_x += bwd * grad_y) and of the adds.
extern "C" __global__ void umup_axpy_f32(const umup_size n, const float s, const float *x,
                                         float *acc) {
    UMUP_GRID_STRIDE(i, n) { acc[i] += s * x[i]; }
}

extern "C" __global__ void umup_axpy_f64(const umup_size n, const double s, const double *x,
                                         double *acc) {
    UMUP_GRID_STRIDE(i, n) { acc[i] += s * x[i]; }
}

extern "C" __global__ void umup_axpy_f16(const umup_size n, const float s, const umup_half *x,
                                         umup_half *acc) {
    UMUP_GRID_STRIDE(i, n) { acc[i] = umup_f2h(umup_h2f(acc[i]) + s * umup_h2f(x[i])); }
}

// x[i] *= s, in place: a parameter's gradient scaled (gradient clipping).
extern "C" __global__ void umup_scal_f32(const umup_size n, const float s, float *x) {
    UMUP_GRID_STRIDE(i, n) { x[i] *= s; }
}

extern "C" __global__ void umup_scal_f64(const umup_size n, const double s, double *x) {
    UMUP_GRID_STRIDE(i, n) { x[i] *= s; }
}

extern "C" __global__ void umup_scal_f16(const umup_size n, const float s, umup_half *x) {
    UMUP_GRID_STRIDE(i, n) { x[i] = umup_f2h(s * umup_h2f(x[i])); }
}
