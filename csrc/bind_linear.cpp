// Bindings of the fused linear op (see ops.h for the contract).
#include <limits>
#include <string>

#include "bind_common.h"
#include "ops.h"

namespace conveyor::bind {

namespace {

template <typename T>
void forward(const py::object& x, const py::object& w, const py::object& b, int act,
             const py::object& y, const py::object& z) {
  const auto [M, K] = shape2(x, "x");
  const int64_t N = shape2(w, "w").first;
  const T* xp = in_ptr<T>(x, "x", {M, K});
  const T* wp = in_ptr<T>(w, "w", {N, K});
  const T* bp = in_ptr<T>(b, "b", {N});
  T* yp = out_ptr<T>(y, "y", {M, N});
  T* zp = out_ptr<T>(z, "z", {M, N});
  py::gil_scoped_release release;
  linear_forward_cpu<T>(xp, wp, bp, M, N, K, act, yp, zp);
}

template <typename T>
void backward(const py::object& gy, const py::object& z, const py::object& x,
              const py::object& w, int act, const py::object& gx, const py::object& gw,
              const py::object& gb) {
  const auto [M, K] = shape2(x, "x");
  const int64_t N = shape2(w, "w").first;
  const T* gyp = in_ptr<T>(gy, "gy", {M, N});
  const T* zp = in_ptr<T>(z, "z", {M, N});
  if (act != kActNone && !zp) throw py::value_error("z: the pre-activation is needed for act != 0");
  const T* xp = in_ptr<T>(x, "x", {M, K});
  const T* wp = in_ptr<T>(w, "w", {N, K});
  T* gxp = out_ptr<T>(gx, "gx", {M, K});
  T* gwp = out_ptr<T>(gw, "gw", {N, K});
  T* gbp = out_ptr<T>(gb, "gb", {N});
  py::gil_scoped_release release;
  linear_backward_cpu<T>(gyp, zp, xp, wp, M, N, K, act, gxp, gwp, gbp);
}

}  // namespace

void bind_linear(py::module_& m) {
  m.def(
      "linear_forward",
      [](const py::object& x, const py::object& w, const py::object& b, int act,
         const py::object& y, const py::object& z) {
        check_act(act);
        if (is_f64(x, "x")) {
          forward<double>(x, w, b, act, y, z);
        } else {
          forward<float>(x, w, b, act, y, z);
        }
      },
      py::arg("x"), py::arg("w"), py::arg("b"), py::arg("act"), py::arg("y"), py::arg("z"),
      "y[M,N] = act(x[M,K] w[N,K]^T + b[N]); z (or None) receives the pre-activation. "
      "float32 or float64; act: 0 none, 1 relu, 2 gelu (erf), 3 gelu (tanh), 4 silu.");
  m.def(
      "linear_forward_ptr",
      [](std::uintptr_t x, std::uintptr_t w, std::uintptr_t b, int64_t M, int64_t N, int64_t K,
         int act, std::uintptr_t y, std::uintptr_t z, bool f64) {
        check_act(act);
        if (M < 0 || N < 0 || K < 0) throw py::value_error("sizes must be >= 0");
        py::gil_scoped_release release;
        if (f64) {
          linear_forward_cpu<double>(
              reinterpret_cast<const double*>(x), reinterpret_cast<const double*>(w),
              reinterpret_cast<const double*>(b), M, N, K, act, reinterpret_cast<double*>(y),
              reinterpret_cast<double*>(z));
        } else {
          linear_forward_cpu<float>(
              reinterpret_cast<const float*>(x), reinterpret_cast<const float*>(w),
              reinterpret_cast<const float*>(b), M, N, K, act, reinterpret_cast<float*>(y),
              reinterpret_cast<float*>(z));
        }
      },
      py::arg("x_ptr"), py::arg("w_ptr"), py::arg("b_ptr"), py::arg("M"), py::arg("N"),
      py::arg("K"), py::arg("act"), py::arg("y_ptr"), py::arg("z_ptr"), py::arg("f64"),
      "linear_forward on host pointers of contiguous buffers the caller has checked "
      "(float32, or float64 if f64; b_ptr and z_ptr 0 for none).");
  m.def(
      "linear_backward",
      [](const py::object& gy, const py::object& z, const py::object& x, const py::object& w,
         int act, const py::object& gx, const py::object& gw, const py::object& gb) {
        check_act(act);
        if (is_f64(x, "x")) {
          backward<double>(gy, z, x, w, act, gx, gw, gb);
        } else {
          backward<float>(gy, z, x, w, act, gx, gw, gb);
        }
      },
      py::arg("gy"), py::arg("z"), py::arg("x"), py::arg("w"), py::arg("act"), py::arg("gx"),
      py::arg("gw"), py::arg("gb"),
      "Gradients of linear_forward: gx[M,K], gw[N,K], gb[N] (each may be None).");
#ifdef CONVEYOR_WITH_CUDA
  m.def(
      "linear_forward_cuda",
      [](std::uintptr_t x, std::uintptr_t w, std::uintptr_t b, int64_t M, int64_t N, int64_t K,
         int act, std::uintptr_t y, std::uintptr_t z, int dtype, std::uintptr_t stream) {
        check_act(act);
        check_dtype_code(dtype);
        if (M < 0 || N < 0 || K < 0) throw py::value_error("sizes must be >= 0");
        std::string err;
        {
          py::gil_scoped_release release;
          err = linear_forward_cuda(x, w, b, M, N, K, act, y, z, dtype, stream);
        }
        raise_if(err, "linear_forward_cuda");
      },
      py::arg("x_ptr"), py::arg("w_ptr"), py::arg("b_ptr"), py::arg("M"), py::arg("N"),
      py::arg("K"), py::arg("act"), py::arg("y_ptr"), py::arg("z_ptr"), py::arg("dtype"),
      py::arg("stream"), "Device-pointer linear_forward (0 for an absent pointer).");
  m.def(
      "linear_backward_cuda",
      [](std::uintptr_t gy, std::uintptr_t z, std::uintptr_t x, std::uintptr_t w, int64_t M,
         int64_t N, int64_t K, int act, std::uintptr_t gp, std::uintptr_t gx, std::uintptr_t gw,
         std::uintptr_t gb, int dtype, std::uintptr_t stream) {
        check_act(act);
        check_dtype_code(dtype);
        if (M < 0 || N < 0 || K < 0) throw py::value_error("sizes must be >= 0");
        std::string err;
        {
          py::gil_scoped_release release;
          err = linear_backward_cuda(gy, z, x, w, M, N, K, act, gp, gx, gw, gb, dtype, stream);
        }
        raise_if(err, "linear_backward_cuda");
      },
      py::arg("gy_ptr"), py::arg("z_ptr"), py::arg("x_ptr"), py::arg("w_ptr"), py::arg("M"),
      py::arg("N"), py::arg("K"), py::arg("act"), py::arg("gp_workspace_ptr"), py::arg("gx_ptr"),
      py::arg("gw_ptr"), py::arg("gb_f32_ptr"), py::arg("dtype"), py::arg("stream"),
      "Device-pointer linear_backward; gp workspace [M,N] in the op dtype, gb in float32 zeroed.");
  m.def(
      "act_grad_cuda",
      [](std::uintptr_t gy, std::uintptr_t z, int64_t M, int64_t N, int act, std::uintptr_t g,
         std::uintptr_t part, int64_t part_rows, std::uintptr_t gb, int dtype,
         std::uintptr_t stream) {
        check_act(act);
        check_dtype_code(dtype);
        if (M < 0 || N < 0) throw py::value_error("sizes must be >= 0");
        if (N > std::numeric_limits<int>::max())
          throw py::value_error("N: at most " + std::to_string(std::numeric_limits<int>::max()));
        if (gb != 0 && M > 0 && N > 0 && (part == 0 || part_rows < 1))
          throw py::value_error("part_f32_ptr: the bias gradient needs a buffer of >= 1 row");
        std::string err;
        {
          py::gil_scoped_release release;
          err = act_grad_cuda(gy, z, M, N, act, g, part, part_rows, gb, dtype, stream);
        }
        raise_if(err, "act_grad_cuda");
      },
      py::arg("gy_ptr"), py::arg("z_ptr"), py::arg("M"), py::arg("N"), py::arg("act"),
      py::arg("g_ptr"), py::arg("part_f32_ptr"), py::arg("part_rows"), py::arg("gb_ptr"),
      py::arg("dtype"), py::arg("stream"),
      "g[M,N] = gy * act'(z) and, if gb_ptr, gb[N] = g.sum(0) (op dtype) through float32 "
      "scratch part[part_rows, N]; contiguous device buffers.");
#endif
}

}  // namespace conveyor::bind
