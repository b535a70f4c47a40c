#include "common/logging.h"

#include "fmt/format.h"
#include "common/process.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace rwr {

absl::Status InitLogging(const LoggingOptions& options) {
  const spdlog::level::level_enum level = spdlog::level::from_str(std::string(options.level));
  if (level == spdlog::level::off && options.level != "off") {
    return absl::InvalidArgumentError(fmt::format("log level '{}' unknown; use trace, debug, info, warn or error", options.level));
  }
  static auto logger = spdlog::stderr_color_mt("rwr");
  const int rank = ProcessRank();
  logger->set_pattern(fmt::format("%Y-%m-%d %H:%M:%S.%e %^%L%$ [r{}] %v", rank));
  const bool quiet_rank = rank != 0 && !options.all_ranks;
  logger->set_level(quiet_rank ? std::max(level, spdlog::level::warn) : level);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
  return absl::OkStatus();
}

}  // namespace rwr
