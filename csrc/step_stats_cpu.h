// The native CPU row pass behind infogain::_step_stats_cpu and infogain::_row_entropy_cpu.
//
// step_stats_cpu.cpp validates, allocates and dispatches; the kernel itself
// (step_stats_cpu_kernel.h) is compiled once per CPU capability
// (step_stats_cpu_default.cpp, step_stats_cpu_avx2.cpp) and reads only this plain
// description of the work, so those translation units need no ATen tensor code.
#pragma once

#include <cstdint>

#include "cpu_dispatch.h"

namespace infogain {
namespace rowpass {

enum class LogitsType { kFloat, kBFloat16, kHalf };

struct RowPassArgs {
  // logits: element type, row length V, stride between vocabulary entries, and the
  // leading dimensions (sizes and element strides) that address a flat row index.
  const void* logits;
  LogitsType dtype;
  int64_t vocab;
  int64_t vocab_stride;
  int64_t lead_dims;
  const int64_t* lead_sizes;
  const int64_t* lead_strides;
  // Flat row indices to read (the mask's True positions, or every row).
  const int64_t* rows;
  int64_t num_selected;
  // Outputs, indexed by flat row. top1_* / top2_prob are null for an entropy-only pass.
  float* entropy;
  float* top1_prob;
  int64_t* top1_id;
  float* top2_prob;
  // Draws: uniforms [n_rows, S] row-major (null when no uniforms are read: S == 0 or T == 0),
  // outputs tokens / token_probs [n_rows, S] row-major (null when S == 0).
  int64_t num_samples;
  const float* uniforms;
  float temperature;
  int64_t* tokens;
  float* token_probs;
};

// Process args.rows[begin:end). Thread-safe for disjoint ranges.
void row_pass_default(const RowPassArgs& args, int64_t begin, int64_t end);
#if defined(INFOGAIN_CPU_AVX2)
#define INFOGAIN_ROWPASS_AVX2 1
void row_pass_avx2(const RowPassArgs& args, int64_t begin, int64_t end);
#endif

}  // namespace rowpass
}  // namespace infogain
