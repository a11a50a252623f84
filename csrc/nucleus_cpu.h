// The native CPU nucleus pass behind infogain::_nucleus_cpu (see nucleus_cpu.cpp).
//
// nucleus_cpu.cpp validates, allocates, draws the random numbers and dispatches; the kernel
// (nucleus_cpu_kernel.h) is compiled once per CPU capability, in the same translation units as the
// step_stats row pass (step_stats_cpu_default.cpp, step_stats_cpu_avx2.cpp), and reads only this
// plain description of the work.
#pragma once

#include <cstdint>

#include "step_stats_cpu.h"

namespace infogain {
namespace nucleus {

using rowpass::LogitsType;

struct NucleusArgs {
  // logits [rows, vocab]: element type and strides (in elements).
  const void* logits;
  LogitsType dtype;
  int64_t vocab;
  int64_t row_stride;
  int64_t col_stride;
  // Top-k width (1 <= k <= vocab).
  int64_t k;
  // float32(T), the divisor torch uses for float32 logits / T; 0 = untempered scores.
  float temperature;
  // top_p < 1: the nucleus is searched; mass_limit = ceil(top_p * 2**40).
  bool use_top_p;
  int64_t mass_limit;
  // Tokens with score s < lse + log_tail cannot be in the nucleus (only when candidate_filter).
  bool candidate_filter;
  float log_tail;
  // One 53-bit random integer per row (the draw's uniform fraction is bits * 2**-53), or null:
  // no draw, the token is the top-1.
  const int64_t* random_bits;
  // Outputs: ids / logprobs [rows, k] row-major; token / token_logprob / lse [rows].
  int64_t* ids;
  float* logprobs;
  int64_t* token;
  float* token_logprob;
  float* lse;
};

// Process rows [begin, end). Thread-safe for disjoint ranges.
void nucleus_rows_default(const NucleusArgs& args, int64_t begin, int64_t end);
#if defined(INFOGAIN_ROWPASS_AVX2)
void nucleus_rows_avx2(const NucleusArgs& args, int64_t begin, int64_t end);
#endif

}  // namespace nucleus
}  // namespace infogain
