// Fused ops beyond the histogram: linear + bias + activation, embedding bag,
// row-wise layer norm. CPU entry points are templates instantiated for float
// and double (double makes torch.autograd.gradcheck possible on the C++ path).
// CUDA entry points take device pointers as integers and a dtype code, so
// this header needs neither CUDA nor torch includes.
//
// Layouts (all row-major, contiguous):
//   linear:        x [M, K], w [N, K] (nn.Linear layout), b [N] or null,
//                  y = act(x w^T + b) [M, N]; z [M, N] (optional) keeps the
//                  pre-activation for the backward of GELU/SiLU/ReLU.
//   embedding bag: weight [V, D], indices [nnz] int64, offsets [B] int64
//                  (start of each bag, non-decreasing, offsets[0] == 0; bag
//                  b ends at offsets[b+1] or nnz), per_sample_weights [nnz]
//                  or null (sum mode only); out [B, D]; an empty bag is 0.
//   layer norm:    x [M, N] normalised over N; weight, bias [N] or null;
//                  mean, rstd [M] saved for the backward.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace conveyor {

// Activation codes shared with the Python wrappers (kernels/linear.py).
// Sigmoid and tanh exist for the whole-MLP inference paths only (a model's
// output layer); the fused linear op and its GPU kernels take codes 0..4.
enum Activation : int {
  kActNone = 0,
  kActRelu = 1,
  kActGelu = 2,
  kActGeluTanh = 3,
  kActSilu = 4,
  kActSigmoid = 5,
  kActTanh = 6,
};
// Pooling codes (kernels/embedding_bag.py).
enum BagMode : int { kBagSum = 0, kBagMean = 1 };

// Whether this CPU has 512-bit vectors (AVX-512F, checked at run time): the
// small-batch linear forward's 4 x 4 dot-product tiles need their 32 registers.
bool cpu_wide_vectors();
// Whether linear_forward_cpu computes y [M, N] = x [M, K] W^T as dot-product tiles
// (small batches, narrow layers) rather than through the packed GEMM.
bool linear_uses_dot_products(int64_t M, int64_t N, int64_t K);

template <typename T>
void linear_forward_cpu(const T* x, const T* w, const T* b, int64_t M, int64_t N, int64_t K,
                        int act, T* y, T* z);
// Any of gx [M, K], gw [N, K], gb [N] may be null (not needed). z is the
// saved pre-activation (ignored when act == kActNone).
template <typename T>
void linear_backward_cpu(const T* gy, const T* z, const T* x, const T* w, int64_t M, int64_t N,
                         int64_t K, int act, T* gx, T* gw, T* gb);

// Whole small MLP in one call (inference): h_0 = x [M, dims[0]],
// h_{l+1} = act_l(h_l w_l^T + b_l), w_l [dims[l+1], dims[l]], b_l or null;
// out [M, dims[L]]. Intermediate activations stay in one scratch buffer, so a
// serving call pays one Python -> C++ crossing instead of one per op.
template <typename T>
void mlp_forward_cpu(const T* x, int64_t M, const int64_t* dims, int64_t layers,
                     const T* const* w, const T* const* b, const int* acts, T* out);

// The same MLP with each layer's weights packed once into NR-wide column
// panels, for a model served many times: forward() reads x in place and packs
// nothing. The pointers given to the constructor are copied from and may be
// freed afterwards; forward() is const and may run on several threads at once.
template <typename T>
struct PackedLayer {
  int64_t K = 0, N = 0;
  int act = kActNone;
  std::vector<T> panels;  // [ceil(N / NR)][K][NR], zero past N
  std::vector<T> bias;    // [ceil(N / NR) * NR], zero past N (and everywhere if none)
  // W [N][K] as given, kept for narrow layers (N < 16) on CPUs with AVX-512:
  // those run as dot-product tiles, where a panel would be mostly padding (a 1-wide
  // head computes 32 lanes for 1). Empty otherwise.
  std::vector<T> rows;
};

template <typename T>
class PackedMLP {
 public:
  // w[l]: [out_features[l], K_l] row-major (K_0 = in_features), b[l] or null.
  PackedMLP(int64_t in_features, const std::vector<const T*>& w, const std::vector<const T*>& b,
            const std::vector<int64_t>& out_features, const std::vector<int>& acts);
  // out [M, out_features.back()] = the MLP of x [M, in_features].
  void forward(const T* x, int64_t M, T* out) const;
  const std::vector<PackedLayer<T>>& layers() const { return layers_; }

 private:
  std::vector<PackedLayer<T>> layers_;
};

// Returns "" or a message (bad index or offsets); out is then unspecified.
template <typename T>
std::string embedding_bag_forward_cpu(const T* weight, int64_t V, int64_t D,
                                      const int64_t* indices, int64_t nnz,
                                      const int64_t* offsets, int64_t B,
                                      const T* per_sample_weights, int mode, T* out);
// grad_weight [V, D] is overwritten (dense); grad_psw [nnz] may be null.
template <typename T>
std::string embedding_bag_backward_cpu(const T* grad_out, const T* weight, int64_t V, int64_t D,
                                       const int64_t* indices, int64_t nnz,
                                       const int64_t* offsets, int64_t B,
                                       const T* per_sample_weights, int mode, T* grad_weight,
                                       T* grad_psw);

template <typename T>
void layer_norm_forward_cpu(const T* x, const T* weight, const T* bias, int64_t M, int64_t N,
                            double eps, T* y, T* mean, T* rstd);
// gw, gb may be null.
template <typename T>
void layer_norm_backward_cpu(const T* gy, const T* x, const T* weight, const T* mean,
                             const T* rstd, int64_t M, int64_t N, T* gx, T* gw, T* gb);

#ifdef CONVEYOR_WITH_CUDA
// dtype codes for the CUDA ops: 0 float32, 1 float16, 2 bfloat16. Each
// returns "" on success or the CUDA error string; all run on `stream`.
std::string linear_forward_cuda(std::uintptr_t x, std::uintptr_t w, std::uintptr_t b, int64_t M,
                                int64_t N, int64_t K, int act, std::uintptr_t y, std::uintptr_t z,
                                int dtype, std::uintptr_t stream);
std::string linear_backward_cuda(std::uintptr_t gy, std::uintptr_t z, std::uintptr_t x,
                                 std::uintptr_t w, int64_t M, int64_t N, int64_t K, int act,
                                 std::uintptr_t gp_workspace, std::uintptr_t gx, std::uintptr_t gw,
                                 std::uintptr_t gb_f32, int dtype, std::uintptr_t stream);
// The activation's and the bias's gradients of the linear above in one pass:
// g [M, N] = gy * act'(z) (act 0..4) and, when gb is not 0, gb [N] = the column
// sums of g (in the op's dtype, summed in float32 in a fixed order) through
// part_f32, float32 scratch of part_rows >= 1 rows of N (any number: more rows
// spread the rows over more blocks, up to what fills the GPU).
std::string act_grad_cuda(std::uintptr_t gy, std::uintptr_t z, int64_t M, int64_t N, int act,
                          std::uintptr_t g, std::uintptr_t part_f32, int64_t part_rows,
                          std::uintptr_t gb, int dtype, std::uintptr_t stream);
std::string embedding_bag_forward_cuda(std::uintptr_t weight, int64_t V, int64_t D,
                                       std::uintptr_t indices, int64_t nnz,
                                       std::uintptr_t offsets, int64_t B, std::uintptr_t psw,
                                       int mode, std::uintptr_t out, int dtype,
                                       std::uintptr_t stream);
// grad_weight_f32 [V, D] float32, zeroed by the caller (atomics accumulate
// into it); grad_psw [nnz] in the op's dtype, may be 0.
std::string embedding_bag_backward_cuda(std::uintptr_t grad_out, std::uintptr_t weight, int64_t V,
                                        int64_t D, std::uintptr_t indices, int64_t nnz,
                                        std::uintptr_t offsets, int64_t B, std::uintptr_t psw,
                                        int mode, std::uintptr_t grad_weight_f32,
                                        std::uintptr_t grad_psw, int dtype, std::uintptr_t stream);
// mean, rstd [M] float32.
std::string layer_norm_forward_cuda(std::uintptr_t x, std::uintptr_t weight, std::uintptr_t bias,
                                    int64_t M, int64_t N, double eps, std::uintptr_t y,
                                    std::uintptr_t mean, std::uintptr_t rstd, int dtype,
                                    std::uintptr_t stream);
// gw_f32, gb_f32 [N] float32, zeroed by the caller (may be 0).
std::string layer_norm_backward_cuda(std::uintptr_t gy, std::uintptr_t x, std::uintptr_t weight,
                                     std::uintptr_t mean, std::uintptr_t rstd, int64_t M,
                                     int64_t N, std::uintptr_t gx, std::uintptr_t gw_f32,
                                     std::uintptr_t gb_f32, int dtype, std::uintptr_t stream);
#endif

}  // namespace conveyor
