// infogain::kv_block_replace — write a block of K/V rows into every layer's cache.
//
// Schema, argument validation, the CPU kernel and the Meta (shape-only) kernel live
// here; the CUDA kernel and its registration live in kv_block_replace_cuda.cu and
// reuse check_arguments() so both devices refuse exactly the same inputs.
//
// Semantics (per layer pair i, per cache row b, with S = seq axis of the layout):
//   caches[i][b, dst_start[b] : dst_start[b] + length]  (along S)
//     = blocks[i][src_rows[b], src_start[b] : src_start[b] + length]
// for all heads and the whole head dimension. Offsets are either one scalar for
// every row or an int32/int64 tensor of shape [B] on the caches' device; src_rows
// defaults to the identity (then blocks must have the caches' batch size).
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "kv_block_replace.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace infogain {
namespace kv {

// Bits of the status flag (and of the host-side range check): which offset was out of range.
constexpr int64_t kBadDstStart = 1;
constexpr int64_t kBadSrcStart = 2;
constexpr int64_t kBadSrcRows = 4;

int64_t seq_dim_of(c10::string_view layout) {
  if (layout == "bhtd") return 2;
  if (layout == "bthd") return 1;
  TORCH_CHECK_VALUE(false, "kv_block_replace: layout must be \"bhtd\" ([B, H, T, D]) or \"bthd\" ([B, T, H, D]), got \"",
                    std::string(layout), "\"");
  return -1;  // unreachable
}

namespace {

std::string item_name(const char* list, size_t i) { return std::string(list) + "[" + std::to_string(i) + "]"; }

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

void check_kv_tensor(const at::Tensor& t, const std::string& name) {
  TORCH_CHECK_VALUE(t.defined(), "kv_block_replace: ", name, " is an undefined tensor");
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), "kv_block_replace: ", name,
                   " must have dtype float32, bfloat16 or float16, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 4, "kv_block_replace: ", name, " must have 4 dimensions ([B, H, T, D] or [B, T, H, D]), got shape ",
                    t.sizes());
  // The head dimension is copied as one run of bytes, so it must be dense.
  TORCH_CHECK_VALUE(t.size(3) <= 1 || t.stride(3) == 1, "kv_block_replace: ", name,
                    " must be contiguous in its last (head) dimension, got strides ", t.strides());
}

void check_row_tensor(const std::optional<at::Tensor>& t, const char* name, int64_t batch, const at::Device& device) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->defined(), "kv_block_replace: ", name, " is an undefined tensor");
  TORCH_CHECK_TYPE(t->scalar_type() == at::kLong || t->scalar_type() == at::kInt, "kv_block_replace: ", name,
                   " must have dtype int64 or int32, got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == batch, "kv_block_replace: ", name, " must have shape [", batch,
                    "] (one entry per cache row), got ", t->sizes());
  TORCH_CHECK_VALUE(t->device() == device, "kv_block_replace: ", name, " is on ", t->device(), " but caches[0] is on ",
                    device);
}

// Half-open byte range [first, last) that a strided tensor may touch.
std::pair<uintptr_t, uintptr_t> byte_span(const at::Tensor& t) {
  auto first = reinterpret_cast<uintptr_t>(t.data_ptr());
  uintptr_t extent = t.element_size();
  for (int64_t d = 0; d < t.dim(); ++d) extent += static_cast<uintptr_t>((t.size(d) - 1) * t.stride(d)) * t.element_size();
  return {first, first + extent};
}

int64_t read_row(const at::Tensor& t, int64_t row) {
  return t.scalar_type() == at::kLong ? t.data_ptr<int64_t>()[row * t.stride(0)]
                                      : static_cast<int64_t>(t.data_ptr<int32_t>()[row * t.stride(0)]);
}

}  // namespace

CopyGeometry check_arguments(at::TensorList caches, at::TensorList blocks, const std::optional<at::Tensor>& dst_start,
                             const std::optional<at::Tensor>& src_start, const std::optional<at::Tensor>& src_rows,
                             int64_t dst_start_scalar, int64_t src_start_scalar, std::optional<int64_t> length,
                             c10::string_view layout, const std::optional<at::Tensor>& status) {
  const int64_t seq_dim = seq_dim_of(layout);
  const int64_t head_dim = 3 - seq_dim;
  TORCH_CHECK_VALUE(!caches.empty(), "kv_block_replace: caches must be a non-empty list of tensors");
  TORCH_CHECK_VALUE(caches.size() == blocks.size(), "kv_block_replace: caches and blocks must have the same length, got ",
                    caches.size(), " caches and ", blocks.size(), " blocks");

  check_kv_tensor(caches[0], "caches[0]");
  check_kv_tensor(blocks[0], "blocks[0]");
  const at::Device device = caches[0].device();
  const int64_t batch = caches[0].size(0);
  const int64_t cache_len = caches[0].size(seq_dim);
  const int64_t block_batch = blocks[0].size(0);
  const int64_t block_len = blocks[0].size(seq_dim);

  for (size_t i = 0; i < caches.size(); ++i) {
    const at::Tensor& cache = caches[i];
    const at::Tensor& block = blocks[i];
    const std::string cname = item_name("caches", i), bname = item_name("blocks", i);
    check_kv_tensor(cache, cname);
    check_kv_tensor(block, bname);
    TORCH_CHECK_VALUE(cache.device() == device, "kv_block_replace: ", cname, " is on ", cache.device(),
                      " but caches[0] is on ", device);
    TORCH_CHECK_VALUE(block.device() == device, "kv_block_replace: ", bname, " is on ", block.device(),
                      " but caches[0] is on ", device);
    TORCH_CHECK_TYPE(cache.scalar_type() == caches[0].scalar_type(), "kv_block_replace: ", cname, " has dtype ",
                     cache.scalar_type(), " but caches[0] has dtype ", caches[0].scalar_type());
    TORCH_CHECK_TYPE(block.scalar_type() == cache.scalar_type(), "kv_block_replace: ", bname, " has dtype ",
                     block.scalar_type(), " but ", cname, " has dtype ", cache.scalar_type());
    TORCH_CHECK_VALUE(cache.size(0) == batch, "kv_block_replace: ", cname, " has batch size ", cache.size(0),
                      " but caches[0] has ", batch);
    TORCH_CHECK_VALUE(cache.size(seq_dim) == cache_len, "kv_block_replace: ", cname, " has sequence length ",
                      cache.size(seq_dim), " (dim ", seq_dim, " for layout ", std::string(layout), ") but caches[0] has ",
                      cache_len);
    TORCH_CHECK_VALUE(block.size(0) == block_batch, "kv_block_replace: ", bname, " has batch size ", block.size(0),
                      " but blocks[0] has ", block_batch);
    TORCH_CHECK_VALUE(block.size(seq_dim) == block_len, "kv_block_replace: ", bname, " has sequence length ",
                      block.size(seq_dim), " (dim ", seq_dim, " for layout ", std::string(layout), ") but blocks[0] has ",
                      block_len);
    TORCH_CHECK_VALUE(block.size(head_dim) == cache.size(head_dim) && block.size(3) == cache.size(3), "kv_block_replace: ",
                      bname, " has shape ", block.sizes(), " but ", cname, " has shape ", cache.sizes(),
                      ": heads (dim ", head_dim, ") and head size (dim 3) must match");
    TORCH_CHECK_VALUE(at::has_internal_overlap(cache) != at::MemOverlap::Yes, "kv_block_replace: ", cname,
                      " has internally overlapping memory (e.g. an expand()ed view); writing into it is ambiguous");
    // Two caches sharing memory (the same tensor twice, overlapping slices) would be written twice
    // in an unspecified order. Interleaved views of one buffer (K and V slices) do not share
    // elements and pass (the check answers "too hard" for them, not "overlap").
    for (size_t j = 0; j < i; ++j) {
      const auto overlap = at::get_overlap_status(caches[j], cache);
      TORCH_CHECK_VALUE(cache.numel() == 0 || (overlap != at::MemOverlapStatus::Full &&
                                               overlap != at::MemOverlapStatus::Partial),
                        "kv_block_replace: ", cname, " shares memory with ", item_name("caches", j),
                        "; every cache must be a separate tensor");
    }
  }

  // A block whose memory intersects a cache could be overwritten while it is read.
  if (device.type() != at::kMeta) {
    std::vector<std::pair<uintptr_t, uintptr_t>> cache_spans;
    cache_spans.reserve(caches.size());
    for (const auto& cache : caches)
      if (cache.numel() > 0) cache_spans.push_back(byte_span(cache));
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (blocks[i].numel() == 0) continue;
      const auto span = byte_span(blocks[i]);
      for (const auto& c : cache_spans)
        TORCH_CHECK_VALUE(span.second <= c.first || c.second <= span.first, "kv_block_replace: ", item_name("blocks", i),
                          " overlaps the memory of one of the caches; pass a separate tensor (e.g. .clone())");
    }
  }

  const int64_t len = length.has_value() ? *length : block_len;
  TORCH_CHECK_VALUE(len >= 1, "kv_block_replace: length must be >= 1, got ", len);
  TORCH_CHECK_VALUE(len <= block_len, "kv_block_replace: length (", len, ") exceeds the blocks' sequence length (",
                    block_len, ")");
  TORCH_CHECK_VALUE(len <= cache_len, "kv_block_replace: length (", len, ") exceeds the caches' sequence length (",
                    cache_len, ")");

  check_row_tensor(dst_start, "dst_start", batch, device);
  check_row_tensor(src_start, "src_start", batch, device);
  check_row_tensor(src_rows, "src_rows", batch, device);
  if (!src_rows.has_value())
    TORCH_CHECK_VALUE(block_batch == batch, "kv_block_replace: blocks have batch size ", block_batch,
                      " but caches have ", batch, "; pass src_rows to choose which block row each cache row receives");
  if (!dst_start.has_value())
    TORCH_CHECK_VALUE(dst_start_scalar >= 0 && dst_start_scalar <= cache_len - len, "kv_block_replace: dst_start must be in [0, ",
                      cache_len - len, "] (cache length ", cache_len, " - length ", len, "), got ", dst_start_scalar);
  if (!src_start.has_value())
    TORCH_CHECK_VALUE(src_start_scalar >= 0 && src_start_scalar <= block_len - len, "kv_block_replace: src_start must be in [0, ",
                      block_len - len, "] (block length ", block_len, " - length ", len, "), got ", src_start_scalar);
  if (status.has_value()) {
    TORCH_CHECK_VALUE(status->defined(), "kv_block_replace: status is an undefined tensor");
    TORCH_CHECK_TYPE(status->scalar_type() == at::kInt, "kv_block_replace: status must have dtype int32, got ",
                     status->scalar_type());
    TORCH_CHECK_VALUE(status->numel() == 1, "kv_block_replace: status must have exactly one element, got shape ",
                      status->sizes());
    TORCH_CHECK_VALUE(status->device() == device, "kv_block_replace: status is on ", status->device(),
                      " but caches[0] is on ", device);
  }
  return {len, seq_dim, head_dim};
}

namespace {

// Bitmask of out-of-range per-row offsets in CPU tensors (0 when all are in range).
int64_t host_range_errors(const std::optional<at::Tensor>& dst_start, const std::optional<at::Tensor>& src_start,
                          const std::optional<at::Tensor>& src_rows, int64_t batch, int64_t dst_max, int64_t src_max,
                          int64_t block_batch) {
  int64_t errors = 0;
  for (int64_t b = 0; b < batch; ++b) {
    if (dst_start.has_value()) {
      const int64_t v = read_row(*dst_start, b);
      if (v < 0 || v > dst_max) errors |= kBadDstStart;
    }
    if (src_start.has_value()) {
      const int64_t v = read_row(*src_start, b);
      if (v < 0 || v > src_max) errors |= kBadSrcStart;
    }
    if (src_rows.has_value()) {
      const int64_t v = read_row(*src_rows, b);
      if (v < 0 || v >= block_batch) errors |= kBadSrcRows;
    }
  }
  return errors;
}

std::string describe_range_errors(int64_t errors, int64_t dst_max, int64_t src_max, int64_t block_batch) {
  std::string msg = "kv_block_replace: nothing was written because";
  if (errors & kBadDstStart) msg += " dst_start has entries outside [0, " + std::to_string(dst_max) + "];";
  if (errors & kBadSrcStart) msg += " src_start has entries outside [0, " + std::to_string(src_max) + "];";
  if (errors & kBadSrcRows) msg += " src_rows has entries outside [0, " + std::to_string(block_batch - 1) + "];";
  msg.pop_back();
  return msg;
}

void kv_block_replace_cpu(at::TensorList caches, at::TensorList blocks, const std::optional<at::Tensor>& dst_start,
                          const std::optional<at::Tensor>& src_start, const std::optional<at::Tensor>& src_rows,
                          int64_t dst_start_scalar, int64_t src_start_scalar, std::optional<int64_t> length,
                          c10::string_view layout, const std::optional<at::Tensor>& status) {
  const CopyGeometry geometry = check_arguments(caches, blocks, dst_start, src_start, src_rows, dst_start_scalar,
                                                src_start_scalar, length, layout, status);
  const int64_t len = geometry.length, seq_dim = geometry.seq_dim, head_dim = geometry.head_dim;
  const int64_t batch = caches[0].size(0);
  const int64_t dst_max = caches[0].size(seq_dim) - len;
  const int64_t src_max = blocks[0].size(seq_dim) - len;
  const int64_t block_batch = blocks[0].size(0);

  const int64_t errors = host_range_errors(dst_start, src_start, src_rows, batch, dst_max, src_max, block_batch);
  if (status.has_value()) status->fill_(static_cast<int32_t>(errors));
  if (errors != 0) {
    // With a status tensor the caller asked for the CUDA-path contract: flag, write nothing, no exception.
    if (status.has_value()) return;
    TORCH_CHECK_VALUE(false, describe_range_errors(errors, dst_max, src_max, block_batch));
  }

  std::vector<int64_t> dst_of_row(batch), src_of_row(batch), block_row_of_row(batch);
  for (int64_t b = 0; b < batch; ++b) {
    dst_of_row[b] = dst_start.has_value() ? read_row(*dst_start, b) : dst_start_scalar;
    src_of_row[b] = src_start.has_value() ? read_row(*src_start, b) : src_start_scalar;
    block_row_of_row[b] = src_rows.has_value() ? read_row(*src_rows, b) : b;
  }

  const int64_t num_pairs = static_cast<int64_t>(caches.size());
  int64_t bytes_per_unit = 1;  // bytes one (pair, row) unit copies, for the parallel grain
  for (int64_t i = 0; i < num_pairs; ++i)
    bytes_per_unit = std::max(bytes_per_unit, caches[i].size(head_dim) * len * caches[i].size(3) * caches[i].element_size());
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / bytes_per_unit);

  at::parallel_for(0, num_pairs * batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t i = unit / batch, b = unit % batch;
      const at::Tensor& cache = caches[i];
      const at::Tensor& block = blocks[i];
      const int64_t esize = cache.element_size();
      const int64_t row_bytes = cache.size(3) * esize;
      const int64_t heads = cache.size(head_dim);
      if (row_bytes == 0 || heads == 0) continue;
      char* dst = static_cast<char*>(cache.data_ptr()) +
                  (b * cache.stride(0) + dst_of_row[b] * cache.stride(seq_dim)) * esize;
      const char* src = static_cast<const char*>(block.data_ptr()) +
                        (block_row_of_row[b] * block.stride(0) + src_of_row[b] * block.stride(seq_dim)) * esize;
      const int64_t dst_step_t = cache.stride(seq_dim) * esize, src_step_t = block.stride(seq_dim) * esize;
      const int64_t dst_step_h = cache.stride(head_dim) * esize, src_step_h = block.stride(head_dim) * esize;
      // Dense runs along the sequence copy in one memcpy per head.
      const bool dense_t = dst_step_t == row_bytes && src_step_t == row_bytes;
      for (int64_t h = 0; h < heads; ++h) {
        char* dst_h = dst + h * dst_step_h;
        const char* src_h = src + h * src_step_h;
        if (dense_t) {
          std::memcpy(dst_h, src_h, static_cast<size_t>(row_bytes * len));
        } else {
          for (int64_t t = 0; t < len; ++t)
            std::memcpy(dst_h + t * dst_step_t, src_h + t * src_step_t, static_cast<size_t>(row_bytes));
        }
      }
    }
  });
}

// Shape-only kernel for FakeTensor / torch.compile tracing: the op returns nothing.
void kv_block_replace_meta(at::TensorList caches, at::TensorList blocks, const std::optional<at::Tensor>& dst_start,
                           const std::optional<at::Tensor>& src_start, const std::optional<at::Tensor>& src_rows,
                           int64_t dst_start_scalar, int64_t src_start_scalar, std::optional<int64_t> length,
                           c10::string_view layout, const std::optional<at::Tensor>& status) {
  check_arguments(caches, blocks, dst_start, src_start, src_rows, dst_start_scalar, src_start_scalar, length, layout,
                  status);
}

}  // namespace
}  // namespace kv
}  // namespace infogain

// FRAGMENT: Python custom ops (torch.library.custom_op) add to the same namespace.
TORCH_LIBRARY_FRAGMENT(infogain, m) {
  m.def(
      "kv_block_replace(Tensor(a!)[] caches, Tensor[] blocks, Tensor? dst_start, Tensor? src_start, Tensor? src_rows, *, "
      "int dst_start_scalar=0, int src_start_scalar=0, int? length=None, str layout=\"bhtd\", "
      "Tensor(b!)? status=None) -> ()");
}

TORCH_LIBRARY_IMPL(infogain, CPU, m) { m.impl("kv_block_replace", &infogain::kv::kv_block_replace_cpu); }

TORCH_LIBRARY_IMPL(infogain, Meta, m) { m.impl("kv_block_replace", &infogain::kv::kv_block_replace_meta); }
