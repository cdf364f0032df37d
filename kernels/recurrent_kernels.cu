// scratchnet's CUDA kernels for recurrent networks: one fused cell step of an
// LSTM, a GRU or an Elman RNN, forward and backward, for the whole batch, for
// scratchnet/backends/cupy_ops.py. The recurrent products h_{t-1} U and
// dZ_{t+1} U^T run in cuBLAS through CuPy between the launches (one product
// and one launch per step), and dU is one product after the loop.
//
// Compiled the same three ways as scratchnet_kernels.cu (NVRTC at run time,
// `nvcc --ptx` in tests/test_kernels_nvcc.py, g++ through the host shim in
// tests/test_kernels_host.py), under the same rules: grid-stride loops in
// which each thread owns whole outputs (one thread per (row, unit) of the
// step: it reads that unit's gates and writes its states and gradients), no
// shared memory, barriers, shuffles or atomics, no host headers, 64-bit
// element indices. A pointer that may be null (nothing from a previous step
// at t = 0, nothing from a next step at the last) reads as zeros.
//
// Layouts (C-contiguous), H units, G = 4H (LSTM, gates i, f, g, o), 3H (GRU,
// r, z, n) or H (RNN), PyTorch's orders:
//   batch-major, indexed here: XW, dXW (N, T, G); dH, Hout (N, T_out, H),
//     T_out = T with every step's output, 1 with the last only;
//   time-major, passed as the step's (N, .) slice: the gates after their
//     non-linearities, c_t, tanh(c_t), h_t, the products Z = h_{t-1} U, the
//     step's dZ (what the next product and dU read) and dL/dh_t (for its norm).

// SN_GRID_STRIDE, the sn_* math overloads, sn_divmod.
#include "common.cuh"

// sn_act_sigmoid, sn_act_tanh (the table's formulas), and for the RNN
// sn_activate(z, act, alpha) and sn_act_grad(dy, y, act, alpha).
#include "activations.cuh"

template <typename T>
__device__ __forceinline__ T sn_sigmoid(T z) { return sn_act_sigmoid(z, T(0)); }

// dL/dh_t of element e = (row, j): what the next step sends back (dh_rec, may
// be null) plus the output's gradient at this step (unless t_in < 0).
template <typename T>
__device__ __forceinline__ T sn_step_grad(const T* dh_rec, const T* dH, int dh_steps, int t_in,
                                          long long e, long long row, int j, int hid) {
    T d = dh_rec ? dh_rec[e] : T(0);
    if (t_in >= 0) d += dH[(row * dh_steps + t_in) * hid + j];
    return d;
}

// ---------------------------------------------------------------- LSTM
// Step t: a = XW[:, t] + Z; i, f, o = sigmoid, g = tanh; c = f c_prev + i g;
// h = o tanh(c). Writes gates (N, 4H), c, tanh_c, h (N, H) and, unless t_out
// < 0, Hout[:, t_out].
template <typename T>
__global__ void lstm_cell_forward(const T* XW, const T* Z, const T* c_prev, T* gates, T* c,
                                  T* tanh_c, T* h, T* Hout, int n, int steps, int hid, int t,
                                  int out_steps, int t_out) {
    const long long g4 = 4LL * hid;
    SN_GRID_STRIDE(e, (long long)n * hid) {
        long long row;
        int j;
        sn_divmod(e, hid, row, j);
        const T* x = XW + (row * steps + t) * g4;
        T ai = x[j], af = x[hid + j], ag = x[2 * hid + j], ao = x[3 * hid + j];
        if (Z) {
            const T* z = Z + row * g4;
            ai += z[j];
            af += z[hid + j];
            ag += z[2 * hid + j];
            ao += z[3 * hid + j];
        }
        const T i = sn_sigmoid(ai), f = sn_sigmoid(af), g = sn_tanh(ag), o = sn_sigmoid(ao);
        const T cc = f * (c_prev ? c_prev[e] : T(0)) + i * g;
        const T tc = sn_tanh(cc);
        T* gr = gates + row * g4;
        gr[j] = i;
        gr[hid + j] = f;
        gr[2 * hid + j] = g;
        gr[3 * hid + j] = o;
        c[e] = cc;
        tanh_c[e] = tc;
        const T hv = o * tc;
        h[e] = hv;
        if (t_out >= 0) Hout[(row * out_steps + t_out) * hid + j] = hv;
    }
}

// Step t backward. dc (N, H): in, dL/dc_t from step t+1 (zeros at the last
// step); out, dL/dc_{t-1}. Writes dZ_t into dZ (the step's (N, 4H) slice) and
// dXW[:, t], and dL/dh_t into dh_out.
template <typename T>
__global__ void lstm_cell_backward(const T* dH, int dh_steps, int t_in, const T* dh_rec, T* dc,
                                   const T* gates, const T* c_prev, const T* tanh_c, T* dZ,
                                   T* dXW, T* dh_out, int n, int steps, int hid, int t) {
    const long long g4 = 4LL * hid;
    SN_GRID_STRIDE(e, (long long)n * hid) {
        long long row;
        int j;
        sn_divmod(e, hid, row, j);
        const T d = sn_step_grad(dh_rec, dH, dh_steps, t_in, e, row, j, hid);
        dh_out[e] = d;
        const T* gr = gates + row * g4;
        const T i = gr[j], f = gr[hid + j], g = gr[2 * hid + j], o = gr[3 * hid + j];
        const T tc = tanh_c[e];
        const T dcj = dc[e] + d * o * (T(1) - tc * tc);
        dc[e] = dcj * f;
        const T di = dcj * g * i * (T(1) - i);
        const T df = dcj * (c_prev ? c_prev[e] : T(0)) * f * (T(1) - f);
        const T dg = dcj * i * (T(1) - g * g);
        const T dout = d * tc * o * (T(1) - o);
        T* zr = dZ + row * g4;
        T* xr = dXW + (row * steps + t) * g4;
        zr[j] = xr[j] = di;
        zr[hid + j] = xr[hid + j] = df;
        zr[2 * hid + j] = xr[2 * hid + j] = dg;
        zr[3 * hid + j] = xr[3 * hid + j] = dout;
    }
}

// ----------------------------------------------------------------- GRU
// Step t (PyTorch's): hU = Z + bU split (r, z, n); r = sigmoid(x_r + hU_r),
// z = sigmoid(x_z + hU_z), n = tanh(x_n + r hU_n), h = n + z (h_prev - n).
// Writes gates (N, 3H) = (r, z, n), hUn (N, H) = hU_n, h and Hout[:, t_out].
template <typename T>
__global__ void gru_cell_forward(const T* XW, const T* Z, const T* bU, const T* h_prev,
                                 T* gates, T* hUn, T* h, T* Hout, int n, int steps, int hid,
                                 int t, int out_steps, int t_out) {
    const long long g3 = 3LL * hid;
    SN_GRID_STRIDE(e, (long long)n * hid) {
        long long row;
        int j;
        sn_divmod(e, hid, row, j);
        const T* x = XW + (row * steps + t) * g3;
        T zr = T(0), zz = T(0), zn = T(0);
        if (Z) {
            const T* z = Z + row * g3;
            zr = z[j];
            zz = z[hid + j];
            zn = z[2 * hid + j];
        }
        const T r = sn_sigmoid(x[j] + (zr + bU[j]));
        const T u = sn_sigmoid(x[hid + j] + (zz + bU[hid + j]));
        const T hn = zn + bU[2 * hid + j];
        const T nn = sn_tanh(x[2 * hid + j] + r * hn);
        T* gr = gates + row * g3;
        gr[j] = r;
        gr[hid + j] = u;
        gr[2 * hid + j] = nn;
        hUn[e] = hn;
        const T hv = nn + u * ((h_prev ? h_prev[e] : T(0)) - nn);
        h[e] = hv;
        if (t_out >= 0) Hout[(row * out_steps + t_out) * hid + j] = hv;
    }
}

// Step t backward. carry (N, H): in, dL/dh_t through h_{t+1} = ... + z h_t
// (zeros at the last step); out, dL/dh_t z_t for step t-1. Writes dL/d(hU_t)
// into dHU (the step's (N, 3H) slice: what the next product, dU and dbU
// read), dL/dXW_t into dXW[:, t] (they differ in the n block: r times it),
// and dL/dh_t into dh_out.
template <typename T>
__global__ void gru_cell_backward(const T* dH, int dh_steps, int t_in, const T* dh_rec,
                                  T* carry, const T* gates, const T* hUn, const T* h_prev,
                                  T* dHU, T* dXW, T* dh_out, int n, int steps, int hid, int t) {
    const long long g3 = 3LL * hid;
    SN_GRID_STRIDE(e, (long long)n * hid) {
        long long row;
        int j;
        sn_divmod(e, hid, row, j);
        T d = (dh_rec ? dh_rec[e] : T(0)) + carry[e];
        if (t_in >= 0) d += dH[(row * dh_steps + t_in) * hid + j];
        dh_out[e] = d;
        const T* gr = gates + row * g3;
        const T r = gr[j], u = gr[hid + j], nn = gr[2 * hid + j];
        const T dan = d * (T(1) - u) * (T(1) - nn * nn);
        const T dar = dan * hUn[e] * r * (T(1) - r);
        const T daz = d * ((h_prev ? h_prev[e] : T(0)) - nn) * u * (T(1) - u);
        carry[e] = d * u;
        T* ur = dHU + row * g3;
        T* xr = dXW + (row * steps + t) * g3;
        ur[j] = xr[j] = dar;
        ur[hid + j] = xr[hid + j] = daz;
        xr[2 * hid + j] = dan;
        ur[2 * hid + j] = dan * r;
    }
}

// ----------------------------------------------------------------- RNN
// Step t: h = f(XW[:, t] + Z), f the activation of code act (the table's).
template <typename T>
__global__ void rnn_cell_forward(const T* XW, const T* Z, T* h, T* Hout, int n, int steps,
                                 int hid, int t, int out_steps, int t_out, int act, T alpha) {
    SN_GRID_STRIDE(e, (long long)n * hid) {
        long long row;
        int j;
        sn_divmod(e, hid, row, j);
        const T a = XW[(row * steps + t) * hid + j] + (Z ? Z[e] : T(0));
        const T hv = sn_activate(a, act, alpha);
        h[e] = hv;
        if (t_out >= 0) Hout[(row * out_steps + t_out) * hid + j] = hv;
    }
}

// Step t backward: dZ_t = dL/dh_t * f'(h_t), f' from the output h (the step's
// slice), into dZ (the step's slice) and dXW[:, t]; dL/dh_t into dh_out.
template <typename T>
__global__ void rnn_cell_backward(const T* dH, int dh_steps, int t_in, const T* dh_rec,
                                  const T* h, T* dZ, T* dXW, T* dh_out, int n, int steps,
                                  int hid, int t, int act, T alpha) {
    SN_GRID_STRIDE(e, (long long)n * hid) {
        long long row;
        int j;
        sn_divmod(e, hid, row, j);
        const T d = sn_step_grad(dh_rec, dH, dh_steps, t_in, e, row, j, hid);
        dh_out[e] = d;
        dZ[e] = dXW[(row * steps + t) * hid + j] = sn_act_grad(d, h[e], act, alpha);
    }
}

// ------------------------------------------------- instantiations
#define SN_RECURRENT_INSTANTIATE_T(T)                                          \
    template __global__ void lstm_cell_forward<T>(const T*, const T*, const T*, T*, T*, T*, \
                                                  T*, T*, int, int, int, int, int, int); \
    template __global__ void lstm_cell_backward<T>(const T*, int, int, const T*, T*, \
                                                   const T*, const T*, const T*, T*, T*, T*, \
                                                   int, int, int, int);        \
    template __global__ void gru_cell_forward<T>(const T*, const T*, const T*, const T*, T*, \
                                                 T*, T*, T*, int, int, int, int, int, int); \
    template __global__ void gru_cell_backward<T>(const T*, int, int, const T*, T*, const T*, \
                                                  const T*, const T*, T*, T*, T*, int, int, \
                                                  int, int);                   \
    template __global__ void rnn_cell_forward<T>(const T*, const T*, T*, T*, int, int, int, \
                                                 int, int, int, int, T);       \
    template __global__ void rnn_cell_backward<T>(const T*, int, int, const T*, const T*, T*, \
                                                  T*, T*, int, int, int, int, int, T);

SN_RECURRENT_INSTANTIATE_T(float)
SN_RECURRENT_INSTANTIATE_T(double)
