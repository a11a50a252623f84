// The CPU nucleus pass (temperature + top-p filter, top-k log-probabilities, inverse-CDF draw),
// compiled once per CPU capability: the translation units that build step_stats_cpu_kernel.h
// define INFOGAIN_NUCLEUS_ENTRY (the function declared in nucleus_cpu.h) and include this file
// after it, so the two kernels share its chunk loader, vector type and capability macros.
//
// The semantics are those of the torch reference (infogain_kernels/topk_logprobs.py,
// nucleus_reference): scores s = x / T in float32 (x for T = 0); ranking by s descending, ties by
// lower id, through one int64 key per token; fixed-point masses q = floor(exp(s - lse) * 2**40);
// the nucleus is {s >= tau} for the lowest tau whose strictly-greater mass is < top_p. Per row:
//   pass 1, two sweeps of the row (it stays in L2): the max and the top-k keys (a vector compare
//     against the running k-th rank admits the few tokens that can enter; a buffer of them is cut
//     back to k by nth_element when full), then the normaliser sum exp((x - max) / T);
//   top_p < 1: the nucleus boundary from the k kept tokens when it falls among them, else a radix
//     select of tau over the row: one read per digit of up to 11 bits of the 32-bit ordered image of
//     the rank value (2 digits for 16-bit logits, whose float image has its low 16 / 13 bits fixed,
//     3 for float32), each building a histogram of fixed-point mass and count of the tokens that
//     share the digits found so far. A vector compare skips tokens below the bound on tau (as the
//     Triton path: s < lse + log((1 - top_p) / V) - 1 when 1 - top_p >= 1e-3) and, where the rank
//     is x, outside the interval of the digits found so far; the masses of the rest are computed
//     as vectors, packed a chunk at a time;
//   a draw: one read for the nucleus mass of each chunk, then the chunk that holds the target is
//     recomputed and scanned.
// 16-bit logits are ranked by x itself: x -> x / T is strictly increasing on them (their
// significands are far coarser than float32's), so the order and the ties are those of s, with no
// division per element. Float32 logits are ranked by s, divided exactly as torch divides.
// The log-sum-exp uses a short exp2 polynomial (exp2_nonpositive); the masses use the 1-ulp exp,
// one vector function for every mass, so the top-k shortcut, the radix select and the draw see
// the same integers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "nucleus_cpu.h"
#include "step_stats_cpu_kernel.h"

namespace infogain {
namespace nucleus {
namespace {

using rowpass::Chunk;
using rowpass::kChunk;
using rowpass::kLowest;
using rowpass::kNaN;
using rowpass::kNegInf;
using rowpass::kW;
using rowpass::load_chunk;
using rowpass::reduce_max;
using rowpass::reduce_sum;
using rowpass::to_float;
using rowpass::Vec;

#if defined(__GNUC__) || defined(__clang__)
#define INFOGAIN_NOINLINE __attribute__((noinline))
inline int lowest_set_bit(unsigned v) { return __builtin_ctz(v); }
#else
#define INFOGAIN_NOINLINE
inline int lowest_set_bit(unsigned v) {
  int i = 0;
  while (!(v >> i & 1u)) ++i;
  return i;
}
#endif

constexpr float kMassOne = 1099511627776.0f;  // 2**40, the fixed-point unit of a mass
constexpr int64_t kLowBits = int64_t{1} << 32;
constexpr int64_t kKeyNone = std::numeric_limits<int64_t>::min();
constexpr int kMaxDigitBits = 11;  // radix histograms of at most 2048 bins (24 KB, in L1)

// Order-preserving int32 image of a float (-0 and +0 map to one value), as ordered_int in Python.
inline int32_t ordered(float v) {
  v += 0.0f;
  int32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits ^ ((bits >> 31) & 0x7FFFFFFF);
}

// Inverse of ordered() (the map is an involution on the bits).
inline float from_ordered(int32_t o) {
  const int32_t bits = o ^ ((o >> 31) & 0x7FFFFFFF);
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// Rank key: ordered score in the high half, 2**32 - 1 - id in the low half (ties: lower id first).
inline int64_t rank_key(float rank, int64_t id) { return int64_t{ordered(rank)} * kLowBits + (kLowBits - 1 - id); }
inline int64_t key_id(int64_t key) { return (kLowBits - 1) - (key & (kLowBits - 1)); }
inline int32_t key_order(int64_t key) { return static_cast<int32_t>(key >> 32); }

// The fixed-point masses floor(exp(s - lse) * 2**40) of a vector of scores, as floats (exact
// integers below 2**40, 0 for -inf scores); every mass of the kernel comes from this function.
inline Vec mass_vec(const Vec& s, const Vec& lse) { return (s - lse).exp() * Vec(kMassOne); }

inline int64_t mass_of(float s, float lse) {
  float out[kW];
  mass_vec(Vec(s), Vec(lse)).store(out);
  return static_cast<int64_t>(out[0]);
}

// How one row is read. kDivide: float32 logits at a temperature other than 0 and 1, ranked by
// s = x / T (16-bit logits rank by x; x / 1 == x).
template <typename T, bool kDivide>
struct RowReader {
  const T* row;
  int64_t vocab;
  int64_t stride;
  float temperature;  // 0: s = x
  float* buf;         // kChunk floats

  float score(float x) const { return temperature > 0.f ? x / temperature : x; }
  Vec score(const Vec& x) const { return temperature > 0.f ? x / Vec(temperature) : x; }
  float rank(float x) const { return kDivide ? x / temperature : x; }
  Vec rank(const Vec& x) const { return kDivide ? x / Vec(temperature) : x; }
  float at(int64_t id) const { return to_float(row[id * stride]); }

  // fn(begin, chunk) for each chunk of the row, converted to float32.
  template <typename F>
  void for_chunks(const F& fn) const {
    Chunk chunk;
    for (int64_t begin = 0; begin < vocab; begin += kChunk) {
      load_chunk<T>(row, stride, begin, std::min(kChunk, vocab - begin), buf, chunk);
      fn(begin, chunk);
    }
  }
};

// Calls fn(lane) for the lanes of `mask` (a comparison result) that are set, below `limit`. The
// set bits are visited with count-trailing-zeros: a branch per lane would mispredict at every
// unpredictable lane of a dense mask.
template <typename F>
inline void for_set_lanes(const Vec& mask, int64_t limit, const F& fn) {
  const unsigned lanes = limit >= kW ? (1u << kW) - 1 : (1u << limit) - 1;
  for (unsigned set = ~static_cast<unsigned>(mask.zero_mask()) & lanes; set != 0; set &= set - 1)
    fn(static_cast<int64_t>(lowest_set_bit(set)));
}

// Running top-k of rank keys: a buffer of admitted keys, cut back to the k best when full.
struct TopK {
  int64_t k;
  std::vector<int64_t> keys;
  int64_t kth = kKeyNone;  // the k-th best key once the buffer has been cut
  float threshold = kNegInf;  // its rank value: only tokens ranked >= it can enter
  bool nan = false;           // a NaN was seen

  explicit TopK(int64_t k_) : k(k_) { keys.reserve(capacity()); }
  size_t capacity() const { return static_cast<size_t>(k + std::max<int64_t>(k, 256)); }
  void reset() {
    keys.clear();
    kth = kKeyNone;
    threshold = kNegInf;
    nan = false;
  }
  void offer(int64_t key) {
    if (key <= kth) return;  // tied with the k-th at a higher id, or below it
    keys.push_back(key);
    if (keys.size() == capacity()) cut();
  }
  void cut() {
    std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<int64_t>());
    keys.resize(k);
    kth = keys[k - 1];
    threshold = from_ordered(key_order(kth));
  }
  // The k best keys, best first.
  void finish() {
    if (static_cast<int64_t>(keys.size()) > k) cut();
    std::sort(keys.begin(), keys.end(), std::greater<int64_t>());
  }
};

struct RowStats {
  float max_x = kNegInf;  // max of the logits as float
  float z = 0.f;          // sum exp((x - max_x) / T)
  bool bad = false;       // NaN seen, or every entry -inf
};

// 2**t for t <= ~0, for the normaliser's sum: 2**-125 (not 0) below -125, negligible against its
// first term 1. Range reduction to f = t - round(t) in [-0.5, 0.5] and a degree-6 polynomial
// (about 2e-7 relative error): 14 vector operations, fewer than exp_u20, and this is the whole
// arithmetic of the pass.
inline Vec exp2_nonpositive(Vec t) {
  t = at::vec::clamp_min(t, Vec(-125.f));
  const Vec n = t.round();
  const Vec f = t - n;
  Vec p = at::vec::fmadd(Vec(1.535336188319500e-4f), f, Vec(1.339887440266574e-3f));
  p = at::vec::fmadd(p, f, Vec(9.618437357674640e-3f));
  p = at::vec::fmadd(p, f, Vec(5.550332471162809e-2f));
  p = at::vec::fmadd(p, f, Vec(2.402264791363012e-1f));
  p = at::vec::fmadd(p, f, Vec(6.931472028550421e-1f));
  p = at::vec::fmadd(p, f, Vec(1.f));
  using IVec = at::vec::Vectorized<int32_t>;
  const IVec exponent = (at::vec::convert_to_int_of_same_size(n) + IVec(127)) << IVec(23);
  return p * at::vec::cast<float>(exponent);
}

template <typename U>
inline Vec load_vec(const U* p) {
  if constexpr (std::is_same_v<U, float>) {
    return Vec::loadu(p);
  } else {
    Vec v;
    at::vec::load_to_float<U>(p, v);
    return v;
  }
}

// Offers the tokens of row[begin : end) (whole vectors) not ranked below the running threshold; a
// NaN (never below it) marks the row bad instead.
template <typename U, typename Reader>
INFOGAIN_NOINLINE void offer_block(const U* row, int64_t begin, int64_t end, const Reader& reader, TopK& top) {
  float ranks[kW];
  for (int64_t i = begin; i < end; i += kW) {
    const Vec rank = reader.rank(load_vec(row + i));
    const Vec below = rank < Vec(top.threshold);  // false for the lanes to take (and NaN)
    if (below.zero_mask() == 0) continue;
    rank.store(ranks);
    for_set_lanes(below == Vec(0.f), kW, [&](int64_t lane) {
      if (std::isnan(ranks[lane])) {
        top.nan = true;
      } else {
        top.offer(rank_key(ranks[lane], i + lane));
      }
    });
  }
}

// Pass 1 on a contiguous row (logits, or their float32 copy): two sweeps of the row, which stays
// in L2. Sweep A: the max and the top-k keys (a vector compare against the running k-th rank
// value admits the few tokens that can enter). Sweep B: sum exp((x - max) / T) as one FMA and
// exp2_nonpositive per element.
template <typename U, typename Reader>
RowStats stats_topk(const U* row, int64_t vocab, float temperature, const Reader& reader, TopK& top) {
  RowStats st;
  top.reset();
  const int64_t full = vocab / kW * kW;
  Vec vmax(kNegInf);
  // Blocks of kAdmitBlock logits: the block's compares are AND-ed, and only a block with a token to
  // admit (or a NaN) goes through the scalar offers (a call inside the loop would keep vmax in memory).
  constexpr int64_t kAdmitBlock = 32 * kW;
  for (int64_t block = 0; block < full; block += kAdmitBlock) {
    const int64_t stop = std::min(full, block + kAdmitBlock);
    const Vec threshold(top.threshold);
    // AND of "ranked below the threshold" (false for NaN): a lane left clear was admitted or is NaN.
    Vec below = Vec(0.f) == Vec(0.f);
    for (int64_t i = block; i < stop; i += kW) {
      const Vec v = load_vec(row + i);
      vmax = at::vec::clamp_min(v, vmax);  // a plain max: NaN is caught by the compare
      below = below & (reader.rank(v) < threshold);
    }
    if (below.zero_mask() != 0) offer_block(row, block, stop, reader, top);
  }
  if (top.nan) {
    st.bad = true;
    return st;
  }
  float max_x = reduce_max(vmax);
  for (int64_t i = full; i < vocab; ++i) {
    const float x = to_float(row[i]);
    max_x = std::isnan(x) || std::isnan(max_x) ? kNaN : std::max(max_x, x);
    const float rank = reader.rank(x);
    if (rank >= top.threshold) top.offer(rank_key(rank, i));
  }
  if (std::isnan(max_x) || max_x == kNegInf) {
    st.bad = true;
    return st;
  }
  const float inv_t = temperature > 0.f ? 1.f / temperature : 1.f;
  constexpr float kLog2e = 1.4426950408889634f;
  const Vec rate(inv_t * kLog2e), shift(-max_x * inv_t * kLog2e);  // log2 of the weight: one FMA
  Vec acc0(0.f), acc1(0.f);
  int64_t i = 0;
  for (; i + 2 * kW <= vocab; i += 2 * kW) {
    acc0 = acc0 + exp2_nonpositive(at::vec::fmadd(load_vec(row + i), rate, shift));
    acc1 = acc1 + exp2_nonpositive(at::vec::fmadd(load_vec(row + i + kW), rate, shift));
  }
  float z = reduce_sum(acc0 + acc1);
  for (; i < vocab; ++i) z += std::exp((to_float(row[i]) - max_x) * inv_t);
  st.max_x = max_x;
  st.z = z;
  top.finish();
  return st;
}

// Radix select of the nucleus threshold over the whole row (tokens with x < x_low skipped).
// fixed_low_bits: low bits of the ordered image that are the same for every token of one sign.
// Returns the ordered rank value tau of the lowest nucleus token; nucleus_q gets the mass >= tau.
template <typename T, bool kDivide>
int32_t radix_threshold(const RowReader<T, kDivide>& r, float lse, int64_t limit, float x_low, int fixed_low_bits,
                        int64_t& nucleus_q) {
  // Two histograms (even / odd members: consecutive members often share a bin, and one array would
  // chain their read-modify-writes), each bin packing count << 42 | mass (masses sum to <= 2**40).
  constexpr int kCountShift = 42;
  constexpr int64_t kMassMask = (int64_t{1} << kCountShift) - 1;
  int64_t packed[2][1 << kMaxDigitBits];
  int64_t mass[1 << kMaxDigitBits];
  alignas(64) float member_x[kChunk];
  alignas(64) float member_q[kChunk];
  uint32_t member_bin[kChunk];
  const Vec lse_v(lse);
  const int significant = 32 - fixed_low_bits;
  uint32_t prefix = 0;  // the digits found so far
  int prefix_bits = 0;
  int64_t above = 0;  // mass of the tokens above those sharing the prefix
  int64_t chosen_mass = 0;
  while (prefix_bits < significant) {
    const int width = std::min(kMaxDigitBits, significant - prefix_bits);
    const int shift = 32 - prefix_bits - width;
    const int64_t bins = int64_t{1} << width;
    std::fill(packed[0], packed[0] + bins, 0);
    std::fill(packed[1], packed[1] + bins, 0);
    // Where the rank is x itself, the prefix is an interval of x: tokens outside it are skipped by
    // the vector compare, not one by one (the prefix test below stays the exact one).
    Vec low(x_low), high(std::numeric_limits<float>::infinity());
    if (!kDivide && prefix_bits > 0) {
      const uint32_t first = prefix << (32 - prefix_bits), last = first | ((uint32_t{1} << (32 - prefix_bits)) - 1);
      const float lo = from_ordered(static_cast<int32_t>(first ^ 0x80000000u));
      const float hi = from_ordered(static_cast<int32_t>(last ^ 0x80000000u));
      if (!std::isnan(lo) && !std::isnan(hi)) {
        low = Vec(std::max(x_low, lo));
        high = Vec(hi);
      }
    }
    r.for_chunks([&](int64_t, const Chunk& chunk) {
      // The chunk's tokens above the bound that share the prefix, packed; then their masses as vectors.
      int64_t m = 0;
      for (int64_t i = 0; i < chunk.padded(); i += kW) {
        const Vec v = chunk.load(i);
        for_set_lanes((v >= low) & (v <= high), chunk.n - i, [&](int64_t lane) {
          const float x = chunk.at(i + lane);
          const uint32_t key = static_cast<uint32_t>(ordered(r.rank(x))) ^ 0x80000000u;  // unsigned image
          if (prefix_bits > 0 && (key >> (32 - prefix_bits)) != prefix) return;
          member_x[m] = x;
          member_bin[m++] = (key >> shift) & static_cast<uint32_t>(bins - 1);
        });
      }
      for (int64_t j = m; j % kW != 0; ++j) member_x[j] = kNegInf;  // mass 0
      for (int64_t j = 0; j < m; j += kW) mass_vec(r.score(Vec::loadu(member_x + j)), lse_v).store(member_q + j);
      for (int64_t j = 0; j < m; ++j) {
        const int64_t q = static_cast<int64_t>(member_q[j]);
        packed[j & 1][member_bin[j]] += q > 0 ? q + (int64_t{1} << kCountShift) : 0;
      }
    });
    // The lowest non-empty bin whose mass above is still < top_p (the top bin if none).
    int64_t chosen = bins - 1, chosen_above = above, mass_above = above;
    for (int64_t bin = 0; bin < bins; ++bin) mass[bin] = (packed[0][bin] & kMassMask) + (packed[1][bin] & kMassMask);
    for (int64_t bin = bins - 1; bin >= 0 && mass_above < limit; --bin) {
      if (packed[0][bin] != 0 || packed[1][bin] != 0) {  // a member (mass > 0) fell in it
        chosen = bin;
        chosen_above = mass_above;
      }
      mass_above += mass[bin];
    }
    prefix = (prefix << width) | static_cast<uint32_t>(chosen);
    prefix_bits += width;
    above = chosen_above;
    chosen_mass = mass[chosen];
  }
  uint32_t key = fixed_low_bits > 0 ? prefix << fixed_low_bits : prefix;
  // The fixed low bits of a 16-bit value's image: 0 for non-negative values, all ones for negative.
  if (fixed_low_bits > 0 && !(key & 0x80000000u)) key |= (uint32_t{1} << fixed_low_bits) - 1;
  nucleus_q = above + chosen_mass;
  return static_cast<int32_t>(key ^ 0x80000000u);
}

// Inverse-CDF draw over the nucleus {rank >= tau} in token order, on the fixed-point masses.
template <typename T, bool kDivide>
int64_t draw(const RowReader<T, kDivide>& r, float lse, int32_t tau, int64_t bits, float* weights,
             std::vector<int64_t>& chunk_mass) {
  const Vec lse_v(lse), tau_v(from_ordered(tau));
  // Masses of one chunk's nucleus tokens into weights[0 : chunk.n); returns their sum.
  auto chunk_masses = [&](const Chunk& chunk) {
    for (int64_t i = 0; i < chunk.padded(); i += kW) {
      const Vec v = chunk.load(i);
      const Vec member = r.rank(v) >= tau_v;
      if (member.zero_mask() == (1 << kW) - 1) {  // no nucleus token here: no exp
        Vec(0.f).store(weights + i);
        continue;
      }
      (mass_vec(r.score(v), lse_v) & member).store(weights + i);
    }
    int64_t sum = 0;
    for (int64_t j = 0; j < chunk.n; ++j) sum += static_cast<int64_t>(weights[j]);
    return sum;
  };
  chunk_mass.clear();
  int64_t total = 0;
  r.for_chunks([&](int64_t, const Chunk& chunk) {
    chunk_mass.push_back(chunk_masses(chunk));
    total += chunk_mass.back();
  });
  // A uniform fraction of 53 bits scales the total (as the reference).
  const int64_t target =
      std::min(static_cast<int64_t>(static_cast<double>(bits) * 0x1p-53 * static_cast<double>(total)), total - 1);
  int64_t passed = 0, c = 0;
  while (c + 1 < static_cast<int64_t>(chunk_mass.size()) && passed + chunk_mass[c] <= target) passed += chunk_mass[c++];
  Chunk chunk;
  const int64_t begin = c * kChunk;
  load_chunk<T>(r.row, r.stride, begin, std::min(kChunk, r.vocab - begin), r.buf, chunk);
  chunk_masses(chunk);
  int64_t last = begin;
  for (int64_t j = 0; j < chunk.n; ++j) {
    const int64_t q = static_cast<int64_t>(weights[j]);
    if (q == 0) continue;
    last = begin + j;
    passed += q;
    if (passed > target) return last;
  }
  return last;
}

template <typename T, bool kDivide>
void run_rows(const NucleusArgs& a, int64_t begin, int64_t end) {
  const T* logits = static_cast<const T*>(a.logits);
  const int64_t k = a.k;
  alignas(64) float buf[kChunk];
  alignas(64) float weights[kChunk];
  TopK top(k);
  std::vector<int64_t> chunk_mass;
  std::vector<float> row_copy;
  std::vector<float> top_s(k);
  std::vector<int32_t> top_order(k);
  std::vector<int64_t> top_q(k);
  // Float images of 16-bit logits have their low 16 (bf16) / 13 (fp16) bits fixed.
  const int fixed_low_bits = std::is_same_v<T, c10::BFloat16> ? 16 : std::is_same_v<T, c10::Half> ? 13 : 0;
  for (int64_t row = begin; row < end; ++row) {
    const RowReader<T, kDivide> r{logits + row * a.row_stride, a.vocab, a.col_stride, a.temperature, buf};
    int64_t* ids = a.ids + row * k;
    float* logprobs = a.logprobs + row * k;
    const T* row_ptr = logits + row * a.row_stride;
    const float* copy = nullptr;
    if (a.col_stride != 1) {  // strided rows: one float32 copy for pass 1
      row_copy.resize(a.vocab);
      for (int64_t j = 0; j < a.vocab; ++j) row_copy[j] = to_float(row_ptr[j * a.col_stride]);
      copy = row_copy.data();
    }
    const RowStats st = copy != nullptr ? stats_topk(copy, a.vocab, a.temperature, r, top)
                                        : stats_topk(row_ptr, a.vocab, a.temperature, r, top);
    if (st.bad) {  // reported by the caller through the NaN log-sum-exp
      std::fill(ids, ids + k, 0);
      std::fill(logprobs, logprobs + k, kNaN);
      a.token[row] = 0;
      a.token_logprob[row] = kNaN;
      a.lse[row] = kNaN;
      continue;
    }
    const float lse = r.score(st.max_x) + std::log(st.z);
    a.lse[row] = std::isfinite(lse) ? lse : kNaN;
    for (int64_t j = 0; j < k; ++j) {
      ids[j] = key_id(top.keys[j]);
      top_order[j] = key_order(top.keys[j]);
      top_s[j] = r.score(r.at(ids[j]));
    }
    int32_t tau = ordered(kNegInf);
    int64_t nucleus_q = int64_t{1} << 40;
    if (a.use_top_p && std::isfinite(lse)) {
      // Mass strictly above each kept token (ties excluded): the kept tokens are the most probable.
      int64_t group_above = 0, running = 0;
      bool last_in = false;
      nucleus_q = 0;
      tau = std::numeric_limits<int32_t>::max();
      for (int64_t j = 0; j < k; ++j) {
        top_q[j] = mass_of(top_s[j], lse);
        if (j > 0 && top_order[j] != top_order[j - 1]) group_above = running;
        running += top_q[j];
        last_in = group_above < a.mass_limit && top_q[j] > 0;
        if (last_in) {
          tau = std::min(tau, top_order[j]);
          nucleus_q += top_q[j];
        }
      }
      if (last_in) {  // the nucleus may reach past the k kept tokens
        const float x_low = !a.candidate_filter ? kNegInf
                            : a.temperature > 0.f ? (lse + a.log_tail) * a.temperature
                                                  : lse + a.log_tail;
        tau = radix_threshold(r, lse, a.mass_limit, x_low, fixed_low_bits, nucleus_q);
      }
    }
    const float lse_nucleus = lse + static_cast<float>(std::log(static_cast<double>(nucleus_q) / 0x1p40));
    for (int64_t j = 0; j < k; ++j) logprobs[j] = top_order[j] >= tau ? top_s[j] - lse_nucleus : kNegInf;
    if (a.random_bits == nullptr || !std::isfinite(lse)) {
      a.token[row] = ids[0];
      a.token_logprob[row] = logprobs[0];
      continue;
    }
    const int64_t token = draw(r, lse, tau, a.random_bits[row], weights, chunk_mass);
    a.token[row] = token;
    a.token_logprob[row] = r.score(r.at(token)) - lse_nucleus;
  }
}

template <typename T>
void run_typed(const NucleusArgs& a, int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<T, float>) {
    if (a.temperature > 0.f && a.temperature != 1.f) {
      run_rows<T, true>(a, begin, end);
      return;
    }
  }
  run_rows<T, false>(a, begin, end);
}

}  // namespace

void INFOGAIN_NUCLEUS_ENTRY(const NucleusArgs& args, int64_t begin, int64_t end) {
  rowpass::dispatch_logits_type(args.dtype, [&](auto tag) { run_typed<decltype(tag)>(args, begin, end); });
}

}  // namespace nucleus
}  // namespace infogain
