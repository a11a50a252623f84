// The CPU row pass, compiled once per CPU capability: a translation unit defines
// INFOGAIN_ROWPASS_ENTRY and INFOGAIN_HEAD_PIECE_ENTRY (the functions it exports, declared in
// step_stats_cpu.h) and, for a
// vector ISA, the ATen CPU_CAPABILITY macros, then includes this file. Everything here has
// internal linkage, so the copies for different capabilities never clash.
//
// Per row (float32 arithmetic whatever the input dtype), with m the row max:
//   pass 1, one read of the row, a chunk of kChunk logits at a time (converted to float32
//   into a buffer that stays in L1): the chunk max, then the sums against the running max,
//   rescaled when the max grows (online log-sum-exp):
//     z = sum exp(x - m), s = sum exp(x - m) (x - m)  -> entropy = log z - s / z
//     zt = sum exp((x - m) / T)                        (only when draws are tempered, T != 1)
//   plus the chunk's top-2 (lane-wise) merged into the row's, and the first index of the maximum.
//   The LM-head pass (head piece) folds pieces of a row, computed by a matmul, into the same
//   running statistics (accumulate_chunk), a piece at a time.
//   pass 2, only when S > 0 and T > 0: inverse-CDF draws. The S thresholds u * Z are sorted and
//   located in one prefix scan; a chunk whose weights do not reach the next threshold is
//   skipped with its vector sum, so the scalar scan touches at most S chunks.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "step_stats_cpu.h"

namespace infogain {
namespace rowpass {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();
// Logits per chunk: small enough that the float32 chunk and its weights stay in L1, large
// enough that the per-chunk horizontal reductions and rescaling are negligible.
constexpr int64_t kChunk = 1024;
static_assert(kChunk % 16 == 0, "kChunk must be a multiple of every vector width");

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// exp(x - m) for x = -inf must give weight 0 and contribute 0 (not -inf * 0) to s: clamping the
// shifted logit to the lowest finite float keeps both exact (exp underflows to 0, 0 * lowest = 0).
constexpr float kLowest = std::numeric_limits<float>::lowest();

// One chunk of a row as float32: `data` holds the first `full` values (a multiple of kW),
// `tail` the rest padded with -inf, so every vector load is a whole vector.
struct Chunk {
  const float* data = nullptr;
  int64_t n = 0;
  int64_t full = 0;
  float tail[kW];

  int64_t padded() const { return (n + kW - 1) / kW * kW; }
  Vec load(int64_t i) const { return i < full ? Vec::loadu(data + i) : Vec::loadu(tail); }
  float at(int64_t j) const { return j < full ? data[j] : tail[j - full]; }
};

// Calls fn(T{}) for the element type T of `dtype` (the kernels' one switch over the logits types).
template <typename F>
inline void dispatch_logits_type(LogitsType dtype, const F& fn) {
  switch (dtype) {
    case LogitsType::kFloat:
      fn(float{});
      break;
    case LogitsType::kBFloat16:
      fn(c10::BFloat16{});
      break;
    case LogitsType::kHalf:
      fn(c10::Half{});
      break;
  }
}

template <typename T>
inline float to_float(T v) {
  return static_cast<float>(v);
}

// Fill `chunk` with row[begin : begin + n] (element stride `stride`) as float32, plus
// bias[begin : begin + n] when `bias` is given (the LM head's); `buf` has kChunk floats. Contiguous
// float32 rows without a bias are read in place; everything else is converted into `buf`.
template <typename T>
inline void load_chunk(const T* row, int64_t stride, int64_t begin, int64_t n, float* buf, Chunk& chunk,
                       const float* bias = nullptr) {
  chunk.n = n;
  chunk.full = n / kW * kW;
  const T* src = row + begin * stride;
  const float* add = bias != nullptr ? bias + begin : nullptr;
  if (stride == 1) {
    if constexpr (std::is_same_v<T, float>) {
      if (add == nullptr) {
        chunk.data = src;
      } else {
        for (int64_t i = 0; i < chunk.full; i += kW) (Vec::loadu(src + i) + Vec::loadu(add + i)).store(buf + i);
        chunk.data = buf;
      }
    } else {
      for (int64_t i = 0; i < chunk.full; i += kW) {
        Vec v;
        at::vec::load_to_float<T>(src + i, v);
        if (add != nullptr) v = v + Vec::loadu(add + i);
        v.store(buf + i);
      }
      chunk.data = buf;
    }
  } else {
    for (int64_t i = 0; i < chunk.full; ++i) buf[i] = to_float(src[i * stride]) + (add != nullptr ? add[i] : 0.f);
    chunk.data = buf;
  }
  for (int64_t j = 0; j < kW; ++j) {
    int64_t i = chunk.full + j;
    chunk.tail[j] = i < n ? to_float(src[i * stride]) + (add != nullptr ? add[i] : 0.f) : kNegInf;
  }
}

inline float reduce_max(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, v);
}

inline float reduce_sum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

// exp of the clamped shifted logits (<= 0), tempered or not. exp_u20 (a short polynomial, about 20
// ulp; exactly 1 at 0 and 0 below log(FLT_MIN)) instead of the 1-ulp Sleef exp: the exponentials are
// the pass's whole arithmetic, and 2e-6 relative error per weight is far below what the sums of
// ~1e5 float32 terms round to anyway. NaN never gets here (a NaN row stops at its chunk max).
inline Vec fast_exp(const Vec& x) { return x.exp_u20(); }

template <bool kTempered>
inline Vec weight(const Vec& shifted, const Vec& temperature) {
  if constexpr (kTempered) {
    return fast_exp(shifted / temperature);
  } else {
    return fast_exp(shifted);
  }
}

// Fold one chunk (its first logit has vocabulary index `begin`) into the running statistics; the
// chunks of a row may come in any number of calls, in vocabulary order. Sets st.bad on a NaN.
template <bool kTop, bool kTempered>
inline void accumulate_chunk(RowStats& st, const Chunk& chunk, int64_t begin, float temperature) {
  const int64_t padded = chunk.padded();
  // Lane-wise top-2 of the chunk (duplicates count twice, so a tied maximum gives top2 == top1).
  Vec top1(kNegInf), top2(kNegInf);
  for (int64_t i = 0; i < padded; i += kW) {
    Vec v = chunk.load(i);
    if constexpr (kTop) top2 = at::vec::maximum(top2, at::vec::minimum(top1, v));
    top1 = at::vec::maximum(top1, v);
  }
  const float cm = reduce_max(top1);
  if (std::isnan(cm)) {
    st.bad = true;
    return;
  }
  if (cm == kNegInf) return;  // nothing in this chunk has weight
  if constexpr (kTop) {
    if (cm > st.best) {  // strictly greater: the first chunk holding the maximum keeps it
      // The chunk's second: the best lane's second, or another lane's first.
      float a[kW], b[kW];
      top1.store(a);
      top2.store(b);
      int64_t lane = 0;
      while (a[lane] != cm) ++lane;
      float chunk_second = b[lane];
      for (int64_t j = 0; j < kW; ++j)
        if (j != lane && a[j] > chunk_second) chunk_second = a[j];
      st.second = std::max(st.best, chunk_second);
      int64_t j = 0;
      while (chunk.at(j) != cm) ++j;
      st.best = cm;
      st.best_id = begin + j;
    } else {
      st.second = std::max(st.second, cm);
    }
  }
  if (cm > st.m) {
    if (st.m != kNegInf) {
      const float delta = st.m - cm;
      const float scale = std::exp(delta);
      st.s = scale * (st.s + st.z * delta);
      st.z *= scale;
      if constexpr (kTempered) st.zt *= std::exp(delta / temperature);
    }
    st.m = cm;
  }
  const Vec mv(st.m), lowest(kLowest), temp(temperature);
  Vec zacc(0.f), sacc(0.f), ztacc(0.f);
  for (int64_t i = 0; i < padded; i += kW) {
    Vec d = at::vec::maximum(chunk.load(i) - mv, lowest);
    Vec w = fast_exp(d);
    zacc = zacc + w;
    sacc = at::vec::fmadd(w, d, sacc);
    if constexpr (kTempered) ztacc = ztacc + weight<true>(d, temp);
  }
  st.z += reduce_sum(zacc);
  st.s += reduce_sum(sacc);
  if constexpr (kTempered) st.zt += reduce_sum(ztacc);
}

template <typename T, bool kTop, bool kTempered>
RowStats stats_pass(const T* row, int64_t vocab, int64_t stride, float temperature, float* buf) {
  RowStats st;
  Chunk chunk;
  for (int64_t begin = 0; begin < vocab && !st.bad; begin += kChunk) {
    load_chunk<T>(row, stride, begin, std::min(kChunk, vocab - begin), buf, chunk);
    accumulate_chunk<kTop, kTempered>(st, chunk, begin, temperature);
  }
  if (st.m == kNegInf) st.bad = true;
  return st;
}

// Inverse-CDF draws for one row: tokens[k] = smallest i with sum_{j<=i} w_j > u[k] * total,
// else the last index with w_j > 0. `order` is scratch of S entries.
template <typename T, bool kTempered>
void draw_pass(const T* row, int64_t vocab, int64_t stride, float temperature, float m, float total,
               const float* u, int64_t num_samples, int64_t* tokens, int64_t* order, float* thresholds, float* buf,
               float* weights) {
  // Sort the draws by uniform (insertion sort: S is small) so one left-to-right scan serves all.
  for (int64_t k = 0; k < num_samples; ++k) {
    int64_t j = k;
    while (j > 0 && u[order[j - 1]] > u[k]) {
      order[j] = order[j - 1];
      --j;
    }
    order[j] = k;
  }
  for (int64_t k = 0; k < num_samples; ++k) thresholds[k] = u[order[k]] * total;

  Chunk chunk;
  const Vec lowest(kLowest), temp(temperature), mv(m);
  float cumulative = 0.f;
  int64_t next = 0;
  int64_t last_positive = -1;
  for (int64_t begin = 0; begin < vocab && next < num_samples; begin += kChunk) {
    load_chunk<T>(row, stride, begin, std::min(kChunk, vocab - begin), buf, chunk);
    const int64_t padded = chunk.padded();
    Vec acc(0.f);
    for (int64_t i = 0; i < padded; i += kW) {
      Vec w = weight<kTempered>(at::vec::maximum(chunk.load(i) - mv, lowest), temp);
      w.store(weights + i);
      acc = acc + w;
    }
    const float chunk_sum = reduce_sum(acc);
    if (chunk_sum > 0.f) {
      int64_t j = chunk.n - 1;
      while (weights[j] <= 0.f) --j;
      last_positive = begin + j;
    }
    if (cumulative + chunk_sum <= thresholds[next]) {
      cumulative += chunk_sum;
      continue;
    }
    for (int64_t j = 0; j < chunk.n && next < num_samples; ++j) {
      cumulative += weights[j];
      while (next < num_samples && cumulative > thresholds[next]) tokens[order[next++]] = begin + j;
    }
  }
  // Rounding left u * total at or above the scanned sum: the last token that has weight.
  while (next < num_samples) tokens[order[next++]] = last_positive;
}

template <typename T, bool kTop, bool kTempered>
void run_rows(const RowPassArgs& a, int64_t begin, int64_t end) {
  const T* logits = static_cast<const T*>(a.logits);
  const int64_t S = a.num_samples;
  const bool draws = S > 0 && a.temperature > 0.f;
  alignas(64) float buf[kChunk];
  alignas(64) float weights[kChunk];
  std::vector<int64_t> order(draws ? S : 0);
  std::vector<float> thresholds(draws ? S : 0);
  for (int64_t idx = begin; idx < end; ++idx) {
    const int64_t r = a.rows[idx];
    int64_t offset = 0;
    for (int64_t d = a.lead_dims - 1, rest = r; d >= 0; --d) {
      offset += (rest % a.lead_sizes[d]) * a.lead_strides[d];
      rest /= a.lead_sizes[d];
    }
    const T* row = logits + offset;
    const RowStats st = stats_pass<T, kTop, kTempered>(row, a.vocab, a.vocab_stride, a.temperature, buf);
    if (st.bad) {
      a.entropy[r] = kNaN;
      if constexpr (kTop) {
        a.top1_prob[r] = kNaN;
        a.top1_id[r] = -1;
        a.top2_prob[r] = kNaN;
        for (int64_t k = 0; k < S; ++k) {
          a.tokens[r * S + k] = -1;
          a.token_probs[r * S + k] = kNaN;
        }
      }
      continue;
    }
    a.entropy[r] = st.entropy();
    if constexpr (kTop) {
      const float top1_prob = st.top1_prob();
      a.top1_prob[r] = top1_prob;
      a.top1_id[r] = st.best_id;
      a.top2_prob[r] = st.top2_prob();
      if (S == 0) continue;
      int64_t* tokens = a.tokens + r * S;
      float* probs = a.token_probs + r * S;
      if (!draws) {
        for (int64_t k = 0; k < S; ++k) {
          tokens[k] = st.best_id;
          probs[k] = top1_prob;
        }
        continue;
      }
      const float total = kTempered ? st.zt : st.z;
      draw_pass<T, kTempered>(row, a.vocab, a.vocab_stride, a.temperature, st.m, total, a.uniforms + r * S, S, tokens,
                              order.data(), thresholds.data(), buf, weights);
      for (int64_t k = 0; k < S; ++k) probs[k] = std::exp(to_float(row[tokens[k] * a.vocab_stride]) - st.m) / st.z;
    }
  }
}

template <typename T>
void run_typed(const RowPassArgs& a, int64_t begin, int64_t end) {
  const bool top = a.top1_prob != nullptr;
  const bool tempered = a.num_samples > 0 && a.temperature > 0.f && a.temperature != 1.f;
  if (!top) {
    run_rows<T, false, false>(a, begin, end);
  } else if (tempered) {
    run_rows<T, true, true>(a, begin, end);
  } else {
    run_rows<T, true, false>(a, begin, end);
  }
}

template <typename T, bool kTop>
void head_piece_rows(const HeadPieceArgs& a, int64_t begin, int64_t end) {
  const T* logits = static_cast<const T*>(a.logits);
  alignas(64) float buf[kChunk];
  Chunk chunk;
  for (int64_t r = begin; r < end; ++r) {
    RowStats& st = a.stats[r];
    const T* row = logits + r * a.ld;
    for (int64_t c = 0; c < a.cols && !st.bad; c += kChunk) {
      load_chunk<T>(row, 1, c, std::min(kChunk, a.cols - c), buf, chunk, a.bias);
      accumulate_chunk<kTop, false>(st, chunk, a.col_offset + c, 1.f);
    }
  }
}

}  // namespace

void INFOGAIN_ROWPASS_ENTRY(const RowPassArgs& args, int64_t begin, int64_t end) {
  dispatch_logits_type(args.dtype, [&](auto tag) { run_typed<decltype(tag)>(args, begin, end); });
}

}  // namespace rowpass
}  // namespace infogain

namespace infogain {
namespace rowpass {

void INFOGAIN_HEAD_PIECE_ENTRY(const HeadPieceArgs& args, int64_t begin, int64_t end) {
  dispatch_logits_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (args.with_top) {
      head_piece_rows<T, true>(args, begin, end);
    } else {
      head_piece_rows<T, false>(args, begin, end);
    }
  });
}

}  // namespace rowpass
}  // namespace infogain
