// Which cuBLASLt algorithm each GEMM shape runs with on one GPU type, as GemmRunner picked it by
// timing (trainer/gemm_runner.h). Kept in the run directory (`<out_dir>/gemm_algos.json`) so a
// resumed job runs the same kernels as the job it continues, and so repeats its bits: a timed
// choice between near-equal algorithms could go either way in a new process.
//
//   {"format": "rwr.gemm_algos.v1", "device": "NVIDIA H100 80GB HBM3", "cublaslt_version": 130100,
//    "algos": {"TN m10240 n8192 k2560 lda2560 ldb2560 ldd10240 bf16>bf16": "<128 hex digits>"}}
//
// An algorithm is cuBLASLt's opaque 64-byte cublasLtMatmulAlgo_t, valid only for the same device
// and cuBLASLt version, which the file names; GemmRunner::Adopt refuses any other.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace rwr::trainer {

using GemmAlgoBytes = std::array<uint64_t, 8>;  // the layout of cublasLtMatmulAlgo_t

struct GemmChoices {
  std::string device;                          // cudaDeviceProp::name
  int64_t cublaslt_version = 0;                // cublasLtGetVersion()
  std::map<std::string, GemmAlgoBytes> algos;  // GemmProblem::Key() → algorithm

  std::string ToJson() const;
  // `source` names the file in errors ("gemm_algos.json: ...").
  static absl::StatusOr<GemmChoices> FromJson(std::string_view text, std::string_view source);
  bool operator==(const GemmChoices&) const = default;
};

}  // namespace rwr::trainer
