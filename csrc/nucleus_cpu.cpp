// infogain::_nucleus_cpu(Tensor logits, int k, float temperature, float top_p, Tensor? seed)
//     -> (ids, logprobs, token, token_logprob, lse)
//
// The CPU implementation of the nucleus engine behind infogain::topk_logprobs and
// infogain::sample_logprob (infogain_kernels/topk_logprobs.py documents the distribution and
// run_nucleus the outputs): for logits [B, V] (fp32/bf16/fp16, any strides), ids int64 [B, k]
// (ranked by probability, ties by lower id), their float32 log-probabilities under softmax(x / T)
// renormalised over the top-p nucleus (-inf outside it), token int64 [B] with token_logprob
// float32 [B] (an inverse-CDF draw from the filtered distribution when seed is given, else the
// top-1), and lse float32 [B], the log-sum-exp of the scaled row (NaN for a row with NaN / +inf,
// all -inf, or one that overflows after the division: the caller's check; such rows get ids 0 and
// NaN log-probabilities).
//
// Random stream: the reference's. seed (int64 [1]) seeds a CPU generator, which draws
// randint(0, 2**53, [B]); row b's target is floor(bits_b * 2**-53 * Q_b) for its nucleus mass Q_b.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "cpu_dispatch.h"
#include "cpu_logits.h"
#include "nucleus_cpu.h"

namespace infogain {
namespace nucleus {
namespace {

// The Triton path's condition for skipping tokens below lse + log((1 - top_p) / V) - 1: with a tail
// of at least this mass the bound holds with a wide margin for float32 rounding.
constexpr double kCandidateFilterMinTail = 1e-3;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> nucleus_cpu(
    const at::Tensor& logits, int64_t k, double temperature, double top_p, const std::optional<at::Tensor>& seed) {
  constexpr const char* op = "_nucleus_cpu";
  NucleusArgs a{};
  a.dtype = rowpass::check_logits(op, logits);
  TORCH_CHECK_VALUE(logits.dim() == 2, op, ": logits must have shape [B, V], got ", logits.sizes());
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK_VALUE(k >= 1 && k <= vocab, op, ": k must be in [1, ", vocab, "] (the vocabulary size), got ", k);
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature >= 0, op,
                    ": temperature must be finite and >= 0, got ", temperature);
  TORCH_CHECK_VALUE(top_p > 0 && top_p <= 1, op, ": top_p must be in (0, 1], got ", top_p);
  const bool with_draw = seed.has_value() && seed->defined();
  if (with_draw) {
    TORCH_CHECK_VALUE(seed->device().is_cpu() && seed->scalar_type() == at::kLong && seed->numel() == 1, op,
                      ": seed must be an int64 CPU tensor of one element");
  }

  const auto long_opts = logits.options().dtype(at::kLong);
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor ids = at::empty({rows, k}, long_opts), logprobs = at::empty({rows, k}, f32);
  at::Tensor token = at::empty({rows}, long_opts), token_logprob = at::empty({rows}, f32);
  at::Tensor lse = at::empty({rows}, f32);
  if (rows == 0) return {ids, logprobs, token, token_logprob, lse};

  at::Tensor bits;
  if (with_draw) {
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed->item<int64_t>());
    bits = at::randint(0, int64_t{1} << 53, {rows}, generator, long_opts);
    a.random_bits = bits.const_data_ptr<int64_t>();
  }
  a.logits = logits.const_data_ptr();
  a.vocab = vocab;
  a.row_stride = logits.stride(0);
  a.col_stride = logits.stride(1);
  a.k = k;
  a.temperature = static_cast<float>(temperature);  // torch divides float32 logits by float32(T)
  a.use_top_p = top_p < 1;
  a.mass_limit = static_cast<int64_t>(std::ceil(top_p * 0x1p40));
  a.candidate_filter = 1 - top_p >= kCandidateFilterMinTail;
  a.log_tail = a.candidate_filter ? static_cast<float>(std::log((1 - top_p) / vocab) - 1) : 0.f;
  a.ids = ids.mutable_data_ptr<int64_t>();
  a.logprobs = logprobs.mutable_data_ptr<float>();
  a.token = token.mutable_data_ptr<int64_t>();
  a.token_logprob = token_logprob.mutable_data_ptr<float>();
  a.lse = lse.mutable_data_ptr<float>();
  const auto kernel = INFOGAIN_CPU_BUILD(nucleus_rows);
  parallel_rows(rows, vocab, [&](int64_t begin, int64_t end) { kernel(a, begin, end); });
  return {ids, logprobs, token, token_logprob, lse};
}

}  // namespace
}  // namespace nucleus
}  // namespace infogain

TORCH_LIBRARY_FRAGMENT(infogain, m) {
  m.def(
      "_nucleus_cpu(Tensor logits, int k, float temperature, float top_p, Tensor? seed) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(infogain, CPU, m) { m.impl("_nucleus_cpu", &infogain::nucleus::nucleus_cpu); }
