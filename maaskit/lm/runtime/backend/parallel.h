// Work split over the calling thread's OpenMP team (maaskit's C++ kernels: decode_attention.cpp,
// row_products.cpp).
//
// Not at::parallel_for: its first call on a thread, once per library (a thread_local of each .so's own),
// sets that thread's count to the process's last torch.set_num_threads, from whichever thread. In a server,
// the event loop's thread sets 1 after the engine's set 2 (maaskit/serving/dataplane.py), and a kernel's first
// call put the engine's thread on one: its compiled graphs were built again for one thread and a step ran
// 1.7x slower (benchmarks/FIGURES.md, "threads: a thread's own count").
#pragma once

#include <omp.h>

#include <cstdint>

namespace maaskit {

// f(begin, end) over contiguous shares of [0, n), one per thread of the team
template <class F>
void split(int64_t n, const F& f) {
  if (n <= 1 || omp_get_max_threads() == 1 || omp_in_parallel()) {
    if (n > 0) f(0, n);
    return;
  }
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), k = omp_get_num_threads();
    const int64_t begin = n * t / k, end = n * (t + 1) / k;
    if (begin < end) f(begin, end);
  }
}

}  // namespace maaskit
