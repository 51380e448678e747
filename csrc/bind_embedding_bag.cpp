// Bindings of the embedding bag op (see ops.h for the contract).
#include "bind_common.h"
#include "ops.h"

namespace conveyor::bind {

namespace {

void check_mode(int mode, bool has_psw) {
  if (mode != kBagSum && mode != kBagMean) throw py::value_error("mode: expected 0 (sum) or 1 (mean)");
  if (has_psw && mode != kBagSum) {
    throw py::value_error("per_sample_weights: only supported with mode sum (as in torch)");
  }
}

template <typename T>
void forward(const py::object& weight, const py::object& indices, const py::object& offsets,
             const py::object& psw, int mode, const py::object& out) {
  const auto [V, D] = shape2(weight, "weight");
  const int64_t nnz = length(indices, "indices"), B = length(offsets, "offsets");
  const T* wp = in_ptr<T>(weight, "weight", {V, D});
  const int64_t* ip = in_ptr<int64_t>(indices, "indices", {nnz});
  const int64_t* op = in_ptr<int64_t>(offsets, "offsets", {B});
  const T* pp = in_ptr<T>(psw, "per_sample_weights", {nnz});
  T* outp = out_ptr<T>(out, "out", {B, D});
  std::string err;
  {
    py::gil_scoped_release release;
    err = embedding_bag_forward_cpu<T>(wp, V, D, ip, nnz, op, B, pp, mode, outp);
  }
  if (!err.empty()) throw py::value_error("embedding_bag_forward: " + err);
}

template <typename T>
void backward(const py::object& grad_out, const py::object& weight, const py::object& indices,
              const py::object& offsets, const py::object& psw, int mode,
              const py::object& grad_weight, const py::object& grad_psw) {
  const auto [V, D] = shape2(weight, "weight");
  const int64_t nnz = length(indices, "indices"), B = length(offsets, "offsets");
  const T* gop = in_ptr<T>(grad_out, "grad_out", {B, D});
  const T* wp = in_ptr<T>(weight, "weight", {V, D});
  const int64_t* ip = in_ptr<int64_t>(indices, "indices", {nnz});
  const int64_t* op = in_ptr<int64_t>(offsets, "offsets", {B});
  const T* pp = in_ptr<T>(psw, "per_sample_weights", {nnz});
  T* gwp = out_ptr<T>(grad_weight, "grad_weight", {V, D});
  T* gpp = out_ptr<T>(grad_psw, "grad_per_sample_weights", {nnz});
  if (!gwp) throw py::value_error("grad_weight: required");
  std::string err;
  {
    py::gil_scoped_release release;
    err = embedding_bag_backward_cpu<T>(gop, wp, V, D, ip, nnz, op, B, pp, mode, gwp, gpp);
  }
  if (!err.empty()) throw py::value_error("embedding_bag_backward: " + err);
}

}  // namespace

void bind_embedding_bag(py::module_& m) {
  m.def(
      "embedding_bag_forward",
      [](const py::object& weight, const py::object& indices, const py::object& offsets,
         const py::object& psw, int mode, const py::object& out) {
        check_mode(mode, !psw.is_none());
        if (is_f64(weight, "weight")) {
          forward<double>(weight, indices, offsets, psw, mode, out);
        } else {
          forward<float>(weight, indices, offsets, psw, mode, out);
        }
      },
      py::arg("weight"), py::arg("indices"), py::arg("offsets"), py::arg("per_sample_weights"),
      py::arg("mode"), py::arg("out"),
      "out[B,D] = per-bag sum (mode 0) or mean (mode 1) of weight[V,D] rows; int64 indices "
      "[nnz] and offsets [B] (bag starts); per_sample_weights [nnz] or None (sum only).");
  // The same op on host pointers, for kernels/embedding_bag.py: turning five
  // tensors into numpy arrays and checking them again here cost ~4 us a call
  // (the 10^5-row shapes in bench_ops take 60-130 us). That wrapper has
  // checked shapes, dtypes, devices and contiguity; index and offset values
  // are checked here as in embedding_bag_forward.
  m.def(
      "embedding_bag_forward_ptr",
      [](std::uintptr_t weight, int64_t V, int64_t D, std::uintptr_t indices, int64_t nnz,
         std::uintptr_t offsets, int64_t B, std::uintptr_t psw, int mode, std::uintptr_t out,
         bool f64) {
        check_mode(mode, psw != 0);
        if (V < 0 || D < 0 || nnz < 0 || B < 0) throw py::value_error("sizes must be >= 0");
        std::string err;
        {
          py::gil_scoped_release release;
          if (f64) {
            err = embedding_bag_forward_cpu<double>(
                reinterpret_cast<const double*>(weight), V, D,
                reinterpret_cast<const int64_t*>(indices), nnz,
                reinterpret_cast<const int64_t*>(offsets), B,
                reinterpret_cast<const double*>(psw), mode, reinterpret_cast<double*>(out));
          } else {
            err = embedding_bag_forward_cpu<float>(
                reinterpret_cast<const float*>(weight), V, D,
                reinterpret_cast<const int64_t*>(indices), nnz,
                reinterpret_cast<const int64_t*>(offsets), B,
                reinterpret_cast<const float*>(psw), mode, reinterpret_cast<float*>(out));
          }
        }
        if (!err.empty()) throw py::value_error("embedding_bag_forward: " + err);
      },
      py::arg("weight_ptr"), py::arg("V"), py::arg("D"), py::arg("indices_ptr"), py::arg("nnz"),
      py::arg("offsets_ptr"), py::arg("B"), py::arg("psw_ptr"), py::arg("mode"),
      py::arg("out_ptr"), py::arg("f64"),
      "embedding_bag_forward on host pointers of contiguous buffers the caller has checked "
      "(float32, or float64 if f64; int64 indices and offsets; psw_ptr 0 for none).");
  m.def(
      "embedding_bag_backward",
      [](const py::object& grad_out, const py::object& weight, const py::object& indices,
         const py::object& offsets, const py::object& psw, int mode,
         const py::object& grad_weight, const py::object& grad_psw) {
        check_mode(mode, !psw.is_none());
        if (is_f64(weight, "weight")) {
          backward<double>(grad_out, weight, indices, offsets, psw, mode, grad_weight, grad_psw);
        } else {
          backward<float>(grad_out, weight, indices, offsets, psw, mode, grad_weight, grad_psw);
        }
      },
      py::arg("grad_out"), py::arg("weight"), py::arg("indices"), py::arg("offsets"),
      py::arg("per_sample_weights"), py::arg("mode"), py::arg("grad_weight"),
      py::arg("grad_per_sample_weights"),
      "Dense grad_weight[V,D] (overwritten) and, if given, grad_per_sample_weights[nnz].");
#ifdef CONVEYOR_WITH_CUDA
  m.def(
      "embedding_bag_forward_cuda",
      [](std::uintptr_t weight, int64_t V, int64_t D, std::uintptr_t indices, int64_t nnz,
         std::uintptr_t offsets, int64_t B, std::uintptr_t psw, int mode, std::uintptr_t out,
         int dtype, std::uintptr_t stream) {
        check_mode(mode, psw != 0);
        check_dtype_code(dtype);
        if (V < 0 || D < 0 || nnz < 0 || B < 0) throw py::value_error("sizes must be >= 0");
        std::string err;
        {
          py::gil_scoped_release release;
          err = embedding_bag_forward_cuda(weight, V, D, indices, nnz, offsets, B, psw, mode, out,
                                           dtype, stream);
        }
        raise_if(err, "embedding_bag_forward_cuda");
      },
      py::arg("weight_ptr"), py::arg("V"), py::arg("D"), py::arg("indices_ptr"), py::arg("nnz"),
      py::arg("offsets_ptr"), py::arg("B"), py::arg("psw_ptr"), py::arg("mode"),
      py::arg("out_ptr"), py::arg("dtype"), py::arg("stream"),
      "Device-pointer embedding_bag_forward (indices are not range-checked on the device).");
  m.def(
      "embedding_bag_backward_cuda",
      [](std::uintptr_t grad_out, std::uintptr_t weight, int64_t V, int64_t D,
         std::uintptr_t indices, int64_t nnz, std::uintptr_t offsets, int64_t B,
         std::uintptr_t psw, int mode, std::uintptr_t grad_weight, std::uintptr_t grad_psw,
         int dtype, std::uintptr_t stream) {
        check_mode(mode, psw != 0);
        check_dtype_code(dtype);
        if (V < 0 || D < 0 || nnz < 0 || B < 0) throw py::value_error("sizes must be >= 0");
        std::string err;
        {
          py::gil_scoped_release release;
          err = embedding_bag_backward_cuda(grad_out, weight, V, D, indices, nnz, offsets, B, psw,
                                            mode, grad_weight, grad_psw, dtype, stream);
        }
        raise_if(err, "embedding_bag_backward_cuda");
      },
      py::arg("grad_out_ptr"), py::arg("weight_ptr"), py::arg("V"), py::arg("D"),
      py::arg("indices_ptr"), py::arg("nnz"), py::arg("offsets_ptr"), py::arg("B"),
      py::arg("psw_ptr"), py::arg("mode"), py::arg("grad_weight_f32_ptr"),
      py::arg("grad_psw_ptr"), py::arg("dtype"), py::arg("stream"),
      "Device-pointer embedding_bag_backward; grad_weight float32, zeroed by the caller.");
#endif
}

}  // namespace conveyor::bind
