// conveyor._C: the compiled ops. CPU ops take numpy arrays (or anything with
// the buffer protocol) and check every argument, so a bad call is a Python
// exception, never a crash. CUDA ops take raw device pointers and a stream
// from the Python wrappers, which keeps this module free of torch headers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "bind_common.h"
#include "cpu/threads.h"
#include "histogram.h"

#ifdef CONVEYOR_WITH_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

template <typename T>
void require(const py::array& a, const char* name, int ndim, bool writeable) {
  if (!a.dtype().is(py::dtype::of<T>())) {
    throw py::type_error(std::string(name) + ": expected dtype " +
                         py::str(py::dtype::of<T>()).cast<std::string>() + ", got " +
                         py::str(a.dtype()).cast<std::string>());
  }
  if (a.ndim() != ndim) {
    throw py::value_error(std::string(name) + ": expected " + std::to_string(ndim) +
                          " dimensions, got " + std::to_string(a.ndim()));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + ": must be C-contiguous");
  }
  if (writeable && !a.writeable()) {
    throw py::value_error(std::string(name) + ": must be writeable");
  }
}

void histogram_update(const py::array& values, const py::array& edges, py::array& counts) {
  require<float>(values, "values", 2, false);
  require<float>(edges, "edges", 2, false);
  require<int64_t>(counts, "counts", 2, true);
  const int64_t rows = values.shape(0), features = values.shape(1);
  const int64_t n_edges = edges.shape(1);
  if (edges.shape(0) != features) {
    throw py::value_error("edges: expected " + std::to_string(features) +
                          " rows (one per feature), got " + std::to_string(edges.shape(0)));
  }
  if (n_edges < 2) throw py::value_error("edges: need at least 2 edges per feature");
  if (counts.shape(0) != features || counts.shape(1) != conveyor::histogram_slots(n_edges)) {
    throw py::value_error("counts: expected shape (" + std::to_string(features) + ", " +
                          std::to_string(conveyor::histogram_slots(n_edges)) + ")");
  }
  const auto* v = static_cast<const float*>(values.data());
  const auto* e = static_cast<const float*>(edges.data());
  auto* c = static_cast<int64_t*>(counts.mutable_data());
  py::gil_scoped_release release;
  conveyor::histogram_update_cpu(v, rows, features, e, n_edges, c);
}

py::dict build_info() {
  py::dict info;
#ifdef CONVEYOR_WITH_OPENMP
  info["openmp"] = true;
  info["omp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["omp_max_threads"] = 1;
#endif
#ifdef CONVEYOR_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  #if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "conveyor compiled ops (C++/OpenMP on CPU, CUDA when built with it)";
  m.def("histogram_update", &histogram_update, py::arg("values"), py::arg("edges"),
        py::arg("counts"),
        "Add per-feature bin counts of float32 values[rows, features] into "
        "int64 counts[features, n_edges + 2] (slots: below, bins, above, NaN).");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) throw py::value_error("num_threads must be >= 1");
        conveyor::set_cpu_threads(n);
      },
      py::arg("n"),
      "Threads for the CPU ops (OpenMP), in every calling thread of the process; default: "
      "OMP_NUM_THREADS or all cores.");
  m.def("get_num_threads", &conveyor::cpu_threads,
        "Threads the CPU ops use (1 in a build without OpenMP).");
  conveyor::bind::bind_linear(m);
  conveyor::bind::bind_embedding_bag(m);
  conveyor::bind::bind_layer_norm(m);
  conveyor::bind::bind_mlp(m);
  m.def("build_info", &build_info, "How this module was built: OpenMP, CUDA, compiler.");
  m.def("cpu_wide_vectors", &conveyor::cpu_wide_vectors,
        "Whether this CPU has AVX-512F: the small-batch linear forward's 4 x 4 dot-product "
        "tiles run only then (the dispatcher's CPU linear rule reads it).");
  m.def("linear_uses_dot_products", &conveyor::linear_uses_dot_products, py::arg("M"),
        py::arg("N"), py::arg("K"),
        "Whether the C++ linear forward computes y [M, N] = x [M, K] W^T as dot-product "
        "tiles (small batches, narrow layers) rather than through the packed GEMM.");
#ifdef CONVEYOR_WITH_CUDA
  m.def("cuda_device_count", &conveyor::cuda_device_count,
        "Visible CUDA devices; 0 without a driver or device.");
  m.def(
      "histogram_update_cuda",
      [](std::uintptr_t values, int64_t rows, int64_t features, std::uintptr_t edges,
         int64_t n_edges, std::uintptr_t counts, std::uintptr_t stream, int64_t lut_cells,
         int64_t stages) {
        if (rows < 0 || features < 0) throw py::value_error("rows and features must be >= 0");
        if (n_edges < 2) throw py::value_error("edges: need at least 2 edges per feature");
        std::string err;
        {
          py::gil_scoped_release release;
          err = conveyor::histogram_update_cuda(
              reinterpret_cast<const float*>(values), rows, features,
              reinterpret_cast<const float*>(edges), n_edges, reinterpret_cast<int64_t*>(counts),
              lut_cells, stages, stream);
        }
        if (!err.empty()) throw std::runtime_error("histogram_update_cuda: " + err);
      },
      py::arg("values_ptr"), py::arg("rows"), py::arg("features"), py::arg("edges_ptr"),
      py::arg("n_edges"), py::arg("counts_ptr"), py::arg("stream"), py::arg("lut_cells") = 0,
      py::arg("stages") = 0,
      "Device-pointer histogram update on a CUDA stream (see histogram_update). lut_cells: "
      "0 picks the kernel by size, -1 never uses the lookup table, a power of two in "
      "[16, 4096] forces a table of that many cells per feature where it fits. stages: 0 "
      "automatic, -1 loads values into registers, 2, 3, 4, 6 or 8 streams them through "
      "shared memory "
      "with that many asynchronous copies in flight per thread (table kernel, 4-wide "
      "loads).");
#else
  m.def("cuda_device_count", []() { return 0; }, "Always 0: built without CUDA.");
#endif
}
