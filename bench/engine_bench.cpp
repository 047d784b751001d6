// appliance-bench: inference speed of the engine, against the memory
// bandwidth ceiling measured in the same run.
//
//   appliance-bench --model M [--threads N] [--json] [--pp 512] [--tg 128] [--runs 5]
//                   [--concurrency 1,4,8] [--bandwidth-mib 2048] [--kv-type f32|f16]
//
// Figures (tokens per second; warm-up excluded; median of --runs runs):
//   pp512_tok_s       prefill: --pp random in-vocab ids through Context::Eval
//                     in a fresh (reset) context, timed as one call.
//   tg128_tok_s       decode: after a short prompt, --tg single-token Evals,
//                     each fed the greedy (argmax) token of the previous one;
//                     EOS does not stop it (as llama-bench's tg).
//   concurrent_tok_s  {"1":..,"4":..,"8":..}: --concurrency N generate jobs of
//                     --tg tokens (greedy) sent at once to the real job server
//                     (runtime::Serve on a socketpair); generated tokens (the
//                     done events' n_tokens) over the wall time from sending
//                     the requests to the last done event; the levels take
//                     turns within each of the --runs rounds.
//   concurrent_speedup {"4":..,"8":..} (when 1 is among the levels): per
//                     level, the median over rounds of its rate / the rate
//                     of one job in the same round.
//   bandwidth_gb_s    read bandwidth: --threads threads summing one buffer of
//                     --bandwidth-mib (default 2 GiB, ~7x the 300 MB L3 of the
//                     benchmark machine, so it is DRAM, not cache, that is
//                     measured), 1e9 bytes per second.
//   ceiling_tok_s     bandwidth / model bytes, where model bytes are what
//                     decoding one token reads: every tensor but token_embd,
//                     of which one row (token_embd counts in full when it is
//                     also the output matrix). The KV cache is not counted.
//   tg_ceiling_ratio  tg / ceiling per run, each run's ceiling from the
//                     bandwidth measured right before and after its decode;
//                     the median over runs.
// Bandwidth, pp and tg are measured round-robin within each run so that all
// three see the same machine load; the load average is reported with them.
#include <immintrin.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "base/fd.h"
#include "base/status.h"
#include "runtime/context.h"
#include "runtime/kernels/kernels.h"
#include "runtime/model.h"
#include "runtime/protocol.h"
#include "runtime/server.h"

namespace appliance::bench {
namespace {

using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;
using runtime::Context;
using runtime::Model;

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : (n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2);
}

// llama.cpp on a 2-core machine of this kind, 2 threads (shared/README.md).
constexpr double kRefPp512 = 1046, kRefTg = 346, kRefBandwidthGbS = 31;
constexpr const char* kRefModel = "bench-d768-q4_k_m";

// The short prompt of tg and of every concurrent job.
constexpr const char* kPrompt = "Once upon a time";

struct Options {
  std::string model;
  int threads = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 16u));  // as appliance-runtime
  bool json = false;
  int64_t pp = 512;
  int64_t tg = 128;
  int runs = 5;
  std::vector<int> concurrency = {1, 4, 8};
  size_t bandwidth_mib = 2048;
  std::string kv_type = "f32";
};

// --- memory bandwidth ---

// Independent accumulators: the loads, not a chain of adds, set the pace.
uint64_t SumScalar(const uint64_t* p, size_t n) {
  uint64_t a = 0, b = 0, c = 0, d = 0;
  for (size_t i = 0; i + 4 <= n; i += 4) {
    a += p[i];
    b += p[i + 1];
    c += p[i + 2];
    d += p[i + 3];
  }
  return a + b + c + d;
}

// The same with 32-byte loads, as the engine's AVX2 kernels read weights: on
// a loaded core the scalar loop is ~25% slower than this and would measure
// the core, not the memory.
__attribute__((target("avx2"))) uint64_t SumAvx2(const uint64_t* p, size_t n) {
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a = _mm256_add_epi64(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    b = _mm256_add_epi64(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
    c = _mm256_add_epi64(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
    d = _mm256_add_epi64(d, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d)));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + SumScalar(p + i, n - i);
}

class BandwidthProbe {
 public:
  explicit BandwidthProbe(size_t bytes) : words_(bytes / sizeof(uint64_t)) {
    // Written, not just allocated: untouched pages would all map the zero page.
    for (size_t i = 0; i < words_.size(); ++i) words_[i] = i * 0x9E3779B97F4A7C15ull;
  }
  size_t bytes() const { return words_.size() * sizeof(uint64_t); }
  static const char* method() { return Avx2() ? "avx2 32-byte loads" : "scalar 8-byte loads"; }

  // One pass: `threads` threads each sum a contiguous slice. 1e9 bytes/s.
  double Measure(int threads) {
    std::vector<std::thread> workers;
    std::vector<uint64_t> sums(static_cast<size_t>(threads));
    const size_t per = words_.size() / static_cast<size_t>(threads);
    auto sum = Avx2() ? SumAvx2 : SumScalar;
    const auto t0 = Clock::now();
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] { sums[static_cast<size_t>(t)] = sum(words_.data() + per * static_cast<size_t>(t), per); });
    }
    for (std::thread& w : workers) w.join();
    const double s = Seconds(t0);
    uint64_t total = 0;
    for (uint64_t v : sums) total += v;
    sink_ = total;
    return static_cast<double>(per * static_cast<size_t>(threads) * sizeof(uint64_t)) / s / 1e9;
  }

 private:
  static bool Avx2() { return __builtin_cpu_supports("avx2"); }
  std::vector<uint64_t> words_;
  volatile uint64_t sink_ = 0;  // keeps the sums observable
};

// --- in-process prefill and decode ---

// Bytes decoding one token reads from the weights (see the header comment).
uint64_t BytesPerToken(const Model& model) {
  const runtime::GgufTensorInfo* embd = model.gguf().FindTensor("token_embd.weight");
  const bool tied = model.gguf().FindTensor("output.weight") == nullptr;
  uint64_t total = 0;
  for (const runtime::GgufTensorInfo& t : model.gguf().tensors()) total += t.n_bytes;
  if (embd != nullptr && !tied) total = total - embd->n_bytes + model.weights().token_embd.row_bytes;
  return total;
}

StatusOr<double> PrefillTokS(Context& ctx, std::span<const int32_t> tokens) {
  ctx.Reset();
  const auto t0 = Clock::now();
  RETURN_IF_ERROR(ctx.Eval(tokens, /*all_logits=*/false).Context("pp"));
  return static_cast<double>(tokens.size()) / Seconds(t0);
}

StatusOr<double> DecodeTokS(Context& ctx, std::span<const int32_t> prompt, int64_t n) {
  ctx.Reset();
  RETURN_IF_ERROR(ctx.Eval(prompt, false).Context("tg prompt"));
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < n; ++i) {
    const std::span<const float> logits = ctx.LastLogits();
    const int32_t next[1] = {static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin())};
    RETURN_IF_ERROR(ctx.Eval(next, false).Context("tg decode"));
  }
  return static_cast<double>(n) / Seconds(t0);
}

// --- the job server ---

// The one place that starts the server under test; it runs up to
// ctx.n_seq() jobs at once (continuous batching).
Status RunServer(Context& ctx, int channel_fd) { return runtime::Serve(ctx, channel_fd); }

// The client end of the channel: request lines out, events in.
class JobClient {
 public:
  explicit JobClient(int fd) : fd_(fd) {}

  Status Send(const std::string& lines) { return runtime::WriteAll(fd_, lines); }

  StatusOr<Json> NextEvent() {
    std::vector<runtime::LineReader::Item> items;
    while (pending_.empty()) {
      char buf[65536];
      const ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return PosixError("read from the job server");
      if (n == 0) return Status::Error("the job server closed the channel");
      items.clear();
      reader_.Feed(std::string_view(buf, static_cast<size_t>(n)), &items);
      for (runtime::LineReader::Item& item : items) {
        if (item.kind != runtime::LineReader::Item::Kind::kLine) return Status::Error("oversized event line from the server");
        pending_.push_back(std::move(item.line));
      }
    }
    Json event = Json::parse(pending_.front(), nullptr, /*allow_exceptions=*/false);
    pending_.pop_front();
    if (event.is_discarded() || !event.is_object() || !event.contains("event") || !event["event"].is_string()) {
      return Status::Error("the server sent a line that is not a JSON event");
    }
    return event;
  }

 private:
  int fd_;
  runtime::LineReader reader_;
  std::deque<std::string> pending_;
};

// Sends `jobs` generate requests at once; aggregate generated tokens per second.
StatusOr<double> ConcurrentRound(JobClient& client, int jobs, int64_t max_tokens, int round) {
  std::string requests;
  for (int i = 0; i < jobs; ++i) {
    requests += Json{{"op", "generate"},
                     {"id", "r" + std::to_string(round) + "j" + std::to_string(i)},
                     {"prompt", kPrompt},
                     {"max_tokens", max_tokens},
                     {"temperature", 0}}
                    .dump() +
                "\n";
  }
  const auto t0 = Clock::now();
  RETURN_IF_ERROR(client.Send(requests));
  int done = 0;
  int64_t tokens = 0;
  while (done < jobs) {
    ASSIGN_OR_RETURN(Json event, client.NextEvent());
    const std::string& kind = event["event"].get_ref<const std::string&>();
    if (kind == "error") return Status::Error("job server: " + event.dump());
    if (kind != "done") continue;
    if (!event.contains("n_tokens") || !event["n_tokens"].is_number_unsigned()) {
      return Status::Error("done event without n_tokens: " + event.dump());
    }
    ++done;
    tokens += event["n_tokens"].get<int64_t>();
  }
  return static_cast<double>(tokens) / Seconds(t0);
}

// Aggregate tokens/s per concurrency level and round, from one server
// session (one warm-up job first). The levels take turns within each round,
// so that the ratios between them compare rounds under the same machine load
// (this shared VM's speed drifts by 20% within a minute).
StatusOr<std::vector<std::vector<double>>> MeasureConcurrent(Context& ctx, const Options& o) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return PosixError("socketpair");
  UniqueFd server_end(sv[0]), client_end(sv[1]);
  Status served;
  // The server closes its end when it returns, so the client sees EOF instead of waiting forever.
  std::thread server([&] {
    served = RunServer(ctx, server_end.get());
    server_end.reset();
  });
  JobClient client(client_end.get());
  // The client reads on SCHED_IDLE: in the appliance it runs outside the VM,
  // and here, on the same two cores, each of its wake-ups would otherwise
  // preempt a thread of the forward pass that the other then waits for.
  struct sched_param idle {};
  struct sched_param normal {};
  const int policy = ::sched_getscheduler(0);
  ::sched_getparam(0, &normal);
  const bool idle_client = ::sched_setscheduler(0, SCHED_IDLE, &idle) == 0;
  auto session = [&]() -> StatusOr<std::vector<std::vector<double>>> {
    ASSIGN_OR_RETURN(Json ready, client.NextEvent());
    if (ready["event"] != "ready") return Status::Error("the server's first event is not ready");
    RETURN_IF_ERROR(ConcurrentRound(client, 1, o.tg, 0).status().Context("warm-up job"));
    std::vector<std::vector<double>> rates(o.concurrency.size());
    int round = 1;
    for (int r = 0; r < o.runs; ++r) {
      for (size_t level = 0; level < o.concurrency.size(); ++level) {
        ASSIGN_OR_RETURN(double rate, ConcurrentRound(client, o.concurrency[level], o.tg, round++));
        rates[level].push_back(rate);
      }
    }
    return rates;
  };
  StatusOr<std::vector<std::vector<double>>> result = session();
  if (idle_client) ::sched_setscheduler(0, policy, &normal);
  // Shut the server down whatever happened; closing our end ends it on error.
  Status shutdown = client.Send("{\"op\":\"shutdown\"}\n");
  while (shutdown.ok()) {
    StatusOr<Json> event = client.NextEvent();
    if (!event.ok() || (*event)["event"] == "shutdown") break;
  }
  if (!shutdown.ok()) ::shutdown(client_end.get(), SHUT_RDWR);
  server.join();
  if (!result.ok()) return result.status().Context("concurrent jobs");
  if (!served.ok()) return served.Context("job server");
  return result;
}

// --- report ---

std::vector<double> LoadAverage() {
  double avg[3] = {0, 0, 0};
  if (::getloadavg(avg, 3) != 3) return {};
  return {avg[0], avg[1], avg[2]};
}

Status Run(const Options& o) {
  if (o.threads < 1 || o.threads > Context::kMaxThreads) return Status::Error("--threads out of range");
  if (o.pp < 1 || o.tg < 1 || o.runs < 1) return Status::Error("--pp, --tg and --runs must be at least 1");
  if (o.bandwidth_mib < 1 || o.bandwidth_mib > (size_t{1} << 16)) return Status::Error("--bandwidth-mib out of range");
  for (int c : o.concurrency) {
    if (c < 1 || c > Context::kMaxSeqs) {
      return Status::Error("--concurrency values must be in 1.." + std::to_string(Context::kMaxSeqs));
    }
  }
  const std::vector<double> load_before = LoadAverage();
  ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::LoadPath(o.model));
  runtime::ContextOptions copts;
  copts.n_threads = o.threads;
  copts.kv_type = o.kv_type == "f16" ? runtime::TensorType::kF16 : runtime::TensorType::kF32;
  // One KV cache slot per concurrent job: the server runs up to n_seq at once.
  copts.n_seq = *std::max_element(o.concurrency.begin(), o.concurrency.end());
  ASSIGN_OR_RETURN(std::unique_ptr<Context> ctx, Context::Create(*model, copts));
  const int64_t n_vocab = model->config().n_vocab;

  // Inputs: pp random in-vocab ids (seeded); tg's prompt tokenized as a job's.
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(n_vocab - 1));
  std::vector<int32_t> pp_tokens(static_cast<size_t>(o.pp));
  for (int32_t& t : pp_tokens) t = id(rng);
  ASSIGN_OR_RETURN(std::vector<int32_t> prompt, model->tokenizer().Encode(kPrompt, model->tokenizer().add_bos()));
  if (o.pp > ctx->n_ctx() || static_cast<int64_t>(prompt.size()) + o.tg > ctx->n_ctx()) {
    return Status::Error("--pp or prompt + --tg exceed the context size " + std::to_string(ctx->n_ctx()));
  }

  BandwidthProbe probe(o.bandwidth_mib << 20);
  probe.Measure(o.threads);  // warm-ups
  RETURN_IF_ERROR(PrefillTokS(*ctx, pp_tokens).status());
  RETURN_IF_ERROR(DecodeTokS(*ctx, prompt, o.tg).status());
  const uint64_t model_bytes = BytesPerToken(*model);
  std::vector<double> bw, pp, tg, tg_ratio;
  for (int r = 0; r < o.runs; ++r) {
    ASSIGN_OR_RETURN(double pp_rate, PrefillTokS(*ctx, pp_tokens));
    pp.push_back(pp_rate);
    // The bandwidth right before and right after the decode it is the
    // ceiling of: this shared VM's speed drifts by 20% within a minute.
    const double bw_before = probe.Measure(o.threads);
    ASSIGN_OR_RETURN(double tg_rate, DecodeTokS(*ctx, prompt, o.tg));
    const double run_bw = (bw_before + probe.Measure(o.threads)) / 2;
    bw.push_back(run_bw);
    tg.push_back(tg_rate);
    tg_ratio.push_back(tg_rate / (run_bw * 1e9 / static_cast<double>(model_bytes)));
  }
  ASSIGN_OR_RETURN(std::vector<std::vector<double>> concurrent_runs, MeasureConcurrent(*ctx, o));
  std::vector<double> concurrent;
  for (const std::vector<double>& rates : concurrent_runs) concurrent.push_back(Median(rates));
  // Per level, the median over rounds of its rate / one job's in the same round.
  const auto single = std::find(o.concurrency.begin(), o.concurrency.end(), 1);
  std::vector<double> speedup;
  if (single != o.concurrency.end()) {
    const std::vector<double>& one = concurrent_runs[static_cast<size_t>(single - o.concurrency.begin())];
    for (const std::vector<double>& rates : concurrent_runs) {
      std::vector<double> ratios;
      for (size_t r = 0; r < rates.size(); ++r) ratios.push_back(rates[r] / one[r]);
      speedup.push_back(Median(ratios));
    }
  }

  const double bandwidth = Median(bw), tg_rate = Median(tg), pp_rate = Median(pp);
  const double ceiling = bandwidth * 1e9 / static_cast<double>(model_bytes);
  const bool is_ref_model = model->name() == "bench-d768";

  Json j;
  j["model"] = o.model;
  j["model_name"] = model->name();
  j["isa"] = runtime::kernels::IsaName(runtime::kernels::CurrentIsa());
  j["threads"] = o.threads;
  j["kv_type"] = o.kv_type;
  j["runs"] = o.runs;
  j["pp_tokens"] = o.pp;
  j["tg_tokens"] = o.tg;
  j["model_bytes"] = model_bytes;
  j["pp512_tok_s"] = pp_rate;
  j["tg128_tok_s"] = tg_rate;
  Json conc = Json::object();
  for (size_t i = 0; i < o.concurrency.size(); ++i) conc[std::to_string(o.concurrency[i])] = concurrent[i];
  j["concurrent_tok_s"] = conc;
  if (!speedup.empty()) {
    Json ratio = Json::object();
    for (size_t i = 0; i < o.concurrency.size(); ++i) ratio[std::to_string(o.concurrency[i])] = speedup[i];
    j["concurrent_speedup"] = ratio;
  }
  j["bandwidth_gb_s"] = bandwidth;
  j["bandwidth_buffer_bytes"] = probe.bytes();
  j["bandwidth_method"] = BandwidthProbe::method();
  j["ceiling_tok_s"] = ceiling;
  j["tg_ceiling_ratio"] = Median(tg_ratio);
  const std::vector<double> load_after = LoadAverage();
  j["load_average"] = {{"before", load_before}, {"after", load_after}};
  j["llama_cpp_reference"] = {{"model", kRefModel},     {"threads", 2},     {"pp512_tok_s", kRefPp512},
                              {"tg_tok_s", kRefTg},     {"bandwidth_gb_s", kRefBandwidthGbS}};
  if (is_ref_model) j["vs_llama_cpp"] = {{"pp512", pp_rate / kRefPp512}, {"tg", tg_rate / kRefTg}};

  if (o.json) {
    std::printf("%s\n", j.dump().c_str());
    return Status::Ok();
  }
  std::printf("model       %s (%s), %.1f MB read per token\n", o.model.c_str(), model->name().c_str(),
              static_cast<double>(model_bytes) / 1e6);
  std::printf("kernels     %s, %d threads, %s KV cache; median of %d runs after a warm-up; load %.2f -> %.2f\n",
              j["isa"].get<std::string>().c_str(), o.threads, o.kv_type.c_str(), o.runs, load_before.empty() ? -1.0 : load_before[0],
              load_after.empty() ? -1.0 : load_after[0]);
  std::printf("pp%-8lld  %10.1f tok/s\n", static_cast<long long>(o.pp), pp_rate);
  std::printf("tg%-8lld  %10.1f tok/s\n", static_cast<long long>(o.tg), tg_rate);
  for (size_t i = 0; i < o.concurrency.size(); ++i) {
    std::printf("%3d jobs    %10.1f tok/s aggregate (job server)", o.concurrency[i], concurrent[i]);
    if (!speedup.empty()) std::printf(", %.2fx one job (median per round)", speedup[i]);
    std::printf("\n");
  }
  std::printf("bandwidth   %10.2f GB/s (%d threads summing %zu MiB, %s)\n", bandwidth, o.threads, o.bandwidth_mib,
              BandwidthProbe::method());
  std::printf("ceiling     %10.1f tok/s (bandwidth / bytes per token); tg / ceiling = %.3f (median per run)\n",
              ceiling, j["tg_ceiling_ratio"].get<double>());
  std::printf("llama.cpp   %s, 2 threads: pp512 %.0f, tg %.0f tok/s, bandwidth ~%.0f GB/s", kRefModel, kRefPp512,
              kRefTg, kRefBandwidthGbS);
  if (is_ref_model) std::printf("; ours / theirs: pp %.2f, tg %.2f", pp_rate / kRefPp512, tg_rate / kRefTg);
  std::printf("\n");
  return Status::Ok();
}

}  // namespace
}  // namespace appliance::bench

int main(int argc, char** argv) {
  using namespace appliance::bench;
  Options o;
  CLI::App app{"Engine speed (prefill, decode, concurrent jobs) against the measured memory-bandwidth ceiling"};
  app.add_option("--model", o.model, "GGUF model")->required();
  app.add_option("--threads", o.threads, "Engine and bandwidth threads")->capture_default_str();
  app.add_flag("--json", o.json, "One JSON object instead of the table");
  app.add_option("--pp", o.pp, "Prefill tokens (pp512_tok_s)")->capture_default_str();
  app.add_option("--tg", o.tg, "Decode tokens (tg128_tok_s) and max_tokens of each concurrent job")->capture_default_str();
  app.add_option("--runs", o.runs, "Timed runs per figure (the median is reported)")->capture_default_str();
  app.add_option("--concurrency", o.concurrency, "Concurrent job counts")->delimiter(',')->capture_default_str();
  app.add_option("--bandwidth-mib", o.bandwidth_mib, "Buffer summed for the bandwidth")->capture_default_str();
  app.add_option("--kv-type", o.kv_type, "KV cache element type (f32 or f16)")
      ->check(CLI::IsMember({"f32", "f16"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const appliance::Status s = Run(o);
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.message().c_str());
    return 1;
  }
  return 0;
}
