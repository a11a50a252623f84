// The CPU row pass built for AVX2 + FMA + F16C (chosen at run time by step_stats_cpu.cpp when the
// CPU has them); see step_stats_cpu_kernel.h. The extension is compiled without -mavx2 so that
// it loads on any x86-64 CPU: this file alone targets AVX2, by pragma, and uses ATen's AVX2
// vector types under their own CPU_CAPABILITY namespace (as ATen's kernels do).
#include "step_stats_cpu.h"
#if defined(INFOGAIN_ROWPASS_AVX2)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
#endif
// GCC's target pragma does not define the ISA macros that ATen's and Sleef's headers test.
#ifndef __AVX2__
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define INFOGAIN_ROWPASS_ENTRY row_pass_avx2
#define INFOGAIN_HEAD_PIECE_ENTRY head_piece_avx2
#define INFOGAIN_NUCLEUS_ENTRY nucleus_rows_avx2
#include "step_stats_cpu_kernel.h"
#include "nucleus_cpu_kernel.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
