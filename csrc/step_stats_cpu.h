// The native CPU row pass behind infogain::_step_stats_cpu and infogain::_row_entropy_cpu, and its
// piecewise form behind infogain::_lm_head_stats_cpu.
//
// step_stats_cpu.cpp validates, allocates and dispatches; the kernel itself
// (step_stats_cpu_kernel.h) is compiled once per CPU capability
// (step_stats_cpu_default.cpp, step_stats_cpu_avx2.cpp) and reads only this plain
// description of the work, so those translation units need no ATen tensor code.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

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

// Running statistics of one row of logits x, float32, carried across its chunks in vocabulary order.
struct RowStats {
  float m = -std::numeric_limits<float>::infinity();  // running max
  float z = 0.f;                                      // sum exp(x - m)
  float s = 0.f;                                      // sum exp(x - m) (x - m)
  float zt = 0.f;                                     // sum exp((x - m) / T)
  float best = -std::numeric_limits<float>::infinity();
  int64_t best_id = -1;                               // first index of the maximum
  float second = -std::numeric_limits<float>::infinity();
  bool bad = false;                                   // NaN seen, or every entry -inf

  float entropy() const { return std::log(z) - s / z; }
  float top1_prob() const { return 1.f / z; }  // exp(best - m) / z with best == m
  float top2_prob() const { return std::exp(second - m) / z; }
};

// One piece of LM-head logits: rows x cols (row stride `ld` elements), vocabulary columns
// [col_offset, col_offset + cols), folded into stats[row] (see lm_head_cpu.cpp).
struct HeadPieceArgs {
  const void* logits;
  LogitsType dtype;
  int64_t cols;
  int64_t ld;
  const float* bias;  // float32 [cols] added to the piece, or null
  int64_t col_offset;
  bool with_top;      // track the top-2 as well
  RowStats* stats;
};

// Process args.rows[begin:end). Thread-safe for disjoint ranges.
void row_pass_default(const RowPassArgs& args, int64_t begin, int64_t end);
// Fold rows [begin, end) of a piece into their statistics. Thread-safe for disjoint ranges.
void head_piece_default(const HeadPieceArgs& args, int64_t begin, int64_t end);
#if defined(INFOGAIN_CPU_AVX2)
#define INFOGAIN_ROWPASS_AVX2 1
void row_pass_avx2(const RowPassArgs& args, int64_t begin, int64_t end);
void head_piece_avx2(const HeadPieceArgs& args, int64_t begin, int64_t end);
#endif

// The build of kernel `name` (name##_default / name##_avx2) for this CPU, see cpu_use_avx2.
#if defined(INFOGAIN_ROWPASS_AVX2)
#define INFOGAIN_CPU_BUILD(name) (::infogain::cpu_use_avx2() ? &name##_avx2 : &name##_default)
#else
#define INFOGAIN_CPU_BUILD(name) (&name##_default)
#endif

}  // namespace rowpass
}  // namespace infogain
