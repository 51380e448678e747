// Argument checks shared by the per-op binding files: every buffer handed to
// a CPU op is checked for dtype, shape, C-contiguity and (outputs)
// writeability, so a bad call raises a Python exception instead of crashing.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "ops.h"

namespace conveyor::bind {

namespace py = pybind11;

inline std::string shape_str(std::initializer_list<int64_t> shape) {
  std::string s = "(";
  bool first = true;
  for (int64_t d : shape) {
    if (!first) s += ", ";
    s += std::to_string(d);
    first = false;
  }
  return s + (shape.size() == 1 ? ",)" : ")");
}

inline py::array as_array(const py::object& obj, const char* name) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + ": expected a numpy array, got " +
                         py::str(py::type::of(obj)).cast<std::string>());
  }
  return py::reinterpret_borrow<py::array>(obj);
}

// Checks dtype == T, exact shape, C-contiguous and (if asked) writeable.
template <typename T>
py::array checked(const py::object& obj, const char* name, std::initializer_list<int64_t> shape,
                  bool writeable = false) {
  py::array a = as_array(obj, name);
  if (!a.dtype().is(py::dtype::of<T>())) {
    throw py::type_error(std::string(name) + ": expected dtype " +
                         py::str(py::dtype::of<T>()).cast<std::string>() + ", got " +
                         py::str(a.dtype()).cast<std::string>());
  }
  bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
  int i = 0;
  for (int64_t d : shape) same = same && a.shape(i++) == d;
  if (!same) {
    std::string got = "(";
    for (py::ssize_t k = 0; k < a.ndim(); ++k) got += (k ? ", " : "") + std::to_string(a.shape(k));
    throw py::value_error(std::string(name) + ": expected shape " + shape_str(shape) + ", got " +
                          got + ")");
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + ": must be C-contiguous");
  }
  if (writeable && !a.writeable()) throw py::value_error(std::string(name) + ": must be writeable");
  return a;
}

template <typename T>
const T* in_ptr(const py::object& obj, const char* name, std::initializer_list<int64_t> shape) {
  if (obj.is_none()) return nullptr;
  return static_cast<const T*>(checked<T>(obj, name, shape).data());
}

template <typename T>
T* out_ptr(const py::object& obj, const char* name, std::initializer_list<int64_t> shape) {
  if (obj.is_none()) return nullptr;
  return static_cast<T*>(checked<T>(obj, name, shape, true).mutable_data());
}

// 2-D shape of a float array, for ops that read their sizes from the input.
inline std::pair<int64_t, int64_t> shape2(const py::object& obj, const char* name) {
  py::array a = as_array(obj, name);
  if (a.ndim() != 2) {
    throw py::value_error(std::string(name) + ": expected 2 dimensions, got " +
                          std::to_string(a.ndim()));
  }
  return {a.shape(0), a.shape(1)};
}

inline int64_t length(const py::object& obj, const char* name) {
  py::array a = as_array(obj, name);
  if (a.ndim() != 1) {
    throw py::value_error(std::string(name) + ": expected 1 dimension, got " +
                          std::to_string(a.ndim()));
  }
  return a.shape(0);
}

inline bool is_f64(const py::object& obj, const char* name) {
  py::array a = as_array(obj, name);
  if (a.dtype().is(py::dtype::of<float>())) return false;
  if (a.dtype().is(py::dtype::of<double>())) return true;
  throw py::type_error(std::string(name) + ": expected dtype float32 or float64, got " +
                       py::str(a.dtype()).cast<std::string>());
}

inline void raise_if(const std::string& err, const char* op) {
  if (!err.empty()) throw std::runtime_error(std::string(op) + ": " + err);
}

// The fused linear op takes codes 0..4; the whole-MLP paths also sigmoid (5) and tanh (6).
inline void check_act(int act, int last = kActSilu) {
  if (act < 0 || act > last) {
    throw py::value_error("act: expected a code in 0.." + std::to_string(last) + ", got " +
                          std::to_string(act));
  }
}

inline void check_dtype_code(int dtype) {
  if (dtype < 0 || dtype > 2) {
    throw py::value_error("dtype: expected 0 (float32), 1 (float16) or 2 (bfloat16)");
  }
}

void bind_linear(py::module_& m);
void bind_embedding_bag(py::module_& m);
void bind_layer_norm(py::module_& m);
void bind_mlp(py::module_& m);

}  // namespace conveyor::bind
