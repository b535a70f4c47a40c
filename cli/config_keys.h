// Every config key some `rwr` command reads. One config file may serve a whole pipeline (each
// stage's command reads its own sections and leaves the others'), so every command checks a
// config against all of them: a typo is an error in any command, a section meant for another
// stage passes. `rwr config keys` lists them; tests/common/cli_test.cc checks that every key the
// sources read is here.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "common/config.h"

namespace rwr::cli {

// Sorted.
const std::vector<std::string>& KnownConfigKeys();

// An error naming the first key of `config` that no command reads, with the nearest known one.
absl::Status CheckConfigKeys(const Config& config, std::string_view command);

}  // namespace rwr::cli
