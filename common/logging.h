// Rank-aware logging over spdlog. After InitLogging every line carries time, level and rank
// ("[r3]"); by default only rank 0 logs info, every rank logs warnings and errors, so an 8-rank
// job reads like a 1-rank one until something goes wrong on a single rank.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "spdlog/spdlog.h"

namespace rwr {

struct LoggingOptions {
  std::string_view level = "info";  // trace | debug | info | warn | error
  bool all_ranks = false;           // info lines from every rank, not just rank 0
};

// Call once at start and again after the rank is known (SetProcessRank). Unknown level → error.
absl::Status InitLogging(const LoggingOptions& options = {});

}  // namespace rwr
