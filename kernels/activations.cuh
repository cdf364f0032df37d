// The activations of scratchnet's CUDA kernels. GENERATED from the table in
// scratchnet/activations.py by
//     python3 -m scratchnet.backends.cuda_header > kernels/activations.cuh
// Do not edit: change the table and regenerate (a test checks they agree).
//
// scratchnet_kernels.cu includes this after its sn_* math helpers; cupy_ops
// inlines it when it loads the source, since NVRTC reads no files.
#ifndef SN_ACTIVATIONS_CUH
#define SN_ACTIVATIONS_CUH

#define SN_ACT_IDENTITY 0
#define SN_ACT_RELU 1
#define SN_ACT_LEAKY_RELU 2
#define SN_ACT_SIGMOID 3
#define SN_ACT_TANH 4

// f(z) and f'(z) from y = f(z), per activation; alpha is the LeakyReLU
// slope (the others ignore it).

template <typename T>
__device__ __forceinline__ T sn_act_identity(T z, T alpha) {
    (void)alpha;  // unused
    return z;
}

template <typename T>
__device__ __forceinline__ T sn_act_relu(T z, T alpha) {
    (void)alpha;  // unused
    return z < T(0) ? T(0) : z;
}

template <typename T>
__device__ __forceinline__ T sn_act_relu_grad(T y, T alpha) {
    (void)alpha;  // unused
    return y > T(0) ? T(1) : T(0);
}

template <typename T>
__device__ __forceinline__ T sn_act_leaky_relu(T z, T alpha) {
    return z > T(0) ? z : z * alpha;
}

template <typename T>
__device__ __forceinline__ T sn_act_leaky_relu_grad(T y, T alpha) {
    return y > T(0) ? T(1) : alpha;
}

template <typename T>
__device__ __forceinline__ T sn_act_sigmoid(T z, T alpha) {
    (void)alpha;  // unused
    T e = sn_exp(-sn_abs(z));
    return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <typename T>
__device__ __forceinline__ T sn_act_sigmoid_grad(T y, T alpha) {
    (void)alpha;  // unused
    return y * (T(1) - y);
}

template <typename T>
__device__ __forceinline__ T sn_act_tanh(T z, T alpha) {
    (void)alpha;  // unused
    return sn_tanh(z);
}

template <typename T>
__device__ __forceinline__ T sn_act_tanh_grad(T y, T alpha) {
    (void)alpha;  // unused
    return T(1) - y * y;
}

// f(z) for one activation code; an unknown code leaves z.
template <typename T>
__device__ __forceinline__ T sn_activate(T z, int act, T alpha) {
    switch (act) {
    case SN_ACT_IDENTITY:
        return sn_act_identity(z, alpha);
    case SN_ACT_RELU:
        return sn_act_relu(z, alpha);
    case SN_ACT_LEAKY_RELU:
        return sn_act_leaky_relu(z, alpha);
    case SN_ACT_SIGMOID:
        return sn_act_sigmoid(z, alpha);
    case SN_ACT_TANH:
        return sn_act_tanh(z, alpha);
    default:
        return z;
    }
}

// dy * f'(z), with f' from the forward output y; an unknown code, or one
// whose derivative is 1, leaves dy.
template <typename T>
__device__ __forceinline__ T sn_act_grad(T dy, T y, int act, T alpha) {
    switch (act) {
    case SN_ACT_RELU:
        return dy * sn_act_relu_grad(y, alpha);
    case SN_ACT_LEAKY_RELU:
        return dy * sn_act_leaky_relu_grad(y, alpha);
    case SN_ACT_SIGMOID:
        return dy * sn_act_sigmoid_grad(y, alpha);
    case SN_ACT_TANH:
        return dy * sn_act_tanh_grad(y, alpha);
    default:
        return dy;
    }
}

#endif  // SN_ACTIVATIONS_CUH
