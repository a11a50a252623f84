// What the native CPU kernels share around their row loops: the choice of the build for this CPU
// (baseline or AVX2, see step_stats_cpu_avx2.cpp) and the row-parallel driver.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define INFOGAIN_CPU_AVX2 1
#endif

namespace infogain {

// ATen does not export its capability query, so this mirrors it: AVX2 + FMA (+ F16C, which every
// such CPU has) unless ATEN_CPU_CAPABILITY=default asks for the baseline build.
inline bool cpu_use_avx2() {
#if defined(INFOGAIN_CPU_AVX2)
  static const bool avx2 = [] {
    const char* forced = std::getenv("ATEN_CPU_CAPABILITY");
    const bool baseline = forced != nullptr && std::string(forced) == "default";
    return !baseline && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return avx2;
#else
  return false;
#endif
}

// Logits a parallel task should cover at least: below this, handing work to another thread costs
// more than the work it takes over.
constexpr int64_t kMinElementsPerTask = 1 << 16;

// Run fn(begin, end) over [0, n) rows of `vocab` logits on up to at::get_num_threads() threads, one
// per kMinElementsPerTask logits at most.
// at::parallel_for cannot be used here: torch's OpenMP backend implements it inline in its
// headers, and this extension is built without -fopenmp (linking a second OpenMP runtime next to
// torch's would split the thread settings), so it would run serially. Helpers come from torch's
// inter-op thread pool (at::launch: persistent threads, no thread start per call), and the calling
// thread works too: rows are claimed a few at a time from a shared counter, so when a helper is slow
// to wake (a busy machine) or never runs (the pool is busy, e.g. when called from one of its
// threads) the caller does the work itself instead of waiting. The count honours
// torch.set_num_threads.
template <typename F>
void parallel_rows(int64_t n, int64_t vocab, const F& fn) {
  const int64_t rows_per_task = std::max<int64_t>(1, kMinElementsPerTask / std::max<int64_t>(vocab, 1));
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), (n + rows_per_task - 1) / rows_per_task);
  if (threads <= 1 || at::in_parallel_region()) {
    fn(0, n);
    return;
  }
  // Claims of a few rows (down to one): a helper that is descheduled holds up little of the work.
  const int64_t claim = std::max<int64_t>(1, std::min(rows_per_task, n / (4 * threads)));
  const int64_t claims = (n + claim - 1) / claim;
  struct Shared {
    std::atomic<int64_t> next{0};
    std::mutex mutex;
    std::condition_variable finished;
    std::atomic<int64_t> done{0};
  };
  // Shared by pointer: a helper that starts after the call returned finds no claim left and touches
  // nothing else (fn is only called for a claimed range, and the caller waits for every one).
  auto shared = std::make_shared<Shared>();
  auto work = [shared, &fn, n, claim, claims] {
    for (int64_t c; (c = shared->next.fetch_add(1)) < claims;) {
      fn(c * claim, std::min(n, (c + 1) * claim));
      if (shared->done.fetch_add(1) + 1 == claims) {
        // Under the lock: the caller tests `done` and sleeps atomically with respect to it.
        std::lock_guard<std::mutex> lock(shared->mutex);
        shared->finished.notify_all();
      }
    }
  };
  for (int64_t t = 1; t < threads; ++t) at::launch(work);
  work();
  // A helper's last row usually ends soon after ours: wait for it awake for a while (a sleeping
  // caller takes tens of microseconds to be woken on a busy machine), then asleep.
  const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
  while (shared->done.load() != claims && std::chrono::steady_clock::now() < spin_until) std::this_thread::yield();
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->finished.wait(lock, [&] { return shared->done.load() == claims; });
}

}  // namespace infogain
