// Declarations shared by the CPU (kv_block_replace.cpp) and CUDA (kv_block_replace_cuda.cu)
// implementations of infogain::kv_block_replace.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace infogain {
namespace kv {

// What a validated call copies: `length` positions per row along the layout's sequence axis
// `seq_dim` (2 for [B, H, T, D], 1 for [B, T, H, D]); `head_dim` is the layout's head axis.
struct CopyGeometry {
  int64_t length;
  int64_t seq_dim;
  int64_t head_dim;
};

// Validates everything that can be checked without reading device memory, so both devices
// refuse exactly the same inputs. Raises ValueError/TypeError naming the argument.
CopyGeometry check_arguments(at::TensorList caches, at::TensorList blocks, const std::optional<at::Tensor>& dst_start,
                             const std::optional<at::Tensor>& src_start, const std::optional<at::Tensor>& src_rows,
                             int64_t dst_start_scalar, int64_t src_start_scalar, std::optional<int64_t> length,
                             c10::string_view layout, const std::optional<at::Tensor>& status);

}  // namespace kv
}  // namespace infogain
