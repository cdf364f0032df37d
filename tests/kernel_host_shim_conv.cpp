// Host build of kernels/conv_kernels.cu for tests/test_kernels_host.py.
//
// Build: g++ -std=c++17 -O1 -shared -fPIC -I<repo>/kernels kernel_host_shim_conv.cpp
// As kernel_host_shim.cpp: every wrapper takes the launch shape (grid, block)
// first and then exactly the kernel's arguments, and runs the kernel serially
// over that grid.

#include "kernel_host_shim.h"

#ifndef SN_CONV_KERNEL_SOURCE
#define SN_CONV_KERNEL_SOURCE "conv_kernels.cu"
#endif
#include SN_CONV_KERNEL_SOURCE

#define SN_CONV_ARGS n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo
#define SN_POOL_ARGS planes, h, w, kh, kw, sh, sw, ho, wo

#define SN_WRAP_CONV_T(T, S)                                                   \
    extern "C" void sn_conv_im2col_##S(unsigned g, unsigned b, const T* X, T* cols, \
                                       SN_CONV_PARAMS) {                      \
        sn_launch(g, b, [&] { conv_im2col<T>(X, cols, SN_CONV_ARGS); });       \
    }                                                                          \
    extern "C" void sn_conv_col2im_##S(unsigned g, unsigned b, const T* dcols, T* dX, \
                                       SN_CONV_PARAMS) {                      \
        sn_launch(g, b, [&] { conv_col2im<T>(dcols, dX, SN_CONV_ARGS); });     \
    }                                                                          \
    extern "C" void sn_conv_bias_act_##S(unsigned g, unsigned b, const T* Z, const T* bias, \
                                         T* Y, int n, int o, long long p, int act, T alpha) { \
        sn_launch(g, b, [&] { conv_bias_act<T>(Z, bias, Y, n, o, p, act, alpha); }); \
    }                                                                          \
    extern "C" void sn_conv_act_backward_##S(unsigned g, unsigned b, const T* dY, const T* Y, \
                                             T* dZ, int n, int o, long long p, int act, \
                                             T alpha) {                        \
        sn_launch(g, b, [&] { conv_act_backward<T>(dY, Y, dZ, n, o, p, act, alpha); }); \
    }                                                                          \
    extern "C" void sn_conv_row_sums_##S(unsigned g, unsigned b, const T* A, T* partial, \
                                         int n_rows, long long n_cols, long long chunk) { \
        sn_launch(g, b, [&] { conv_row_sums<T>(A, partial, n_rows, n_cols, chunk); }); \
    }                                                                          \
    extern "C" void sn_avgpool_forward_##S(unsigned g, unsigned b, const T* X, T* Y, \
                                           SN_POOL_PARAMS) {                  \
        sn_launch(g, b, [&] { avgpool_forward<T>(X, Y, SN_POOL_ARGS); });      \
    }                                                                          \
    extern "C" void sn_avgpool_backward_##S(unsigned g, unsigned b, const T* dY, T* dX, \
                                            SN_POOL_PARAMS) {                 \
        sn_launch(g, b, [&] { avgpool_backward<T>(dY, dX, SN_POOL_ARGS); });   \
    }                                                                          \
    extern "C" void sn_bn2d_partial_stats_##S(unsigned g, unsigned b, const T* X, double* psum, \
                                              double* psq, int n, int c, long long l, \
                                              int n_chunk) {                   \
        sn_launch(g, b, [&] { bn2d_partial_stats<T>(X, psum, psq, n, c, l, n_chunk); }); \
    }                                                                          \
    extern "C" void sn_bn2d_stats_##S(unsigned g, unsigned b, const T* X, const double* psum, \
                                      const double* psq, T* mean, T* var, T* inv_std, int c, \
                                      long long l, int chunks, long long count, T eps) { \
        sn_launch(g, b, [&] {                                                  \
            bn2d_stats<T>(X, psum, psq, mean, var, inv_std, c, l, chunks, count, eps); \
        });                                                                    \
    }                                                                          \
    extern "C" void sn_bn2d_apply_##S(unsigned g, unsigned b, const T* X, const T* mean, \
                                      const T* inv_std, const T* gamma, const T* beta, \
                                      T* xhat, T* Y, int c, long long l, long long total) { \
        sn_launch(g, b, [&] {                                                  \
            bn2d_apply<T>(X, mean, inv_std, gamma, beta, xhat, Y, c, l, total); \
        });                                                                    \
    }                                                                          \
    extern "C" void sn_bn2d_partial_grads_##S(unsigned g, unsigned b, const T* dY, \
                                              const T* xhat, double* psum, double* pdot, \
                                              int n, int c, long long l, int n_chunk) { \
        sn_launch(g, b, [&] { bn2d_partial_grads<T>(dY, xhat, psum, pdot, n, c, l, n_chunk); }); \
    }                                                                          \
    extern "C" void sn_bn2d_grad_sums_##S(unsigned g, unsigned b, const double* psum, \
                                          const double* pdot, T* dgamma, T* dbeta, int c, \
                                          long long l, int chunks) {           \
        sn_launch(g, b, [&] { bn2d_grad_sums<T>(psum, pdot, dgamma, dbeta, c, l, chunks); }); \
    }                                                                          \
    extern "C" void sn_bn2d_backward_apply_##S(unsigned g, unsigned b, const T* dY,  \
                                               const T* xhat, const T* gamma,  \
                                               const T* inv_std, const T* dgamma, \
                                               const T* dbeta, T* dX, int c, long long l, \
                                               long long total, T m) {         \
        sn_launch(g, b, [&] {                                                  \
            bn2d_backward_apply<T>(dY, xhat, gamma, inv_std, dgamma, dbeta, dX, c, l, \
                                   total, m);                                  \
        });                                                                    \
    }

#define SN_WRAP_CONV_TI(T, S, I, IS)                                           \
    extern "C" void sn_maxpool_forward_##S##_##IS(unsigned g, unsigned b, const T* X, T* Y, \
                                                  I* idx, SN_POOL_PARAMS) {   \
        sn_launch(g, b, [&] { maxpool_forward<T, I>(X, Y, idx, SN_POOL_ARGS); }); \
    }                                                                          \
    extern "C" void sn_maxpool_backward_##S##_##IS(unsigned g, unsigned b, const T* dY, \
                                                   const I* idx, T* dX, SN_POOL_PARAMS) { \
        sn_launch(g, b, [&] { maxpool_backward<T, I>(dY, idx, dX, SN_POOL_ARGS); }); \
    }

SN_WRAP_CONV_T(float, f32)
SN_WRAP_CONV_T(double, f64)
SN_WRAP_CONV_TI(float, f32, unsigned char, u8)
SN_WRAP_CONV_TI(float, f32, int, i32)
SN_WRAP_CONV_TI(double, f64, unsigned char, u8)
SN_WRAP_CONV_TI(double, f64, int, i32)
