// scratchnet's CUDA kernels: the hot primitives of the cupy backend.
//
// One templated file, compiled three ways:
//   * at run time by NVRTC through cupy.RawModule(name_expressions=[...])
//     (scratchnet/backends/cupy_ops.py), for the device it runs on;
//   * ahead of time by `nvcc --ptx` in tests/test_kernels_nvcc.py, which
//     checks that real code is generated for sm_80 and sm_90;
//   * for the CPU by g++ through tests/kernel_host_shim.h, which runs every
//     launch serially so the kernels are checked against NumPy without a GPU.
//
// Rules that keep the three in step:
//   * every kernel is a grid-stride loop in which each thread owns whole
//     outputs: no shared memory, no __syncthreads, no warp shuffles, no
//     atomics. Any grid size is then correct, and a serial loop over
//     (block, thread) computes exactly what the GPU computes;
//   * no host headers (NVRTC has none). Math goes through the sn_*
//     overloads of common.cuh (expf/exp, ...), which NVRTC, nvcc and libm all
//     know. The two #includes are common.cuh and activations.cuh, generated
//     from the activation table (scratchnet/activations.py); cupy_ops inlines
//     both when loading;
//   * element indices are 64-bit, row/column counts are int.
//
// Layout: arrays are C-contiguous and batch-major, Z[r, c] at r * n_cols + c.

// SN_GRID_STRIDE, the sn_* math overloads, sn_divmod.
#include "common.cuh"

// The SN_ACT_* codes, sn_activate(z, act, alpha) = f(z) and
// sn_act_grad(dy, y, act, alpha) = dy * f'(z) from y = f(z).
#include "activations.cuh"

// ------------------------------------------------------- (a) bias + act
// out = f(Z + b) elementwise; b (n_cols,) may be null. out may alias Z.
template <typename T>
__global__ void bias_act(const T* Z, const T* b, T* out, int n_rows, int n_cols,
                         int act, T alpha) {
    const long long n = (long long)n_rows * n_cols;
    SN_GRID_STRIDE(i, n) {
        T z = Z[i];
        if (b != nullptr) {
            long long r;
            int c;
            sn_divmod(i, n_cols, r, c);
            z += b[c];
        }
        out[i] = sn_activate(z, act, alpha);
    }
}

// ------------------------------------------------- (b) activation backward
// dZ = dY * f'(Y) elementwise over n values. dZ may alias dY or Y.
template <typename T>
__global__ void act_backward(const T* dY, const T* Y, T* dZ, long long n, int act,
                             T alpha) {
    SN_GRID_STRIDE(i, n) { dZ[i] = sn_act_grad(dY[i], Y[i], act, alpha); }
}

// Fused dZ = dY * f'(Y) and per-chunk column sums of dZ.
// The rows are cut into chunks of rows_per_chunk; task t owns column
// t % n_cols of chunk t / n_cols, walks its rows, writes dZ and stores the
// chunk's sum in partial[chunk * n_cols + col]. Neighbouring threads own
// neighbouring columns, so every row is read coalesced. With one chunk,
// partial is the bias gradient itself; otherwise column_sum finishes it.
template <typename T>
__global__ void act_backward_bias(const T* dY, const T* Y, T* dZ, T* partial,
                                  int n_rows, int n_cols, int rows_per_chunk,
                                  int act, T alpha) {
    const int n_chunks = (n_rows + rows_per_chunk - 1) / rows_per_chunk;
    const long long n_tasks = (long long)n_chunks * n_cols;
    SN_GRID_STRIDE(t, n_tasks) {
        long long chunk_ll;
        int col;
        sn_divmod(t, n_cols, chunk_ll, col);
        const int chunk = (int)chunk_ll;
        const int r0 = chunk * rows_per_chunk;
        const int r1 = r0 + rows_per_chunk < n_rows ? r0 + rows_per_chunk : n_rows;
        T acc = T(0);
        for (int r = r0; r < r1; ++r) {
            const long long i = (long long)r * n_cols + col;
            const T d = sn_act_grad(dY[i], Y[i], act, alpha);
            dZ[i] = d;
            acc += d;
        }
        partial[t] = acc;
    }
}

// out[c] = sum over r of A[r, c]; one thread per column, rows in order.
template <typename T>
__global__ void column_sum(const T* A, T* out, int n_rows, int n_cols) {
    SN_GRID_STRIDE(c, n_cols) {
        T acc = T(0);
        for (int r = 0; r < n_rows; ++r) acc += A[(long long)r * n_cols + c];
        out[c] = acc;
    }
}

// ------------------------------------------- (c) softmax + cross-entropy
// Pass 1, one thread per row: an online max / sum-of-exp over the row
// (rescaling the running sum when the max grows), so each logit is read once
// and exp only ever sees non-positive arguments: stable for logits of +-1e4.
// stats[2r] = row max m, stats[2r+1] = log(sum exp(z - m)); loss[r] =
// log-sum-exp minus the label's logit. A label outside [0, n_cols) gives a
// NaN loss (a kernel cannot raise; the NaN reaches the mean loss).
template <typename T, typename L>
__global__ void softmax_xent_rows(const T* logits, const L* labels, T* stats,
                                  T* loss, int n_rows, int n_cols) {
    SN_GRID_STRIDE(r, n_rows) {
        const T* z = logits + r * (long long)n_cols;
        T m = z[0];
        T s = T(1);
        for (int c = 1; c < n_cols; ++c) {
            const T v = z[c];
            if (v > m) {
                s = s * sn_exp(m - v) + T(1);
                m = v;
            } else {
                s += sn_exp(v - m);
            }
        }
        const T log_s = sn_log(s);
        stats[2 * r] = m;
        stats[2 * r + 1] = log_s;
        const L label = labels[r];
        if (label >= 0 && label < (L)n_cols) {
            loss[r] = log_s - (z[label] - m);
        } else {
            loss[r] = sn_sqrt(T(-1));  // NaN
        }
    }
}

// Pass 2, elementwise: grad = (softmax - onehot(label)) / n_rows, with the
// softmax as exp((z - m) - log_s) so z - m stays exact for large logits.
template <typename T, typename L>
__global__ void softmax_xent_grad(const T* logits, const L* labels, const T* stats,
                                  T* grad, int n_rows, int n_cols) {
    const long long n = (long long)n_rows * n_cols;
    const T rows = T(n_rows);
    SN_GRID_STRIDE(i, n) {
        long long r;
        int c;
        sn_divmod(i, n_cols, r, c);
        T p = sn_exp((logits[i] - stats[2 * r]) - stats[2 * r + 1]);
        if ((L)c == labels[r]) p -= T(1);
        grad[i] = p / rows;
    }
}

// ------------------------------- (c2) sigmoid + binary cross-entropy
// On logits z and targets t, n elements (any shape, flat), elementwise:
//   loss[i] = max(z, 0) - z t + log(1 + exp(-|z|)),  grad[i] = (sigmoid(z) - t) * inv_n
// with inv_n = 1/n; the backend averages loss[]. exp is taken of -|z| <= 0
// only, and once: exact for any z, and sigmoid and the log term share it.
template <typename T>
__global__ void sigmoid_bce(const T* z, const T* t, T* loss, T* grad, long long n,
                            T inv_n) {
    SN_GRID_STRIDE(i, n) {
        const T zi = z[i];
        const T ti = t[i];
        const T e = sn_exp(-sn_abs(zi));
        grad[i] = ((zi >= T(0) ? T(1) : e) / (T(1) + e) - ti) * inv_n;
        loss[i] = (zi > T(0) ? zi : T(0)) - zi * ti + sn_log1p(e);
    }
}

// ------------------------------------------------------ (d) optimizers
// SGD, PyTorch's definition (dampening 0), in place:
//   g = grad + wd * param;  v = momentum * v + g;
//   step = g + momentum * v (Nesterov) or v;  param -= lr * step.
// velocity may be null, and is ignored, when momentum == 0.
template <typename T>
__global__ void sgd_momentum(T* param, const T* grad, T* velocity, long long n, T lr,
                             T momentum, int nesterov, T weight_decay) {
    const bool use_momentum = velocity != nullptr && momentum != T(0);
    SN_GRID_STRIDE(i, n) {
        const T p = param[i];
        T g = grad[i];
        if (weight_decay != T(0)) g = g + weight_decay * p;
        if (use_momentum) {
            const T v = velocity[i] * momentum + g;
            velocity[i] = v;
            g = nesterov ? g + momentum * v : v;
        }
        param[i] = p - lr * g;
    }
}

// Adam, PyTorch's definition (bias-corrected, L2 weight decay), in place:
//   g = grad + wd * param;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   param -= step_size * m / (sqrt(v) / bc2_sqrt + eps)
// with step_size = lr / (1 - b1^t) and bc2_sqrt = sqrt(1 - b2^t) computed on
// the host in double, then rounded to T, exactly like the NumPy backend.
template <typename T>
__global__ void adam(T* param, const T* grad, T* m, T* v, long long n, T step_size,
                     T beta1, T one_minus_beta1, T beta2, T one_minus_beta2,
                     T bc2_sqrt, T eps, T weight_decay) {
    SN_GRID_STRIDE(i, n) {
        const T p = param[i];
        T g = grad[i];
        if (weight_decay != T(0)) g = g + weight_decay * p;
        const T mi = m[i] * beta1 + one_minus_beta1 * g;
        const T vi = v[i] * beta2 + one_minus_beta2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        const T denom = sn_sqrt(vi) / bc2_sqrt + eps;
        param[i] = p - step_size * (mi / denom);
    }
}

// AdamW, PyTorch's definition (decoupled weight decay, amsgrad off), in place:
//   param *= decay;  then adam's step above on grad alone (no L2 term)
// with decay = 1 - lr * wd (exactly 1 without weight decay); decay, step_size
// and bc2_sqrt are computed on the host in double, then rounded to T.
template <typename T>
__global__ void adamw(T* param, const T* grad, T* m, T* v, long long n, T decay,
                      T step_size, T beta1, T one_minus_beta1, T beta2,
                      T one_minus_beta2, T bc2_sqrt, T eps) {
    SN_GRID_STRIDE(i, n) {
        const T g = grad[i];
        const T mi = m[i] * beta1 + one_minus_beta1 * g;
        const T vi = v[i] * beta2 + one_minus_beta2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        const T denom = sn_sqrt(vi) / bc2_sqrt + eps;
        param[i] = param[i] * decay - step_size * (mi / denom);
    }
}

// RMSprop, PyTorch's definition, in place:
//   g = grad + wd * param;  s = alpha s + (1 - alpha) g^2;
//   centered: a = alpha a + (1 - alpha) g, avg = sqrt(s - a^2) + eps,
//   else avg = sqrt(s) + eps;
//   momentum: buf = momentum buf + g / avg, param -= lr * buf;
//   else param -= lr * (g / avg).
// The wrapper passes grad_avg only when centered and buf only when
// momentum > 0; otherwise they are null and ignored.
template <typename T>
__global__ void rmsprop(T* param, const T* grad, T* square_avg, T* grad_avg, T* buf,
                        long long n, T lr, T alpha, T one_minus_alpha, T eps,
                        T weight_decay, T momentum) {
    SN_GRID_STRIDE(i, n) {
        const T p = param[i];
        T g = grad[i];
        if (weight_decay != T(0)) g = g + weight_decay * p;
        const T s = square_avg[i] * alpha + one_minus_alpha * (g * g);
        square_avg[i] = s;
        T avg;
        if (grad_avg != nullptr) {
            const T a = grad_avg[i] * alpha + one_minus_alpha * g;
            grad_avg[i] = a;
            avg = sn_sqrt(s - a * a) + eps;
        } else {
            avg = sn_sqrt(s) + eps;
        }
        if (buf != nullptr) {
            const T b = buf[i] * momentum + g / avg;
            buf[i] = b;
            param[i] = p - lr * b;
        } else {
            param[i] = p - lr * (g / avg);
        }
    }
}

// Adagrad, PyTorch's definition, in place:
//   g = grad + wd * param;  state_sum += g^2;
//   param -= clr * (g / (sqrt(state_sum) + eps))
// with clr = lr / (1 + (step - 1) * lr_decay) computed on the host in double.
template <typename T>
__global__ void adagrad(T* param, const T* grad, T* state_sum, long long n, T clr, T eps,
                        T weight_decay) {
    SN_GRID_STRIDE(i, n) {
        const T p = param[i];
        T g = grad[i];
        if (weight_decay != T(0)) g = g + weight_decay * p;
        const T s = state_sum[i] + g * g;
        state_sum[i] = s;
        param[i] = p - clr * (g / (sn_sqrt(s) + eps));
    }
}

// --------------------------------------------------------- (e) dropout
// Inverted dropout from uniforms u in [0, 1) drawn by the backend's
// generator: keep where u >= p; mask = keep ? scale : 0 with
// scale = 1 / (1 - p); out = X * mask. out may alias X.
template <typename T>
__global__ void dropout(const T* X, const float* u, T* out, T* mask, long long n,
                        float p, T scale) {
    SN_GRID_STRIDE(i, n) {
        const T k = u[i] >= p ? scale : T(0);
        mask[i] = k;
        out[i] = X[i] * k;
    }
}

// ------------------------------------------------- instantiations
// Explicit instantiations make `nvcc --ptx` (and the host shim) generate code
// for every kernel; NVRTC additionally looks them up by name expression.
#define SN_INSTANTIATE_T(T)                                                    \
    template __global__ void bias_act<T>(const T*, const T*, T*, int, int, int, T); \
    template __global__ void act_backward<T>(const T*, const T*, T*, long long, int, T); \
    template __global__ void act_backward_bias<T>(const T*, const T*, T*, T*, int, int, \
                                                  int, int, T);                \
    template __global__ void column_sum<T>(const T*, T*, int, int);            \
    template __global__ void sigmoid_bce<T>(const T*, const T*, T*, T*, long long, T); \
    template __global__ void sgd_momentum<T>(T*, const T*, T*, long long, T, T, int, T); \
    template __global__ void adam<T>(T*, const T*, T*, T*, long long, T, T, T, T, T, T, \
                                     T, T);                                    \
    template __global__ void adamw<T>(T*, const T*, T*, T*, long long, T, T, T, T, T, \
                                      T, T, T);                                \
    template __global__ void rmsprop<T>(T*, const T*, T*, T*, T*, long long, T, T, T, T, \
                                        T, T);                                 \
    template __global__ void adagrad<T>(T*, const T*, T*, long long, T, T, T); \
    template __global__ void dropout<T>(const T*, const float*, T*, T*, long long, float, \
                                        T);

#define SN_INSTANTIATE_TL(T, L)                                                \
    template __global__ void softmax_xent_rows<T, L>(const T*, const L*, T*, T*, int, \
                                                     int);                     \
    template __global__ void softmax_xent_grad<T, L>(const T*, const L*, const T*, T*, \
                                                     int, int);

SN_INSTANTIATE_T(float)
SN_INSTANTIATE_T(double)
SN_INSTANTIATE_TL(float, int)
SN_INSTANTIATE_TL(float, long long)
SN_INSTANTIATE_TL(double, int)
SN_INSTANTIATE_TL(double, long long)
