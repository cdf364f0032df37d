// Host shim: compile scratchnet's CUDA kernels with a plain C++ compiler.
//
// The kernels in kernels/*.cu are grid-stride loops in which every thread owns
// whole outputs (no shared memory, barriers, shuffles or atomics). Such a
// kernel computes the same thing whether its threads run in parallel or one
// after another, so this header turns the CUDA keywords into nothing, makes
// blockIdx/blockDim/threadIdx/gridDim ordinary thread-local variables, and
// sn_launch() loops over every (block, thread) of a chosen grid. The test
// (tests/test_kernels_host.py) builds kernel_host_shim.cpp, which includes
// this header and then the .cu file itself, into a shared library for ctypes.

#pragma once

#include <math.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct sn_dim3 {
    unsigned int x, y, z;
};

// What the CUDA built-ins read while sn_launch runs a "thread".
static thread_local sn_dim3 gridDim = {1, 1, 1};
static thread_local sn_dim3 blockDim = {1, 1, 1};
static thread_local sn_dim3 blockIdx = {0, 0, 0};
static thread_local sn_dim3 threadIdx = {0, 0, 0};

// Run body() once per thread of a 1-D grid of `grid` blocks of `block`
// threads, in order: the serial equivalent of kernel<<<grid, block>>>(...).
template <typename Body>
void sn_launch(unsigned int grid, unsigned int block, Body body) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned int b = 0; b < grid; ++b) {
        for (unsigned int t = 0; t < block; ++t) {
            blockIdx = {b, 0, 0};
            threadIdx = {t, 0, 0};
            body();
        }
    }
    gridDim = blockDim = {1, 1, 1};
    blockIdx = threadIdx = {0, 0, 0};
}
