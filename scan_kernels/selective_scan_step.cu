// The selective scan's single-token step for generation (selective_scan.h `Step`): one token per
// row, the state read and written in place. The chunked and one-pass forwards are built to walk
// many tokens and pay for it at T = 1 (tile loads, chunk carries: 7 µs a Mamba-2.8B layer at one
// row, 18 µs at 16); a step is bound by reading and writing the state once (B · Di · 16 floats
// each way), so this kernel does only that: 4 lanes per channel, 4 states each, and the 4 lanes'
// parts of y summed by two shuffles in a fixed order (bitwise reproducible).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "common/call_status_cuda.h"
#include "common/cuda_dependent_launch.cuh"
#include "common/cuda_elements.cuh"
#include "common/status.h"
#include "fmt/format.h"
#include "scan_kernels/scan_device.cuh"
#include "scan_kernels/selective_scan.h"

namespace rwr::scan {
namespace {

using cuda_elements::FromFloat;
using cuda_elements::ToFloat;
using namespace device;  // NOLINT: kS, kFull, kLog2e, Exp2, Sigmoid, DeltaOf

constexpr int kLanes = 4;                    // per channel
constexpr int kStatesPerLane = kS / kLanes;  // 4: one float4 of the state
constexpr int kThreads = 128;                // 32 channels a block

template <typename E>
__global__ void __launch_bounds__(kThreads) StepKernel(SelectiveScanParams p) {
  if (p.let_next_start) cuda_dependent_launch::LetDependentsLaunch();
  const int64_t b = blockIdx.x;  // rows on x, whose 2^31 blocks take any batch
  const int64_t d = blockIdx.y * int64_t{kThreads / kLanes} + threadIdx.x / kLanes;
  const int q = threadIdx.x % kLanes;
  // A channel's 4 lanes are adjacent, so a channel past the end idles whole; every lane still
  // takes part in the shuffles below.
  const bool active = d < p.dim;
  float part = 0.f, x = 0.f;
  float4 h = make_float4(0.f, 0.f, 0.f, 0.f);
  if (active) {
    const E* xs = static_cast<const E*>(p.x);
    x = ToFloat<E>(xs[b * p.x_strides.batch + d]);
    float slope;
    const float delta =
        DeltaOf(p, ToFloat<E>(static_cast<const E*>(p.delta)[b * p.delta_strides.batch + d]),
                p.delta_bias != nullptr ? p.delta_bias[d] : 0.f, &slope);
    const bool reset = p.resets != nullptr && p.resets[b * p.resets_batch_stride] != 0;
    const int64_t at = (b * p.dim + d) * kS + q * kStatesPerLane;
    if (!reset) h = *reinterpret_cast<const float4*>(p.initial_state + at);
    const float4 a = *reinterpret_cast<const float4*>(p.A + d * kS + q * kStatesPerLane);
    const E* bs = static_cast<const E*>(p.B) + b * p.B_strides.batch + q * kStatesPerLane;
    const E* cs = static_cast<const E*>(p.C) + b * p.C_strides.batch + q * kStatesPerLane;
    const float dx = delta * x, dl = delta * kLog2e;
    float* hv = &h.x;
    const float* av = &a.x;
#pragma unroll
    for (int i = 0; i < kStatesPerLane; ++i) {
      hv[i] = Exp2(dl * av[i]) * hv[i] + dx * ToFloat<E>(bs[i]);
      part += ToFloat<E>(cs[i]) * hv[i];
    }
    *reinterpret_cast<float4*>(p.final_state + at) = h;
  }
  part += __shfl_xor_sync(kFull, part, 1);
  part += __shfl_xor_sync(kFull, part, 2);
  if (!active || q != 0) return;
  float y = part + (p.D != nullptr ? p.D[d] * x : 0.f);
  if (p.z != nullptr) {
    const float z = ToFloat<E>(static_cast<const E*>(p.z)[b * p.z_strides.batch + d]);
    y *= z * Sigmoid(z);
  }
  static_cast<E*>(p.out)[b * p.out_strides.batch + d] = FromFloat<E>(y);
}

}  // namespace

absl::Status Step(const SelectiveScanParams& p, CUstream_st* stream) {
  if (p.seqlen != 1 || p.initial_state == nullptr || p.final_state == nullptr) {
    return absl::InvalidArgumentError(
        "selective scan step: needs seqlen 1 and both initial_state and final_state");
  }
  RWR_RETURN_IF_ERROR(CanImplement(p, Backend::kCuda));
  if (device::Misaligned16(p.initial_state) || device::Misaligned16(p.final_state) ||
      device::Misaligned16(p.A)) {
    return absl::InvalidArgumentError(
        "selective scan CUDA step: initial_state, final_state and A must be 16-byte aligned");
  }
  const int64_t channel_blocks = (p.dim + kThreads / kLanes - 1) / (kThreads / kLanes);
  if (channel_blocks > 65535) {  // the grid's y limit
    return absl::InvalidArgumentError(
        fmt::format("selective scan CUDA step: Di {} above the {} it takes", p.dim,
                    int64_t{65535} * (kThreads / kLanes)));
  }
  const dim3 grid(static_cast<unsigned>(p.batch), static_cast<unsigned>(channel_blocks));
  if (p.dtype == DType::kBF16) {
    StepKernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(p);
  } else {
    StepKernel<float><<<grid, kThreads, 0, stream>>>(p);
  }
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

}  // namespace rwr::scan
