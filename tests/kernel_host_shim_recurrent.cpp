// Host build of kernels/recurrent_kernels.cu for tests/test_kernels_host.py and
// tests/test_recurrent_kernels.py.
//
// Build: g++ -std=c++17 -O1 -shared -fPIC -I<repo>/kernels kernel_host_shim_recurrent.cpp
// As kernel_host_shim.cpp: every wrapper takes the launch shape (grid, block)
// first and then exactly the kernel's arguments, and runs the kernel serially
// over that grid.

#include "kernel_host_shim.h"

#ifndef SN_RECURRENT_KERNEL_SOURCE
#define SN_RECURRENT_KERNEL_SOURCE "recurrent_kernels.cu"
#endif
#include SN_RECURRENT_KERNEL_SOURCE

#define SN_WRAP_RECURRENT_T(T, S)                                              \
    extern "C" void sn_lstm_cell_forward_##S(unsigned g, unsigned b, const T* XW, const T* Z, \
                                             const T* c_prev, T* gates, T* c, T* tanh_c, \
                                             T* h, T* Hout, int n, int steps, int hid, int t, \
                                             int out_steps, int t_out) {       \
        sn_launch(g, b, [&] {                                                  \
            lstm_cell_forward<T>(XW, Z, c_prev, gates, c, tanh_c, h, Hout, n, steps, hid, t, \
                                 out_steps, t_out);                            \
        });                                                                    \
    }                                                                          \
    extern "C" void sn_lstm_cell_backward_##S(unsigned g, unsigned b, const T* dH, int dh_steps, \
                                              int t_in, const T* dh_rec, T* dc, const T* gates, \
                                              const T* c_prev, const T* tanh_c, T* dZ, T* dXW, \
                                              T* dh_out, int n, int steps, int hid, int t) { \
        sn_launch(g, b, [&] {                                                  \
            lstm_cell_backward<T>(dH, dh_steps, t_in, dh_rec, dc, gates, c_prev, tanh_c, dZ, \
                                  dXW, dh_out, n, steps, hid, t);              \
        });                                                                    \
    }                                                                          \
    extern "C" void sn_gru_cell_forward_##S(unsigned g, unsigned b, const T* XW, const T* Z, \
                                            const T* bU, const T* h_prev, T* gates, T* hUn, \
                                            T* h, T* Hout, int n, int steps, int hid, int t, \
                                            int out_steps, int t_out) {        \
        sn_launch(g, b, [&] {                                                  \
            gru_cell_forward<T>(XW, Z, bU, h_prev, gates, hUn, h, Hout, n, steps, hid, t, \
                                out_steps, t_out);                             \
        });                                                                    \
    }                                                                          \
    extern "C" void sn_gru_cell_backward_##S(unsigned g, unsigned b, const T* dH, int dh_steps, \
                                             int t_in, const T* dh_rec, T* carry, const T* gates, \
                                             const T* hUn, const T* h_prev, T* dHU, T* dXW, \
                                             T* dh_out, int n, int steps, int hid, int t) { \
        sn_launch(g, b, [&] {                                                  \
            gru_cell_backward<T>(dH, dh_steps, t_in, dh_rec, carry, gates, hUn, h_prev, dHU, \
                                 dXW, dh_out, n, steps, hid, t);               \
        });                                                                    \
    }                                                                          \
    extern "C" void sn_rnn_cell_forward_##S(unsigned g, unsigned b, const T* XW, const T* Z, \
                                            T* h, T* Hout, int n, int steps, int hid, int t, \
                                            int out_steps, int t_out, int act, T alpha) { \
        sn_launch(g, b, [&] {                                                  \
            rnn_cell_forward<T>(XW, Z, h, Hout, n, steps, hid, t, out_steps, t_out, act, \
                                alpha);                                        \
        });                                                                    \
    }                                                                          \
    extern "C" void sn_rnn_cell_backward_##S(unsigned g, unsigned b, const T* dH, int dh_steps, \
                                             int t_in, const T* dh_rec, const T* h, T* dZ, \
                                             T* dXW, T* dh_out, int n, int steps, int hid, \
                                             int t, int act, T alpha) {        \
        sn_launch(g, b, [&] {                                                  \
            rnn_cell_backward<T>(dH, dh_steps, t_in, dh_rec, h, dZ, dXW, dh_out, n, steps, \
                                 hid, t, act, alpha);                          \
        });                                                                    \
    }

SN_WRAP_RECURRENT_T(float, f32)
SN_WRAP_RECURRENT_T(double, f64)
