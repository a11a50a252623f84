// CUDA kernel of infogain::kv_block_replace (see kv_block_replace.cpp for the semantics).
//
// All layer pairs are copied by one launch: the per-pair pointers and strides travel in
// the kernel's parameter block (captured by value, so the launch is safe inside CUDA-
// graph capture and needs no host-to-device copy), grid.y indexes the pair and grid.x
// strides over that pair's (row, head, position, vector) items. Every copy moves the
// widest vector (up to 16 bytes) that divides all addresses and strides of the launch.
//
// Per-row offsets given as tensors stay on the device. Every CTA checks all rows'
// offsets before copying and skips the whole copy if any is out of range, so a bad
// offset writes nothing; CTA (0, 0) reports the error bits in `status` when the caller
// passed one, and otherwise raises a device-side assertion (as torch's own indexing
// kernels do). No host synchronisation happens anywhere on this path.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include "kv_block_replace.h"

#include <algorithm>
#include <cstdint>
#include <optional>

namespace infogain {
namespace kv {

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
// CUDA >= 12.1 accepts kernel parameter blocks up to 32 KiB (sm_70+); older toolkits 4 KiB.
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12010
constexpr int kMaxPairsPerLaunch = 128;
#else
constexpr int kMaxPairsPerLaunch = 40;
#endif

struct PairMeta {
  char* cache;        // element (0, 0, 0, 0) of caches[i]
  const char* block;  // element (0, 0, 0, 0) of blocks[i]
  // Strides in units of the launch's vector type, for (row, head, position).
  int64_t cache_stride_b, cache_stride_h, cache_stride_t;
  int64_t block_stride_b, block_stride_h, block_stride_t;
  int32_t heads;
  int32_t row_vecs;  // head size in vectors
};

// One per-row offset argument: a device int32/int64 vector, or a scalar for every row.
struct RowIndex {
  const void* data;  // nullptr: use `scalar` (or the row itself for src_rows)
  int64_t stride;
  int64_t scalar;
  bool is_int64;
};

struct LaunchArgs {
  PairMeta pairs[kMaxPairsPerLaunch];
  RowIndex dst_start, src_start, src_rows;
  int32_t* status;  // nullptr: device-side assertion on bad offsets
  int64_t batch, length;
  int64_t dst_max, src_max, block_batch;  // inclusive bounds of the offsets
  int32_t check_rows;                     // any offset lives on the device
};
static_assert(sizeof(LaunchArgs) <= (kMaxPairsPerLaunch > 40 ? 32764 : 4096), "kernel parameter block too large");

__device__ __forceinline__ int64_t load_row(const RowIndex& index, int64_t row, int64_t fallback) {
  if (index.data == nullptr) return fallback;
  return index.is_int64 ? static_cast<const int64_t*>(index.data)[row * index.stride]
                        : static_cast<int64_t>(static_cast<const int32_t*>(index.data)[row * index.stride]);
}

template <typename VecT, typename IndexT>
__global__ void __launch_bounds__(kThreads) kv_block_replace_kernel(const __grid_constant__ LaunchArgs args) {
  __shared__ int bad_rows;
  int bad = 0;
  if (args.check_rows) {
    if (threadIdx.x == 0) bad_rows = 0;
    __syncthreads();
    int mine = 0;
    for (int64_t b = threadIdx.x; b < args.batch; b += blockDim.x) {
      const int64_t d = load_row(args.dst_start, b, args.dst_start.scalar);
      const int64_t s = load_row(args.src_start, b, args.src_start.scalar);
      const int64_t r = load_row(args.src_rows, b, b);
      if (d < 0 || d > args.dst_max) mine |= 1;
      if (s < 0 || s > args.src_max) mine |= 2;
      if (r < 0 || r >= args.block_batch) mine |= 4;
    }
    if (mine) atomicOr(&bad_rows, mine);
    __syncthreads();
    bad = bad_rows;
  }
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) {
    if (args.status != nullptr) {
      *args.status = bad;
    } else {
      CUDA_KERNEL_ASSERT_MSG(bad == 0, "kv_block_replace: dst_start, src_start or src_rows out of range; nothing written");
    }
  }
  if (bad) return;

  const PairMeta& pair = args.pairs[blockIdx.y];
  const IndexT row_vecs = static_cast<IndexT>(pair.row_vecs);
  const IndexT length = static_cast<IndexT>(args.length);
  const IndexT heads = static_cast<IndexT>(pair.heads);
  const IndexT items = static_cast<IndexT>(args.batch) * heads * length * row_vecs;
  const IndexT step = static_cast<IndexT>(gridDim.x) * kThreads;
  VecT* cache = reinterpret_cast<VecT*>(pair.cache);
  const VecT* block = reinterpret_cast<const VecT*>(pair.block);

  for (IndexT base = static_cast<IndexT>(blockIdx.x) * kThreads + threadIdx.x; base < items; base += step * kUnroll) {
    VecT values[kUnroll];
    int64_t dst_offset[kUnroll];
    // All loads first, then all stores: keeps kUnroll independent loads in flight.
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const IndexT item = base + u * step;
      if (item < items) {
        const IndexT v = item % row_vecs;
        IndexT rest = item / row_vecs;
        const IndexT t = rest % length;
        rest /= length;
        const IndexT h = rest % heads;
        const int64_t b = static_cast<int64_t>(rest / heads);
        const int64_t dst_t = load_row(args.dst_start, b, args.dst_start.scalar) + t;
        const int64_t src_t = load_row(args.src_start, b, args.src_start.scalar) + t;
        const int64_t src_b = load_row(args.src_rows, b, b);
        dst_offset[u] = b * pair.cache_stride_b + h * pair.cache_stride_h + dst_t * pair.cache_stride_t + v;
        values[u] = block[src_b * pair.block_stride_b + h * pair.block_stride_h + src_t * pair.block_stride_t + v];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (base + u * step < items) cache[dst_offset[u]] = values[u];
    }
  }
}

// Largest power of two <= 16 dividing every address and byte stride the launch touches.
int common_vector_bytes(at::TensorList caches, at::TensorList blocks, int64_t seq_dim, int64_t head_dim) {
  uint64_t bits = 16;
  auto fold = [&bits](uint64_t value) { bits |= value; };
  for (size_t i = 0; i < caches.size(); ++i) {
    for (const at::Tensor* t : {&caches[i], &blocks[i]}) {
      const uint64_t esize = t->element_size();
      fold(reinterpret_cast<uintptr_t>(t->data_ptr()));
      fold(t->size(3) * esize);
      // A stride of a size-1 dimension is never multiplied by a non-zero index.
      for (int64_t d : {int64_t{0}, head_dim, seq_dim})
        if (t->size(d) > 1) fold(static_cast<uint64_t>(t->stride(d)) * esize);
    }
  }
  // Lowest set bit of the OR of all values (and 16) = largest common power of two <= 16.
  return static_cast<int>(bits & (~bits + 1));
}

RowIndex make_row_index(const std::optional<at::Tensor>& t, int64_t scalar) {
  RowIndex index{nullptr, 0, scalar, false};
  if (t.has_value()) {
    index.data = t->data_ptr();
    index.stride = t->stride(0);
    index.is_int64 = t->scalar_type() == at::kLong;
  }
  return index;
}

template <typename VecT>
void launch_chunks(LaunchArgs& args, at::TensorList caches, at::TensorList blocks, int64_t seq_dim, int64_t head_dim,
                   cudaStream_t stream, int multiprocessors) {
  const int64_t vec = sizeof(VecT);
  const int num_pairs = static_cast<int>(caches.size());
  for (int first = 0; first < num_pairs; first += kMaxPairsPerLaunch) {
    const int count = std::min(kMaxPairsPerLaunch, num_pairs - first);
    int64_t max_items = 0;
    for (int j = 0; j < count; ++j) {
      const at::Tensor& cache = caches[first + j];
      const at::Tensor& block = blocks[first + j];
      const int64_t esize = cache.element_size();
      PairMeta& meta = args.pairs[j];
      meta.cache = static_cast<char*>(cache.data_ptr());
      meta.block = static_cast<const char*>(block.data_ptr());
      // Strides of size-1 dimensions may be anything (even misaligned); they are never used.
      auto vec_stride = [&](const at::Tensor& t, int64_t d) -> int64_t {
        return t.size(d) > 1 ? t.stride(d) * esize / vec : 0;
      };
      meta.cache_stride_b = vec_stride(cache, 0);
      meta.cache_stride_h = vec_stride(cache, head_dim);
      meta.cache_stride_t = vec_stride(cache, seq_dim);
      meta.block_stride_b = vec_stride(block, 0);
      meta.block_stride_h = vec_stride(block, head_dim);
      meta.block_stride_t = vec_stride(block, seq_dim);
      meta.heads = static_cast<int32_t>(cache.size(head_dim));
      meta.row_vecs = static_cast<int32_t>(cache.size(3) * esize / vec);
      max_items = std::max(max_items, args.batch * cache.size(head_dim) * args.length * meta.row_vecs);
    }
    // Nothing to copy: launch anyway when the kernel must check offsets or report a status.
    if (max_items == 0 && !args.check_rows && args.status == nullptr) continue;
    const int64_t wanted_ctas = (max_items + int64_t{kThreads} * kUnroll - 1) / (int64_t{kThreads} * kUnroll);
    // Enough CTAs to fill the GPU several times over; the rest is covered by the grid-stride loop.
    const int64_t cta_cap = int64_t{multiprocessors} * 32;
    const dim3 grid(static_cast<unsigned>(std::max<int64_t>(1, std::min(wanted_ctas, cta_cap))), count);
    const bool fits_int32 = max_items + int64_t{kThreads} * kUnroll * grid.x < (int64_t{1} << 31);
    if (fits_int32) {
      kv_block_replace_kernel<VecT, int32_t><<<grid, kThreads, 0, stream>>>(args);
    } else {
      kv_block_replace_kernel<VecT, int64_t><<<grid, kThreads, 0, stream>>>(args);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void kv_block_replace_cuda(at::TensorList caches, at::TensorList blocks, const std::optional<at::Tensor>& dst_start,
                           const std::optional<at::Tensor>& src_start, const std::optional<at::Tensor>& src_rows,
                           int64_t dst_start_scalar, int64_t src_start_scalar, std::optional<int64_t> length,
                           c10::string_view layout, const std::optional<at::Tensor>& status) {
  const CopyGeometry geometry = check_arguments(caches, blocks, dst_start, src_start, src_rows, dst_start_scalar,
                                                src_start_scalar, length, layout, status);
  const int64_t len = geometry.length, seq_dim = geometry.seq_dim, head_dim = geometry.head_dim;
  for (size_t i = 0; i < caches.size(); ++i) {
    TORCH_CHECK_VALUE(caches[i].size(head_dim) <= INT32_MAX && caches[i].size(3) <= INT32_MAX,
                      "kv_block_replace: caches[", i, "] has more than 2^31 - 1 heads or head elements");
  }

  const c10::cuda::CUDAGuard guard(caches[0].device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  int multiprocessors = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, caches[0].get_device()));

  LaunchArgs args{};
  args.dst_start = make_row_index(dst_start, dst_start_scalar);
  args.src_start = make_row_index(src_start, src_start_scalar);
  args.src_rows = make_row_index(src_rows, 0);
  args.status = status.has_value() ? status->data_ptr<int32_t>() : nullptr;
  args.batch = caches[0].size(0);
  args.length = len;
  args.dst_max = caches[0].size(seq_dim) - len;
  args.src_max = blocks[0].size(seq_dim) - len;
  args.block_batch = blocks[0].size(0);
  args.check_rows = dst_start.has_value() || src_start.has_value() || src_rows.has_value();

  switch (common_vector_bytes(caches, blocks, seq_dim, head_dim)) {
    case 16: launch_chunks<uint4>(args, caches, blocks, seq_dim, head_dim, stream, multiprocessors); break;
    case 8: launch_chunks<uint2>(args, caches, blocks, seq_dim, head_dim, stream, multiprocessors); break;
    case 4: launch_chunks<uint32_t>(args, caches, blocks, seq_dim, head_dim, stream, multiprocessors); break;
    case 2: launch_chunks<uint16_t>(args, caches, blocks, seq_dim, head_dim, stream, multiprocessors); break;
    default: launch_chunks<uint8_t>(args, caches, blocks, seq_dim, head_dim, stream, multiprocessors); break;
  }
}

}  // namespace
}  // namespace kv
}  // namespace infogain

TORCH_LIBRARY_IMPL(infogain, CUDA, m) { m.impl("kv_block_replace", &infogain::kv::kv_block_replace_cuda); }
