// Validation shared by the native CPU ops' entry points: the logits tensor and its element type.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "step_stats_cpu.h"

namespace infogain {
namespace rowpass {

// A defined CPU tensor [..., V] with V >= 1 of a supported dtype; `op` names the caller in errors.
inline LogitsType check_logits(const char* op, const at::Tensor& logits) {
  TORCH_CHECK_VALUE(logits.defined(), op, ": logits is an undefined tensor");
  TORCH_CHECK_VALUE(logits.device().is_cpu(), op, ": logits must be a CPU tensor, got device ", logits.device());
  TORCH_CHECK_VALUE(logits.dim() >= 1, op, ": logits must have at least 1 dimension ([..., V]), got a scalar");
  TORCH_CHECK_VALUE(logits.size(-1) >= 1, op, ": logits must have a non-empty last (vocabulary) dimension, got shape ",
                    logits.sizes());
  switch (logits.scalar_type()) {
    case at::kFloat:
      return LogitsType::kFloat;
    case at::kBFloat16:
      return LogitsType::kBFloat16;
    case at::kHalf:
      return LogitsType::kHalf;
    default:
      TORCH_CHECK_TYPE(false, op, ": logits must have dtype float32, bfloat16 or float16, got ", logits.scalar_type());
  }
  return LogitsType::kFloat;  // unreachable
}

}  // namespace rowpass
}  // namespace infogain
