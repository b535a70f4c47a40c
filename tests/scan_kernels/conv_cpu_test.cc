// CPU reference of the causal conv1d: finite-difference checks of every gradient (widths 2–4,
// with and without resets, state in/out, bias, SiLU), chunked equivalence and the single step.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "scan_kernels/causal_conv1d.h"

namespace rwr::scan {
namespace {

struct ConvConfig {
  int64_t width = 4;
  bool resets = false;
  bool state = false;
  bool bias = true;
  bool silu = true;
  std::string Name() const {
    return "W" + std::to_string(width) + (resets ? "_Resets" : "") + (state ? "_State" : "") +
           (bias ? "_Bias" : "") + (silu ? "_Silu" : "");
  }
};

struct ConvProblem {
  int64_t Bsz, T, Di, W;
  ConvConfig cfg;
  std::vector<float> x, weight, bias, init, final_state, out;
  std::vector<uint8_t> resets;
  ConvProblem(int64_t b, int64_t t, int64_t di, ConvConfig c, uint32_t seed)
      : Bsz(b), T(t), Di(di), W(c.width), cfg(c) {
    std::mt19937 rng(seed);
    auto fill = [&](std::vector<float>& v, size_t n) {
      std::uniform_real_distribution<float> u(-1.f, 1.f);
      v.resize(n);
      for (float& e : v) e = u(rng);
    };
    fill(x, Bsz * T * Di);
    fill(weight, Di * W);
    fill(bias, Di);
    fill(init, Bsz * Di * (W - 1));
    final_state.assign(Bsz * Di * (W - 1), 0.f);
    out.assign(Bsz * T * Di, 0.f);
    resets.assign(Bsz * T, 0);
    if (cfg.resets) {
      for (auto& r : resets) r = rng() % 4 == 0;
      resets[2] = 1;
      resets[T - 1] = 1;  // a document starting at the last token: final state masking
    }
  }
  CausalConv1dParams Params() {
    CausalConv1dParams p;
    p.batch = Bsz; p.seqlen = T; p.dim = Di; p.width = W;
    p.x = x.data(); p.x_strides = {T * Di, Di};
    p.weight = weight.data();
    if (cfg.bias) p.bias = bias.data();
    p.silu = cfg.silu;
    if (cfg.resets) { p.resets = resets.data(); p.resets_batch_stride = T; }
    if (cfg.state) { p.initial_state = init.data(); p.final_state = final_state.data(); }
    p.out = out.data(); p.out_strides = {T * Di, Di};
    return p;
  }
};

class ConvFiniteDifference : public ::testing::TestWithParam<ConvConfig> {};

TEST_P(ConvFiniteDifference, EveryGradientMatchesCentralDifferences) {
  const ConvConfig cfg = GetParam();
  ConvProblem pr(2, 9, 3, cfg, 11);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> wo(pr.out.size()), wf(pr.final_state.size());
  for (float& w : wo) w = u(rng);
  for (float& w : wf) w = u(rng);
  auto loss = [&]() {
    EXPECT_TRUE(ForwardCpu(pr.Params()).ok());
    double l = 0;
    for (size_t i = 0; i < wo.size(); ++i) l += double(pr.out[i]) * wo[i];
    if (cfg.state) for (size_t i = 0; i < wf.size(); ++i) l += double(pr.final_state[i]) * wf[i];
    return l;
  };
  std::vector<float> dx(pr.x.size(), NAN), dw(pr.weight.size(), NAN), db(pr.Di, NAN),
      dinit(pr.init.size(), NAN);
  CausalConv1dGrads g;
  g.dout = wo.data(); g.dout_strides = {pr.T * pr.Di, pr.Di};
  if (cfg.state) g.dfinal_state = wf.data();
  g.dx = dx.data(); g.dx_strides = {pr.T * pr.Di, pr.Di};
  g.dweight = dw.data();
  g.dbias = db.data();
  g.dinitial_state = dinit.data();
  ASSERT_TRUE(BackwardCpu(pr.Params(), g).ok());

  auto check = [&](const char* what, std::vector<float>& v, const std::vector<float>& grad) {
    const float eps = 1e-3f;
    for (size_t i = 0; i < v.size(); ++i) {
      const float keep = v[i];
      v[i] = keep + eps;
      const double lp = loss();
      v[i] = keep - eps;
      const double lm = loss();
      v[i] = keep;
      const double numeric = (lp - lm) / (2 * eps);
      ASSERT_FALSE(std::isnan(grad[i])) << what << "[" << i << "] not written";
      EXPECT_NEAR(grad[i], numeric, 3e-3 + 3e-3 * std::fabs(numeric)) << what << "[" << i << "]";
    }
  };
  check("dx", pr.x, dx);
  check("dweight", pr.weight, dw);
  if (cfg.bias) check("dbias", pr.bias, db);
  if (cfg.state) check("dinitial_state", pr.init, dinit);
}

INSTANTIATE_TEST_SUITE_P(
    Flags, ConvFiniteDifference,
    ::testing::Values(ConvConfig{4, false, false, true, true}, ConvConfig{4, true, true, true, true},
                      ConvConfig{3, true, false, false, true}, ConvConfig{2, false, true, true, false},
                      ConvConfig{4, false, true, false, false}, ConvConfig{3, true, true, true, false}),
    [](const ::testing::TestParamInfo<ConvConfig>& info) { return info.param.Name(); });

TEST(ConvCpu, ChunkedWithCarriedStateEqualsOnePass) {
  ConvConfig cfg{4, true, true, true, true};
  const int64_t T = 17, Di = 5, Bsz = 2, W = 4;
  ConvProblem full(Bsz, T, Di, cfg, 21);
  ASSERT_TRUE(ForwardCpu(full.Params()).ok());
  std::mt19937 rng(8);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> wo(full.out.size()), wf(full.final_state.size());
  for (float& w : wo) w = u(rng);
  for (float& w : wf) w = u(rng);
  std::vector<float> fdx(full.x.size()), fdw(Di * W), fdb(Di), fdinit(full.init.size());
  CausalConv1dGrads fg{wo.data(), {T * Di, Di}, wf.data(), fdx.data(), {T * Di, Di},
                       fdw.data(), fdb.data(), fdinit.data()};
  ASSERT_TRUE(BackwardCpu(full.Params(), fg).ok());

  const std::vector<int64_t> cuts = {0, 1, 3, 10, 17};  // chunks shorter than W−1 included
  const int64_t n = cuts.size() - 1;
  std::vector<std::vector<float>> states(n + 1, std::vector<float>(Bsz * Di * (W - 1)));
  states[0] = full.init;
  std::vector<float> out(full.out.size(), NAN);
  auto chunk = [&](int64_t c) {
    CausalConv1dParams p = full.Params();
    const int64_t t0 = cuts[c];
    p.seqlen = cuts[c + 1] - t0;
    p.x = full.x.data() + t0 * Di;
    p.resets = full.resets.data() + t0;
    p.initial_state = states[c].data();
    p.final_state = states[c + 1].data();
    p.out = out.data() + t0 * Di;
    return p;
  };
  for (int64_t c = 0; c < n; ++c) ASSERT_TRUE(ForwardCpu(chunk(c)).ok());
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], full.out[i], 1e-6) << i;
  for (size_t i = 0; i < states[n].size(); ++i) EXPECT_NEAR(states[n][i], full.final_state[i], 1e-6);

  std::vector<float> dstate = wf, dx(full.x.size(), NAN);
  std::vector<double> dw(Di * W, 0.0), db(Di, 0.0);
  for (int64_t c = n - 1; c >= 0; --c) {
    std::vector<float> cdw(Di * W), cdb(Di), dinit(Bsz * Di * (W - 1));
    const int64_t t0 = cuts[c];
    CausalConv1dGrads g{wo.data() + t0 * Di, {T * Di, Di}, dstate.data(), dx.data() + t0 * Di,
                        {T * Di, Di}, cdw.data(), cdb.data(), dinit.data()};
    ASSERT_TRUE(BackwardCpu(chunk(c), g).ok());
    for (int64_t i = 0; i < Di * W; ++i) dw[i] += cdw[i];
    for (int64_t i = 0; i < Di; ++i) db[i] += cdb[i];
    dstate = dinit;
  }
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx[i], fdx[i], 1e-5) << i;
  for (int64_t i = 0; i < Di * W; ++i) EXPECT_NEAR(dw[i], fdw[i], 1e-5) << i;
  for (int64_t i = 0; i < Di; ++i) EXPECT_NEAR(db[i], fdb[i], 1e-5) << i;
  for (size_t i = 0; i < dstate.size(); ++i) EXPECT_NEAR(dstate[i], fdinit[i], 1e-5) << i;
}

TEST(ConvCpu, StepEqualsForwardOneTokenAtATime) {
  ConvConfig cfg{4, false, true, true, true};
  ConvProblem pr(2, 7, 3, cfg, 5);
  ASSERT_TRUE(ForwardCpu(pr.Params()).ok());
  std::vector<float> state = pr.init, out(pr.out.size(), NAN);
  for (int64_t t = 0; t < pr.T; ++t) {
    CausalConv1dParams p = pr.Params();
    p.seqlen = 1;
    p.x = pr.x.data() + t * pr.Di;
    p.initial_state = state.data();
    p.final_state = state.data();
    p.out = out.data() + t * pr.Di;
    ASSERT_TRUE(StepCpu(p).ok());
  }
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], pr.out[i], 1e-6) << i;
  for (size_t i = 0; i < state.size(); ++i) EXPECT_NEAR(state[i], pr.final_state[i], 1e-6) << i;
}

TEST(ConvCpu, CanImplementRejectsUnsupportedWidth) {
  ConvProblem pr(1, 4, 2, ConvConfig{}, 1);
  CausalConv1dParams p = pr.Params();
  p.width = 5;
  EXPECT_EQ(CanImplement(p, Backend::kCpu).code(), absl::StatusCode::kUnimplemented);
  p.width = 1;
  EXPECT_EQ(ForwardCpu(p).code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace rwr::scan
