// Operator schemas of nst_ext: the single place that declares them, and the
// one place that holds the forward's per-shape algorithm choices.
//
// Kernels live per backend (csrc/cpu, csrc/cuda) and register themselves with
// TORCH_LIBRARY_IMPL; fake (meta) kernels and autograd are registered from
// Python (nst_ext/_ops.py) so that torch.compile can trace through the ops.
//
// Shape and dtype contracts (B batch, C channels, H*W = n spatial positions):
//   gram(features[B,C,H,W]) -> gram[B,C,C]
//   gram_backward(grad_gram[B,C,C], features[B,C,H,W]) -> grad_features[B,C,H,W]
//   style_loss(features[B,C,H,W], target[C,C] | [1,C,C] | [B,C,C])
//       -> (loss[], residual[B,C,C])       residual = gram(features) - target
//   style_loss_backward(grad_loss[], features[B,C,H,W], residual[B,C,C])
//       -> grad_features[B,C,H,W]
// Gram, loss and residual use the accumulation dtype: float32 for
// float16/bfloat16/float32 features, float64 for float64 features. Gradients
// with respect to features have the features' dtype, and the features' layout
// when that is channels-last (NCHW-contiguous otherwise).

#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "common.h"

namespace nst_ext {
namespace {

enum class Mode { kAuto, kOwn, kBlas };

std::mutex choices_mutex;
std::map<ForwardKey, Algorithm> choices;  // guarded by choices_mutex

bool parse_mode(const std::string& text, Mode& mode) {
  if (text == "auto" || text.empty()) mode = Mode::kAuto;
  else if (text == "own") mode = Mode::kOwn;
  else if (text == "blas") mode = Mode::kBlas;
  else return false;
  return true;
}

Mode& current_mode() {  // guarded by choices_mutex
  static Mode mode = [] {
    Mode from_environment = Mode::kAuto;
    const char* text = std::getenv("NST_EXT_GRAM_ALGORITHM");
    if (text != nullptr && !parse_mode(text, from_environment)) {
      TORCH_WARN("nst_ext: NST_EXT_GRAM_ALGORITHM=", text, " is not auto, own or blas; using auto");
    }
    return from_environment;
  }();
  return mode;
}

const char* mode_name(Mode mode) {
  return mode == Mode::kOwn ? "own" : mode == Mode::kBlas ? "blas" : "auto";
}

// Candidates run kRepeats times after one warm-up; the fastest run counts.
constexpr int kRepeats = 3;

}  // namespace

bool ForwardKey::operator<(const ForwardKey& other) const {
  return std::tie(device_type, device_index, op, dtype, batch, channels, spatial, layout) <
         std::tie(other.device_type, other.device_index, other.op, other.dtype, other.batch, other.channels,
                  other.spatial, other.layout);
}

ForwardKey forward_key(const at::Tensor& features, int op) {
  return ForwardKey{static_cast<int>(features.device().type()), features.device().index(), op,
                    static_cast<int>(features.scalar_type()), features.size(0), features.size(1),
                    spatial_size(features), static_cast<int>(layout_of(features))};
}

Algorithm choose_forward_algorithm(const ForwardKey& key, const std::function<void(Algorithm)>& run,
                                   const std::function<double(const std::function<void()>&)>& time,
                                   bool can_time) {
  {
    std::lock_guard<std::mutex> lock(choices_mutex);
    const Mode mode = current_mode();
    if (mode == Mode::kOwn) return Algorithm::kOwn;
    if (mode == Mode::kBlas) return Algorithm::kBlas;
    const auto found = choices.find(key);
    if (found != choices.end()) return found->second;
  }
  if (!can_time) return Algorithm::kBlas;
  double best[2];
  for (const Algorithm candidate : {Algorithm::kOwn, Algorithm::kBlas}) {
    run(candidate);  // warm-up: allocator, library handles, caches
    double fastest = std::numeric_limits<double>::infinity();
    for (int repeat = 0; repeat < kRepeats; ++repeat)
      fastest = std::min(fastest, time([&] { run(candidate); }));
    best[static_cast<int>(candidate)] = fastest;
  }
  const Algorithm chosen = best[0] <= best[1] ? Algorithm::kOwn : Algorithm::kBlas;
  std::lock_guard<std::mutex> lock(choices_mutex);
  return choices.emplace(key, chosen).first->second;  // a concurrent first call may have won
}

}  // namespace nst_ext

namespace {

PyObject* set_gram_algorithm(PyObject*, PyObject* argument) {
  const char* text = PyUnicode_AsUTF8(argument);
  if (text == nullptr) return nullptr;
  nst_ext::Mode mode;
  if (!nst_ext::parse_mode(text, mode)) {
    PyErr_Format(PyExc_ValueError, "gram algorithm must be 'auto', 'own' or 'blas', got '%s'", text);
    return nullptr;
  }
  std::lock_guard<std::mutex> lock(nst_ext::choices_mutex);
  nst_ext::current_mode() = mode;
  Py_RETURN_NONE;
}

PyObject* get_gram_algorithm(PyObject*, PyObject*) {
  std::lock_guard<std::mutex> lock(nst_ext::choices_mutex);
  return PyUnicode_FromString(nst_ext::mode_name(nst_ext::current_mode()));
}

// [(device_type, device_index, op, dtype, B, C, n, layout, "own" | "blas"), ...]
// with the enums as their names, for nst_ext.gram_algorithm_choices().
PyObject* gram_algorithm_choices(PyObject*, PyObject*) {
  std::lock_guard<std::mutex> lock(nst_ext::choices_mutex);
  PyObject* list = PyList_New(0);
  if (list == nullptr) return nullptr;
  static const char* layouts[] = {"nchw", "channels_last", "other"};
  for (const auto& [key, algorithm] : nst_ext::choices) {
    const std::string device = c10::DeviceTypeName(static_cast<c10::DeviceType>(key.device_type), true);
    const std::string dtype = c10::toString(static_cast<at::ScalarType>(key.dtype));
    PyObject* item = Py_BuildValue("(siss LLL ss)", device.c_str(), static_cast<int>(key.device_index),
                                   key.op == 0 ? "gram" : "style_loss", dtype.c_str(),
                                   static_cast<long long>(key.batch), static_cast<long long>(key.channels),
                                   static_cast<long long>(key.spatial), layouts[key.layout],
                                   algorithm == nst_ext::Algorithm::kOwn ? "own" : "blas");
    if (item == nullptr || PyList_Append(list, item) != 0) {
      Py_XDECREF(item);
      Py_DECREF(list);
      return nullptr;
    }
    Py_DECREF(item);
  }
  return list;
}

PyObject* clear_gram_algorithm_choices(PyObject*, PyObject*) {
  std::lock_guard<std::mutex> lock(nst_ext::choices_mutex);
  nst_ext::choices.clear();
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"set_gram_algorithm", set_gram_algorithm, METH_O, "Force 'own' or 'blas' for the forward, or 'auto'."},
    {"get_gram_algorithm", get_gram_algorithm, METH_NOARGS, "The forward's algorithm mode."},
    {"gram_algorithm_choices", gram_algorithm_choices, METH_NOARGS, "The choices made so far, per shape."},
    {"clear_gram_algorithm_choices", clear_gram_algorithm_choices, METH_NOARGS, "Forget the choices made."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
// Importing nst_ext._C runs the static TORCH_LIBRARY initialisers below and
// gives the controls of the forward's algorithm choice.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "nst_ext compiled kernels", -1, methods};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(nst_ext, m) {
  m.def("gram(Tensor features) -> Tensor");
  m.def("gram_backward(Tensor grad_gram, Tensor features) -> Tensor");
  m.def("style_loss(Tensor features, Tensor target) -> (Tensor, Tensor)");
  m.def(
      "style_loss_backward(Tensor grad_loss, Tensor features, Tensor residual) -> Tensor");
}
