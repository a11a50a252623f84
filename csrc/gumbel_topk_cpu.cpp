// infogain::_gumbel_topk_cpu(Tensor scores, int k, int num_samples, float temperature, Tensor valid,
//                            Tensor seed) -> Tensor
//
// The CPU implementation of infogain::gumbel_topk (infogain_kernels/gumbel_topk.py documents the op),
// one native call instead of the reference's ~20 small torch ops: the op runs every lookahead step
// on tensors of a few hundred positions, where per-op overhead is the whole cost.
//
// It reproduces the torch reference exactly, random stream included: the noise of samples 1..S-1
// is torch.rand([S-1, B, P]) from a CPU generator seeded with `seed`, turned into -g = log(-log(u))
// by the same ATen ops, and keys = score - T * (-g) in float32. Each (sample, row) then lists its
// valid positions by decreasing key, equal keys in increasing index order (the reference's stable
// sort; a valid -inf key ranks after every finite one), padding with -1 past the valid count.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace infogain {
namespace gumbel_topk_cpu {
namespace {

// Bounds of the uniforms behind the Gumbel noise, as in infogain_kernels/_random.py.
constexpr double kUMin = 1.0 / (1 << 24);
constexpr double kUMax = 1.0 - 1.0 / (1 << 24);

at::Tensor gumbel_topk_cpu(const at::Tensor& scores, int64_t k, int64_t num_samples, double temperature,
                           const at::Tensor& valid, const at::Tensor& seed) {
  TORCH_CHECK_VALUE(scores.device().is_cpu() && valid.device().is_cpu() && seed.device().is_cpu(),
                    "_gumbel_topk_cpu: scores, valid and seed must be CPU tensors");
  TORCH_CHECK_TYPE(scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kBFloat16 ||
                       scores.scalar_type() == at::kHalf,
                   "_gumbel_topk_cpu: scores must have dtype float32, bfloat16 or float16, got ", scores.scalar_type());
  TORCH_CHECK_VALUE(scores.dim() == 2, "_gumbel_topk_cpu: scores must be [B, P], got ", scores.sizes());
  TORCH_CHECK_TYPE(valid.scalar_type() == at::kBool, "_gumbel_topk_cpu: valid must have dtype bool");
  TORCH_CHECK_VALUE(valid.sizes() == scores.sizes(), "_gumbel_topk_cpu: valid must have the shape of scores ",
                    scores.sizes(), ", got ", valid.sizes());
  TORCH_CHECK_VALUE(k >= 1, "_gumbel_topk_cpu: k must be >= 1, got ", k);
  TORCH_CHECK_VALUE(num_samples >= 1, "_gumbel_topk_cpu: num_samples must be >= 1, got ", num_samples);
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature >= 0,
                    "_gumbel_topk_cpu: temperature must be finite and >= 0, got ", temperature);
  TORCH_CHECK_VALUE(seed.scalar_type() == at::kLong && seed.numel() == 1,
                    "_gumbel_topk_cpu: seed must be an int64 tensor of one element");

  const int64_t rows = scores.size(0), positions = scores.size(1);
  at::Tensor keys = scores.to(at::kFloat).contiguous();
  at::Tensor noisy;  // [S - 1, B, P] float32 keys of the perturbed samples
  const bool perturbed = num_samples > 1 && temperature > 0;
  if (perturbed) {
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed.item<int64_t>());
    at::Tensor u = at::rand({num_samples - 1, rows, positions}, generator, keys.options());
    at::Tensor negated_noise = u.clamp_(kUMin, kUMax).log_().neg_().log_();
    noisy = (keys - negated_noise.mul(temperature)).contiguous();
  }
  const at::Tensor ok = valid.contiguous();
  const bool* ok_data = ok.const_data_ptr<bool>();
  const float* key_data = keys.const_data_ptr<float>();
  const float* noisy_data = perturbed ? noisy.const_data_ptr<float>() : nullptr;

  at::Tensor out = at::full({num_samples, rows, k}, -1, scores.options().dtype(at::kLong));
  int64_t* out_data = out.mutable_data_ptr<int64_t>();
  const int64_t kept = std::min(k, positions);
  std::vector<int64_t> order;
  order.reserve(positions);
  for (int64_t s = 0; s < num_samples; ++s) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* key = (s == 0 || !perturbed) ? key_data + r * positions
                                                : noisy_data + ((s - 1) * rows + r) * positions;
      const bool* row_ok = ok_data + r * positions;
      order.clear();
      for (int64_t p = 0; p < positions; ++p)
        if (row_ok[p]) order.push_back(p);
      const int64_t take = std::min<int64_t>(kept, order.size());
      // Decreasing key, equal keys by index: a strict weak order, so partial_sort is exact. NaN
      // (an unspecified result for the op) ranks as -inf to keep the order strict.
      auto rank = [key](int64_t p) { return std::isnan(key[p]) ? -INFINITY : key[p]; };
      std::partial_sort(order.begin(), order.begin() + take, order.end(), [&rank](int64_t a, int64_t b) {
        const float x = rank(a), y = rank(b);
        return x > y || (x == y && a < b);
      });
      int64_t* dst = out_data + (s * rows + r) * k;
      std::copy(order.begin(), order.begin() + take, dst);
    }
  }
  return out;
}

}  // namespace
}  // namespace gumbel_topk_cpu
}  // namespace infogain

TORCH_LIBRARY_FRAGMENT(infogain, m) {
  m.def("_gumbel_topk_cpu(Tensor scores, int k, int num_samples, float temperature, Tensor valid, Tensor seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(infogain, CPU, m) { m.impl("_gumbel_topk_cpu", &infogain::gumbel_topk_cpu::gumbel_topk_cpu); }
