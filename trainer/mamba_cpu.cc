// Mamba-1 LM forward/backward on the CPU (fp32); see mamba_cpu.h for the math and the chunking.
#include "trainer/mamba_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/status.h"
#include "fmt/format.h"
#include "scan_kernels/causal_conv1d.h"
#include "scan_kernels/selective_scan.h"

namespace rwr::trainer {
namespace {

// Below this many multiply-adds a loop runs on one thread: a parallel region costs more than it
// saves (and spin-waiting threads hurt on a busy machine).
constexpr int64_t kParallelWork = 1 << 18;

// ---- dense kernels (row-major; "linear" layout: W is (N, K), as in PyTorch) -------------------

// Y(M, N) = X(M, K) · W(N, K)ᵀ, rows of X and Y with leading dimensions ldx, ldy.
void LinearForward(const float* X, int64_t ldx, const float* W, float* Y, int64_t ldy, int64_t M,
                   int64_t N, int64_t K) {
#pragma omp parallel for schedule(static) if (M * N * K > kParallelWork)
  for (int64_t m = 0; m < M; ++m) {
    const float* x = X + m * ldx;
    float* y = Y + m * ldy;
    for (int64_t n = 0; n < N; ++n) {
      const float* w = W + n * K;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < K; ++k) acc += x[k] * w[k];
      y[n] = acc;
    }
  }
}

// dX(M, K) (=|+=) dY(M, N) · W(N, K).
void LinearBackwardInput(const float* dY, int64_t lddy, const float* W, float* dX, int64_t lddx,
                         int64_t M, int64_t N, int64_t K, bool accumulate) {
#pragma omp parallel for schedule(static) if (M * N * K > kParallelWork)
  for (int64_t m = 0; m < M; ++m) {
    const float* dy = dY + m * lddy;
    float* dx = dX + m * lddx;
    if (!accumulate) std::fill(dx, dx + K, 0.f);
    for (int64_t n = 0; n < N; ++n) {
      const float a = dy[n];
      if (a == 0.f) continue;
      const float* w = W + n * K;
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) dx[k] += a * w[k];
    }
  }
}

// dW(N, K) += dY(M, N)ᵀ · X(M, K).
void LinearBackwardWeight(const float* dY, int64_t lddy, const float* X, int64_t ldx, float* dW,
                          int64_t M, int64_t N, int64_t K) {
#pragma omp parallel for schedule(static) if (M * N * K > kParallelWork)
  for (int64_t n = 0; n < N; ++n) {
    float* dw = dW + n * K;
    for (int64_t m = 0; m < M; ++m) {
      const float a = dY[m * lddy + n];
      if (a == 0.f) continue;
      const float* x = X + m * ldx;
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) dw[k] += a * x[k];
    }
  }
}

// y = x·rstd·w, rstd = 1/sqrt(mean(x²) + eps), per row of D.
void RmsNormForward(const float* x, const float* w, float* y, float* rstd, int64_t M, int64_t D,
                    double eps) {
#pragma omp parallel for schedule(static) if (M * D > kParallelWork)
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * D;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t d = 0; d < D; ++d) ss += xr[d] * xr[d];
    const float r = 1.f / std::sqrt(ss / static_cast<float>(D) + static_cast<float>(eps));
    rstd[m] = r;
    float* yr = y + m * D;
    for (int64_t d = 0; d < D; ++d) yr[d] = xr[d] * r * w[d];
  }
}

// dx += RMSNorm backward of dy; dw += Σ_rows dy·x·rstd.
void RmsNormBackward(const float* x, const float* w, const float* rstd, const float* dy, float* dx,
                     float* dw, int64_t M, int64_t D) {
#pragma omp parallel for schedule(static) if (M * D > kParallelWork)
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * D;
    const float* dyr = dy + m * D;
    const float r = rstd[m];
    float dot = 0.f;  // Σ (dy·w)·xhat
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) dot += dyr[d] * w[d] * xr[d] * r;
    const float mean = dot / static_cast<float>(D);
    float* dxr = dx + m * D;
    for (int64_t d = 0; d < D; ++d) dxr[d] += r * (dyr[d] * w[d] - xr[d] * r * mean);
  }
  // Weight gradient: columns in parallel, rows in order (deterministic).
#pragma omp parallel for schedule(static) if (M * D > kParallelWork)
  for (int64_t d = 0; d < D; ++d) {
    float acc = 0.f;
    for (int64_t m = 0; m < M; ++m) acc += dy[m * D + d] * x[m * D + d] * rstd[m];
    dw[d] += acc;
  }
}

void AddInto(float* dst, const float* src, int64_t n, float scale = 1.f) {
  for (int64_t i = 0; i < n; ++i) dst[i] += scale * src[i];
}

// ---- per-chunk state and activations ----------------------------------------------------------

using LayerState = LayerRecurrence;

struct LayerActs {
  std::vector<float> h_in;   // (B, Tc, D) residual stream entering the layer
  std::vector<float> rstd;   // (B, Tc)
  std::vector<float> xn;     // (B, Tc, D)
  std::vector<float> xz;     // (B, Tc, 2Di)
  std::vector<float> uc;     // (B, Tc, Di)
  std::vector<float> xdbl;   // (B, Tc, R+2S)
  std::vector<float> dtraw;  // (B, Tc, Di)
  std::vector<float> y;      // (B, Tc, Di)
};

struct Dims {
  int64_t B, T, Tc, t0, D, Di, S, R, W, X, V;  // X = R + 2S
  int64_t M() const { return B * Tc; }
};

class Runner {
 public:
  Runner(const MambaConfig& c, const ParamLayout& layout, const float* params, const TokenBatch& b)
      : c_(c), layout_(layout), p_(params), batch_(b) {
    A_.resize(c.n_layer);
    for (int64_t l = 0; l < c.n_layer; ++l) {
      const float* A_log = p_ + layout.layer(l).A_log;
      A_[l].resize(c.d_inner * c.d_state);
      for (int64_t i = 0; i < c.d_inner * c.d_state; ++i) A_[l][i] = -std::exp(A_log[i]);
    }
  }

  int64_t seq_len() const { return batch_.seq_len; }

  Dims DimsFor(int64_t t0, int64_t Tc) const {
    return {batch_.batch, batch_.seq_len, Tc,           t0,
            c_.d_model,   c_.d_inner,     c_.d_state,   c_.dt_rank,
            c_.d_conv,    c_.xdbl_dim(),  c_.vocab_size};
  }

  std::vector<LayerState> ZeroStates() const {
    std::vector<LayerState> s(c_.n_layer);
    for (auto& l : s) {
      l.conv.assign(batch_.batch * c_.d_inner * (c_.d_conv - 1), 0.f);
      l.ssm.assign(batch_.batch * c_.d_inner * c_.d_state, 0.f);
    }
    return s;
  }

  // Embeds tokens [t0, t0+Tc) into h (B, Tc, D).
  void Embed(const Dims& d, std::vector<float>& h) const {
    h.resize(d.M() * d.D);
    const float* emb = p_ + layout_.embedding();
    for (int64_t b = 0; b < d.B; ++b) {
      for (int64_t t = 0; t < d.Tc; ++t) {
        const int32_t id = batch_.tokens[b * d.T + d.t0 + t];
        std::memcpy(&h[(b * d.Tc + t) * d.D], emb + static_cast<int64_t>(id) * d.D, d.D * 4);
      }
    }
  }

  // One layer forward over the chunk: h (B, Tc, D) updated in place; state in → out.
  absl::Status LayerForward(int64_t l, const Dims& d, std::vector<float>& h, const LayerState& in,
                            LayerState& out, LayerActs& a) const {
    const LayerOffsets& o = layout_.layer(l);
    const int64_t M = d.M();
    a.h_in = h;
    a.rstd.resize(M);
    a.xn.resize(M * d.D);
    a.xz.resize(M * 2 * d.Di);
    a.uc.resize(M * d.Di);
    a.xdbl.resize(M * d.X);
    a.dtraw.resize(M * d.Di);
    a.y.resize(M * d.Di);
    RmsNormForward(h.data(), p_ + o.norm, a.xn.data(), a.rstd.data(), M, d.D, c_.norm_eps);
    LinearForward(a.xn.data(), d.D, p_ + o.in_proj, a.xz.data(), 2 * d.Di, M, 2 * d.Di, d.D);

    scan::CausalConv1dParams conv = ConvParams(d, o, in, out, a);
    RWR_RETURN_IF_ERROR(scan::ForwardCpu(conv));

    LinearForward(a.uc.data(), d.Di, p_ + o.x_proj, a.xdbl.data(), d.X, M, d.X, d.Di);
    LinearForward(a.xdbl.data(), d.X, p_ + o.dt_proj_weight, a.dtraw.data(), d.Di, M, d.Di, d.R);

    scan::SelectiveScanParams sp = ScanParams(l, d, o, in, out, a);
    RWR_RETURN_IF_ERROR(scan::ForwardCpu(sp));

    // h += y · out_projᵀ
    std::vector<float> delta(M * d.D);
    LinearForward(a.y.data(), d.Di, p_ + o.out_proj, delta.data(), d.D, M, d.D, d.Di);
    for (int64_t i = 0; i < M * d.D; ++i) h[i] += delta[i];
    return absl::OkStatus();
  }

  // Backward of one layer. dh (B, Tc, D): gradient of the layer's output on entry, of its input
  // on exit. dstate: gradient of the state leaving the chunk on entry, entering it on exit.
  absl::Status LayerBackward(int64_t l, const Dims& d, const LayerActs& a, const LayerState& in,
                             std::vector<float>& dh, LayerState& dstate, float* g) const {
    const LayerOffsets& o = layout_.layer(l);
    const int64_t M = d.M();
    // out_proj
    std::vector<float> dy(M * d.Di);
    LinearBackwardWeight(dh.data(), d.D, a.y.data(), d.Di, g + o.out_proj, M, d.D, d.Di);
    LinearBackwardInput(dh.data(), d.D, p_ + o.out_proj, dy.data(), d.Di, M, d.D, d.Di, false);

    // selective scan (gradients are written, so collect them in scratch and add)
    std::vector<float> duc(M * d.Di), ddtraw(M * d.Di), dxdbl(M * d.X), dxz(M * 2 * d.Di);
    std::vector<float> dA(d.Di * d.S), dD(d.Di), ddt_bias(d.Di);
    LayerState new_dstate{std::vector<float>(dstate.conv.size()),
                          std::vector<float>(dstate.ssm.size())};
    LayerState unused_out;  // forward outputs are not needed during backward
    scan::SelectiveScanParams sp = ScanParams(l, d, o, in, unused_out, const_cast<LayerActs&>(a));
    sp.final_state = nullptr;
    std::vector<float> out_scratch(M * d.Di);  // the reference may rewrite out; keep y intact
    sp.out = out_scratch.data();
    scan::SelectiveScanGrads sg;
    sg.dout = dy.data();
    sg.dout_strides = {d.Tc * d.Di, d.Di};
    sg.dfinal_state = dstate.ssm.data();
    sg.dx = duc.data();
    sg.dx_strides = {d.Tc * d.Di, d.Di};
    sg.ddelta = ddtraw.data();
    sg.ddelta_strides = {d.Tc * d.Di, d.Di};
    sg.dA = dA.data();
    sg.dB = dxdbl.data() + d.R;
    sg.dB_strides = {d.Tc * d.X, d.X};
    sg.dC = dxdbl.data() + d.R + d.S;
    sg.dC_strides = {d.Tc * d.X, d.X};
    sg.dD = dD.data();
    sg.dz = dxz.data() + d.Di;
    sg.dz_strides = {d.Tc * 2 * d.Di, 2 * d.Di};
    sg.ddelta_bias = ddt_bias.data();
    sg.dinitial_state = new_dstate.ssm.data();
    RWR_RETURN_IF_ERROR(scan::BackwardCpu(sp, sg));
    // A = −exp(A_log): ∂A/∂A_log = A.
    const std::vector<float>& A = A_[l];
    for (int64_t i = 0; i < d.Di * d.S; ++i) g[o.A_log + i] += dA[i] * A[i];
    AddInto(g + o.D, dD.data(), d.Di);
    AddInto(g + o.dt_proj_bias, ddt_bias.data(), d.Di);

    // dt_proj: dtraw = dt_low · dt_projᵀ, dt_low = xdbl[..., :R]
    LinearBackwardWeight(ddtraw.data(), d.Di, a.xdbl.data(), d.X, g + o.dt_proj_weight, M, d.Di,
                         d.R);
    LinearBackwardInput(ddtraw.data(), d.Di, p_ + o.dt_proj_weight, dxdbl.data(), d.X, M, d.Di, d.R,
                        false);
    // x_proj: xdbl = uc · x_projᵀ
    LinearBackwardWeight(dxdbl.data(), d.X, a.uc.data(), d.Di, g + o.x_proj, M, d.X, d.Di);
    LinearBackwardInput(dxdbl.data(), d.X, p_ + o.x_proj, duc.data(), d.Di, M, d.X, d.Di, true);

    // conv1d + SiLU: uc = SiLU(conv(u) + b), u = xz[..., :Di]
    std::vector<float> dconv_w(d.Di * d.W), dconv_b(d.Di);
    scan::CausalConv1dParams conv = ConvParams(d, o, in, unused_out, const_cast<LayerActs&>(a));
    conv.final_state = nullptr;
    conv.out = out_scratch.data();
    scan::CausalConv1dGrads cg;
    cg.dout = duc.data();
    cg.dout_strides = {d.Tc * d.Di, d.Di};
    cg.dfinal_state = dstate.conv.data();
    cg.dx = dxz.data();
    cg.dx_strides = {d.Tc * 2 * d.Di, 2 * d.Di};
    cg.dweight = dconv_w.data();
    cg.dbias = dconv_b.data();
    cg.dinitial_state = new_dstate.conv.data();
    RWR_RETURN_IF_ERROR(scan::BackwardCpu(conv, cg));
    AddInto(g + o.conv_weight, dconv_w.data(), d.Di * d.W);
    AddInto(g + o.conv_bias, dconv_b.data(), d.Di);

    // in_proj: xz = xn · in_projᵀ
    std::vector<float> dxn(M * d.D);
    LinearBackwardWeight(dxz.data(), 2 * d.Di, a.xn.data(), d.D, g + o.in_proj, M, 2 * d.Di, d.D);
    LinearBackwardInput(dxz.data(), 2 * d.Di, p_ + o.in_proj, dxn.data(), d.D, M, 2 * d.Di, d.D,
                        false);
    // RMSNorm; the residual path passes dh through unchanged.
    RmsNormBackward(a.h_in.data(), p_ + o.norm, a.rstd.data(), dxn.data(), dh.data(), g + o.norm, M,
                    d.D);
    dstate = std::move(new_dstate);
    return absl::OkStatus();
  }

  // Final norm, tied head and masked cross-entropy over the chunk. With `g`, also backward:
  // dh (B, Tc, D) receives ∂/∂h of loss_scale·loss_sum and the head/norm_f gradients go to g.
  LossSum Head(const Dims& d, const std::vector<float>& h, float* logits_out, float loss_scale,
               float* g, std::vector<float>* dh) const {
    const int64_t M = d.M();
    std::vector<float> hn(M * d.D), rstd(M);
    RmsNormForward(h.data(), p_ + layout_.norm_f(), hn.data(), rstd.data(), M, d.D, c_.norm_eps);
    // Rows that need logits: loss rows, or all when logits are wanted.
    std::vector<int64_t> rows;
    for (int64_t b = 0; b < d.B; ++b) {
      for (int64_t t = 0; t < d.Tc; ++t) {
        const int64_t i = b * d.T + d.t0 + t;
        if (logits_out != nullptr || batch_.loss_mask[i]) rows.push_back(b * d.Tc + t);
      }
    }
    const float* emb = p_ + layout_.embedding();
    constexpr int64_t kRowBlock = 32;
    std::vector<float> block_in(kRowBlock * d.D), block_logits(kRowBlock * d.V),
        block_dh(kRowBlock * d.D);
    std::vector<float> dhn;
    if (g != nullptr) dhn.assign(M * d.D, 0.f);
    LossSum result;
    for (size_t r0 = 0; r0 < rows.size(); r0 += kRowBlock) {
      const int64_t nr = std::min<int64_t>(kRowBlock, rows.size() - r0);
      for (int64_t r = 0; r < nr; ++r) {
        std::memcpy(&block_in[r * d.D], &hn[rows[r0 + r] * d.D], d.D * 4);
      }
      LinearForward(block_in.data(), d.D, emb, block_logits.data(), d.V, nr, d.V, d.D);
      bool any_loss = false;
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t row = rows[r0 + r];
        const int64_t b = row / d.Tc, t = row % d.Tc;
        const int64_t i = b * d.T + d.t0 + t;
        float* z = &block_logits[r * d.V];
        if (logits_out != nullptr) std::memcpy(logits_out + i * d.V, z, d.V * 4);
        if (!batch_.loss_mask[i]) {
          std::fill(z, z + d.V, 0.f);  // no gradient from this row
          continue;
        }
        any_loss = true;
        float mx = z[0];
        for (int64_t v = 1; v < d.V; ++v) mx = std::max(mx, z[v]);
        double sum = 0;
        for (int64_t v = 0; v < d.V; ++v) sum += std::exp(static_cast<double>(z[v] - mx));
        const int32_t target = batch_.targets[i];
        const double lse = mx + std::log(sum);
        result.loss_sum += lse - z[target];
        result.tokens += 1;
        if (g != nullptr) {
          const double inv = 1.0 / sum;
          for (int64_t v = 0; v < d.V; ++v) {
            z[v] = static_cast<float>(std::exp(static_cast<double>(z[v] - mx)) * inv * loss_scale);
          }
          z[target] -= loss_scale;
        }
      }
      if (g == nullptr || !any_loss) continue;
      // dhn rows = dlogits · emb; demb += dlogitsᵀ · hn rows
      LinearBackwardInput(block_logits.data(), d.V, emb, block_dh.data(), d.D, nr, d.V, d.D, false);
      for (int64_t r = 0; r < nr; ++r) {
        std::memcpy(&dhn[rows[r0 + r] * d.D], &block_dh[r * d.D], d.D * 4);
      }
      LinearBackwardWeight(block_logits.data(), d.V, block_in.data(), d.D, g + layout_.embedding(),
                           nr, d.V, d.D);
    }
    if (g != nullptr) {
      dh->assign(M * d.D, 0.f);
      RmsNormBackward(h.data(), p_ + layout_.norm_f(), rstd.data(), dhn.data(), dh->data(),
                      g + layout_.norm_f(), M, d.D);
    }
    return result;
  }

  // Logits after the chunk's last token of every row (B × V): final norm and tied head of those
  // rows alone.
  void LastLogits(const Dims& d, const std::vector<float>& h, float* logits) const {
    std::vector<float> hn(d.D);
    for (int64_t b = 0; b < d.B; ++b) {
      float rstd = 0;
      RmsNormForward(&h[(b * d.Tc + d.Tc - 1) * d.D], p_ + layout_.norm_f(), hn.data(), &rstd, 1,
                     d.D, c_.norm_eps);
      LinearForward(hn.data(), d.D, p_ + layout_.embedding(), logits + b * d.V, d.V, 1, d.V, d.D);
    }
  }

  // Embedding backward: emb[token] += dh.
  void EmbedBackward(const Dims& d, const std::vector<float>& dh, float* g) const {
    float* demb = g + layout_.embedding();
    for (int64_t b = 0; b < d.B; ++b) {
      for (int64_t t = 0; t < d.Tc; ++t) {
        const int64_t id = batch_.tokens[b * d.T + d.t0 + t];
        AddInto(demb + id * d.D, &dh[(b * d.Tc + t) * d.D], d.D);
      }
    }
  }

 private:
  scan::CausalConv1dParams ConvParams(const Dims& d, const LayerOffsets& o, const LayerState& in,
                                      LayerState& out, LayerActs& a) const {
    scan::CausalConv1dParams conv;
    conv.batch = d.B;
    conv.seqlen = d.Tc;
    conv.dim = d.Di;
    conv.width = d.W;
    conv.x = a.xz.data();
    conv.x_strides = {d.Tc * 2 * d.Di, 2 * d.Di};
    conv.weight = p_ + o.conv_weight;
    conv.bias = p_ + o.conv_bias;
    conv.silu = true;
    if (batch_.reset != nullptr) {
      conv.resets = batch_.reset + d.t0;
      conv.resets_batch_stride = d.T;
    }
    conv.initial_state = in.conv.data();
    if (!out.conv.empty()) conv.final_state = out.conv.data();
    conv.out = a.uc.data();
    conv.out_strides = {d.Tc * d.Di, d.Di};
    return conv;
  }

  scan::SelectiveScanParams ScanParams(int64_t l, const Dims& d, const LayerOffsets& o,
                                       const LayerState& in, LayerState& out, LayerActs& a) const {
    scan::SelectiveScanParams sp;
    sp.batch = d.B;
    sp.seqlen = d.Tc;
    sp.dim = d.Di;
    sp.dstate = d.S;
    sp.x = a.uc.data();
    sp.x_strides = {d.Tc * d.Di, d.Di};
    sp.delta = a.dtraw.data();
    sp.delta_strides = {d.Tc * d.Di, d.Di};
    sp.A = A_[l].data();
    sp.B = a.xdbl.data() + d.R;
    sp.B_strides = {d.Tc * d.X, d.X};
    sp.C = a.xdbl.data() + d.R + d.S;
    sp.C_strides = {d.Tc * d.X, d.X};
    sp.D = p_ + o.D;
    sp.z = a.xz.data() + d.Di;
    sp.z_strides = {d.Tc * 2 * d.Di, 2 * d.Di};
    sp.delta_bias = p_ + o.dt_proj_bias;
    sp.delta_softplus = true;
    if (batch_.reset != nullptr) {
      sp.resets = batch_.reset + d.t0;
      sp.resets_batch_stride = d.T;
    }
    sp.initial_state = in.ssm.data();
    if (!out.ssm.empty()) sp.final_state = out.ssm.data();
    sp.out = a.y.data();
    sp.out_strides = {d.Tc * d.Di, d.Di};
    return sp;
  }

  const MambaConfig& c_;
  const ParamLayout& layout_;
  const float* p_;
  const TokenBatch& batch_;
  std::vector<std::vector<float>> A_;  // per layer (Di, S): −exp(A_log)
};

// Runs the runner's batch chunk by chunk from `state`, which it leaves after the last token, and
// hands each chunk's final residual stream to `head` (the loss, or the logits generation needs).
absl::Status ForwardChunks(const Runner& run, int64_t chunk_len, std::vector<LayerState>& state,
                           const std::function<void(const Dims&, const std::vector<float>&)>& head) {
  const int64_t T = run.seq_len();
  if (chunk_len <= 0 || chunk_len > T) chunk_len = T;
  std::vector<LayerState> next = run.ZeroStates();
  LayerActs acts;
  std::vector<float> h;
  for (int64_t t0 = 0; t0 < T; t0 += chunk_len) {
    const Dims d = run.DimsFor(t0, std::min(chunk_len, T - t0));
    run.Embed(d, h);
    for (int64_t l = 0; l < static_cast<int64_t>(state.size()); ++l) {
      RWR_RETURN_IF_ERROR(run.LayerForward(l, d, h, state[l], next[l], acts));
    }
    std::swap(state, next);
    head(d, h);
  }
  return absl::OkStatus();
}

}  // namespace

void SetCpuThreads(int threads, int ranks_on_host) {
#ifdef _OPENMP
  if (threads > 0) {
    omp_set_num_threads(threads);
  } else if (ranks_on_host > 1) {
    omp_set_num_threads(std::max(1, omp_get_num_procs() / ranks_on_host));
  }
#else
  (void)threads;
  (void)ranks_on_host;
#endif
}

MambaCpu::MambaCpu(const MambaConfig& config)
    : config_(config), layout_(ParamLayout::ForMamba(config)) {}

absl::Status MambaCpu::Check(std::span<const float> params, const TokenBatch& batch) const {
  if (static_cast<int64_t>(params.size()) != layout_.total()) {
    return absl::InvalidArgumentError(
        fmt::format("parameter buffer has {} elements, the model "
                    "needs {}",
                    params.size(), layout_.total()));
  }
  if (batch.batch <= 0 || batch.seq_len <= 0 || !batch.tokens || !batch.targets ||
      !batch.loss_mask) {
    return absl::InvalidArgumentError("empty batch");
  }
  const int64_t n = batch.batch * batch.seq_len;
  for (int64_t i = 0; i < n; ++i) {
    if (batch.tokens[i] < 0 || batch.tokens[i] >= config_.vocab_size ||
        (batch.loss_mask[i] && (batch.targets[i] < 0 || batch.targets[i] >= config_.vocab_size))) {
      return absl::InvalidArgumentError(fmt::format(
          "token id out of range at position {} (vocab {}): data built for another tokenizer?", i,
          config_.vocab_size));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LossSum> MambaCpu::Forward(std::span<const float> params, const TokenBatch& batch,
                                          int64_t chunk_len, float* logits) const {
  RWR_RETURN_IF_ERROR(Check(params, batch));
  Runner run(config_, layout_, params.data(), batch);
  std::vector<LayerState> state = run.ZeroStates();
  LossSum total;
  RWR_RETURN_IF_ERROR(
      ForwardChunks(run, chunk_len, state, [&](const Dims& d, const std::vector<float>& h) {
        LossSum part = run.Head(d, h, logits, 0.f, nullptr, nullptr);
        total.loss_sum += part.loss_sum;
        total.tokens += part.tokens;
      }));
  return total;
}

SequenceState MambaCpu::NewSequence(int64_t rows) const {
  SequenceState state(config_.n_layer);
  for (LayerRecurrence& layer : state) {
    layer.conv.assign(rows * config_.d_inner * (config_.d_conv - 1), 0.f);
    layer.ssm.assign(rows * config_.d_inner * config_.d_state, 0.f);
  }
  return state;
}

absl::StatusOr<TokenBatch> RowsAsBatch(const RowTokens& in, int64_t vocab, size_t logits_size,
                                       std::vector<uint8_t>* no_loss) {
  const int64_t rows = in.rows;
  if (rows <= 0 || in.tokens.empty() || in.tokens.size() % rows != 0) {
    return absl::InvalidArgumentError(fmt::format(
        "Advance: {} tokens do not make {} rows of equal length", in.tokens.size(), rows));
  }
  if (!in.resets.empty() && in.resets.size() != in.tokens.size()) {
    return absl::InvalidArgumentError("Advance: resets and tokens differ in size");
  }
  if (static_cast<int64_t>(logits_size) != rows * vocab) {
    return absl::InvalidArgumentError(fmt::format(
        "Advance: logits buffer has {} floats, not {} rows of {}", logits_size, rows, vocab));
  }
  for (int32_t id : in.tokens) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          fmt::format("token id {} out of range (vocab {})", id, vocab));
    }
  }
  no_loss->assign(in.tokens.size(), 0);
  return TokenBatch{.batch = rows,
                    .seq_len = static_cast<int64_t>(in.tokens.size()) / rows,
                    .tokens = in.tokens.data(),
                    .targets = in.tokens.data(),
                    .loss_mask = no_loss->data(),
                    .reset = in.resets.empty() ? nullptr : in.resets.data()};
}

absl::Status MambaCpu::Advance(std::span<const float> params, const RowTokens& in,
                               int64_t chunk_len, SequenceState& state,
                               std::span<float> next_logits) const {
  std::vector<uint8_t> no_loss;
  RWR_ASSIGN_OR_RETURN(const TokenBatch batch,
                       RowsAsBatch(in, config_.vocab_size, next_logits.size(), &no_loss));
  if (static_cast<int64_t>(state.size()) != config_.n_layer ||
      static_cast<int64_t>(state[0].ssm.size()) != in.rows * config_.d_inner * config_.d_state) {
    return absl::InvalidArgumentError(
        fmt::format("Advance: the state is not one of {} rows of this model (NewSequence({}))",
                    in.rows, in.rows));
  }
  RWR_RETURN_IF_ERROR(Check(params, batch));
  Runner run(config_, layout_, params.data(), batch);
  return ForwardChunks(run, chunk_len, state, [&](const Dims& d, const std::vector<float>& h) {
    if (d.t0 + d.Tc == batch.seq_len) run.LastLogits(d, h, next_logits.data());
  });
}

absl::StatusOr<LossSum> MambaCpu::ForwardBackward(std::span<const float> params,
                                                  const TokenBatch& batch, int64_t chunk_len,
                                                  float loss_scale, std::span<float> grads) const {
  RWR_RETURN_IF_ERROR(Check(params, batch));
  if (grads.size() != params.size()) {
    return absl::InvalidArgumentError("gradient buffer size differs from the parameter buffer");
  }
  const int64_t T = batch.seq_len;
  if (chunk_len <= 0 || chunk_len > T) chunk_len = T;
  const int64_t num_chunks = (T + chunk_len - 1) / chunk_len;
  Runner run(config_, layout_, params.data(), batch);

  // Pass 1 (only with several chunks): states at every chunk boundary, no activations kept.
  std::vector<std::vector<LayerState>> boundary;  // [chunk] → state entering it
  boundary.push_back(run.ZeroStates());
  std::vector<float> h;
  LayerActs scratch;
  for (int64_t c = 0; c + 1 < num_chunks; ++c) {
    const Dims d = run.DimsFor(c * chunk_len, chunk_len);
    run.Embed(d, h);
    std::vector<LayerState> out = run.ZeroStates();
    for (int64_t l = 0; l < config_.n_layer; ++l) {
      RWR_RETURN_IF_ERROR(run.LayerForward(l, d, h, boundary[c][l], out[l], scratch));
    }
    boundary.push_back(std::move(out));
  }

  // Pass 2: chunks last to first — recompute with activations, then backward.
  LossSum total;
  std::vector<LayerState> dstate = run.ZeroStates();  // ∂loss/∂(state leaving the chunk)
  std::vector<LayerActs> acts(config_.n_layer);
  std::vector<float> dh;
  for (int64_t c = num_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * chunk_len;
    const Dims d = run.DimsFor(t0, std::min(chunk_len, T - t0));
    run.Embed(d, h);
    LayerState no_out;  // final states of this chunk are not needed again
    for (int64_t l = 0; l < config_.n_layer; ++l) {
      RWR_RETURN_IF_ERROR(run.LayerForward(l, d, h, boundary[c][l], no_out, acts[l]));
    }
    LossSum part = run.Head(d, h, nullptr, loss_scale, grads.data(), &dh);
    total.loss_sum += part.loss_sum;
    total.tokens += part.tokens;
    for (int64_t l = config_.n_layer - 1; l >= 0; --l) {
      RWR_RETURN_IF_ERROR(
          run.LayerBackward(l, d, acts[l], boundary[c][l], dh, dstate[l], grads.data()));
    }
    run.EmbedBackward(d, dh, grads.data());
  }
  return total;
}

}  // namespace rwr::trainer
