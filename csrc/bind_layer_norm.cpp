// Bindings of the row-wise layer norm op (see ops.h for the contract).
#include "bind_common.h"
#include "ops.h"

namespace conveyor::bind {

namespace {

template <typename T>
void forward(const py::object& x, const py::object& weight, const py::object& bias, double eps,
             const py::object& y, const py::object& mean, const py::object& rstd) {
  const auto [M, N] = shape2(x, "x");
  const T* xp = in_ptr<T>(x, "x", {M, N});
  const T* wp = in_ptr<T>(weight, "weight", {N});
  const T* bp = in_ptr<T>(bias, "bias", {N});
  T* yp = out_ptr<T>(y, "y", {M, N});
  T* mp = out_ptr<T>(mean, "mean", {M});
  T* rp = out_ptr<T>(rstd, "rstd", {M});
  if (!yp || !mp || !rp) throw py::value_error("y, mean and rstd are required");
  py::gil_scoped_release release;
  layer_norm_forward_cpu<T>(xp, wp, bp, M, N, eps, yp, mp, rp);
}

template <typename T>
void backward(const py::object& gy, const py::object& x, const py::object& weight,
              const py::object& mean, const py::object& rstd, const py::object& gx,
              const py::object& gw, const py::object& gb) {
  const auto [M, N] = shape2(x, "x");
  const T* gyp = in_ptr<T>(gy, "gy", {M, N});
  const T* xp = in_ptr<T>(x, "x", {M, N});
  const T* wp = in_ptr<T>(weight, "weight", {N});
  const T* mp = in_ptr<T>(mean, "mean", {M});
  const T* rp = in_ptr<T>(rstd, "rstd", {M});
  if (!gyp || !mp || !rp) throw py::value_error("gy, mean and rstd are required");
  T* gxp = out_ptr<T>(gx, "gx", {M, N});
  T* gwp = out_ptr<T>(gw, "gw", {N});
  T* gbp = out_ptr<T>(gb, "gb", {N});
  py::gil_scoped_release release;
  layer_norm_backward_cpu<T>(gyp, xp, wp, mp, rp, M, N, gxp, gwp, gbp);
}

}  // namespace

void bind_layer_norm(py::module_& m) {
  m.def(
      "layer_norm_forward",
      [](const py::object& x, const py::object& weight, const py::object& bias, double eps,
         const py::object& y, const py::object& mean, const py::object& rstd) {
        if (!(eps >= 0)) throw py::value_error("eps must be >= 0");
        if (is_f64(x, "x")) {
          forward<double>(x, weight, bias, eps, y, mean, rstd);
        } else {
          forward<float>(x, weight, bias, eps, y, mean, rstd);
        }
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("y"),
      py::arg("mean"), py::arg("rstd"),
      "y[M,N] = (x - mean) * rstd * weight + bias over each row; weight/bias [N] or None; "
      "mean, rstd [M] are written for the backward. float32 or float64.");
  m.def(
      "layer_norm_forward_ptr",
      [](std::uintptr_t x, std::uintptr_t weight, std::uintptr_t bias, int64_t M, int64_t N,
         double eps, std::uintptr_t y, std::uintptr_t mean, std::uintptr_t rstd, bool f64) {
        if (!(eps >= 0)) throw py::value_error("eps must be >= 0");
        if (M < 0 || N < 0) throw py::value_error("sizes must be >= 0");
        if ((mean == 0) != (rstd == 0)) throw py::value_error("mean and rstd: both or neither");
        py::gil_scoped_release release;
        if (f64) {
          layer_norm_forward_cpu<double>(
              reinterpret_cast<const double*>(x), reinterpret_cast<const double*>(weight),
              reinterpret_cast<const double*>(bias), M, N, eps, reinterpret_cast<double*>(y),
              reinterpret_cast<double*>(mean), reinterpret_cast<double*>(rstd));
        } else {
          layer_norm_forward_cpu<float>(
              reinterpret_cast<const float*>(x), reinterpret_cast<const float*>(weight),
              reinterpret_cast<const float*>(bias), M, N, eps, reinterpret_cast<float*>(y),
              reinterpret_cast<float*>(mean), reinterpret_cast<float*>(rstd));
        }
      },
      py::arg("x_ptr"), py::arg("weight_ptr"), py::arg("bias_ptr"), py::arg("M"), py::arg("N"),
      py::arg("eps"), py::arg("y_ptr"), py::arg("mean_ptr"), py::arg("rstd_ptr"), py::arg("f64"),
      "layer_norm_forward on host pointers of contiguous buffers the caller has checked "
      "(float32, or float64 if f64; weight/bias 0 for none; mean and rstd both 0 when no "
      "backward needs them).");
  m.def(
      "layer_norm_backward",
      [](const py::object& gy, const py::object& x, const py::object& weight,
         const py::object& mean, const py::object& rstd, const py::object& gx,
         const py::object& gw, const py::object& gb) {
        if (is_f64(x, "x")) {
          backward<double>(gy, x, weight, mean, rstd, gx, gw, gb);
        } else {
          backward<float>(gy, x, weight, mean, rstd, gx, gw, gb);
        }
      },
      py::arg("gy"), py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"),
      py::arg("gx"), py::arg("gw"), py::arg("gb"),
      "Gradients of layer_norm_forward: gx[M,N], gw[N], gb[N] (each may be None).");
#ifdef CONVEYOR_WITH_CUDA
  m.def(
      "layer_norm_forward_cuda",
      [](std::uintptr_t x, std::uintptr_t weight, std::uintptr_t bias, int64_t M, int64_t N,
         double eps, std::uintptr_t y, std::uintptr_t mean, std::uintptr_t rstd, int dtype,
         std::uintptr_t stream) {
        check_dtype_code(dtype);
        if (M < 0 || N < 0) throw py::value_error("sizes must be >= 0");
        std::string err;
        {
          py::gil_scoped_release release;
          err = layer_norm_forward_cuda(x, weight, bias, M, N, eps, y, mean, rstd, dtype, stream);
        }
        raise_if(err, "layer_norm_forward_cuda");
      },
      py::arg("x_ptr"), py::arg("weight_ptr"), py::arg("bias_ptr"), py::arg("M"), py::arg("N"),
      py::arg("eps"), py::arg("y_ptr"), py::arg("mean_ptr"), py::arg("rstd_ptr"),
      py::arg("dtype"), py::arg("stream"), "Device-pointer layer_norm_forward (mean/rstd float32).");
  m.def(
      "layer_norm_backward_cuda",
      [](std::uintptr_t gy, std::uintptr_t x, std::uintptr_t weight, std::uintptr_t mean,
         std::uintptr_t rstd, int64_t M, int64_t N, std::uintptr_t gx, std::uintptr_t gw,
         std::uintptr_t gb, int dtype, std::uintptr_t stream) {
        check_dtype_code(dtype);
        if (M < 0 || N < 0) throw py::value_error("sizes must be >= 0");
        std::string err;
        {
          py::gil_scoped_release release;
          err = layer_norm_backward_cuda(gy, x, weight, mean, rstd, M, N, gx, gw, gb, dtype,
                                         stream);
        }
        raise_if(err, "layer_norm_backward_cuda");
      },
      py::arg("gy_ptr"), py::arg("x_ptr"), py::arg("weight_ptr"), py::arg("mean_ptr"),
      py::arg("rstd_ptr"), py::arg("M"), py::arg("N"), py::arg("gx_ptr"), py::arg("gw_f32_ptr"),
      py::arg("gb_f32_ptr"), py::arg("dtype"), py::arg("stream"),
      "Device-pointer layer_norm_backward; gw/gb float32, zeroed by the caller.");
#endif
}

}  // namespace conveyor::bind
