// Operator schemas of nst_ext: the single place that declares them, and the
// one place that holds the forward's per-shape algorithm choices (and the ops
// that control them). The library is loaded with torch.ops.load_library
// (nst_ext/ops/dispatch.py): it is no Python module, and includes no Python.h.
//
// Kernels live per backend (csrc/cpu, csrc/cuda) and register themselves with
// TORCH_LIBRARY_IMPL; fake (meta) kernels and autograd are registered from
// Python (nst_ext/ops/registrations.py) so that torch.compile can trace through
// the ops and autograd can differentiate them twice.
//
// Shape and dtype contracts (B batch, C channels, H*W = n spatial positions):
//   gram(features[B,C,H,W]) -> gram[B,C,C]
//   gram_backward(grad_gram[B,C,C], features[B,C,H,W]) -> grad_features[B,C,H,W]
//   style_loss(features[B,C,H,W], target[C,C] | [1,C,C] | [B,C,C])
//       -> (loss[], residual[B,C,C])       residual = gram(features) - target
//   style_loss_backward(grad_loss[], features[B,C,H,W], residual[B,C,C])
//       -> grad_features[B,C,H,W]
//   masked_gram, masked_gram_backward, masked_style_loss, masked_style_loss_backward:
//       the same with per-position weights[1|B,H,W] after the features (csrc/masked.h)
// Gram, loss and residual use the accumulation dtype: float32 for
// float16/bfloat16/float32 features, float64 for float64 features. Gradients
// with respect to features have the features' dtype, and the features' layout
// when that is channels-last (NCHW-contiguous otherwise).

#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "common.h"

namespace nst_ext {
namespace {

enum class Mode { kAuto, kOwn, kBlas };

std::mutex choices_mutex;
std::map<ForwardKey, Algorithm> choices;  // guarded by choices_mutex
// The keys a forward has looked up in this process (restored choices a run never met are not
// among them: a picture's record lists only these). Guarded by choices_mutex.
std::set<ForwardKey> used;
// The keys whose BLAS choice was made because our kernel failed its check (listed as
// kOwnFailedName), each with the line saying why (empty for a choice restored from a file).
// Guarded by choices_mutex.
std::map<ForwardKey, std::string> own_failed;
constexpr const char* kOwnFailedName = "blas (own failed)";
// Each Layout's name in a choice's row (gram_algorithm_choices, restore_gram_algorithm_choices).
constexpr const char* kLayoutNames[] = {"nchw", "channels_last", "other"};
// A fault injected while a choice is made, for the tests only: "" (none, always so outside them);
// our kernel's result "wrong", "nan" or its run raising ("raise"); or the BLAS product timed as the
// slower ("blas-slower"). Guarded by choices_mutex.
std::string candidate_fault;

bool parse_mode(const std::string& text, Mode& mode) {
    if (text == "auto" || text.empty())
        mode = Mode::kAuto;
    else if (text == "own")
        mode = Mode::kOwn;
    else if (text == "blas")
        mode = Mode::kBlas;
    else
        return false;
    return true;
}

Mode& current_mode() {  // guarded by choices_mutex
    static Mode mode = [] {
        Mode from_environment = Mode::kAuto;
        const char* text = std::getenv("NST_EXT_GRAM_ALGORITHM");
        if (text != nullptr && !parse_mode(text, from_environment)) {
            TORCH_WARN("nst_ext: NST_EXT_GRAM_ALGORITHM=", text,
                       " is not auto, own or blas; using auto");
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

// How far our kernel's Gram may lie from the BLAS product's, relative to the largest entry of
// the BLAS one (which bounds every entry: |G_ij| <= sqrt(G_ii G_jj)): float64 accumulates in
// float64; the other dtypes in float32, from the same (rounded) inputs on both paths, in other
// orders (blocked sums, split-K, 3xTF32 on tensor cores).
double agreement_bound(at::ScalarType dtype) {
    return dtype == at::kDouble ? 1e-9 : dtype == at::kFloat ? 1e-3 : 1e-2;
}

// Why `own` is not the Gram `blas` is ("" where it is).
std::string disagreement(const at::Tensor& own, const at::Tensor& blas, at::ScalarType dtype) {
    if (own.sizes() != blas.sizes()) return "a result of another shape";
    if (blas.numel() == 0) return "";
    const at::Tensor mine = own.to(at::kDouble), theirs = blas.to(at::kDouble);
    if (!at::isfinite(theirs).all().item<bool>())
        return "";  // an input of inf or NaN: nothing to hold it to
    if (!at::isfinite(mine).all().item<bool>())
        return "NaN or infinite values where the BLAS product has none";
    const double scale = theirs.abs().max().item<double>();
    const double difference = (mine - theirs).abs().max().item<double>();
    const double allowed = agreement_bound(dtype) * scale + std::numeric_limits<double>::min();
    if (difference <= allowed) return "";
    std::ostringstream text;
    text << "its Gram differs from the BLAS product's by " << difference << " (at most " << allowed
         << " allowed)";
    return text.str();
}

std::string describe_key(const ForwardKey& key) {
    std::ostringstream text;
    static const char* layouts[] = {"NCHW", "channels-last", "strided"};
    text << (key.op == 0 ? "gram" : "style_loss") << " of "
         << c10::toString(static_cast<at::ScalarType>(key.dtype)) << " features (B=" << key.batch
         << ", C=" << key.channels << ", H*W=" << key.spatial << ", " << layouts[key.layout]
         << ") on "
         << c10::Device(static_cast<c10::DeviceType>(key.device_type),
                        static_cast<c10::DeviceIndex>(key.device_index));
    return text.str();
}

}  // namespace

bool ForwardKey::operator<(const ForwardKey& other) const {
    return std::tie(device_type, device_index, op, dtype, batch, channels, spatial, layout) <
           std::tie(other.device_type, other.device_index, other.op, other.dtype, other.batch,
                    other.channels, other.spatial, other.layout);
}

ForwardKey forward_key(const at::Tensor& features, int op) {
    return ForwardKey{static_cast<int>(features.device().type()),
                      features.device().index(),
                      op,
                      static_cast<int>(features.scalar_type()),
                      features.size(0),
                      features.size(1),
                      spatial_size(features),
                      static_cast<int>(layout_of(features))};
}

Algorithm choose_forward_algorithm(const ForwardKey& key, const std::function<void(Algorithm)>& run,
                                   const std::function<at::Tensor(Algorithm)>& gram_of,
                                   const std::function<double(const std::function<void()>&)>& time,
                                   bool can_time) {
    std::string fault;
    {
        std::lock_guard<std::mutex> lock(choices_mutex);
        const Mode mode = current_mode();
        if (mode == Mode::kOwn) return Algorithm::kOwn;
        if (mode == Mode::kBlas) return Algorithm::kBlas;
        const auto found = choices.find(key);
        if (found != choices.end()) {
            used.insert(key);
            return found->second;
        }
        fault = candidate_fault;
    }
    if (!can_time) return Algorithm::kBlas;
    // The check, which is also each candidate's warm-up (allocator, library handles, caches).
    const at::Tensor expected = gram_of(Algorithm::kBlas);
    std::string failure;
    try {
        TORCH_CHECK(fault != "raise", "a fault injected by the tests");
        at::Tensor own = gram_of(Algorithm::kOwn);
        if (fault == "wrong") own = own + 1;
        if (fault == "nan") own = own.clone().fill_(std::numeric_limits<double>::quiet_NaN());
        failure = disagreement(own, expected, static_cast<at::ScalarType>(key.dtype));
    } catch (const std::exception& error) {
        const std::string what = error.what();
        failure = "it raised: " + what.substr(0, what.find('\n'));
    }
    Algorithm chosen = Algorithm::kBlas;
    if (failure.empty()) {
        double best[2];
        for (const Algorithm candidate : {Algorithm::kOwn, Algorithm::kBlas}) {
            double fastest = std::numeric_limits<double>::infinity();
            for (int repeat = 0; repeat < kRepeats; ++repeat)
                fastest = std::min(fastest, time([&] { run(candidate); }));
            best[static_cast<int>(candidate)] = fastest;
        }
        if (fault == "blas-slower")
            best[static_cast<int>(Algorithm::kBlas)] = std::numeric_limits<double>::infinity();
        chosen = best[0] <= best[1] ? Algorithm::kOwn : Algorithm::kBlas;
    }
    std::lock_guard<std::mutex> lock(choices_mutex);
    used.insert(key);
    const auto [where, added] =
        choices.emplace(key, chosen);  // a concurrent first call may have won
    if (added && !failure.empty()) {
        // Said once, as a Python warning, by nst_ext.ops.dispatch (a warning raised here would
        // reach only stderr: torch.ops calls install no Python warning handler).
        own_failed[key] =
            "nst_ext: our Gram kernel is not used for " + describe_key(key) + ": " + failure +
            "; the BLAS product serves this shape (`nst-ext info --self-test` checks every kernel)";
    }
    return where->second;
}

}  // namespace nst_ext

// The controls of the forward's algorithm choice, as ops without tensors (their
// kernels are catch-all): nst_ext.set_gram_algorithm and its siblings call
// them through torch.ops, so this library needs no Python module of its own.
namespace {

void set_gram_algorithm(std::string algorithm) {
    nst_ext::Mode mode;
    TORCH_CHECK_VALUE(nst_ext::parse_mode(algorithm, mode),
                      "gram algorithm must be 'auto', 'own' or 'blas', got '", algorithm, "'");
    std::lock_guard<std::mutex> lock(nst_ext::choices_mutex);
    nst_ext::current_mode() = mode;
}

std::string get_gram_algorithm() {
    std::lock_guard<std::mutex> lock(nst_ext::choices_mutex);
    return nst_ext::mode_name(nst_ext::current_mode());
}

// One row per choice: device_type, device_index, op, dtype, B, C, n, layout and
// "own" | "blas" | "blas (own failed)", tab-separated (nst_ext.gram_algorithm_choices() splits
// them). With used_only, only the choices a forward has looked up in this process.
std::vector<std::string> gram_algorithm_choices(bool used_only) {
    std::lock_guard<std::mutex> lock(nst_ext::choices_mutex);
    std::vector<std::string> rows;
    for (const auto& [key, algorithm] : nst_ext::choices) {
        if (used_only && nst_ext::used.count(key) == 0) continue;
        const std::vector<std::string> fields = {
            c10::DeviceTypeName(static_cast<c10::DeviceType>(key.device_type), true),
            std::to_string(key.device_index),
            key.op == 0 ? "gram" : "style_loss",
            c10::toString(static_cast<at::ScalarType>(key.dtype)),
            std::to_string(key.batch),
            std::to_string(key.channels),
            std::to_string(key.spatial),
            nst_ext::kLayoutNames[key.layout],
            algorithm == nst_ext::Algorithm::kOwn ? "own"
            : nst_ext::own_failed.count(key)      ? nst_ext::kOwnFailedName
                                                  : "blas"};
        std::string row;
        for (const auto& field : fields) row += (row.empty() ? "" : "\t") + field;
        rows.push_back(row);
    }
    return rows;
}

// The inverse of gram_algorithm_choices: rows in its format are added to the choices (a row
// for a key already chosen replaces it), so a run can be repeated with the algorithms of an
// earlier one, bit for bit (nst_ext.io.provenance). Rows that do not parse are refused whole.
void restore_gram_algorithm_choices(std::vector<std::string> rows) {
    static const std::vector<std::pair<std::string, at::ScalarType>> dtypes = {
        {c10::toString(at::kHalf), at::kHalf},
        {c10::toString(at::kBFloat16), at::kBFloat16},
        {c10::toString(at::kFloat), at::kFloat},
        {c10::toString(at::kDouble), at::kDouble}};
    std::vector<std::pair<nst_ext::ForwardKey, std::string>> parsed;
    for (const auto& row : rows) {
        std::vector<std::string> fields;
        size_t start = 0;
        for (size_t tab; (tab = row.find('\t', start)) != std::string::npos; start = tab + 1)
            fields.push_back(row.substr(start, tab - start));
        fields.push_back(row.substr(start));
        TORCH_CHECK_VALUE(fields.size() == 9,
                          "nst_ext: a gram algorithm choice has 9 tab-separated fields, got '", row,
                          "'");
        nst_ext::ForwardKey key{};
        try {
            key.device_type = static_cast<int>(c10::Device(fields[0]).type());
            key.device_index = std::stoi(fields[1]);
            key.batch = std::stoll(fields[4]);
            key.channels = std::stoll(fields[5]);
            key.spatial = std::stoll(fields[6]);
        } catch (const std::exception&) {
            TORCH_CHECK_VALUE(false, "nst_ext: cannot read the gram algorithm choice '", row, "'");
        }
        TORCH_CHECK_VALUE(fields[2] == "gram" || fields[2] == "style_loss",
                          "nst_ext: unknown op in '", row, "'");
        key.op = fields[2] == "gram" ? 0 : 1;
        key.dtype = -1;
        for (const auto& [name, dtype] : dtypes)
            if (fields[3] == name) key.dtype = static_cast<int>(dtype);
        TORCH_CHECK_VALUE(key.dtype >= 0, "nst_ext: unknown dtype in '", row, "'");
        key.layout = -1;
        for (int layout = 0; layout < 3; ++layout)
            if (fields[7] == nst_ext::kLayoutNames[layout]) key.layout = layout;
        TORCH_CHECK_VALUE(key.layout >= 0, "nst_ext: unknown layout in '", row, "'");
        TORCH_CHECK_VALUE(
            fields[8] == "own" || fields[8] == "blas" || fields[8] == nst_ext::kOwnFailedName,
            "nst_ext: unknown algorithm in '", row, "'");
        parsed.emplace_back(key, fields[8]);
    }
    std::lock_guard<std::mutex> lock(nst_ext::choices_mutex);
    for (const auto& [key, algorithm] : parsed) {
        nst_ext::choices[key] =
            algorithm == "own" ? nst_ext::Algorithm::kOwn : nst_ext::Algorithm::kBlas;
        if (algorithm == nst_ext::kOwnFailedName)
            nst_ext::own_failed.emplace(key, "");
        else
            nst_ext::own_failed.erase(key);
    }
}

void clear_gram_algorithm_choices() {
    std::lock_guard<std::mutex> lock(nst_ext::choices_mutex);
    nst_ext::choices.clear();
    nst_ext::used.clear();
    nst_ext::own_failed.clear();
}

// Why our kernel failed its check, one line per key it failed for in this process (not for the
// failures restored from a file, which were said where they were found).
std::vector<std::string> candidate_failures() {
    std::lock_guard<std::mutex> lock(nst_ext::choices_mutex);
    std::vector<std::string> lines;
    for (const auto& [key, line] : nst_ext::own_failed)
        if (!line.empty()) lines.push_back(line);
    return lines;
}

// For the tests only (tests/test_ops.py): a fault injected while a choice is made (candidate_fault
// above); the kernels themselves are untouched.
void set_candidate_fault(std::string fault) {
    TORCH_CHECK_VALUE(
        fault.empty() || fault == "wrong" || fault == "nan" || fault == "raise" ||
            fault == "blas-slower",
        "nst_ext: a candidate fault is '', 'wrong', 'nan', 'raise' or 'blas-slower', got '", fault,
        "'");
    std::lock_guard<std::mutex> lock(nst_ext::choices_mutex);
    nst_ext::candidate_fault = fault;
}

}  // namespace

TORCH_LIBRARY(nst_ext, m) {
    m.def("gram(Tensor features) -> Tensor");
    m.def("gram_backward(Tensor grad_gram, Tensor features) -> Tensor");
    m.def("style_loss(Tensor features, Tensor target) -> (Tensor, Tensor)");
    m.def("style_loss_backward(Tensor grad_loss, Tensor features, Tensor residual) -> Tensor");
    m.def("masked_gram(Tensor features, Tensor weights) -> Tensor");
    m.def("masked_gram_backward(Tensor grad_gram, Tensor features, Tensor weights) -> Tensor");
    m.def("masked_style_loss(Tensor features, Tensor weights, Tensor target) -> (Tensor, Tensor)");
    m.def(
        "masked_style_loss_backward(Tensor grad_loss, Tensor features, Tensor weights, Tensor "
        "residual) -> Tensor");
    m.def("set_gram_algorithm(str algorithm) -> ()", &set_gram_algorithm);
    m.def("get_gram_algorithm() -> str", &get_gram_algorithm);
    m.def("gram_algorithm_choices(bool used_only=False) -> str[]", &gram_algorithm_choices);
    m.def("clear_gram_algorithm_choices() -> ()", &clear_gram_algorithm_choices);
    m.def("restore_gram_algorithm_choices(str[] rows) -> ()", &restore_gram_algorithm_choices);
    m.def("candidate_failures() -> str[]", &candidate_failures);
    m.def("_set_candidate_fault(str fault) -> ()", &set_candidate_fault);
}
