// Read-only file mappings (safetensors files, token shards) whose pages leave the process's
// resident set once their bytes are copied out or checked.
//
// A mapped page that has been touched stays in the RSS as long as the mapping lives, even when
// the bytes were copied elsewhere: a checkpoint read counts twice, and a dataset whose shards are
// checksummed at open counts whole, per rank. Schedulers watch that number (Slurm's memory
// accounting sums the RSS of a job's processes), so the readers give the pages back as they go.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rwr::storage {

// Bytes handled between releases when a mapping is walked in order (a checksum, a tensor copy):
// large enough that madvise is rare, small enough that the walk adds little to the RSS.
inline constexpr size_t kReleaseBytes = size_t{64} << 20;

// Takes the pages under [begin, end), rounded out to whole pages and kept within [map,
// map + map_size), out of the resident set. For a private read-only mapping never written the
// pages are dropped, not lost: touched again, they are read from the file (the page cache).
// Advice only: a failure leaves them resident.
void ReleaseMappedPages(const uint8_t* map, size_t map_size, const uint8_t* begin,
                        const uint8_t* end);

}  // namespace rwr::storage
