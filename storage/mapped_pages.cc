// ReleaseMappedPages (see mapped_pages.h).
#include "storage/mapped_pages.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

namespace rwr::storage {

void ReleaseMappedPages(const uint8_t* map, size_t map_size, const uint8_t* begin,
                        const uint8_t* end) {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t first = reinterpret_cast<uintptr_t>(map);
  const uintptr_t lo = std::max(reinterpret_cast<uintptr_t>(begin) & ~(page - 1), first);
  const uintptr_t hi =
      std::min((reinterpret_cast<uintptr_t>(end) + page - 1) & ~(page - 1), first + map_size);
  if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

}  // namespace rwr::storage
