// bench/kernel_trace: see kernel_trace.h. CUPTI hands records over in buffers it asks for and
// gives back (its own threads call the two callbacks); a trace keeps what they hold.
#include "bench/kernel_trace.h"

#include <cupti.h>
#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

#include "fmt/format.h"

namespace rwr::bench {
namespace {

using Kind = TraceEvent::Kind;

constexpr size_t kBufferBytes = 8 << 20;
constexpr CUpti_ActivityKind kRecorded[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
                                            CUPTI_ACTIVITY_KIND_MEMCPY, CUPTI_ACTIVITY_KIND_MEMSET,
                                            CUPTI_ACTIVITY_KIND_RUNTIME};

std::mutex g_mutex;
std::vector<TraceEvent> g_events;  // filled by the buffer callback while a trace runs
// Buffers allocated and touched before a trace starts: CUPTI asks for its first buffer inside the
// first traced runtime call, and faulting in 8 MiB there held that call up by ~4 ms.
std::vector<uint8_t*> g_spare_buffers;
bool g_callbacks_registered = false;
uint64_t g_trace_start_ns = 0;  // CUPTI's clock when the trace started

// "_ZN3rwr…" or "void rwr::scan::(anonymous namespace)::ScanBackwardKernel<...>(...)" →
// "ScanBackwardKernel".
std::string BaseName(const char* raw) {
  std::string s = raw == nullptr ? "?" : raw;
  int status = -1;
  if (char* demangled = abi::__cxa_demangle(s.c_str(), nullptr, nullptr, &status)) {
    if (status == 0) s = demangled;
    std::free(demangled);
  }
  for (const std::string anon : {"(anonymous namespace)::", "{anonymous}::"}) {
    for (size_t at; (at = s.find(anon)) != std::string::npos;) s.erase(at, anon.size());
  }
  s = s.substr(0, s.find_first_of("<("));
  if (s.rfind("void ", 0) == 0) s.erase(0, 5);
  if (const size_t colon = s.rfind("::"); colon != std::string::npos) s.erase(0, colon + 2);
  return s;
}

// "cudaLaunchKernel_v7000" → "cudaLaunchKernel".
std::string RuntimeName(CUpti_CallbackId cbid) {
  const char* raw = nullptr;
  cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, cbid, &raw);
  std::string s = raw == nullptr ? fmt::format("runtime#{}", cbid) : raw;
  if (const size_t v = s.rfind("_v"); v != std::string::npos) s.erase(v);
  return s;
}

std::string CopyName(const CUpti_ActivityMemcpy6& c) {
  const char* dir = c.copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_HTOD   ? "HtoD"
                    : c.copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOH ? "DtoH"
                    : c.copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOD ? "DtoD"
                                                                    : "other";
  return fmt::format("memcpy {} {} KiB", dir, c.bytes >> 10);
}

uint8_t* NewBuffer() { return static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes)); }

void CUPTIAPI OnBufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    *buffer = nullptr;
    if (!g_spare_buffers.empty()) {
      *buffer = g_spare_buffers.back();
      g_spare_buffers.pop_back();
    }
  }
  if (*buffer == nullptr) *buffer = NewBuffer();
  *size = *buffer == nullptr ? 0 : kBufferBytes;
  *max_records = 0;
}

void CUPTIAPI OnBufferCompleted(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::lock_guard<std::mutex> lock(g_mutex);
  CUpti_Activity* record = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    switch (record->kind) {
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
        g_events.push_back({Kind::kKernel, BaseName(k->name), k->start, k->end});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const auto* c = reinterpret_cast<const CUpti_ActivityMemcpy6*>(record);
        g_events.push_back({Kind::kCopy, CopyName(*c), c->start, c->end});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(record);
        g_events.push_back(
            {Kind::kMemset, fmt::format("memset {} KiB", m->bytes >> 10), m->start, m->end});
        break;
      }
      case CUPTI_ACTIVITY_KIND_RUNTIME: {
        const auto* a = reinterpret_cast<const CUpti_ActivityAPI*>(record);
        g_events.push_back({Kind::kRuntimeCall, RuntimeName(a->cbid), a->start, a->end});
        break;
      }
      default:
        break;
    }
  }
  std::free(buffer);
}

std::string Ms(uint64_t ns) { return fmt::format("{:.2f} ms", ns / 1e6); }

// The `top` entries of a name → (count, ns) tally, longest total first.
void PrintTop(const char* title, const std::map<std::string, std::pair<int, uint64_t>>& tally,
              size_t top) {
  std::vector<std::pair<std::string, std::pair<int, uint64_t>>> rows(tally.begin(), tally.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.second > b.second.second; });
  fmt::print("    {}:\n", title);
  for (size_t i = 0; i < rows.size() && i < top; ++i) {
    fmt::print("      {:<56} {:6}  {}\n", rows[i].first.substr(0, 56), rows[i].second.first,
               Ms(rows[i].second.second));
  }
}

}  // namespace

bool StartKernelTrace(std::string* error) {
  auto fail = [&](CUptiResult r, const char* what) {
    const char* text = nullptr;
    cuptiGetResultString(r, &text);
    *error = fmt::format("CUPTI {}: {}", what, text == nullptr ? "unknown error" : text);
    return false;
  };
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_events.clear();
    while (g_spare_buffers.size() < 4) {
      uint8_t* b = NewBuffer();
      if (b == nullptr) break;
      std::memset(b, 0, kBufferBytes);
      g_spare_buffers.push_back(b);
    }
  }
  if (!g_callbacks_registered) {
    if (CUptiResult r = cuptiActivityRegisterCallbacks(OnBufferRequested, OnBufferCompleted);
        r != CUPTI_SUCCESS) {
      return fail(r, "register callbacks");
    }
    g_callbacks_registered = true;
  }
  if (CUptiResult r = cuptiGetTimestamp(&g_trace_start_ns); r != CUPTI_SUCCESS) {
    return fail(r, "timestamp");
  }
  for (CUpti_ActivityKind kind : kRecorded) {
    if (CUptiResult r = cuptiActivityEnable(kind); r != CUPTI_SUCCESS) return fail(r, "enable");
  }
  return true;
}

std::vector<TraceEvent> StopKernelTrace() {
  for (CUpti_ActivityKind kind : kRecorded) cuptiActivityDisable(kind);
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  std::vector<TraceEvent> events;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    events.swap(g_events);
  }
  // Work already running when the trace started (another stream's NCCL kernel, say) comes with
  // timestamps from before it, or none (0): it counts from the start, and what had ended by
  // then not at all. Unclamped, one such kernel stretched the traced span to decades.
  std::erase_if(events, [](const TraceEvent& e) { return e.end_ns <= g_trace_start_ns; });
  for (TraceEvent& e : events) e.start_ns = std::max(e.start_ns, g_trace_start_ns);
  std::stable_sort(events.begin(), events.end(), [](const TraceEvent& a, const TraceEvent& b) {
    return a.start_ns < b.start_ns;
  });
  return events;
}

void PrintTraceSummary(const std::vector<TraceEvent>& events, int top) {
  std::vector<const TraceEvent*> gpu, host;
  for (const TraceEvent& e : events) (e.kind == Kind::kRuntimeCall ? host : gpu).push_back(&e);
  if (gpu.empty()) {
    fmt::print("  trace: no GPU work recorded\n");
    return;
  }
  // Walk the GPU work in start order; a gap is time after everything so far has ended.
  struct Gap {
    uint64_t ns, at;
    const TraceEvent *before, *after;
  };
  std::vector<Gap> gaps;
  std::map<std::string, std::pair<int, uint64_t>> per_kind, per_kernel;  // count, ns
  uint64_t busy = 0, covered_until = gpu.front()->start_ns;
  const TraceEvent* last = gpu.front();
  for (const TraceEvent* e : gpu) {
    if (e->start_ns > covered_until) {
      gaps.push_back({e->start_ns - covered_until, covered_until, last, e});
    }
    const uint64_t from = std::max(e->start_ns, covered_until);
    if (e->end_ns > from) busy += e->end_ns - from;
    if (e->end_ns >= covered_until) {
      covered_until = e->end_ns;
      last = e;
    }
    auto& k = per_kind[e->kind == Kind::kKernel ? "kernels"
                       : e->kind == Kind::kCopy ? "copies"
                                                : "memsets"];
    k.first += 1;
    k.second += e->end_ns - e->start_ns;
    if (e->kind == Kind::kKernel) {
      auto& n = per_kernel[e->name];
      n.first += 1;
      n.second += e->end_ns - e->start_ns;
    }
  }
  const uint64_t span = covered_until - gpu.front()->start_ns;
  fmt::print("  trace: GPU span {}, busy {} ({:.1f}%), idle {} in {} gaps\n", Ms(span), Ms(busy),
             100.0 * busy / span, Ms(span - busy), gaps.size());
  for (const auto& [name, k] : per_kind) {
    fmt::print("    {:<24} {:6}  {}\n", name, k.first, Ms(k.second));
  }
  const uint64_t bounds[] = {2000, 10000, 100000, UINT64_MAX};
  const char* labels[] = {"< 2 us", "2-10 us", "10-100 us", ">= 100 us"};
  for (int b = 0; b < 4; ++b) {
    int n = 0;
    uint64_t sum = 0;
    for (const Gap& g : gaps) {
      if (g.ns < bounds[b] && (b == 0 || g.ns >= bounds[b - 1])) {
        ++n;
        sum += g.ns;
      }
    }
    fmt::print("    gaps {:<10} {:6}  {}\n", labels[b], n, Ms(sum));
  }
  // The host call overlapping a gap most is what the GPU was waiting for (or the launch of what
  // came next).
  auto host_during = [&](const Gap& g) -> std::string {
    const TraceEvent* best = nullptr;
    uint64_t best_overlap = 0;
    for (const TraceEvent* h : host) {
      const uint64_t lo = std::max(h->start_ns, g.at), hi = std::min(h->end_ns, g.at + g.ns);
      if (hi > lo && hi - lo > best_overlap) {
        best_overlap = hi - lo;
        best = h;
      }
    }
    return best == nullptr
               ? "no host call"
               : fmt::format("{} {:.0f} us", best->name, (best->end_ns - best->start_ns) / 1e3);
  };
  std::vector<Gap> longest = gaps;
  std::sort(longest.begin(), longest.end(), [](const Gap& a, const Gap& b) { return a.ns > b.ns; });
  if (static_cast<int>(longest.size()) > top) longest.resize(top);
  fmt::print("    longest gaps (at ms from the first GPU work):\n");
  for (const Gap& g : longest) {
    fmt::print("      {:8.1f} us at {:8.2f}: {} -> {} (host: {})\n", g.ns / 1e3,
               (g.at - gpu.front()->start_ns) / 1e6, g.before->name, g.after->name, host_during(g));
  }
  std::map<std::string, std::pair<int, uint64_t>> per_call;
  for (const TraceEvent* h : host) {
    auto& c = per_call[h->name];
    c.first += 1;
    c.second += h->end_ns - h->start_ns;
  }
  PrintTop("kernels, GPU time", per_kernel, 2 * top);
  PrintTop("host time in runtime calls", per_call, 10);
}

}  // namespace rwr::bench
