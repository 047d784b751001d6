// appliance-console: the operator's client for a running appliance's job channel
// (the Unix socket `appliance-image run` prints). Sends one job, streams the
// generated text to stdout, prints a summary on stderr (docs/architecture.md).
//   appliance-console --socket PATH --prompt "Once upon a time" [--max-tokens N ...]
//   appliance-console --socket PATH --raw '{"op":"shutdown"}'
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "image/channel.h"
#include "image/line_framer.h"

namespace {

using appliance::Status;
using appliance::StatusOr;
namespace img = appliance::image;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string socket;
  std::string prompt;
  std::string raw;
  std::string id;
  unsigned max_tokens = 128;
  double temperature = 0.0;
  std::optional<double> top_p;
  std::optional<uint64_t> seed;
  bool wait_ready = false;
  double timeout_s = 600;
  bool json_out = false;
};

int Fail(const std::string& msg) {
  std::fprintf(stderr, "error: %s\n", msg.c_str());
  return 1;
}

void Out(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

std::string Summary(const nlohmann::json& done) {
  auto num = [&](const nlohmann::json& obj, const char* key) -> std::string {
    auto it = obj.find(key);
    if (it == obj.end() || !it->is_number()) return "?";
    if (it->is_number_integer() || it->is_number_unsigned()) return it->dump();
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.1f", it->get<double>());
    return buf;
  };
  std::string stop = done.contains("stop") && done["stop"].is_string() ? done["stop"].get<std::string>() : "?";
  std::string s = "done: " + num(done, "n_tokens") + " tokens (stop: " + stop + "), " + num(done, "n_prompt_tokens") +
                  " prompt tokens";
  auto t = done.find("timings");
  if (t != done.end() && t->is_object()) {
    s += "; prompt " + num(*t, "prompt_ms") + " ms, generation " + num(*t, "generate_ms") + " ms, " +
         num(*t, "tokens_per_s") + " tokens/s";
  }
  return s;
}

int Run(const Options& o) {
  // The request line.
  std::string request;
  nlohmann::json id;
  bool shutdown = false;
  if (!o.raw.empty()) {
    request = o.raw;
    if (request.find('\n') != std::string::npos) return Fail("--raw: the request must be one line");
    id = img::RequestId(request);
    shutdown = img::IsShutdownRequest(request);
  } else {
    id = o.id.empty() ? "console-" + std::to_string(::getpid()) : o.id;
    nlohmann::json j = {{"id", id},
                        {"op", "generate"},
                        {"prompt", o.prompt},
                        {"max_tokens", o.max_tokens},
                        {"temperature", o.temperature}};
    if (o.top_p) j["top_p"] = *o.top_p;
    if (o.seed) j["seed"] = *o.seed;
    // A prompt that is not valid UTF-8 is refused here rather than sent mangled.
    try {
      request = j.dump();
    } catch (const nlohmann::json::exception& e) {
      return Fail(std::string("prompt: ") + e.what());
    }
  }
  if (request.size() > img::kMaxRequestLineBytes) {
    return Fail("request of " + std::to_string(request.size()) + " bytes; the channel allows at most " +
                std::to_string(img::kMaxRequestLineBytes));
  }

  const auto deadline = o.timeout_s > 0
                            ? Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.timeout_s))
                            : Clock::time_point::max();
  StatusOr<appliance::UniqueFd> fd = img::ConnectUnix(o.socket);
  if (!fd.ok()) return Fail(fd.status().message() + " (is the appliance running? `appliance-image run` prints the socket)");
  img::ChannelReader reader(fd->get());

  if (o.wait_ready) {
    for (;;) {
      StatusOr<std::string> line = reader.ReadLine(deadline);
      if (!line.ok()) return Fail(line.status().Context("waiting for the ready event").message());
      StatusOr<img::Reply> reply = img::ParseReply(*line);
      if (reply.ok() && reply->event == "ready") {
        if (o.json_out) Out(*line + "\n");
        break;
      }
      std::fprintf(stderr, "warning: ignoring a line before the ready event: %s\n", line->substr(0, 200).c_str());
    }
  }

  if (Status s = img::SendAll(fd->get(), request + "\n", deadline); !s.ok()) return Fail(s.message());

  bool at_line_start = true;
  for (;;) {
    StatusOr<std::string> line = reader.ReadLine(deadline);
    if (!line.ok()) {
      if (!at_line_start && !o.json_out) Out("\n");
      return Fail(line.status().Context("waiting for the reply").message());
    }
    StatusOr<img::Reply> reply = img::ParseReply(*line);
    if (!reply.ok()) {
      std::fprintf(stderr, "warning: %s\n", reply.status().message().c_str());
      continue;
    }
    if (o.json_out) Out(*line + "\n");
    const std::string& ev = reply->event;
    if (ev == "ready") continue;  // connected while the appliance was booting
    if (shutdown) {
      if (ev == "shutdown") {
        std::fprintf(stderr, "the appliance is shutting down\n");
        return 0;
      }
      continue;
    }
    bool mine = reply->id == id;
    if (ev == "token" && mine) {
      auto t = reply->body.find("text");
      if (!o.json_out && t != reply->body.end() && t->is_string()) {
        std::string text = t->get<std::string>();
        Out(text);
        if (!text.empty()) at_line_start = text.back() == '\n';
      }
      continue;
    }
    if (ev == "done" && mine) {
      if (!at_line_start && !o.json_out) Out("\n");
      std::fprintf(stderr, "%s\n", Summary(reply->body).c_str());
      return 0;
    }
    if (ev == "error" && (mine || reply->id.is_null())) {
      if (!at_line_start && !o.json_out) Out("\n");
      auto e = reply->body.find("error");
      return Fail("the appliance refused the job: " +
                  ((e != reply->body.end() && e->is_string()) ? e->get<std::string>() : reply->body.dump()));
    }
    if (ev == "shutdown") return Fail("the appliance shut down before answering");
    // Replies for other ids (another client's) are not ours to show.
  }
}

}  // namespace

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"appliance-console: send one job to a running appliance and stream the generated text"};
  Options o;
  double top_p = 0;
  uint64_t seed = 0;
  app.add_option("--socket", o.socket, "the channel socket (printed by `appliance-image run`)")->required();
  auto* prompt = app.add_option("--prompt", o.prompt, "the prompt of a generate job");
  auto* raw = app.add_option("--raw", o.raw, "send this JSON line verbatim; print the replies as JSON lines");
  prompt->excludes(raw);
  raw->excludes(prompt);
  app.add_option("--max-tokens", o.max_tokens, "tokens to generate")->capture_default_str()->check(CLI::Range(1u, 1u << 20));
  app.add_option("--temperature", o.temperature, "0 = greedy")->capture_default_str()->check(CLI::Range(0.0, 100.0));
  auto* top_p_opt = app.add_option("--top-p", top_p, "nucleus sampling threshold")->check(CLI::Range(0.0, 1.0));
  auto* seed_opt = app.add_option("--seed", seed, "sampling seed");
  app.add_option("--id", o.id, "job id (default console-<pid>)");
  app.add_flag("--wait-ready", o.wait_ready, "wait for the ready event before sending (when connecting during boot)");
  app.add_option("--timeout", o.timeout_s, "give up after SECONDS (0 = never)")->capture_default_str()->check(CLI::Range(0.0, 1e7));
  app.add_flag("--json", o.json_out, "print the reply lines as JSON instead of the text");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (prompt->count() == 0 && raw->count() == 0) {
    std::fprintf(stderr, "error: one of --prompt or --raw is required\n");
    return 2;
  }
  if (top_p_opt->count() > 0) o.top_p = top_p;
  if (seed_opt->count() > 0) o.seed = seed;
  if (raw->count() > 0) o.json_out = true;
  try {
    return Run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
