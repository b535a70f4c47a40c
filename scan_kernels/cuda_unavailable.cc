// Built instead of the CUDA kernels when RWR_CUDA is OFF (or nvcc is missing): every CUDA entry
// point exists and says clearly that this build cannot run it.
#include "scan_kernels/causal_conv1d.h"
#include "scan_kernels/selective_scan.h"

namespace rwr::scan {
namespace {
absl::Status NoCuda() {
  return absl::UnimplementedError(
      "scan kernels: this build has no CUDA; rebuild with -DRWR_CUDA=ON on a machine with nvcc");
}
}  // namespace

bool HaveCuda() { return false; }

int64_t CheckpointBytes(const SelectiveScanParams&) { return 0; }
int64_t ScratchBytes(const SelectiveScanParams&) { return 0; }
int64_t WorkspaceBytes(const SelectiveScanParams&) { return 0; }
absl::Status Forward(const SelectiveScanParams&, CUstream_st*) { return NoCuda(); }
absl::Status Backward(const SelectiveScanParams&, const SelectiveScanGrads&, CUstream_st*) {
  return NoCuda();
}
absl::Status Step(const SelectiveScanParams&, CUstream_st*) { return NoCuda(); }

int64_t ConvWorkspaceBytes(const CausalConv1dParams&) { return 0; }
absl::Status Forward(const CausalConv1dParams&, CUstream_st*) { return NoCuda(); }
absl::Status Backward(const CausalConv1dParams&, const CausalConv1dGrads&, CUstream_st*) {
  return NoCuda();
}
absl::Status Step(const CausalConv1dParams&, CUstream_st*) { return NoCuda(); }

}  // namespace rwr::scan
