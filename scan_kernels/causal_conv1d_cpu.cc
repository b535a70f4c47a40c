// CPU reference of the causal depthwise conv1d: fp32 in/out, fp64 accumulation. What CI tests
// and what the CUDA kernels are checked against.
#include <cmath>
#include <limits>
#include <vector>

#include "fmt/format.h"
#include "scan_kernels/causal_conv1d.h"

namespace rwr::scan {
namespace {

constexpr int64_t kNoReset = std::numeric_limits<int64_t>::min();

inline float Load(const void* base, const TokenStrides& s, int64_t b, int64_t t, int64_t i) {
  return static_cast<const float*>(base)[b * s.batch + t * s.token + i];
}
inline void Store(void* base, const TokenStrides& s, int64_t b, int64_t t, int64_t i, double v) {
  static_cast<float*>(base)[b * s.batch + t * s.token + i] = static_cast<float>(v);
}

// doc_start[t] = the last reset position <= t, or kNoReset (the initial state is visible).
std::vector<int64_t> DocStarts(const CausalConv1dParams& p, int64_t b) {
  std::vector<int64_t> starts(p.seqlen);
  int64_t last = kNoReset;
  for (int64_t t = 0; t < p.seqlen; ++t) {
    if (p.resets != nullptr && p.resets[b * p.resets_batch_stride + t] != 0) last = t;
    starts[t] = last;
  }
  return starts;
}

double Sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

}  // namespace

absl::Status CanImplement(const CausalConv1dParams& p, Backend backend) {
  if (p.batch <= 0 || p.seqlen <= 0 || p.dim <= 0) {
    return absl::InvalidArgumentError(fmt::format(
        "causal conv1d: sizes must be positive (B={}, T={}, Di={})", p.batch, p.seqlen, p.dim));
  }
  if (p.width < 2 || p.width > 4) {
    return absl::UnimplementedError(
        fmt::format("causal conv1d supports width 2..4, got {}", p.width));
  }
  if (p.x == nullptr || p.weight == nullptr || p.out == nullptr) {
    return absl::InvalidArgumentError("causal conv1d: x, weight and out are required");
  }
  if (p.x_strides.batch < 0 || p.x_strides.token < 0 || p.out_strides.batch < 0 ||
      p.out_strides.token < 0) {
    return absl::InvalidArgumentError("causal conv1d: strides must be non-negative");
  }
  if (backend == Backend::kCpu) {
    if (p.dtype != DType::kF32) {
      return absl::UnimplementedError("causal conv1d CPU reference takes fp32 tensors only");
    }
    return absl::OkStatus();
  }
  if (!HaveCuda()) {
    return absl::UnimplementedError("causal conv1d: this build has no CUDA (RWR_CUDA=OFF)");
  }
  return absl::OkStatus();
}

absl::Status CanImplement(const CausalConv1dParams& p, const CausalConv1dGrads& g,
                          Backend backend) {
  if (absl::Status s = CanImplement(p, backend); !s.ok()) return s;
  if (g.dout == nullptr || g.dx == nullptr || g.dweight == nullptr) {
    return absl::InvalidArgumentError("causal conv1d backward: dout, dx and dweight are required");
  }
  if (p.bias != nullptr && g.dbias == nullptr) {
    return absl::InvalidArgumentError("causal conv1d backward: bias is set, so dbias is required");
  }
  return absl::OkStatus();
}

absl::Status ForwardCpu(const CausalConv1dParams& p) {
  if (absl::Status s = CanImplement(p, Backend::kCpu); !s.ok()) return s;
  const int64_t W = p.width, T = p.seqlen;
  std::vector<double> finals(p.final_state != nullptr ? p.batch * p.dim * (W - 1) : 0);
  for (int64_t b = 0; b < p.batch; ++b) {
    const std::vector<int64_t> starts = DocStarts(p, b);
    for (int64_t d = 0; d < p.dim; ++d) {
      const float* state = p.initial_state != nullptr ? p.initial_state + (b * p.dim + d) * (W - 1)
                                                      : nullptr;
      // Input at position u as seen from a token whose document starts at `start`.
      auto input = [&](int64_t u, int64_t start) -> double {
        if (u < start) return 0.0;
        if (u >= 0) return Load(p.x, p.x_strides, b, u, d);
        if (u < -(W - 1) || state == nullptr) return 0.0;
        return state[u + W - 1];
      };
      for (int64_t t = 0; t < T; ++t) {
        double acc = p.bias != nullptr ? p.bias[d] : 0.0;
        for (int64_t k = 0; k < W; ++k) acc += p.weight[d * W + k] * input(t - (W - 1) + k, starts[t]);
        if (p.silu) acc *= Sigmoid(acc);
        Store(p.out, p.out_strides, b, t, d, acc);
      }
      if (p.final_state != nullptr) {
        for (int64_t k = 0; k < W - 1; ++k) {
          finals[(b * p.dim + d) * (W - 1) + k] = input(T - (W - 1) + k, starts[T - 1]);
        }
      }
    }
  }
  for (size_t i = 0; i < finals.size(); ++i) p.final_state[i] = static_cast<float>(finals[i]);
  return absl::OkStatus();
}

absl::Status BackwardCpu(const CausalConv1dParams& p, const CausalConv1dGrads& g) {
  if (absl::Status s = CanImplement(p, g, Backend::kCpu); !s.ok()) return s;
  const int64_t W = p.width, T = p.seqlen;
  std::vector<double> dw(p.dim * W, 0.0), dbias(p.dim, 0.0);
  std::vector<double> dx(T), dstate(W - 1);
  for (int64_t b = 0; b < p.batch; ++b) {
    const std::vector<int64_t> starts = DocStarts(p, b);
    for (int64_t d = 0; d < p.dim; ++d) {
      const float* state = p.initial_state != nullptr ? p.initial_state + (b * p.dim + d) * (W - 1)
                                                      : nullptr;
      std::fill(dx.begin(), dx.end(), 0.0);
      std::fill(dstate.begin(), dstate.end(), 0.0);
      auto visible = [&](int64_t u, int64_t start) { return u >= start && u >= -(W - 1); };
      auto input = [&](int64_t u) -> double {
        if (u >= 0) return Load(p.x, p.x_strides, b, u, d);
        return state != nullptr ? state[u + W - 1] : 0.0;
      };
      auto add_dinput = [&](int64_t u, double v) {
        if (u >= 0) {
          dx[u] += v;
        } else {
          dstate[u + W - 1] += v;
        }
      };
      for (int64_t t = 0; t < T; ++t) {
        double pre = p.bias != nullptr ? p.bias[d] : 0.0;
        for (int64_t k = 0; k < W; ++k) {
          const int64_t u = t - (W - 1) + k;
          if (visible(u, starts[t])) pre += p.weight[d * W + k] * input(u);
        }
        double dpre = Load(g.dout, g.dout_strides, b, t, d);
        if (p.silu) {
          const double sig = Sigmoid(pre);
          dpre *= sig * (1.0 + pre * (1.0 - sig));
        }
        dbias[d] += dpre;
        for (int64_t k = 0; k < W; ++k) {
          const int64_t u = t - (W - 1) + k;
          if (!visible(u, starts[t])) continue;
          dw[d * W + k] += dpre * input(u);
          add_dinput(u, dpre * p.weight[d * W + k]);
        }
      }
      if (g.dfinal_state != nullptr) {
        for (int64_t k = 0; k < W - 1; ++k) {
          const int64_t u = T - (W - 1) + k;
          if (visible(u, starts[T - 1])) {
            add_dinput(u, g.dfinal_state[(b * p.dim + d) * (W - 1) + k]);
          }
        }
      }
      for (int64_t t = 0; t < T; ++t) Store(g.dx, g.dx_strides, b, t, d, dx[t]);
      if (g.dinitial_state != nullptr) {
        for (int64_t k = 0; k < W - 1; ++k) {
          // Without an initial state the inputs before token 0 are constant zeros; their
          // gradient is still reported (it is what a caller carrying state would receive).
          g.dinitial_state[(b * p.dim + d) * (W - 1) + k] = static_cast<float>(dstate[k]);
        }
      }
    }
  }
  for (int64_t i = 0; i < p.dim * W; ++i) g.dweight[i] = static_cast<float>(dw[i]);
  if (g.dbias != nullptr) {
    for (int64_t d = 0; d < p.dim; ++d) g.dbias[d] = static_cast<float>(dbias[d]);
  }
  return absl::OkStatus();
}

absl::Status StepCpu(const CausalConv1dParams& p) {
  if (p.seqlen != 1 || p.initial_state == nullptr || p.final_state == nullptr) {
    return absl::InvalidArgumentError(
        "causal conv1d step: needs seqlen 1 and both initial_state and final_state");
  }
  return ForwardCpu(p);
}

}  // namespace rwr::scan
