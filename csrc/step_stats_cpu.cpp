// Native CPU kernels of the vocabulary-wide row pass:
//
//   infogain::_step_stats_cpu(Tensor logits, Tensor? mask, Tensor? uniforms, float temperature)
//       -> (entropy, top1_prob, top1_id, top2_prob, tokens, token_probs)
//   infogain::_row_entropy_cpu(Tensor logits, Tensor? mask) -> entropy
//
// _step_stats_cpu implements the CPU side of infogain::step_stats (infogain_kernels/step_stats.py
// documents the op): for logits [..., V] (fp32/bf16/fp16, any strides) and an optional bool mask
// [...] (False rows are not read), float32 entropy / top1_prob / top2_prob and int64 top1_id of
// shape [...], and S = uniforms.size(1) draws per row, tokens int64 [..., S] and their untempered
// probabilities token_probs float32 [..., S]. Draw s of row r is the smallest index i with
// sum_{j<=i} w_j > uniforms[r, s] * sum_j w_j, w_j = exp((x_j - max) / T) (the last index with
// w_j > 0 if rounding leaves none). uniforms is float32 [n_rows, S] over all rows (masked-out
// ones included), row-major over the leading dimensions. At T = 0 every draw is the top-1 token
// and uniforms is not read: it may be [n_rows, S] or [0, S] (only its width counts), or None for
// S = 0. Skipped rows get 0, 0, -1, 0, tokens -1, token_probs 0. A read row that contains NaN or
// is all -inf gets a NaN entropy (the caller's check), NaN probabilities, id -1 and tokens -1.
//
// _row_entropy_cpu is the entropy-only pass (lookahead_objective's per-position entropies).
//
// The kernel (step_stats_cpu_kernel.h) is built for the baseline ISA and for AVX2; this file
// picks one at run time from the CPU's features (ATEN_CPU_CAPABILITY=default forces the
// baseline build, as it does for ATen's own kernels).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "cpu_dispatch.h"
#include "cpu_logits.h"
#include "step_stats_cpu.h"

namespace infogain {
namespace rowpass {
namespace {

// Flat indices of the rows to read: the mask's True positions, or every row.
std::vector<int64_t> selected_rows(const char* op, const at::Tensor& logits, const std::optional<at::Tensor>& mask) {
  const int64_t n_rows = logits.numel() / logits.size(-1);
  std::vector<int64_t> rows;
  if (!mask.has_value() || !mask->defined()) {
    rows.resize(n_rows);
    for (int64_t r = 0; r < n_rows; ++r) rows[r] = r;
    return rows;
  }
  const at::Tensor& m = *mask;
  TORCH_CHECK_TYPE(m.scalar_type() == at::kBool, op, ": mask must have dtype bool, got ", m.scalar_type());
  TORCH_CHECK_VALUE(m.device().is_cpu(), op, ": mask must be a CPU tensor, got device ", m.device());
  const auto lead = logits.sizes().slice(0, logits.dim() - 1);
  TORCH_CHECK_VALUE(m.sizes() == lead, op, ": mask must have shape ", lead, " (logits.shape[:-1]), got ", m.sizes());
  const at::Tensor flat = m.contiguous();
  const bool* keep = flat.const_data_ptr<bool>();
  rows.reserve(n_rows);
  for (int64_t r = 0; r < n_rows; ++r)
    if (keep[r]) rows.push_back(r);
  return rows;
}

struct Outputs {
  at::Tensor entropy, top1_prob, top1_id, top2_prob, tokens, token_probs;
};

Outputs run(const char* op, const at::Tensor& logits, const std::optional<at::Tensor>& mask,
            const std::optional<at::Tensor>& uniforms, double temperature, bool with_top) {
  RowPassArgs a{};
  a.dtype = check_logits(op, logits);
  const int64_t vocab = logits.size(-1);
  const int64_t n_rows = logits.numel() / vocab;
  const auto lead = logits.sizes().slice(0, logits.dim() - 1);
  const std::vector<int64_t> rows = selected_rows(op, logits, mask);

  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature >= 0, op,
                    ": temperature must be finite and >= 0, got ", temperature);
  int64_t num_samples = 0;
  at::Tensor u;
  if (uniforms.has_value() && uniforms->defined()) {
    u = *uniforms;
    TORCH_CHECK_TYPE(u.scalar_type() == at::kFloat, op, ": uniforms must have dtype float32, got ", u.scalar_type());
    TORCH_CHECK_VALUE(u.device().is_cpu(), op, ": uniforms must be a CPU tensor, got device ", u.device());
    TORCH_CHECK_VALUE(u.dim() == 2, op, ": uniforms must have shape [n_rows, S] = [", n_rows, ", S], got ", u.sizes());
    num_samples = u.size(1);
    const bool read = num_samples > 0 && temperature > 0;
    TORCH_CHECK_VALUE(u.size(0) == n_rows || (!read && u.size(0) == 0), op, ": uniforms must have shape [", n_rows,
                      ", S] (one row per logits row, masked-out rows included)",
                      read ? "" : " or [0, S] at temperature 0", ", got ", u.sizes());
    if (read) u = u.contiguous();
  }

  Outputs out;
  const auto f32 = logits.options().dtype(at::kFloat);
  out.entropy = at::zeros(lead, f32);
  std::vector<int64_t> sample_shape(lead.begin(), lead.end());
  sample_shape.push_back(num_samples);
  if (with_top) {
    out.top1_prob = at::zeros(lead, f32);
    out.top1_id = at::full(lead, -1, logits.options().dtype(at::kLong));
    out.top2_prob = at::zeros(lead, f32);
    out.tokens = at::full(sample_shape, -1, logits.options().dtype(at::kLong));
    out.token_probs = at::zeros(sample_shape, f32);
  }
  if (rows.empty()) return out;

  std::vector<int64_t> lead_strides(logits.strides().begin(), logits.strides().end() - 1);
  std::vector<int64_t> lead_sizes(lead.begin(), lead.end());
  a.logits = logits.const_data_ptr();
  a.vocab = vocab;
  a.vocab_stride = logits.stride(-1);
  a.lead_dims = static_cast<int64_t>(lead_sizes.size());
  a.lead_sizes = lead_sizes.data();
  a.lead_strides = lead_strides.data();
  a.rows = rows.data();
  a.num_selected = static_cast<int64_t>(rows.size());
  a.entropy = out.entropy.mutable_data_ptr<float>();
  a.temperature = static_cast<float>(temperature);
  if (with_top) {
    a.top1_prob = out.top1_prob.mutable_data_ptr<float>();
    a.top1_id = out.top1_id.mutable_data_ptr<int64_t>();
    a.top2_prob = out.top2_prob.mutable_data_ptr<float>();
    a.num_samples = num_samples;
    a.uniforms = (num_samples > 0 && temperature > 0) ? u.const_data_ptr<float>() : nullptr;
    a.tokens = out.tokens.mutable_data_ptr<int64_t>();
    a.token_probs = out.token_probs.mutable_data_ptr<float>();
  }
  // A temperature so small that it rounds to 0 in float32 makes every draw the top-1 token.
  if (a.temperature == 0.f) a.uniforms = nullptr;
  const auto kernel = INFOGAIN_CPU_BUILD(row_pass);
  parallel_rows(a.num_selected, vocab, [&](int64_t begin, int64_t end) { kernel(a, begin, end); });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> step_stats_cpu(
    const at::Tensor& logits, const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& uniforms,
    double temperature) {
  Outputs o = run("_step_stats_cpu", logits, mask, uniforms, temperature, /*with_top=*/true);
  return {o.entropy, o.top1_prob, o.top1_id, o.top2_prob, o.tokens, o.token_probs};
}

at::Tensor row_entropy_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& mask) {
  return run("_row_entropy_cpu", logits, mask, std::nullopt, 0.0, /*with_top=*/false).entropy;
}

}  // namespace
}  // namespace rowpass
}  // namespace infogain

TORCH_LIBRARY_FRAGMENT(infogain, m) {
  m.def(
      "_step_stats_cpu(Tensor logits, Tensor? mask, Tensor? uniforms, float temperature) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("_row_entropy_cpu(Tensor logits, Tensor? mask) -> Tensor");
}

TORCH_LIBRARY_IMPL(infogain, CPU, m) {
  m.impl("_step_stats_cpu", &infogain::rowpass::step_stats_cpu);
  m.impl("_row_entropy_cpu", &infogain::rowpass::row_entropy_cpu);
}
