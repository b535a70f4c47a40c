// CPU reference of the selective scan: finite-difference checks of every gradient (with and
// without resets, state in/out, gate z, D, Δ bias + softplus), strided B/C slices, and chunked
// equivalence (T tokens in k chunks with state carried == one pass, outputs and gradients).
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "scan_kernels/selective_scan.h"

namespace rwr::scan {
namespace {

struct Config {
  bool resets = false;
  bool state = false;  // initial_state in, final_state out
  bool gate = false;   // z
  bool skip = false;   // D
  bool bias_softplus = false;
  std::string Name() const {
    std::string n;
    n += resets ? "Resets" : "NoResets";
    n += state ? "_State" : "";
    n += gate ? "_Z" : "";
    n += skip ? "_D" : "";
    n += bias_softplus ? "_BiasSoftplus" : "";
    return n;
  }
};

// Owns every tensor of one problem: x_proj-like row (R + 2S) holds B and C as strided slices.
struct Problem {
  int64_t Bsz, T, Di, S, R = 3;
  std::vector<float> x, delta, A, xproj, D, z, bias, init, final_state, out;
  std::vector<uint8_t> resets;
  Config cfg;

  Problem(int64_t b, int64_t t, int64_t di, int64_t s, Config c, uint32_t seed)
      : Bsz(b), T(t), Di(di), S(s), cfg(c) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    auto fill = [&](std::vector<float>& v, size_t n, float lo, float hi) {
      v.resize(n);
      std::uniform_real_distribution<float> dist(lo, hi);
      for (float& e : v) e = dist(rng);
    };
    fill(x, Bsz * T * Di, -1.f, 1.f);
    // Without softplus Δ is used raw: keep it positive.
    if (cfg.bias_softplus) fill(delta, Bsz * T * Di, -2.f, 1.f); else fill(delta, Bsz * T * Di, 0.05f, 0.6f);
    fill(A, Di * S, -2.f, -0.1f);
    fill(xproj, Bsz * T * (R + 2 * S), -1.f, 1.f);
    fill(D, Di, -1.f, 1.f);
    fill(z, Bsz * T * Di, -2.f, 2.f);
    fill(bias, Di, -0.5f, 0.5f);
    fill(init, Bsz * Di * S, -1.f, 1.f);
    final_state.assign(Bsz * Di * S, 0.f);
    out.assign(Bsz * T * Di, 0.f);
    resets.assign(Bsz * T, 0);
    if (cfg.resets) {
      for (int64_t b = 0; b < Bsz; ++b) {
        for (int64_t t = 0; t < T; ++t) resets[b * T + t] = (rng() % 4 == 0) ? 1 : 0;
      }
      resets[1] = 1;  // at least one inside the first sample
    }
    (void)u;
  }

  SelectiveScanParams Params() {
    SelectiveScanParams p;
    p.batch = Bsz; p.seqlen = T; p.dim = Di; p.dstate = S; p.dtype = DType::kF32;
    const TokenStrides tok{T * Di, Di}, row{T * (R + 2 * S), R + 2 * S};
    p.x = x.data(); p.x_strides = tok;
    p.delta = delta.data(); p.delta_strides = tok;
    p.A = A.data();
    p.B = xproj.data() + R; p.B_strides = row;
    p.C = xproj.data() + R + S; p.C_strides = row;
    if (cfg.skip) p.D = D.data();
    if (cfg.gate) { p.z = z.data(); p.z_strides = tok; }
    if (cfg.bias_softplus) { p.delta_bias = bias.data(); p.delta_softplus = true; }
    if (cfg.resets) { p.resets = resets.data(); p.resets_batch_stride = T; }
    if (cfg.state) { p.initial_state = init.data(); p.final_state = final_state.data(); }
    p.out = out.data(); p.out_strides = tok;
    return p;
  }
};

// Loss = Σ out·wo + Σ final·wf with fixed random weights; its gradient is (dout=wo, dfinal=wf).
struct Loss {
  std::vector<float> wo, wf;
  double operator()(Problem& pr) const {
    EXPECT_TRUE(ForwardCpu(pr.Params()).ok());
    double l = 0;
    for (size_t i = 0; i < pr.out.size(); ++i) l += double(pr.out[i]) * wo[i];
    if (pr.cfg.state) {
      for (size_t i = 0; i < pr.final_state.size(); ++i) l += double(pr.final_state[i]) * wf[i];
    }
    return l;
  }
};

struct GradBuffers {
  std::vector<float> dx, ddelta, dA, dxproj, dD, dz, dbias, dinit;
  SelectiveScanGrads Make(Problem& pr, const Loss& loss) {
    const int64_t n = pr.Bsz * pr.T * pr.Di, row = pr.R + 2 * pr.S;
    dx.assign(n, NAN); ddelta.assign(n, NAN); dz.assign(n, NAN);
    dA.assign(pr.Di * pr.S, NAN); dD.assign(pr.Di, NAN); dbias.assign(pr.Di, NAN);
    dxproj.assign(pr.Bsz * pr.T * row, 0.f);
    dinit.assign(pr.Bsz * pr.Di * pr.S, NAN);
    const TokenStrides tok{pr.T * pr.Di, pr.Di}, rows{pr.T * row, row};
    SelectiveScanGrads g;
    g.dout = loss.wo.data(); g.dout_strides = tok;
    if (pr.cfg.state) g.dfinal_state = loss.wf.data();
    g.dx = dx.data(); g.dx_strides = tok;
    g.ddelta = ddelta.data(); g.ddelta_strides = tok;
    g.dA = dA.data();
    g.dB = dxproj.data() + pr.R; g.dB_strides = rows;
    g.dC = dxproj.data() + pr.R + pr.S; g.dC_strides = rows;
    if (pr.cfg.skip) g.dD = dD.data();
    if (pr.cfg.gate) { g.dz = dz.data(); g.dz_strides = tok; }
    if (pr.cfg.bias_softplus) g.ddelta_bias = dbias.data();
    g.dinitial_state = dinit.data();
    return g;
  }
};

// Central differences on every element of `v`, compared with `analytic[i]` (stride-mapped by
// `index`).
void CheckFiniteDifferences(const std::string& what, Problem& pr, const Loss& loss,
                            std::vector<float>& v, const std::function<double(size_t)>& analytic,
                            const std::function<bool(size_t)>& skip = nullptr) {
  const float eps = 1e-3f;
  int checked = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (skip && skip(i)) continue;
    const float keep = v[i];
    v[i] = keep + eps;
    const double lp = loss(pr);
    v[i] = keep - eps;
    const double lm = loss(pr);
    v[i] = keep;
    const double numeric = (lp - lm) / (2.0 * eps);
    const double a = analytic(i);
    ASSERT_FALSE(std::isnan(a)) << what << "[" << i << "] not written";
    EXPECT_NEAR(a, numeric, 3e-3 + 3e-3 * std::fabs(numeric)) << what << "[" << i << "]";
    ++checked;
  }
  EXPECT_GT(checked, 0) << what;
}

class ScanFiniteDifference : public ::testing::TestWithParam<Config> {};

TEST_P(ScanFiniteDifference, EveryGradientMatchesCentralDifferences) {
  const Config cfg = GetParam();
  Problem pr(/*B=*/2, /*T=*/7, /*Di=*/3, /*S=*/4, cfg, /*seed=*/1234);
  Loss loss;
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  loss.wo.resize(pr.out.size());
  loss.wf.resize(pr.final_state.size());
  for (float& w : loss.wo) w = u(rng);
  for (float& w : loss.wf) w = u(rng);

  GradBuffers gb;
  SelectiveScanGrads g = gb.Make(pr, loss);
  ASSERT_TRUE(BackwardCpu(pr.Params(), g).ok());

  CheckFiniteDifferences("dx", pr, loss, pr.x, [&](size_t i) { return gb.dx[i]; });
  CheckFiniteDifferences("ddelta", pr, loss, pr.delta, [&](size_t i) { return gb.ddelta[i]; });
  CheckFiniteDifferences("dA", pr, loss, pr.A, [&](size_t i) { return gb.dA[i]; });
  // B and C live in the x_proj row; the R leading columns are not inputs of the scan.
  const size_t row = pr.R + 2 * pr.S;
  CheckFiniteDifferences(
      "dB/dC", pr, loss, pr.xproj, [&](size_t i) { return gb.dxproj[i]; },
      [&](size_t i) { return i % row < size_t(pr.R); });
  if (cfg.skip) CheckFiniteDifferences("dD", pr, loss, pr.D, [&](size_t i) { return gb.dD[i]; });
  if (cfg.gate) CheckFiniteDifferences("dz", pr, loss, pr.z, [&](size_t i) { return gb.dz[i]; });
  if (cfg.bias_softplus) {
    CheckFiniteDifferences("ddelta_bias", pr, loss, pr.bias, [&](size_t i) { return gb.dbias[i]; });
  }
  if (cfg.state) {
    CheckFiniteDifferences("dinitial_state", pr, loss, pr.init,
                           [&](size_t i) { return gb.dinit[i]; });
  }
}

INSTANTIATE_TEST_SUITE_P(
    Flags, ScanFiniteDifference,
    ::testing::Values(Config{}, Config{true, false, false, false, false},
                      Config{false, true, false, false, false},
                      Config{false, false, true, true, true},
                      Config{true, true, true, true, true},
                      Config{true, true, false, true, false}),
    [](const ::testing::TestParamInfo<Config>& info) { return info.param.Name(); });

// The backward hands back the forward output it recomputes (for callers that did not keep it).
TEST_P(ScanFiniteDifference, BackwardRecomputesTheForwardOutput) {
  const Config cfg = GetParam();
  Problem pr(/*B=*/2, /*T=*/7, /*Di=*/3, /*S=*/4, cfg, /*seed=*/1234);
  ASSERT_TRUE(ForwardCpu(pr.Params()).ok());
  Loss loss;
  loss.wo.assign(pr.out.size(), 0.5f);
  loss.wf.assign(pr.final_state.size(), 0.25f);
  GradBuffers gb;
  SelectiveScanGrads g = gb.Make(pr, loss);
  std::vector<float> out(pr.out.size(), NAN);
  g.out = out.data();
  g.out_strides = {pr.T * pr.Di, pr.Di};
  ASSERT_TRUE(BackwardCpu(pr.Params(), g).ok());
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_NEAR(out[i], pr.out[i], 1e-6 * (1.0 + std::fabs(pr.out[i]))) << i;
  }
}

TEST(ScanCpu, ResetMakesTokensIndependentOfEarlierDocument) {
  Config cfg{true, true, true, true, true};
  Problem pr(1, 9, 4, 8, cfg, 7);
  std::fill(pr.resets.begin(), pr.resets.end(), 0);
  pr.resets[5] = 1;
  ASSERT_TRUE(ForwardCpu(pr.Params()).ok());
  const std::vector<float> before(pr.out.begin() + 5 * pr.Di, pr.out.end());
  // Change everything before the reset, and the initial state: tokens 5.. must not move.
  for (int64_t i = 0; i < 5 * pr.Di; ++i) { pr.x[i] += 0.5f; pr.delta[i] += 0.1f; }
  for (float& v : pr.init) v = -v;
  ASSERT_TRUE(ForwardCpu(pr.Params()).ok());
  const std::vector<float> after(pr.out.begin() + 5 * pr.Di, pr.out.end());
  EXPECT_EQ(before, after);
}

TEST(ScanCpu, ChunkedWithCarriedStateEqualsOnePass) {
  Config cfg{true, true, true, true, true};
  const int64_t T = 23, Di = 5, S = 8, Bsz = 2;
  Problem full(Bsz, T, Di, S, cfg, 42);
  Loss loss;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  loss.wo.resize(full.out.size());
  loss.wf.resize(full.final_state.size());
  for (float& w : loss.wo) w = u(rng);
  for (float& w : loss.wf) w = u(rng);
  ASSERT_TRUE(ForwardCpu(full.Params()).ok());
  GradBuffers gfull;
  SelectiveScanGrads g = gfull.Make(full, loss);
  ASSERT_TRUE(BackwardCpu(full.Params(), g).ok());

  // Chunks [0,5) [5,6) [6,17) [17,23), views into the same buffers.
  const std::vector<int64_t> cuts = {0, 5, 6, 17, 23};
  const int64_t nchunks = cuts.size() - 1;
  std::vector<std::vector<float>> states(nchunks + 1, std::vector<float>(Bsz * Di * S));
  states[0] = full.init;
  std::vector<float> out(full.out.size(), NAN);
  auto chunk_params = [&](int64_t c) {
    SelectiveScanParams p = full.Params();
    const int64_t t0 = cuts[c];
    p.seqlen = cuts[c + 1] - t0;
    auto shift = [&](const void* base, const TokenStrides& s) {
      return static_cast<const void*>(static_cast<const float*>(base) + t0 * s.token);
    };
    p.x = shift(p.x, p.x_strides);
    p.delta = shift(p.delta, p.delta_strides);
    p.B = shift(p.B, p.B_strides);
    p.C = shift(p.C, p.C_strides);
    p.z = shift(p.z, p.z_strides);
    p.resets = p.resets + t0;
    p.initial_state = states[c].data();
    p.final_state = states[c + 1].data();
    p.out = out.data() + t0 * p.out_strides.token;
    return p;
  };
  for (int64_t c = 0; c < nchunks; ++c) ASSERT_TRUE(ForwardCpu(chunk_params(c)).ok());
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], full.out[i], 1e-5) << i;
  for (size_t i = 0; i < full.final_state.size(); ++i) {
    EXPECT_NEAR(states[nchunks][i], full.final_state[i], 1e-5) << i;
  }

  // Backward chunk by chunk, last first, carrying the state gradient.
  std::vector<float> dstate = loss.wf;
  const int64_t row = full.R + 2 * S;
  std::vector<float> dx(full.x.size()), ddelta(full.x.size()), dz(full.x.size());
  std::vector<float> dxproj(full.xproj.size(), 0.f);
  std::vector<double> dA(Di * S, 0.0), dD(Di, 0.0), dbias(Di, 0.0);
  for (int64_t c = nchunks - 1; c >= 0; --c) {
    SelectiveScanParams p = chunk_params(c);
    const int64_t t0 = cuts[c];
    std::vector<float> cdA(Di * S), cdD(Di), cdbias(Di), dinit(Bsz * Di * S);
    SelectiveScanGrads g;
    g.dout = loss.wo.data() + t0 * Di; g.dout_strides = {T * Di, Di};
    g.dfinal_state = dstate.data();
    g.dx = dx.data() + t0 * Di; g.dx_strides = {T * Di, Di};
    g.ddelta = ddelta.data() + t0 * Di; g.ddelta_strides = {T * Di, Di};
    g.dz = dz.data() + t0 * Di; g.dz_strides = {T * Di, Di};
    g.dA = cdA.data(); g.dD = cdD.data(); g.ddelta_bias = cdbias.data();
    g.dB = dxproj.data() + t0 * row + full.R; g.dB_strides = {T * row, row};
    g.dC = dxproj.data() + t0 * row + full.R + S; g.dC_strides = {T * row, row};
    g.dinitial_state = dinit.data();
    ASSERT_TRUE(BackwardCpu(p, g).ok());
    for (int64_t i = 0; i < Di * S; ++i) dA[i] += cdA[i];
    for (int64_t i = 0; i < Di; ++i) { dD[i] += cdD[i]; dbias[i] += cdbias[i]; }
    dstate = dinit;
  }
  for (size_t i = 0; i < dx.size(); ++i) {
    EXPECT_NEAR(dx[i], gfull.dx[i], 1e-5) << i;
    EXPECT_NEAR(ddelta[i], gfull.ddelta[i], 1e-5) << i;
    EXPECT_NEAR(dz[i], gfull.dz[i], 1e-5) << i;
  }
  for (size_t i = 0; i < dxproj.size(); ++i) EXPECT_NEAR(dxproj[i], gfull.dxproj[i], 1e-5) << i;
  for (int64_t i = 0; i < Di * S; ++i) EXPECT_NEAR(dA[i], gfull.dA[i], 1e-4) << i;
  for (int64_t i = 0; i < Di; ++i) {
    EXPECT_NEAR(dD[i], gfull.dD[i], 1e-4);
    EXPECT_NEAR(dbias[i], gfull.dbias[i], 1e-4);
  }
  for (size_t i = 0; i < dstate.size(); ++i) EXPECT_NEAR(dstate[i], gfull.dinit[i], 1e-5) << i;
}

TEST(ScanCpu, StepEqualsForwardOneTokenAtATime) {
  Config cfg{false, true, true, true, true};
  Problem pr(2, 6, 4, 16, cfg, 3);
  ASSERT_TRUE(ForwardCpu(pr.Params()).ok());
  std::vector<float> state = pr.init, out(pr.out.size(), NAN);
  for (int64_t t = 0; t < pr.T; ++t) {
    SelectiveScanParams p = pr.Params();
    p.seqlen = 1;
    p.x = pr.x.data() + t * pr.Di;
    p.delta = pr.delta.data() + t * pr.Di;
    p.z = pr.z.data() + t * pr.Di;
    p.B = pr.xproj.data() + t * (pr.R + 2 * pr.S) + pr.R;
    p.C = pr.xproj.data() + t * (pr.R + 2 * pr.S) + pr.R + pr.S;
    p.initial_state = state.data();
    p.final_state = state.data();  // in place
    p.out = out.data() + t * pr.Di;
    ASSERT_TRUE(StepCpu(p).ok());
  }
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], pr.out[i], 1e-5) << i;
  for (size_t i = 0; i < state.size(); ++i) EXPECT_NEAR(state[i], pr.final_state[i], 1e-5) << i;
}

TEST(ScanCpu, CanImplementRejectsWhatItCannotRun) {
  Problem pr(1, 4, 2, 4, Config{}, 1);
  SelectiveScanParams p = pr.Params();
  EXPECT_TRUE(CanImplement(p, Backend::kCpu).ok());
  SelectiveScanParams bf = p;
  bf.dtype = DType::kBF16;
  EXPECT_EQ(CanImplement(bf, Backend::kCpu).code(), absl::StatusCode::kUnimplemented);
  SelectiveScanParams missing = p;
  missing.C = nullptr;
  EXPECT_EQ(ForwardCpu(missing).code(), absl::StatusCode::kInvalidArgument);
  SelectiveScanParams empty = p;
  empty.seqlen = 0;
  EXPECT_EQ(CanImplement(empty, Backend::kCpu).code(), absl::StatusCode::kInvalidArgument);
  if (!HaveCuda()) {
    EXPECT_EQ(Forward(p, nullptr).code(), absl::StatusCode::kUnimplemented);
  }
}

TEST(ScanCpu, CudaEntryPointsSayWhatTheyCannotRun) {
  Problem pr(1, 4, 2, 4, Config{}, 1);
  SelectiveScanParams p = pr.Params();  // S = 4: the CUDA kernels take S = 16 only
  EXPECT_EQ(CanImplement(p, Backend::kCuda).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(Forward(p, nullptr).code(), absl::StatusCode::kUnimplemented);
  Problem p16(1, 4, 2, 16, Config{}, 2);
  SelectiveScanParams q = p16.Params();
  EXPECT_EQ(CanImplement(q, Backend::kCuda).ok(), HaveCuda());
  Loss loss;
  loss.wo.assign(p16.out.size(), 1.f);
  loss.wf.assign(p16.final_state.size(), 1.f);
  GradBuffers gb;
  const SelectiveScanGrads g = gb.Make(p16, loss);
  // Without the workspace its Forward filled, the CUDA backward refuses before touching memory.
  EXPECT_EQ(Backward(q, g, nullptr).code(), HaveCuda() ? absl::StatusCode::kInvalidArgument
                                                       : absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace rwr::scan
