// The CPU row pass built for the baseline ISA (any x86-64 / aarch64 CPU); see step_stats_cpu_kernel.h.
#define INFOGAIN_ROWPASS_ENTRY row_pass_default
#define INFOGAIN_HEAD_PIECE_ENTRY head_piece_default
#define INFOGAIN_NUCLEUS_ENTRY nucleus_rows_default
#include "step_stats_cpu_kernel.h"
#include "nucleus_cpu_kernel.h"
