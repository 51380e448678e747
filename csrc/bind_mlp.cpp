// Bindings of the whole-MLP inference ops (see ops.h): mlp_forward packs the
// weights on every call; PackedMLP packs them once and is reused.
#include <memory>
#include <vector>

#include <pybind11/stl.h>

#include "bind_common.h"
#include "ops.h"

namespace conveyor::bind {

namespace {

// The (w, b, act) layers as pointers and sizes, each checked against the previous width.
template <typename T>
struct Layers {
  std::vector<int64_t> dims;  // [in, out_0, out_1, ...]
  std::vector<const T*> ws, bs;
  std::vector<int> acts;
};

template <typename T>
Layers<T> read_layers(int64_t in_features, const py::list& layers) {
  if (layers.empty()) throw py::value_error("layers: need at least one (w, b, act)");
  Layers<T> out;
  out.dims.push_back(in_features);
  for (const auto& item : layers) {
    const auto layer = item.cast<py::tuple>();
    if (layer.size() != 3) throw py::value_error("layers: each item is (w, b or None, act)");
    const int64_t N = shape2(layer[0], "w").first;
    out.ws.push_back(in_ptr<T>(layer[0], "w", {N, out.dims.back()}));
    out.bs.push_back(in_ptr<T>(layer[1], "b", {N}));
    const int act = layer[2].cast<int>();
    check_act(act, kActTanh);
    out.acts.push_back(act);
    out.dims.push_back(N);
  }
  return out;
}

template <typename T>
void mlp(const py::object& x, const py::list& layers, const py::object& out) {
  const auto [M, K0] = shape2(x, "x");
  const Layers<T> l = read_layers<T>(K0, layers);
  const T* xp = in_ptr<T>(x, "x", {M, K0});
  T* op = out_ptr<T>(out, "out", {M, l.dims.back()});
  py::gil_scoped_release release;
  mlp_forward_cpu<T>(xp, M, l.dims.data(), static_cast<int64_t>(l.ws.size()), l.ws.data(),
                     l.bs.data(), l.acts.data(), op);
}

// PackedMLP for float32 or float64, chosen by the first weight's dtype.
class Packed {
 public:
  explicit Packed(const py::list& layers) {
    if (layers.empty()) throw py::value_error("layers: need at least one (w, b, act)");
    const py::object w0 = layers[0].cast<py::tuple>()[0];
    f64_ = is_f64(w0, "w");
    const int64_t in = shape2(w0, "w").second;
    if (f64_) {
      d_ = build<double>(in, layers);
    } else {
      f_ = build<float>(in, layers);
    }
  }

  void forward(const py::object& x, const py::object& out) const {
    const auto [M, K] = shape2(x, "x");
    if (K != dims_.front()) {
      throw py::value_error("x: expected " + std::to_string(dims_.front()) + " features, got " +
                            std::to_string(K));
    }
    if (f64_) {
      const double* xp = in_ptr<double>(x, "x", {M, K});
      double* op = out_ptr<double>(out, "out", {M, dims_.back()});
      py::gil_scoped_release release;
      d_->forward(xp, M, op);
    } else {
      const float* xp = in_ptr<float>(x, "x", {M, K});
      float* op = out_ptr<float>(out, "out", {M, dims_.back()});
      py::gil_scoped_release release;
      f_->forward(xp, M, op);
    }
  }

  void forward_ptr(std::uintptr_t x, int64_t M, std::uintptr_t out) const {
    if (M < 0) throw py::value_error("M must be >= 0");
    py::gil_scoped_release release;
    if (f64_) {
      d_->forward(reinterpret_cast<const double*>(x), M, reinterpret_cast<double*>(out));
    } else {
      f_->forward(reinterpret_cast<const float*>(x), M, reinterpret_cast<float*>(out));
    }
  }

  const std::vector<int64_t>& dims() const { return dims_; }
  bool f64() const { return f64_; }

 private:
  template <typename T>
  std::unique_ptr<PackedMLP<T>> build(int64_t in, const py::list& layers) {
    const Layers<T> l = read_layers<T>(in, layers);
    dims_ = l.dims;
    const std::vector<int64_t> widths(l.dims.begin() + 1, l.dims.end());
    return std::make_unique<PackedMLP<T>>(in, l.ws, l.bs, widths, l.acts);
  }

  bool f64_ = false;
  std::vector<int64_t> dims_;
  std::unique_ptr<PackedMLP<float>> f_;
  std::unique_ptr<PackedMLP<double>> d_;
};

}  // namespace

void bind_mlp(py::module_& m) {
  m.def(
      "mlp_forward",
      [](const py::object& x, const py::list& layers, const py::object& out) {
        if (is_f64(x, "x")) {
          mlp<double>(x, layers, out);
        } else {
          mlp<float>(x, layers, out);
        }
      },
      py::arg("x"), py::arg("layers"), py::arg("out"),
      "Inference through a whole MLP in one call: layers is a list of (w[N,K], b[N] or None, "
      "act); out[M, N_last]. float32 or float64; act codes 0..4 as linear_forward, 5 sigmoid, "
      "6 tanh.");
  py::class_<Packed>(m, "PackedMLP",
                     "An MLP's weights packed once for repeated inference (the serving path).")
      .def(py::init<const py::list&>(), py::arg("layers"),
           "layers: (w[N,K], b[N] or None, act) as for mlp_forward, all float32 or all float64; "
           "the arrays are copied.")
      .def("forward", &Packed::forward, py::arg("x"), py::arg("out"),
           "out[M, N_last] = the MLP of x[M, K_0] (checked numpy arrays).")
      .def("forward_ptr", &Packed::forward_ptr, py::arg("x_ptr"), py::arg("M"),
           py::arg("out_ptr"),
           "forward on host pointers of contiguous buffers of the packed dtype the caller has "
           "checked.")
      .def_property_readonly("dims", &Packed::dims, "[in, out_0, ..., out_last] feature sizes.")
      .def_property_readonly("f64", &Packed::f64, "whether the weights are float64.");
}

}  // namespace conveyor::bind
