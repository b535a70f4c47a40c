// ZeroedFloats; see fresh_memory.h.
#include "common/fresh_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <system_error>
#include <thread>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

namespace rwr {

std::vector<float> ZeroedFloats(size_t n) {
  std::vector<float> v;
  v.reserve(n);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(v.data()) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(v.data() + n)) / page * page;
  const size_t pages = end > begin ? (end - begin) / page : 0;
  // Below 256 MiB one thread's faults take under 0.1 s: not worth the threads.
  if (pages * page >= (size_t{256} << 20)) {
    const size_t threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 8);
    std::vector<std::thread> pool;
    for (size_t t = 0; t < threads; ++t) {
      const size_t a = pages * t / threads, b = pages * (t + 1) / threads;
      // Not populated (an old kernel, no thread to be had) is not an error: the zeroing below
      // faults in what is left.
      auto populate = [=] {
        ::madvise(reinterpret_cast<void*>(begin + a * page), (b - a) * page, MADV_POPULATE_WRITE);
      };
      try {
        pool.emplace_back(populate);
      } catch (const std::system_error&) {
        populate();
      }
    }
    for (std::thread& th : pool) th.join();
  }
  v.resize(n);
  return v;
}

}  // namespace rwr
