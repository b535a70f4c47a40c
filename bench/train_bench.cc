// Training-step throughput of the CUDA Mamba LM (trainer/mamba_cuda.h) at given shapes: random
// init, random tokens, loss on every position, the AdamW step included in every step. Prints a
// table (tokens/s, MFU = 6·N·tokens/s ÷ 790e12, peak GiB) and writes JSON; then tries growing
// single-sample lengths to find the longest that trains (chunked, state carried).
//
//   train_bench --model configs/models/mamba-2.8b.yaml --cases 2048x1,2048x4,8192x1 \
//               --long 32768,65536,131072 --json out.json
#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "CLI/CLI.hpp"
#ifdef RWR_HAVE_CUPTI
#include "bench/kernel_trace.h"
#endif
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "scan_kernels/scan_tuning.h"
#include "trainer/communicator.h"
#include "trainer/mamba_cuda.h"
#include "trainer/nccl_collectives.h"
#include "trainer/model_io.h"
#include "trainer/rng.h"
#include "trainer/train_loop.h"

namespace {

using rwr::trainer::GemmPrecision;

struct Case {
  int64_t T = 0, B = 0;
};

std::vector<Case> ParseCases(const std::string& text) {
  std::vector<Case> cases;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const size_t x = item.find('x');
    cases.push_back({std::stoll(item.substr(0, x)),
                     x == std::string::npos ? 1 : std::stoll(item.substr(x + 1))});
  }
  return cases;
}

double UsedGiB() {
  size_t free_bytes = 0, total = 0;
  cudaMemGetInfo(&free_bytes, &total);
  return (total - free_bytes) / double(1ULL << 30);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Training-step throughput of the CUDA Mamba LM");
  std::string model_path = "configs/models/mamba-2.8b.yaml", cases_text = "2048x1,2048x4,8192x1",
              long_text, json_path, precision = "bf16";
  int steps = 5;
  bool phases = false;
  int64_t chunk_tokens = 0;  // B·chunk_len per chunk (memory grows with it); 0: fit the GPU
  app.add_option("--model", model_path, "Model config YAML (model: section)");
  app.add_option("--cases", cases_text, "TxB list, e.g. 2048x1,2048x4");
  app.add_option("--long", long_text, "Single-sample lengths to try, e.g. 32768,131072");
  app.add_option("--steps", steps, "Timed steps per case (after one warm-up)");
  app.add_option("--chunk-tokens", chunk_tokens,
                 "Tokens per chunk (B·chunk_len); 0: whole rows if they fit, else the largest "
                 "halving that does");
  app.add_option("--precision", precision, "bf16 (tensor cores) or fp32 GEMMs");
  app.add_option("--json", json_path, "Write results as JSON");
  int scan_variant = 1;
  app.add_option("--scan-variant", scan_variant,
                 "Selective-scan kernel variant (scan_kernels/scan_tuning.h; 1 = default), to "
                 "measure a kernel change inside the whole step")
      ->check(CLI::IsMember(std::vector<int>(std::begin(rwr::scan::kScanVariants),
                                             std::end(rwr::scan::kScanVariants))));
  bool recompute = false;
  app.add_flag("--recompute", recompute,
               "Recompute the normed input, conv output and delta-raw in the backward even where "
               "memory would hold them (the model keeps them where it can), to measure the "
               "difference");
  app.add_flag("--phases", phases,
               "Also report GPU time per kind of work (gemm, scan, conv, norm, head, other, "
               "optimizer) and per GEMM and kernel (CUDA events around each call, which adds a "
               "little host time); 'untimed' is the step's wall time not inside a timed call");
  bool trace_last_step = false;
  app.add_flag("--trace-last-step", trace_last_step,
               "Record each case's last step with CUPTI and print where the GPU sat idle and on "
               "which host calls (bench/kernel_trace.h)");
  bool profile_last_step = false;
  app.add_flag("--profile-last-step", profile_last_step,
               "Bracket each case's last step with cudaProfilerStart/Stop, so that a profiler "
               "started with profiling off (ncu --profile-from-start off) sees one whole step "
               "(bench/step_kernels_device.sh)");
  bool dp_serial = false;
  app.add_flag("--dp-serial", dp_serial,
               "Under mpirun: wait for the parameter all-gather at the end of each step instead of "
               "overlapping it with the next forward (to measure the difference)");
  bool dp_serial_reduce = false;
  app.add_flag("--dp-serial-reduce", dp_serial_reduce,
               "Under mpirun: sum the gradients over the ranks all at once before the optimizer "
               "instead of layer by layer beside the backward (to measure the difference)");
  bool serial_optimizer = false;
  app.add_flag("--serial-optimizer", serial_optimizer,
               "Run AdamW (and under mpirun the parameter all-gather after it) in line at the end "
               "of each step instead of bucket by bucket on a second stream overlapping the next "
               "forward (to measure the difference)");
  CLI11_PARSE(app, argc, argv);

  // Under mpirun: one rank per GPU, data parallel as `rwr train` runs it (NCCL, ZeRO-1); every
  // rank runs the same cases, rank 0 prints. Throughput is then that of all ranks together.
  auto comm = rwr::trainer::CommunicatorForThisProcess();
  if (!comm.ok()) {
    fmt::print(stderr, "{}\n", std::string(comm.status().message()));
    return 1;
  }
  const int world = (*comm)->world_size();
  // A rank that fails alone ends every rank (the others would wait in NCCL for it).
  auto fail = [&](const absl::Status& status) {
    fmt::print(stderr, "{}\n", std::string(status.message()));
    (*comm)->Abort(1);
    return 1;
  };
  std::unique_ptr<rwr::trainer::DeviceCollectives> collectives;
  if (auto s = rwr::trainer::SelectCudaDevice(**comm); !s.ok()) {
    return fail(s);
  }
  if (world > 1) {
    auto dc = rwr::trainer::DeviceCollectives::Create(**comm);
    if (!dc.ok()) {
      return fail(dc.status());
    }
    collectives = std::move(*dc);
    if ((*comm)->rank() != 0) std::freopen("/dev/null", "w", stdout);
  }

  auto config = rwr::Config::LoadFile(model_path);
  if (!config.ok()) {
    return fail(config.status());
  }
  auto mc = rwr::trainer::ModelConfigFromRunConfig(*config);
  if (!mc.ok()) {
    return fail(mc.status());
  }
  const double N = static_cast<double>(mc->NumParameters());
  fmt::print("model {}\n", mc->Summary());
  auto model = rwr::trainer::MambaCuda::Create(
      *mc, precision == "fp32" ? GemmPrecision::kFp32 : GemmPrecision::kBf16, collectives.get());
  if (!model.ok()) {
    return fail(model.status());
  }
  {
    const auto params = rwr::trainer::InitParams(*mc, 1);
    if (auto s = (*model)->UploadParams(params); !s.ok()) {
      return fail(s);
    }
  }
  cudaDeviceProp prop{};
  int device = 0;
  cudaGetDevice(&device);
  cudaGetDeviceProperties(&prop, device);
  nlohmann::json results = {{"card", prop.name},
                            {"model", mc->Summary()},
                            {"parameters", N},
                            {"precision", precision},
                            {"gpus", world},
                            {"cases", nlohmann::json::array()}};
  const rwr::trainer::AdamWOptions adamw{};
  (*model)->SetPhaseTiming(phases);
  (*model)->SetKeepActivations(!recompute);
  (*model)->SetOverlapParamGather(!dp_serial);
  (*model)->SetOverlapGradReduce(!dp_serial_reduce);
  (*model)->SetOverlapOptimizer(!serial_optimizer);
  rwr::scan::SetScanVariant(scan_variant);
  rwr::trainer::Rng rng(5);

  auto run_case = [&](Case c, int timed, nlohmann::json* out) -> bool {
    const int64_t n = c.B * c.T;
    std::vector<int32_t> tokens(n), targets(n);
    std::vector<uint8_t> mask(n, 1), reset(n, 0);
    for (int64_t i = 0; i < n; ++i) {
      tokens[i] = static_cast<int32_t>(rng.Next() % mc->vocab_size);
      targets[i] = static_cast<int32_t>(rng.Next() % mc->vocab_size);
    }
    for (int64_t b = 0; b < c.B; ++b) reset[b * c.T] = 1;
    const rwr::trainer::TokenBatch batch{c.B,         c.T,         tokens.data(), targets.data(),
                                         mask.data(), reset.data()};
    const int64_t asked =
        chunk_tokens > 0 ? std::max<int64_t>(1, std::min<int64_t>(c.T, chunk_tokens / c.B)) : 0;
    std::vector<double> times;
    std::map<std::string, double> phase_ms;  // summed over the timed steps
    double loss = 0, peak = 0;
    for (int i = 0; i < timed + 1; ++i) {
      const bool profiled = profile_last_step && i == timed;
      if (profiled) cudaProfilerStart();
      const bool traced = trace_last_step && i == timed;
      if (traced) {
        std::string error = "built without CUPTI";
#ifdef RWR_HAVE_CUPTI
        if (rwr::bench::StartKernelTrace(&error)) error.clear();
#endif
        if (!error.empty()) fmt::print("  trace: {}\n", error);
      }
      const auto t0 = std::chrono::steady_clock::now();
      if (auto s = (*model)->ZeroGrads(1); !s.ok()) {
        fmt::print("  {}\n", std::string(s.message()));
        return false;
      }
      auto r = (*model)->ForwardBackward(batch, asked, 1.f / n);
      if (!r.ok()) {
        fmt::print("  T {} B {}: {}\n", c.T, c.B, std::string(r.status().message()));
        return false;
      }
      auto norm = (*model)->ClipAndStep(1.0, 1e-5, adamw);
      if (!norm.ok()) {
        fmt::print("  {}\n", std::string(norm.status().message()));
        return false;
      }
      // One rank: the step's last GPU work waited for. Under mpirun the parameter all-gather
      // queued by ClipAndStep runs under the next step's forward, which a device-wide wait would
      // prevent: a step is timed to ClipAndStep's return, and its queued all-gather counts in the
      // next step's time, where the forward waits for it (the median is of steady steps).
      if (world == 1) cudaDeviceSynchronize();
      if (profiled) cudaProfilerStop();
#ifdef RWR_HAVE_CUPTI
      if (traced) rwr::bench::PrintTraceSummary(rwr::bench::StopKernelTrace(), 12);
#endif
      const double dt =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      peak = std::max(peak, UsedGiB());
      loss = r->loss_sum / r->tokens;
      if (i > 0) times.push_back(dt);
      if (phases) {
        auto ms = (*model)->TakePhaseTimes();
        if (!ms.ok()) {
          fmt::print("  {}\n", std::string(ms.status().message()));
          return false;
        }
        if (i > 0) {
          for (const auto& [name, t] : *ms) phase_ms[name] += t / timed;
        }
      }
    }
    const int64_t chunk = (*model)->last_chunk_len();
    std::sort(times.begin(), times.end());
    const double median = times.empty() ? 0 : times[times.size() / 2];
    const double tps = median > 0 ? n / median : 0;  // per GPU
    *out = {{"seq_len", c.T},   {"batch", c.B},        {"chunk_len", chunk},
            {"step_s", median}, {"tokens_per_s", tps}, {"mfu", 6 * N * tps / 790e12},
            {"peak_gib", peak}, {"loss", loss},        {"tokens_per_s_all_gpus", tps * world}};
    fmt::print(
        "  T {:>6}  B {}  chunk {:>5}  step {:8.3f} s  {:>8.0f} tok/s{}  MFU {:5.1f}%  peak "
        "{:5.1f} GiB  loss {:.3f}\n",
        c.T, c.B, chunk, median, tps,
        world > 1 ? fmt::format(" per GPU, {:.0f} on {} GPUs", tps * world, world) : "",
        100 * 6 * N * tps / 790e12, peak, loss);
    if (phases) {
      // Kinds (no dot in the name) add up to the timed GPU work; details split a kind.
      nlohmann::json pj;
      std::string line = "           GPU ms per step:";
      double sum = 0;
      for (const auto& [name, t] : phase_ms) {
        pj[name] = t;
        if (name.find('.') != std::string::npos) continue;
        line += fmt::format("  {} {:.1f} ({:.0f}%)", name, t, 100 * t / (median * 1e3));
        sum += t;
      }
      line += fmt::format("  untimed {:.1f}", median * 1e3 - sum);
      fmt::print("{}\n", line);
      for (const auto& [name, t] : phase_ms) {
        if (name.find('.') != std::string::npos)
          fmt::print("             {:<26} {:8.2f} ms\n", name, t);
      }
      (*out)["phase_ms"] = pj;
    }
    std::fflush(stdout);
    return true;
  };

  fmt::print("{} ({}), precision {}, {} timed steps after 1 warm-up, AdamW included\n", prop.name,
             mc->Summary(), precision, steps);
  for (const Case& c : ParseCases(cases_text)) {
    nlohmann::json r;
    if (run_case(c, steps, &r)) {
      results["cases"].push_back(r);
    } else if (world > 1) {
      return fail(absl::AbortedError("a case failed on this rank"));
    }
  }
  int64_t longest = 0;
  for (const Case& c : ParseCases(long_text)) {
    nlohmann::json r;
    if (!run_case(c, 1, &r)) {
      // Under mpirun the ranks would part ways here (one out of memory, another not).
      if (world > 1) return fail(absl::AbortedError("a long case failed on this rank"));
      break;
    }
    r["long"] = true;
    results["cases"].push_back(r);
    longest = c.T;
  }
  if (!long_text.empty()) fmt::print("longest sample that trained: {} tokens\n", longest);
  results["longest_trained"] = longest;
  if (!json_path.empty() && (*comm)->rank() == 0) {
    std::ofstream(json_path) << results.dump(2) << "\n";  // rank 0 speaks for the job
  }
  return 0;
}
