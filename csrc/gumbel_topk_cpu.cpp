// infogain::_gumbel_topk_cpu(Tensor scores, int k, int num_samples, float temperature, Tensor valid,
//                            Tensor seed) -> Tensor
//
// The CPU implementation of infogain::gumbel_topk (infogain_kernels/gumbel_topk.py documents the op),
// one native call instead of the reference's ~20 small torch ops: the op runs every lookahead step
// on tensors of a few hundred positions, where per-op overhead is the whole cost.
//
// It reproduces the torch reference exactly, random stream included: the noise of samples 1..S-1
// is the stream of torch.rand([S-1, B, P]) from a CPU generator seeded with `seed`, turned into
// -g = log(-log(u)) by the same ATen ops, and keys = score - T * (-g) in float32. Each (sample, row)
// lists its valid positions by decreasing key, equal keys in increasing index order (the
// reference's stable sort; a valid -inf key ranks after every finite one), padding with -1 past
// the valid count.
//
// Memory: besides the [S, B, k] result, nothing proportional to the input is allocated. The noise
// is drawn, in stream order, into a fixed stack buffer a chunk at a time (the uniform kernel is
// serial and the log kernels elementwise, so chunking changes no value), and each (sample, row)
// keeps only its best k (key, position) pairs while the positions stream by.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace infogain {
namespace gumbel_topk_cpu {
namespace {

// Bounds of the uniforms behind the Gumbel noise, as in infogain_kernels/_random.py.
constexpr double kUMin = 1.0 / (1 << 24);
constexpr double kUMax = 1.0 - 1.0 / (1 << 24);

// Noise values drawn per round of ATen calls: large enough that the calls' overhead is small
// against the values' cost, small enough to live on the stack (8 KiB).
constexpr int64_t kNoiseChunk = 2048;

// The best `capacity` of the (key, position) pairs offered for one (sample, row), as a heap whose
// top is the worst kept pair. Rank: decreasing key, equal keys by increasing position (a strict
// weak order; NaN, an unspecified result for the op, ranks as -inf to keep it strict).
class BestK {
 public:
  explicit BestK(int64_t capacity) : capacity_(capacity) { heap_.reserve(capacity); }

  void offer(float key, int64_t position) {
    if (std::isnan(key)) key = -INFINITY;
    const Entry entry{key, position};
    if (static_cast<int64_t>(heap_.size()) < capacity_) {
      heap_.push_back(entry);
      std::push_heap(heap_.begin(), heap_.end(), better);
    } else if (capacity_ > 0 && better(entry, heap_.front())) {
      std::pop_heap(heap_.begin(), heap_.end(), better);
      heap_.back() = entry;
      std::push_heap(heap_.begin(), heap_.end(), better);
    }
  }

  // Write the kept positions best first into dst[0, k), -1 after them, and start over.
  void finish(int64_t* dst, int64_t k) {
    std::sort_heap(heap_.begin(), heap_.end(), better);
    int64_t slot = 0;
    for (const Entry& entry : heap_) dst[slot++] = entry.second;
    std::fill(dst + slot, dst + k, int64_t{-1});
    heap_.clear();
  }

 private:
  using Entry = std::pair<float, int64_t>;
  static bool better(const Entry& a, const Entry& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  }
  int64_t capacity_;
  std::vector<Entry> heap_;
};

template <typename scalar_t>
void select(const at::Tensor& scores, int64_t k, int64_t num_samples, double temperature, const at::Tensor& valid,
            int64_t seed, int64_t* out) {
  const int64_t rows = scores.size(0), positions = scores.size(1);
  const scalar_t* score_data = scores.const_data_ptr<scalar_t>();
  const int64_t score_row = scores.stride(0), score_col = scores.stride(1);
  const bool* ok_data = valid.const_data_ptr<bool>();
  const int64_t ok_row = valid.stride(0), ok_col = valid.stride(1);
  auto score = [&](int64_t r, int64_t p) { return static_cast<float>(score_data[r * score_row + p * score_col]); };
  auto ok = [&](int64_t r, int64_t p) { return ok_data[r * ok_row + p * ok_col]; };

  BestK best(std::min(k, positions));
  // Sample 0: the plain top-k of the scores.
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t p = 0; p < positions; ++p)
      if (ok(r, p)) best.offer(score(r, p), p);
    best.finish(out + r * k, k);
  }
  if (num_samples == 1) return;
  if (!(temperature > 0) || positions == 0) {  // every sample is sample 0
    for (int64_t s = 1; s < num_samples; ++s) std::copy(out, out + rows * k, out + s * rows * k);
    return;
  }
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  float noise[kNoiseChunk];
  const int64_t total = (num_samples - 1) * rows * positions;
  int64_t s = 1, r = 0, p = 0;  // the (sample, row, position) of the next noise value
  for (int64_t start = 0; start < total; start += kNoiseChunk) {
    const int64_t n = std::min(kNoiseChunk, total - start);
    // What torch.rand and negated_gumbel_noise do, on this stretch of the stream; times T as the
    // reference's `temperature * negated_noise`.
    at::from_blob(noise, {n}, at::TensorOptions().dtype(at::kFloat))
        .uniform_(0, 1, generator)
        .clamp_(kUMin, kUMax)
        .log_()
        .neg_()
        .log_()
        .mul_(temperature);
    for (int64_t i = 0; i < n; ++i) {
      if (ok(r, p)) best.offer(score(r, p) - noise[i], p);
      if (++p == positions) {
        best.finish(out + (s * rows + r) * k, k);
        p = 0;
        if (++r == rows) r = 0, ++s;
      }
    }
  }
}

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

  at::Tensor out = at::empty({num_samples, scores.size(0), k}, scores.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  const int64_t seed_value = seed.item<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scores.scalar_type(), "_gumbel_topk_cpu", [&] {
    select<scalar_t>(scores, k, num_samples, temperature, valid, seed_value, out.mutable_data_ptr<int64_t>());
  });
  return out;
}

}  // namespace
}  // namespace gumbel_topk_cpu
}  // namespace infogain

TORCH_LIBRARY_FRAGMENT(infogain, m) {
  m.def("_gumbel_topk_cpu(Tensor scores, int k, int num_samples, float temperature, Tensor valid, Tensor seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(infogain, CPU, m) { m.impl("_gumbel_topk_cpu", &infogain::gumbel_topk_cpu::gumbel_topk_cpu); }
