#include "common/bundled_file.h"

#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "fmt/format.h"
#include "fmt/ranges.h"

namespace rwr {

namespace fs = std::filesystem;

absl::StatusOr<std::string> FindBundledFile(std::string_view relative_path,
                                            std::string_view remedy) {
  const fs::path relative(relative_path);
  std::error_code error;
  if (fs::exists(relative, error)) return std::string(relative_path);

  std::vector<std::string> looked_in;
  const fs::path cwd = fs::current_path(error);
  looked_in.push_back(error ? std::string("the working directory") : cwd.string());
  // The binary's own path, links resolved by the kernel; absent (not Linux, no /proc): the
  // working directory was the only place.
  const fs::path binary = fs::read_symlink("/proc/self/exe", error);
  if (!error) {
    for (fs::path dir = binary.parent_path(); !dir.empty(); dir = dir.parent_path()) {
      // A checkout's DIR/configs/..., or an installed PREFIX/share/rwr/configs/...
      if (dir != cwd) {
        for (const fs::path& candidate : {dir / relative, dir / "share" / "rwr" / relative}) {
          if (fs::exists(candidate, error)) return candidate.lexically_normal().string();
        }
        looked_in.push_back(dir.string());
      }
      if (dir == dir.root_path()) break;
    }
  }
  return absl::NotFoundError(fmt::format(
      "{} not found under the working directory, the rwr binary's directory or a directory above "
      "it, or their share/rwr/ (looked in {}); {}",
      relative_path, fmt::join(looked_in, ", "), remedy));
}

}  // namespace rwr
