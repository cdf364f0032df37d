// scratchnet's CUDA kernels for convolutional networks: the passes around the
// convolution's matrix products (which run in cuBLAS through CuPy), pooling
// and 2-D batch norm, for scratchnet/backends/cupy_ops.py.
//
// Compiled the same three ways as scratchnet_kernels.cu (NVRTC at run time,
// `nvcc --ptx` in tests/test_kernels_nvcc.py, g++ through the host shim in
// tests/test_kernels_host.py), under the same rules: grid-stride loops in
// which each thread owns whole outputs (no shared memory, barriers, shuffles
// or atomics), no host headers, 64-bit element indices. Every reduction is a
// gather: a thread sums what lands on its own output (col2im, the pooling
// backwards) or a slice of a sum, finished by a second small launch.
//
// Layouts (C-contiguous):
//   images X (N, C, H, W); kernels W (O, C, kh, kw); outputs Y (N, O, Ho, Wo);
//   the column matrix cols (C*kh*kw, N*Ho*Wo): one ROW per kernel tap
//   k = (c*kh + i)*kw + j, one column per output position m = (n*Ho + oh)*Wo + ow,
//   so that Z = W (O, C*kh*kw) @ cols is (O, N*Ho*Wo) and dW = dZ @ cols^T,
//   dcols = W^T @ dZ (the Numba backend's layout too).

// SN_GRID_STRIDE, the sn_* math overloads, sn_divmod.
#include "common.cuh"

#include "activations.cuh"

// Geometry of a convolution: input (n, c, h, w), kernel (kh, kw), stride,
// padding, output (ho, wo).
#define SN_CONV_PARAMS                                                         \
    int n, int c, int h, int w, int kh, int kw, int sh, int sw, int ph, int pw, int ho, int wo
#define SN_CONV_TYPES int, int, int, int, int, int, int, int, int, int, int, int

// --------------------------------------------------------------- im2col
// cols[k, m] = X[n, c, oh*sh - ph + i, ow*sw - pw + j], 0 outside X; one
// thread per entry of cols (consecutive threads: consecutive ow, coalesced).
template <typename T>
__global__ void conv_im2col(const T* X, T* cols, SN_CONV_PARAMS) {
    const long long p = (long long)ho * wo;
    const long long m_total = (long long)n * p;
    const long long total = (long long)c * kh * kw * m_total;
    SN_GRID_STRIDE(e, total) {
        const long long k = e / m_total;
        const long long m = e - k * m_total;
        long long nq, t;
        int ow, oh, j, i;
        sn_divmod(m, wo, t, ow);
        sn_divmod(t, ho, nq, oh);
        long long cq, ci;
        sn_divmod(k, kw, ci, j);
        sn_divmod(ci, kh, cq, i);
        const int ih = oh * sh - ph + i;
        const int iw = ow * sw - pw + j;
        T v = T(0);
        if (ih >= 0 && ih < h && iw >= 0 && iw < w) {
            v = X[((nq * c + cq) * h + ih) * (long long)w + iw];
        }
        cols[e] = v;
    }
}

// --------------------------------------------------------------- col2im
// The adjoint of conv_im2col, as a gather: one thread per pixel of dX sums the
// entries of dcols that im2col copied from it, taps in order (i, j).
template <typename T>
__global__ void conv_col2im(const T* dcols, T* dX, SN_CONV_PARAMS) {
    const long long p = (long long)ho * wo;
    const long long m_total = (long long)n * p;
    const long long total = (long long)n * c * h * w;
    SN_GRID_STRIDE(e, total) {
        long long t, nc;
        int iw, ih;
        sn_divmod(e, w, t, iw);
        sn_divmod(t, h, nc, ih);
        long long nq;
        int cq;
        sn_divmod(nc, c, nq, cq);
        T acc = T(0);
        for (int i = 0; i < kh; ++i) {
            const int a = ih + ph - i;          // oh * sh
            if (a < 0 || a % sh != 0) continue;
            const int oh = a / sh;
            if (oh >= ho) continue;
            for (int j = 0; j < kw; ++j) {
                const int b = iw + pw - j;      // ow * sw
                if (b < 0 || b % sw != 0) continue;
                const int ow = b / sw;
                if (ow >= wo) continue;
                const long long k = ((long long)cq * kh + i) * kw + j;
                acc += dcols[k * m_total + nq * p + (long long)oh * wo + ow];
            }
        }
        dX[e] = acc;
    }
}

// ------------------------------------------------- epilogue and prologue
// Y[n, o, q] = f(Z[o, n*P + q] + b[o]) (b may be null): the product in NCHW
// with the bias and the activation, one thread per element of Y.
template <typename T>
__global__ void conv_bias_act(const T* Z, const T* b, T* Y, int n, int o, long long p,
                              int act, T alpha) {
    const long long total = (long long)n * o * p;
    SN_GRID_STRIDE(e, total) {
        const long long row = e / p;               // n * O + o
        const long long q = e - row * p;
        long long ni;
        int oi;
        sn_divmod(row, o, ni, oi);
        T z = Z[(long long)oi * n * p + ni * p + q];
        if (b != nullptr) z += b[oi];
        Y[e] = sn_activate(z, act, alpha);
    }
}

// dZ[o, n*P + q] = dY[n, o, q] * f'(Y[n, o, q]): the gradient back in the
// product's layout, one thread per element of dZ (Y may be dY where f' is 1).
template <typename T>
__global__ void conv_act_backward(const T* dY, const T* Y, T* dZ, int n, int o, long long p,
                                  int act, T alpha) {
    const long long m_total = (long long)n * p;
    const long long total = (long long)o * m_total;
    SN_GRID_STRIDE(e, total) {
        const long long oi = e / m_total;
        const long long m = e - oi * m_total;
        const long long ni = m / p;
        const long long src = (ni * o + oi) * p + (m - ni * p);
        dZ[e] = sn_act_grad(dY[src], Y[src], act, alpha);
    }
}

// partial[r, t] = sum of A[r, t*chunk : (t+1)*chunk] (clipped to n_cols), for
// rows r of A (n_rows, n_cols): one thread per (row, chunk). Launched twice
// for the bias gradient: over dZ (O, N*P), then over the partial sums with
// one chunk, which leaves db (O,).
template <typename T>
__global__ void conv_row_sums(const T* A, T* partial, int n_rows, long long n_cols,
                              long long chunk) {
    const long long n_chunks = (n_cols + chunk - 1) / chunk;
    const long long total = (long long)n_rows * n_chunks;
    SN_GRID_STRIDE(t, total) {
        const long long r = t / n_chunks;
        const long long c0 = (t - r * n_chunks) * chunk;
        const long long c1 = c0 + chunk < n_cols ? c0 + chunk : n_cols;
        T acc = T(0);
        for (long long q = c0; q < c1; ++q) acc += A[r * n_cols + q];
        partial[t] = acc;
    }
}

// -------------------------------------------------------------- pooling
// Geometry of a pooling: N*C planes of (h, w), window (kh, kw), stride,
// output (ho, wo).
#define SN_POOL_PARAMS int planes, int h, int w, int kh, int kw, int sh, int sw, int ho, int wo
#define SN_POOL_TYPES int, int, int, int, int, int, int, int, int

// Y = the max of each window; idx = its position i*kw + j in the window: the
// first maximum in row-major order, a NaN counting as the maximum (as
// numpy.argmax). One thread per output. I is unsigned char or int.
template <typename T, typename I>
__global__ void maxpool_forward(const T* X, T* Y, I* idx, SN_POOL_PARAMS) {
    const long long total = (long long)planes * ho * wo;
    SN_GRID_STRIDE(e, total) {
        long long t, pl;
        int ow, oh;
        sn_divmod(e, wo, t, ow);
        sn_divmod(t, ho, pl, oh);
        const T* x = X + (pl * h + (long long)oh * sh) * w + (long long)ow * sw;
        T best = x[0];
        int pos = 0;
        for (int i = 0; i < kh; ++i) {
            for (int j = 0; j < kw; ++j) {
                const T v = x[(long long)i * w + j];
                if (!(v <= best) && best == best) {   // larger, or a first NaN
                    best = v;
                    pos = i * kw + j;
                }
            }
        }
        Y[e] = best;
        idx[e] = (I)pos;
    }
}

// The windows of output row oh that hold input row ih: [lo, hi).
__device__ __forceinline__ void sn_pool_span(int ih, int k, int st, int n_out, int& lo,
                                             int& hi) {
    lo = ih < k ? 0 : (ih - k) / st + 1;
    hi = ih / st + 1;
    if (hi > n_out) hi = n_out;
}

// dX (gather): one thread per input pixel sums dY over the windows whose
// recorded maximum it is, windows in row-major order.
template <typename T, typename I>
__global__ void maxpool_backward(const T* dY, const I* idx, T* dX, SN_POOL_PARAMS) {
    const long long total = (long long)planes * h * w;
    SN_GRID_STRIDE(e, total) {
        long long t, pl;
        int iw, ih;
        sn_divmod(e, w, t, iw);
        sn_divmod(t, h, pl, ih);
        int oh0, oh1, ow0, ow1;
        sn_pool_span(ih, kh, sh, ho, oh0, oh1);
        sn_pool_span(iw, kw, sw, wo, ow0, ow1);
        T acc = T(0);
        for (int oh = oh0; oh < oh1; ++oh) {
            for (int ow = ow0; ow < ow1; ++ow) {
                const long long o = (pl * ho + oh) * wo + ow;
                if ((int)idx[o] == (ih - oh * sh) * kw + (iw - ow * sw)) acc += dY[o];
            }
        }
        dX[e] = acc;
    }
}

// Y = the mean of each window: its sum in row-major order times 1/(kh*kw).
template <typename T>
__global__ void avgpool_forward(const T* X, T* Y, SN_POOL_PARAMS) {
    const long long total = (long long)planes * ho * wo;
    const T scale = T(1) / T(kh * kw);
    SN_GRID_STRIDE(e, total) {
        long long t, pl;
        int ow, oh;
        sn_divmod(e, wo, t, ow);
        sn_divmod(t, ho, pl, oh);
        const T* x = X + (pl * h + (long long)oh * sh) * w + (long long)ow * sw;
        T acc = T(0);
        for (int i = 0; i < kh; ++i) {
            for (int j = 0; j < kw; ++j) acc += x[(long long)i * w + j];
        }
        Y[e] = acc * scale;
    }
}

// dX (gather): each pixel sums dY/(kh*kw) over the windows that hold it.
template <typename T>
__global__ void avgpool_backward(const T* dY, T* dX, SN_POOL_PARAMS) {
    const long long total = (long long)planes * h * w;
    const T scale = T(1) / T(kh * kw);
    SN_GRID_STRIDE(e, total) {
        long long t, pl;
        int iw, ih;
        sn_divmod(e, w, t, iw);
        sn_divmod(t, h, pl, ih);
        int oh0, oh1, ow0, ow1;
        sn_pool_span(ih, kh, sh, ho, oh0, oh1);
        sn_pool_span(iw, kw, sw, wo, ow0, ow1);
        T acc = T(0);
        for (int oh = oh0; oh < oh1; ++oh) {
            for (int ow = ow0; ow < ow1; ++ow) acc += dY[(pl * ho + oh) * wo + ow] * scale;
        }
        dX[e] = acc;
    }
}

// ----------------------------------------------------- 2-D batch norm
// X is (N, C, L), L = H*W; statistics per channel over (N, L). The rows n are
// cut into chunks of n_chunk; one thread per (chunk, c, l) sums its column of
// the chunk in double, shifted by the channel's first value X[0, c, 0] (which
// keeps the variance exact under a large mean): psum = sum(x - shift),
// psq = sum((x - shift)^2). Neighbouring threads: neighbouring l, coalesced.
template <typename T>
__global__ void bn2d_partial_stats(const T* X, double* psum, double* psq, int n, int c,
                                   long long l, int n_chunk) {
    const int chunks = (n + n_chunk - 1) / n_chunk;
    const long long total = (long long)chunks * c * l;
    SN_GRID_STRIDE(t, total) {
        const long long cl = (long long)c * l;
        const long long ch = t / cl;
        const long long r = t - ch * cl;          // c * L + l
        const long long ci = r / l;
        const double shift = (double)X[ci * l];
        const long long n0 = ch * n_chunk;
        const long long n1 = n0 + n_chunk < n ? n0 + n_chunk : n;
        double s = 0.0, q = 0.0;
        for (long long ni = n0; ni < n1; ++ni) {
            const double d = (double)X[ni * cl + r] - shift;
            s += d;
            q += d * d;
        }
        psum[t] = s;
        psq[t] = q;
    }
}

// One thread per channel: the partial sums to mean, var (biased) and
// inv_std = 1 / sqrt(var + eps) (the last in T, as the composed default).
template <typename T>
__global__ void bn2d_stats(const T* X, const double* psum, const double* psq, T* mean, T* var,
                           T* inv_std, int c, long long l, int chunks, long long count, T eps) {
    SN_GRID_STRIDE(ci, c) {
        double s = 0.0, q = 0.0;
        for (int ch = 0; ch < chunks; ++ch) {
            const long long base = ((long long)ch * c + ci) * l;
            for (long long li = 0; li < l; ++li) {
                s += psum[base + li];
                q += psq[base + li];
            }
        }
        const double d = s / (double)count;
        double v = q / (double)count - d * d;
        if (v < 0.0) v = 0.0;
        mean[ci] = (T)((double)X[ci * l] + d);
        const T vt = (T)v;
        var[ci] = vt;
        inv_std[ci] = T(1) / sn_sqrt(vt + eps);
    }
}

// xhat = (x - mean) * inv_std; Y = xhat * gamma + beta; elementwise.
template <typename T>
__global__ void bn2d_apply(const T* X, const T* mean, const T* inv_std, const T* gamma,
                           const T* beta, T* xhat, T* Y, int c, long long l, long long total) {
    SN_GRID_STRIDE(e, total) {
        const int ci = (int)((e / l) % c);
        const T h = (X[e] - mean[ci]) * inv_std[ci];
        xhat[e] = h;
        Y[e] = h * gamma[ci] + beta[ci];
    }
}

// The backward's two sums per channel, as bn2d_partial_stats: psum = sum(dY),
// pdot = sum(dY * xhat), in double.
template <typename T>
__global__ void bn2d_partial_grads(const T* dY, const T* xhat, double* psum, double* pdot,
                                   int n, int c, long long l, int n_chunk) {
    const int chunks = (n + n_chunk - 1) / n_chunk;
    const long long total = (long long)chunks * c * l;
    SN_GRID_STRIDE(t, total) {
        const long long cl = (long long)c * l;
        const long long ch = t / cl;
        const long long r = t - ch * cl;
        const long long n0 = ch * n_chunk;
        const long long n1 = n0 + n_chunk < n ? n0 + n_chunk : n;
        double s = 0.0, q = 0.0;
        for (long long ni = n0; ni < n1; ++ni) {
            const double g = (double)dY[ni * cl + r];
            s += g;
            q += g * (double)xhat[ni * cl + r];
        }
        psum[t] = s;
        pdot[t] = q;
    }
}

// One thread per channel: dbeta = sum(dY), dgamma = sum(dY * xhat).
template <typename T>
__global__ void bn2d_grad_sums(const double* psum, const double* pdot, T* dgamma, T* dbeta,
                               int c, long long l, int chunks) {
    SN_GRID_STRIDE(ci, c) {
        double s = 0.0, q = 0.0;
        for (int ch = 0; ch < chunks; ++ch) {
            const long long base = ((long long)ch * c + ci) * l;
            for (long long li = 0; li < l; ++li) {
                s += psum[base + li];
                q += pdot[base + li];
            }
        }
        dbeta[ci] = (T)s;
        dgamma[ci] = (T)q;
    }
}

// dX = gamma * inv_std / m * (m * dY - dbeta - xhat * dgamma); elementwise.
template <typename T>
__global__ void bn2d_backward_apply(const T* dY, const T* xhat, const T* gamma,
                                    const T* inv_std, const T* dgamma, const T* dbeta, T* dX,
                                    int c, long long l, long long total, T m) {
    SN_GRID_STRIDE(e, total) {
        const int ci = (int)((e / l) % c);
        const T a = gamma[ci] * inv_std[ci] / m;
        dX[e] = a * (m * dY[e] - dbeta[ci] - xhat[e] * dgamma[ci]);
    }
}

// ------------------------------------------------- instantiations
#define SN_CONV_INSTANTIATE_T(T)                                               \
    template __global__ void conv_im2col<T>(const T*, T*, SN_CONV_TYPES);      \
    template __global__ void conv_col2im<T>(const T*, T*, SN_CONV_TYPES);      \
    template __global__ void conv_bias_act<T>(const T*, const T*, T*, int, int, long long, \
                                              int, T);                         \
    template __global__ void conv_act_backward<T>(const T*, const T*, T*, int, int, \
                                                  long long, int, T);          \
    template __global__ void conv_row_sums<T>(const T*, T*, int, long long, long long); \
    template __global__ void avgpool_forward<T>(const T*, T*, SN_POOL_TYPES);  \
    template __global__ void avgpool_backward<T>(const T*, T*, SN_POOL_TYPES); \
    template __global__ void bn2d_partial_stats<T>(const T*, double*, double*, int, int, \
                                                   long long, int);            \
    template __global__ void bn2d_stats<T>(const T*, const double*, const double*, T*, T*, \
                                           T*, int, long long, int, long long, T); \
    template __global__ void bn2d_apply<T>(const T*, const T*, const T*, const T*, const T*, \
                                           T*, T*, int, long long, long long); \
    template __global__ void bn2d_partial_grads<T>(const T*, const T*, double*, double*, \
                                                   int, int, long long, int);  \
    template __global__ void bn2d_grad_sums<T>(const double*, const double*, T*, T*, int, \
                                               long long, int);                \
    template __global__ void bn2d_backward_apply<T>(const T*, const T*, const T*, const T*, \
                                                    const T*, const T*, T*, int, long long, \
                                                    long long, T);

#define SN_CONV_INSTANTIATE_TI(T, I)                                           \
    template __global__ void maxpool_forward<T, I>(const T*, T*, I*, SN_POOL_TYPES); \
    template __global__ void maxpool_backward<T, I>(const T*, const I*, T*, SN_POOL_TYPES);

SN_CONV_INSTANTIATE_T(float)
SN_CONV_INSTANTIATE_T(double)
SN_CONV_INSTANTIATE_TI(float, unsigned char)
SN_CONV_INSTANTIATE_TI(float, int)
SN_CONV_INSTANTIATE_TI(double, unsigned char)
SN_CONV_INSTANTIATE_TI(double, int)
