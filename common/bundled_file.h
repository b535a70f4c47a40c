// FindBundledFile: where a file shipped in the repository (configs/tokenizer/tokenizer.json) is,
// for a default the user did not name, wherever the command runs from.
//
// A CLI default written as a relative path (`configs/...`) only works from the repository root; a
// Slurm job or a shell elsewhere would not find it. The lookup: the path as given, from the working
// directory; else under the directory of the running binary (/proc/self/exe) and each directory
// above it, which finds the checkout's configs/ from build/<preset>/bin/rwr, and under their
// share/rwr/, where `cmake --install` puts it beside PREFIX/bin/rwr. Only for defaults: a path the
// user gives is used as given, never looked for elsewhere.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace rwr {

// `relative_path` as given where it exists from the working directory, else the first
// `<dir>/<relative_path>` or `<dir>/share/rwr/<relative_path>` that exists, `dir` running from
// the binary's directory up to `/`. Not
// found: NotFound on one line naming every directory looked in, ending with `remedy` ("give
// --tokenizer FILE").
absl::StatusOr<std::string> FindBundledFile(std::string_view relative_path,
                                            std::string_view remedy);

}  // namespace rwr
