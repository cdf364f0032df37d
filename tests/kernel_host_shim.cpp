// Host build of kernels/scratchnet_kernels.cu for tests/test_kernels_host.py.
//
// Build: g++ -std=c++17 -O1 -shared -fPIC -I<repo>/kernels kernel_host_shim.cpp
// Every wrapper takes the launch shape (grid, block) first and then exactly
// the kernel's arguments, and runs the kernel serially over that grid.

#include "kernel_host_shim.h"

#ifndef SN_KERNEL_SOURCE
#define SN_KERNEL_SOURCE "scratchnet_kernels.cu"
#endif
#include SN_KERNEL_SOURCE

#define SN_WRAP_T(T, S)                                                        \
    extern "C" void sn_bias_act_##S(unsigned g, unsigned b, const T* Z, const T* bias, \
                                    T* out, int n_rows, int n_cols, int act, T alpha) { \
        sn_launch(g, b, [&] { bias_act<T>(Z, bias, out, n_rows, n_cols, act, alpha); }); \
    }                                                                          \
    extern "C" void sn_act_backward_##S(unsigned g, unsigned b, const T* dY, const T* Y, \
                                        T* dZ, long long n, int act, T alpha) { \
        sn_launch(g, b, [&] { act_backward<T>(dY, Y, dZ, n, act, alpha); });   \
    }                                                                          \
    extern "C" void sn_act_backward_bias_##S(unsigned g, unsigned b, const T* dY, \
                                             const T* Y, T* dZ, T* partial, int n_rows, \
                                             int n_cols, int rows_per_chunk, int act, \
                                             T alpha) {                        \
        sn_launch(g, b, [&] {                                                  \
            act_backward_bias<T>(dY, Y, dZ, partial, n_rows, n_cols, rows_per_chunk, \
                                 act, alpha);                                  \
        });                                                                    \
    }                                                                          \
    extern "C" void sn_column_sum_##S(unsigned g, unsigned b, const T* A, T* out, \
                                      int n_rows, int n_cols) {                \
        sn_launch(g, b, [&] { column_sum<T>(A, out, n_rows, n_cols); });       \
    }                                                                          \
    extern "C" void sn_sigmoid_bce_##S(unsigned g, unsigned b, const T* z, const T* t, \
                                       T* loss, T* grad, long long n, T inv_n) { \
        sn_launch(g, b, [&] { sigmoid_bce<T>(z, t, loss, grad, n, inv_n); });  \
    }                                                                          \
    extern "C" void sn_sgd_momentum_##S(unsigned g, unsigned b, T* param, const T* grad, \
                                        T* velocity, long long n, T lr, T momentum, \
                                        int nesterov, T weight_decay) {        \
        sn_launch(g, b, [&] {                                                  \
            sgd_momentum<T>(param, grad, velocity, n, lr, momentum, nesterov,  \
                            weight_decay);                                     \
        });                                                                    \
    }                                                                          \
    extern "C" void sn_adam_##S(unsigned g, unsigned b, T* param, const T* grad, T* m, \
                                T* v, long long n, T step_size, T beta1,       \
                                T one_minus_beta1, T beta2, T one_minus_beta2, \
                                T bc2_sqrt, T eps, T weight_decay) {           \
        sn_launch(g, b, [&] {                                                  \
            adam<T>(param, grad, m, v, n, step_size, beta1, one_minus_beta1, beta2, \
                    one_minus_beta2, bc2_sqrt, eps, weight_decay);             \
        });                                                                    \
    }                                                                          \
    extern "C" void sn_adamw_##S(unsigned g, unsigned b, T* param, const T* grad, T* m, \
                                 T* v, long long n, T decay, T step_size, T beta1, \
                                 T one_minus_beta1, T beta2, T one_minus_beta2, \
                                 T bc2_sqrt, T eps) {                          \
        sn_launch(g, b, [&] {                                                  \
            adamw<T>(param, grad, m, v, n, decay, step_size, beta1, one_minus_beta1, \
                     beta2, one_minus_beta2, bc2_sqrt, eps);                   \
        });                                                                    \
    }                                                                          \
    extern "C" void sn_rmsprop_##S(unsigned g, unsigned b, T* param, const T* grad, \
                                   T* square_avg, T* grad_avg, T* buf, long long n, \
                                   T lr, T alpha, T one_minus_alpha, T eps,    \
                                   T weight_decay, T momentum) {               \
        sn_launch(g, b, [&] {                                                  \
            rmsprop<T>(param, grad, square_avg, grad_avg, buf, n, lr, alpha,   \
                       one_minus_alpha, eps, weight_decay, momentum);          \
        });                                                                    \
    }                                                                          \
    extern "C" void sn_adagrad_##S(unsigned g, unsigned b, T* param, const T* grad, \
                                   T* state_sum, long long n, T clr, T eps,    \
                                   T weight_decay) {                           \
        sn_launch(g, b, [&] { adagrad<T>(param, grad, state_sum, n, clr, eps, weight_decay); }); \
    }                                                                          \
    extern "C" void sn_dropout_##S(unsigned g, unsigned b, const T* X, const float* u, \
                                   T* out, T* mask, long long n, float p, T scale) { \
        sn_launch(g, b, [&] { dropout<T>(X, u, out, mask, n, p, scale); });    \
    }

#define SN_WRAP_TL(T, S, L, LS)                                                \
    extern "C" void sn_softmax_xent_rows_##S##_##LS(unsigned g, unsigned b,     \
                                                    const T* logits, const L* labels, \
                                                    T* stats, T* loss, int n_rows, \
                                                    int n_cols) {              \
        sn_launch(g, b, [&] {                                                  \
            softmax_xent_rows<T, L>(logits, labels, stats, loss, n_rows, n_cols); \
        });                                                                    \
    }                                                                          \
    extern "C" void sn_softmax_xent_grad_##S##_##LS(unsigned g, unsigned b,     \
                                                    const T* logits, const L* labels, \
                                                    const T* stats, T* grad, int n_rows, \
                                                    int n_cols) {              \
        sn_launch(g, b, [&] {                                                  \
            softmax_xent_grad<T, L>(logits, labels, stats, grad, n_rows, n_cols); \
        });                                                                    \
    }

SN_WRAP_T(float, f32)
SN_WRAP_T(double, f64)
SN_WRAP_TL(float, f32, int, i32)
SN_WRAP_TL(float, f32, long long, i64)
SN_WRAP_TL(double, f64, int, i32)
SN_WRAP_TL(double, f64, long long, i64)

// The index helper on its own, so its 64-bit branch (i >= 2^32) can be checked
// without arrays of that size.
extern "C" void sn_test_divmod(long long i, int d, long long* q, int* r) {
    sn_divmod(i, d, *q, *r);
}
