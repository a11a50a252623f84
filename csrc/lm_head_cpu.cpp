// Native CPU kernel of the LM-head statistics:
//
//   infogain::_lm_head_stats_cpu(Tensor hidden, Tensor weight, Tensor? bias, bool with_top)
//       -> (entropy, top1_prob, top1_id, top2_prob)
//
// The CPU side of infogain::lm_head_entropy (infogain_kernels/lm_head_entropy.py documents the
// op): for hidden [n, D] (the kept positions, gathered by the caller) and weight [V, D] of the same
// dtype (fp32/bf16/fp16), the statistics of softmax(round(hidden @ weight.T) + bias) per row,
// float32 [n] (int64 for top1_id), never holding more than one piece of the logits. With
// with_top False the last three outputs are empty. A row with a NaN logit or only -inf logits gets
// a NaN entropy and probabilities and id -1 (the caller's check).
//
// Row chunks of at most kMaxRows rows x vocabulary pieces of at most kPieceLogits / rows columns:
// each piece is one matmul into a buffer that stays in cache, then the row pass folds it into each
// row's running statistics (the online log-sum-exp of step_stats_cpu_kernel.h), so the logits are
// read once, right after they are written. The matmul uses torch's intra-op threads; the fold runs
// on the calling thread (a few percent of the matmul's time): handed to other threads it competed
// with torch's OpenMP workers, which spin for a while after each matmul, and was measured slower.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "cpu_dispatch.h"
#include "step_stats_cpu.h"

namespace infogain {
namespace rowpass {
namespace {

// One piece is at most this many logits (1 MiB of float32): it stays in L2 between the matmul that
// writes it and the pass that reads it.
constexpr int64_t kPieceLogits = 1 << 18;
// Rows per chunk: the weight is re-read once per row chunk.
constexpr int64_t kMaxRows = 512;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lm_head_stats_cpu(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias, bool with_top) {
  constexpr const char* op = "_lm_head_stats_cpu";
  TORCH_CHECK_VALUE(hidden.defined() && weight.defined(), op, ": hidden and weight must be defined tensors");
  TORCH_CHECK_VALUE(hidden.device().is_cpu() && weight.device().is_cpu(), op,
                    ": hidden and weight must be CPU tensors, got ", hidden.device(), " and ", weight.device());
  TORCH_CHECK_VALUE(hidden.dim() == 2, op, ": hidden must have shape [n, D], got ", hidden.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) >= 1 && weight.size(1) == hidden.size(1), op,
                    ": weight must have shape [V >= 1, D = ", hidden.size(1), "], got ", weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == hidden.scalar_type(), op, ": weight must have hidden's dtype ",
                   hidden.scalar_type(), ", got ", weight.scalar_type());
  LogitsType dtype = LogitsType::kFloat;
  switch (hidden.scalar_type()) {
    case at::kFloat:
      break;
    case at::kBFloat16:
      dtype = LogitsType::kBFloat16;
      break;
    case at::kHalf:
      dtype = LogitsType::kHalf;
      break;
    default:
      TORCH_CHECK_TYPE(false, op, ": hidden must have dtype float32, bfloat16 or float16, got ", hidden.scalar_type());
  }
  const int64_t n = hidden.size(0);
  const int64_t vocab = weight.size(0);
  const float* bias_data = nullptr;
  at::Tensor bias_f32;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->device().is_cpu(), op, ": bias must be a CPU tensor, got device ", bias->device());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == vocab, op, ": bias must have shape [", vocab, "], got ",
                      bias->sizes());
    bias_f32 = bias->to(at::kFloat).contiguous();
    bias_data = bias_f32.const_data_ptr<float>();
  }

  const auto f32 = hidden.options().dtype(at::kFloat);
  at::Tensor entropy = at::empty({n}, f32);
  at::Tensor top1_prob = at::empty({with_top ? n : 0}, f32);
  at::Tensor top1_id = at::empty({with_top ? n : 0}, hidden.options().dtype(at::kLong));
  at::Tensor top2_prob = at::empty({with_top ? n : 0}, f32);
  if (n == 0) return {entropy, top1_prob, top1_id, top2_prob};

  const at::Tensor h = hidden.contiguous();
  const int64_t rows_per_chunk = std::min(n, kMaxRows);
  const int64_t cols_per_piece = std::min(vocab, std::max<int64_t>(1, kPieceLogits / rows_per_chunk));
  at::Tensor buffer = at::empty({rows_per_chunk, cols_per_piece}, hidden.options());
  std::vector<RowStats> stats(n);
  const auto kernel = INFOGAIN_CPU_BUILD(head_piece);
  for (int64_t r0 = 0; r0 < n; r0 += rows_per_chunk) {
    const int64_t rows = std::min(rows_per_chunk, n - r0);
    const at::Tensor h_rows = h.narrow(0, r0, rows);
    for (int64_t c0 = 0; c0 < vocab; c0 += cols_per_piece) {
      const int64_t cols = std::min(cols_per_piece, vocab - c0);
      // A dense rows x cols view of the buffer's front (what mm_out writes), whatever the piece's width.
      at::Tensor piece = buffer.view({-1}).narrow(0, 0, rows * cols).view({rows, cols});
      // Rounded to hidden's dtype, exactly as the model's own LM head returns its logits.
      at::mm_out(piece, h_rows, weight.narrow(0, c0, cols).t());
      HeadPieceArgs a{};
      a.logits = piece.const_data_ptr();
      a.dtype = dtype;
      a.cols = cols;
      a.ld = piece.stride(0);
      a.bias = bias_data != nullptr ? bias_data + c0 : nullptr;
      a.col_offset = c0;
      a.with_top = with_top;
      a.stats = stats.data() + r0;
      kernel(a, 0, rows);
    }
  }

  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  float* e = entropy.mutable_data_ptr<float>();
  for (int64_t r = 0; r < n; ++r) {
    const RowStats& st = stats[r];
    const bool bad = st.bad || st.m == -std::numeric_limits<float>::infinity();
    e[r] = bad ? kNaN : st.entropy();
    if (with_top) {
      top1_prob.mutable_data_ptr<float>()[r] = bad ? kNaN : st.top1_prob();
      top1_id.mutable_data_ptr<int64_t>()[r] = bad ? -1 : st.best_id;
      top2_prob.mutable_data_ptr<float>()[r] = bad ? kNaN : st.top2_prob();
    }
  }
  return {entropy, top1_prob, top1_id, top2_prob};
}

}  // namespace
}  // namespace rowpass
}  // namespace infogain

TORCH_LIBRARY_FRAGMENT(infogain, m) {
  m.def(
      "_lm_head_stats_cpu(Tensor hidden, Tensor weight, Tensor? bias, bool with_top) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(infogain, CPU, m) {
  m.impl("_lm_head_stats_cpu", &infogain::rowpass::lm_head_stats_cpu);
}
