// CPU reference of the selective scan: fp32 in/out, fp64 state and accumulation. This is what CI
// tests and what the CUDA kernels are checked against; it favours plainness over speed.
#include <cmath>
#include <vector>

#include "fmt/format.h"
#include "scan_kernels/selective_scan.h"

namespace rwr::scan {
namespace {

double Softplus(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }
double Sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// Element (b, t, i) of a token-major fp32 tensor.
inline float Load(const void* base, const TokenStrides& s, int64_t b, int64_t t, int64_t i) {
  return static_cast<const float*>(base)[b * s.batch + t * s.token + i];
}
inline void Store(void* base, const TokenStrides& s, int64_t b, int64_t t, int64_t i, double v) {
  static_cast<float*>(base)[b * s.batch + t * s.token + i] = static_cast<float>(v);
}

bool IsReset(const SelectiveScanParams& p, int64_t b, int64_t t) {
  return p.resets != nullptr && p.resets[b * p.resets_batch_stride + t] != 0;
}

// Δ after bias and softplus, and d(Δ)/d(Δraw).
void DeltaAt(const SelectiveScanParams& p, int64_t b, int64_t t, int64_t d, double* delta,
             double* ddelta_draw) {
  double v = Load(p.delta, p.delta_strides, b, t, d);
  if (p.delta_bias != nullptr) v += p.delta_bias[d];
  if (p.delta_softplus) {
    *delta = Softplus(v);
    *ddelta_draw = Sigmoid(v);
  } else {
    *delta = v;
    *ddelta_draw = 1.0;
  }
}

absl::Status CheckCommon(const SelectiveScanParams& p) {
  if (p.batch <= 0 || p.seqlen <= 0 || p.dim <= 0 || p.dstate <= 0) {
    return absl::InvalidArgumentError(fmt::format(
        "selective scan: sizes must be positive (B={}, T={}, Di={}, S={})", p.batch, p.seqlen,
        p.dim, p.dstate));
  }
  if (p.x == nullptr || p.delta == nullptr || p.A == nullptr || p.B == nullptr ||
      p.C == nullptr || p.out == nullptr) {
    return absl::InvalidArgumentError("selective scan: x, delta, A, B, C and out are required");
  }
  for (const TokenStrides* s :
       {&p.x_strides, &p.delta_strides, &p.B_strides, &p.C_strides, &p.out_strides}) {
    if (s->batch < 0 || s->token < 0) {
      return absl::InvalidArgumentError("selective scan: strides must be non-negative");
    }
  }
  if (p.z != nullptr && (p.z_strides.batch < 0 || p.z_strides.token < 0)) {
    return absl::InvalidArgumentError("selective scan: z strides must be non-negative");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CanImplement(const SelectiveScanParams& p, Backend backend) {
  if (absl::Status s = CheckCommon(p); !s.ok()) return s;
  if (backend == Backend::kCpu) {
    if (p.dtype != DType::kF32) {
      return absl::UnimplementedError("selective scan CPU reference takes fp32 tensors only");
    }
    if (p.dstate > 256) {
      return absl::UnimplementedError(
          fmt::format("selective scan CPU reference supports S <= 256, got {}", p.dstate));
    }
    return absl::OkStatus();
  }
  if (!HaveCuda()) {
    return absl::UnimplementedError("selective scan: this build has no CUDA (RWR_CUDA=OFF)");
  }
  if (p.dstate != 16) {
    return absl::UnimplementedError(
        fmt::format("selective scan CUDA supports S = 16, got S = {}", p.dstate));
  }
  if (p.seqlen > (int64_t{1} << 31) || p.dim > (int64_t{1} << 24)) {
    return absl::UnimplementedError("selective scan CUDA: T or Di too large");
  }
  return absl::OkStatus();
}

absl::Status CanImplement(const SelectiveScanParams& p, const SelectiveScanGrads& g,
                          Backend backend) {
  if (absl::Status s = CanImplement(p, backend); !s.ok()) return s;
  if (g.dout == nullptr || g.dx == nullptr || g.ddelta == nullptr || g.dA == nullptr ||
      g.dB == nullptr || g.dC == nullptr) {
    return absl::InvalidArgumentError(
        "selective scan backward: dout, dx, ddelta, dA, dB and dC are required");
  }
  if (p.D != nullptr && g.dD == nullptr) {
    return absl::InvalidArgumentError("selective scan backward: D is set, so dD is required");
  }
  if (p.z != nullptr && g.dz == nullptr) {
    return absl::InvalidArgumentError("selective scan backward: z is set, so dz is required");
  }
  if (p.delta_bias != nullptr && g.ddelta_bias == nullptr) {
    return absl::InvalidArgumentError(
        "selective scan backward: delta_bias is set, so ddelta_bias is required");
  }
  return absl::OkStatus();
}

absl::Status ForwardCpu(const SelectiveScanParams& p) {
  if (absl::Status s = CanImplement(p, Backend::kCpu); !s.ok()) return s;
  const int64_t S = p.dstate;
  std::vector<double> h(S);
  std::vector<double> finals(p.final_state != nullptr ? p.batch * p.dim * S : 0);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t d = 0; d < p.dim; ++d) {
      for (int64_t s = 0; s < S; ++s) {
        h[s] = p.initial_state != nullptr ? p.initial_state[(b * p.dim + d) * S + s] : 0.0;
      }
      for (int64_t t = 0; t < p.seqlen; ++t) {
        if (IsReset(p, b, t)) std::fill(h.begin(), h.end(), 0.0);
        double delta, unused;
        DeltaAt(p, b, t, d, &delta, &unused);
        const double x = Load(p.x, p.x_strides, b, t, d);
        double y = 0.0;
        for (int64_t s = 0; s < S; ++s) {
          const double a = std::exp(delta * p.A[d * S + s]);
          h[s] = a * h[s] + delta * Load(p.B, p.B_strides, b, t, s) * x;
          y += Load(p.C, p.C_strides, b, t, s) * h[s];
        }
        if (p.D != nullptr) y += p.D[d] * x;
        if (p.z != nullptr) {
          const double z = Load(p.z, p.z_strides, b, t, d);
          y *= z * Sigmoid(z);
        }
        Store(p.out, p.out_strides, b, t, d, y);
      }
      if (p.final_state != nullptr) {
        for (int64_t s = 0; s < S; ++s) finals[(b * p.dim + d) * S + s] = h[s];
      }
    }
  }
  // Written last so that final_state may alias initial_state.
  for (size_t i = 0; i < finals.size(); ++i) p.final_state[i] = static_cast<float>(finals[i]);
  return absl::OkStatus();
}

absl::Status BackwardCpu(const SelectiveScanParams& p, const SelectiveScanGrads& g) {
  if (absl::Status s = CanImplement(p, g, Backend::kCpu); !s.ok()) return s;
  const int64_t S = p.dstate, T = p.seqlen;
  std::vector<double> hs((T + 1) * S);  // hs[t+1] = h_t; hs[0] = initial state
  std::vector<double> dh(S);
  std::vector<double> dA(p.dim * S, 0.0);
  std::vector<double> dB(p.batch * T * S, 0.0), dC(p.batch * T * S, 0.0);
  std::vector<double> dD(p.dim, 0.0), dbias(p.dim, 0.0);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t d = 0; d < p.dim; ++d) {
      // Forward again, keeping every state.
      for (int64_t s = 0; s < S; ++s) {
        hs[s] = p.initial_state != nullptr ? p.initial_state[(b * p.dim + d) * S + s] : 0.0;
      }
      for (int64_t t = 0; t < T; ++t) {
        const bool reset = IsReset(p, b, t);
        double delta, unused;
        DeltaAt(p, b, t, d, &delta, &unused);
        const double x = Load(p.x, p.x_strides, b, t, d);
        for (int64_t s = 0; s < S; ++s) {
          const double prev = reset ? 0.0 : hs[t * S + s];
          hs[(t + 1) * S + s] =
              std::exp(delta * p.A[d * S + s]) * prev + delta * Load(p.B, p.B_strides, b, t, s) * x;
        }
      }
      // Reverse: dh holds dL/dh_t.
      for (int64_t s = 0; s < S; ++s) {
        dh[s] = g.dfinal_state != nullptr ? g.dfinal_state[(b * p.dim + d) * S + s] : 0.0;
      }
      for (int64_t t = T - 1; t >= 0; --t) {
        const bool reset = IsReset(p, b, t);
        double delta, ddelta_draw;
        DeltaAt(p, b, t, d, &delta, &ddelta_draw);
        const double x = Load(p.x, p.x_strides, b, t, d);
        const double dout = Load(g.dout, g.dout_strides, b, t, d);
        // Undo the gate: dy = dL/dy_t.
        double dy = dout;
        if (p.z != nullptr || g.out != nullptr) {
          double y = p.D != nullptr ? p.D[d] * x : 0.0;
          for (int64_t s = 0; s < S; ++s) y += Load(p.C, p.C_strides, b, t, s) * hs[(t + 1) * S + s];
          double out = y;
          if (p.z != nullptr) {
            const double z = Load(p.z, p.z_strides, b, t, d);
            const double sig = Sigmoid(z);
            dy = dout * z * sig;
            out = y * z * sig;
            Store(g.dz, g.dz_strides, b, t, d, dout * y * sig * (1.0 + z * (1.0 - sig)));
          }
          if (g.out != nullptr) Store(g.out, g.out_strides, b, t, d, out);
        }
        double dx = 0.0, ddelta = 0.0;
        if (p.D != nullptr) {
          dD[d] += dy * x;
          dx += dy * p.D[d];
        }
        for (int64_t s = 0; s < S; ++s) {
          const double Bs = Load(p.B, p.B_strides, b, t, s);
          const double Cs = Load(p.C, p.C_strides, b, t, s);
          const double h = hs[(t + 1) * S + s];
          const double prev = reset ? 0.0 : hs[t * S + s];
          const double a = std::exp(delta * p.A[d * S + s]);
          dC[(b * T + t) * S + s] += dy * h;
          dh[s] += Cs * dy;
          const double dlog_a = dh[s] * a * prev;  // dL/d(Δ·A)
          dA[d * S + s] += dlog_a * delta;
          ddelta += dlog_a * p.A[d * S + s] + dh[s] * Bs * x;
          dB[(b * T + t) * S + s] += dh[s] * delta * x;
          dx += dh[s] * delta * Bs;
          dh[s] = reset ? 0.0 : dh[s] * a;  // now dL/dh_{t−1}
        }
        const double ddraw = ddelta * ddelta_draw;
        dbias[d] += ddraw;
        Store(g.dx, g.dx_strides, b, t, d, dx);
        Store(g.ddelta, g.ddelta_strides, b, t, d, ddraw);
      }
      if (g.dinitial_state != nullptr) {
        for (int64_t s = 0; s < S; ++s) {
          g.dinitial_state[(b * p.dim + d) * S + s] = static_cast<float>(dh[s]);
        }
      }
    }
  }
  for (int64_t i = 0; i < p.dim * S; ++i) g.dA[i] = static_cast<float>(dA[i]);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t s = 0; s < S; ++s) {
        Store(g.dB, g.dB_strides, b, t, s, dB[(b * T + t) * S + s]);
        Store(g.dC, g.dC_strides, b, t, s, dC[(b * T + t) * S + s]);
      }
    }
  }
  if (g.dD != nullptr) {
    for (int64_t d = 0; d < p.dim; ++d) g.dD[d] = static_cast<float>(dD[d]);
  }
  if (g.ddelta_bias != nullptr) {
    for (int64_t d = 0; d < p.dim; ++d) g.ddelta_bias[d] = static_cast<float>(dbias[d]);
  }
  return absl::OkStatus();
}

absl::Status StepCpu(const SelectiveScanParams& p) {
  if (p.seqlen != 1 || p.initial_state == nullptr || p.final_state == nullptr) {
    return absl::InvalidArgumentError(
        "selective scan step: needs seqlen 1 and both initial_state and final_state");
  }
  return ForwardCpu(p);
}

}  // namespace rwr::scan
