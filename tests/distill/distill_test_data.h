// A small, deterministic distillation dataset for the distill tests: long-ish multi-paragraph
// contexts where one paragraph answers the question; every 4th item asks about something the
// context does not contain (the extractive teacher's note fails verification → dropped).
#pragma once

#include <fstream>
#include <string>

#include "nlohmann/json.hpp"

namespace rwr::teacher::testing {

inline nlohmann::json DistillTestItem(int i) {
  const std::string n = std::to_string(i);
  std::string context =
      "The old harbour of Port " + n +
      " was built from granite blocks quarried nearby. Fishing "
      "boats still leave it every morning before dawn.\n\n"
      "The lighthouse keeper of Harbor " +
      n + " is named Keeper" + n + " Smith. Keeper" + n +
      " Smith has kept the light burning for twenty years.\n\n"
      "A market is held on the quay every Saturday, selling bread, cheese and smoked fish.\n\n"
      "In winter, storms from the north close the harbour for weeks at a time.";
  const bool answerable = i % 4 != 3;
  return {{"id", "item-" + n},
          {"context", context},
          {"question", answerable ? "Who is the lighthouse keeper of Harbor " + n + "?"
                                  : "Which company built the railway bridge in Valley " + n + "?"},
          {"answer", answerable ? "Keeper" + n + " Smith" : "Bridgeworks" + n + " Limited"},
          {"topic", "harbours"}};
}

// Writes items first..first+count-1 as JSONL (disjoint ranges: datasets with no id in common).
inline void WriteDistillTestData(const std::string& path, int count, int first = 0) {
  std::ofstream out(path);
  for (int i = first; i < first + count; ++i) out << DistillTestItem(i).dump() << "\n";
}

}  // namespace rwr::teacher::testing
