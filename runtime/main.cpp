// appliance-runtime: the command-line entry point.
//
//   generate --model M (--prompt P | --chat (--message ROLE:TEXT ... | --messages FILE)) --max-tokens N
//            [--temperature T --top-p P --top-k K --min-p P --repeat-penalty R --frequency-penalty F
//             --presence-penalty P --repeat-last-n N --seed S --threads N --kv-type f32|f16] [--json]
//            --chat renders the messages with the model's chat template (tokenizer.chat_template) and
//            generates the assistant's reply: --message ROLE:TEXT (ROLE system, user or assistant; split at
//            the first ':'; repeat in order) and/or --messages FILE, a JSON array
//            [{"role": "user", "content": "..."}, ...] (the file's messages come first)
//   logits   --model M (--prompt P | --tokens ID,ID,...) [--top-k K] [--json]
//   tokenize --model M --text T [--no-bos] [--json]
//   serve    (--model PATH | --model-fd N) --channel-fd N [--threads N] [--max-jobs N] [--kv-type f32|f16]
//            --max-jobs: jobs decoded together (default 8), each with its own KV cache of the full
//            context; further jobs queue in order
//   --kv-type: the KV cache's element type, f32 (default) or f16 (half the memory; logits move by ~1e-3)
//
// Errors are printed once, here: "error: <message>" on stderr, exit code 1
// (2 for a bad command line). In serve mode every stderr line carries the
// "appliance-runtime: " prefix, errors included.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "base/mapped_file.h"
#include "runtime/blas.h"
#include "runtime/context.h"
#include "runtime/generate.h"
#include "runtime/gguf.h"
#include "runtime/kernels/kernels.h"
#include "runtime/log.h"
#include "runtime/model.h"
#include "runtime/protocol.h"
#include "runtime/server.h"
#include "runtime/tokenizer.h"

namespace appliance::runtime {
namespace {

using Json = nlohmann::ordered_json;

int DefaultThreads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return static_cast<int>(std::clamp(hw == 0 ? 1u : hw, 1u, 16u));
}

void PrintJson(const Json& j) {
  const std::string s = j.dump(-1, ' ', false, Json::error_handler_t::replace);
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fputc('\n', stdout);
}

int Fail(const Status& s) {
  std::fprintf(stderr, "error: %s\n", s.message().c_str());
  return 1;
}

// "1,403,407" -> ids; each must be a plain decimal below n_vocab.
StatusOr<std::vector<int32_t>> ParseTokenList(const std::string& list, int64_t n_vocab) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= list.size()) {
    size_t comma = list.find(',', pos);
    if (comma == std::string::npos) comma = list.size();
    const std::string item = list.substr(pos, comma - pos);
    if (item.empty() || item.size() > 9 || item.find_first_not_of("0123456789") != std::string::npos) {
      return Status::Error("--tokens: '" + item.substr(0, 16) + "' is not a token id");
    }
    const int64_t id = std::stoll(item);
    if (id >= n_vocab) {
      return Status::Error("--tokens: id " + item + " is outside [0, " + std::to_string(n_vocab) + ")");
    }
    ids.push_back(static_cast<int32_t>(id));
    pos = comma + 1;
  }
  return ids;
}

// --kv-type f32|f16 (ContextOptions::kv_type).
void AddKvTypeOption(CLI::App* app, std::string& kv_type) {
  app->add_option("--kv-type", kv_type, "KV cache element type: f32 (default) or f16 (half the memory)")
      ->check(CLI::IsMember({"f32", "f16"}));
}
TensorType KvType(const std::string& name) { return name == "f16" ? TensorType::kF16 : TensorType::kF32; }

struct GenerateArgs {
  std::string model, prompt;
  int64_t max_tokens = 0;
  SamplerParams sampling;
  int threads = DefaultThreads();
  std::string kv_type = "f32";
  bool json = false;
  bool chat = false;
  std::vector<std::string> messages;  // --message ROLE:TEXT, in order
  std::string messages_file;          // --messages FILE
};

constexpr size_t kMaxMessagesFileBytes = 16u << 20;

// --message ROLE:TEXT values and/or the --messages FILE's JSON array.
StatusOr<std::vector<ChatMessage>> ChatMessages(const GenerateArgs& a) {
  std::vector<ChatMessage> out;
  if (!a.messages_file.empty()) {
    auto file = MappedFile::Open(a.messages_file);
    if (!file.ok()) return file.status();
    const std::span<const uint8_t> bytes = file->bytes();
    if (bytes.size() > kMaxMessagesFileBytes) {
      return Status::Error(a.messages_file + ": " + std::to_string(bytes.size()) + " bytes (limit " +
                           std::to_string(kMaxMessagesFileBytes) + ")");
    }
    auto parsed = ParseChatMessages(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    if (!parsed.ok()) return parsed.status().Context(a.messages_file);
    out = std::move(*parsed);
  }
  for (const std::string& m : a.messages) {
    const size_t colon = m.find(':');
    const std::string role = m.substr(0, colon);
    if (colon == std::string::npos || (role != "system" && role != "user" && role != "assistant")) {
      return Status::Error("--message '" + m.substr(0, 32) + "': expected ROLE:TEXT with ROLE system, user or assistant");
    }
    out.push_back({role, m.substr(colon + 1)});
  }
  if (out.empty()) return Status::Error("--chat needs at least one --message or a --messages file");
  return out;
}

int RunGenerate(const GenerateArgs& a) {
  Status s = ValidateSamplerParams(a.sampling, 1 << 20, ParamStyle::kCli);
  if (!s.ok()) return Fail(s);
  std::vector<ChatMessage> messages;
  if (a.chat) {
    auto m = ChatMessages(a);
    if (!m.ok()) return Fail(m.status());
    messages = std::move(*m);
  }
  auto model = Model::LoadPath(a.model);
  if (!model.ok()) return Fail(model.status());
  StatusOr<ChatTemplate> tmpl = Status::Error("no chat");
  if (a.chat) {
    tmpl = ChatTemplate::FromGguf((*model)->gguf());
    if (!tmpl.ok()) return Fail(tmpl.status().Context(a.model));
  }
  ContextOptions opts;
  opts.n_threads = a.threads;
  opts.kv_type = KvType(a.kv_type);
  auto ctx = Context::Create(**model, opts);
  if (!ctx.ok()) return Fail(ctx.status());
  GenerateParams params;
  params.max_tokens = a.max_tokens;
  params.sampling = a.sampling;
  auto result = a.chat ? GenerateChat(**ctx, *tmpl, messages, params, nullptr) : Generate(**ctx, a.prompt, params, nullptr);
  if (!result.ok()) return Fail(result.status());
  if (a.json) {
    Json j;
    if (a.chat) j["chat_template"] = tmpl->name();
    j["prompt_tokens"] = result->prompt_tokens;
    j["tokens"] = result->tokens;
    j["text"] = result->text;
    j["stop"] = result->stopped_by_eos ? "eos" : "length";
    j["timings"] = {{"prompt_ms", result->prompt_ms},
                    {"generate_ms", result->generate_ms},
                    {"tokens_per_s", result->tokens_per_s()}};
    PrintJson(j);
  } else {
    std::fwrite(result->text.data(), 1, result->text.size(), stdout);
    std::fputc('\n', stdout);
  }
  return 0;
}

struct LogitsArgs {
  std::string model, prompt, tokens;
  int top_k = 8;
  int threads = DefaultThreads();
  bool json = false;
};

int RunLogits(const LogitsArgs& a, bool have_prompt) {
  auto model = Model::LoadPath(a.model);
  if (!model.ok()) return Fail(model.status());
  const LlamaConfig& cfg = (*model)->config();
  std::vector<int32_t> ids;
  if (have_prompt) {
    auto enc = (*model)->tokenizer().Encode(a.prompt, (*model)->tokenizer().add_bos());
    if (!enc.ok()) return Fail(enc.status());
    ids = std::move(*enc);
  } else {
    auto parsed = ParseTokenList(a.tokens, cfg.n_vocab);
    if (!parsed.ok()) return Fail(parsed.status());
    ids = std::move(*parsed);
  }
  if (ids.empty()) return Fail(Status::Error("no tokens to evaluate"));
  if (a.top_k < 1 || a.top_k > cfg.n_vocab) {
    return Fail(Status::Error("--top-k must be in [1, " + std::to_string(cfg.n_vocab) + "]"));
  }
  // Teacher forcing: every position in one batch, as the reference does.
  ContextOptions opts;
  opts.n_threads = a.threads;
  opts.n_ctx = std::min<int64_t>(cfg.n_ctx_train, std::max<int64_t>(Context::kDefaultMaxCtx, static_cast<int64_t>(ids.size())));
  opts.max_batch = std::max<int64_t>(1, std::min<int64_t>(static_cast<int64_t>(ids.size()), 8192));
  if (static_cast<int64_t>(ids.size()) > opts.max_batch) {
    return Fail(Status::Error(std::to_string(ids.size()) + " tokens do not fit one batch (limit 8192)"));
  }
  auto ctx = Context::Create(**model, opts);
  if (!ctx.ok()) return Fail(ctx.status());
  Status s = (*ctx)->Eval(ids, /*all_logits=*/true);
  if (!s.ok()) return Fail(s);

  Json topk = Json::array();
  std::vector<int32_t> order(static_cast<size_t>(cfg.n_vocab));
  for (size_t pos = 0; pos < ids.size(); ++pos) {
    const std::span<const float> logits = (*ctx)->Logits(static_cast<int64_t>(pos));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + a.top_k, order.end(), [&](int32_t x, int32_t y) {
      return logits[static_cast<size_t>(x)] > logits[static_cast<size_t>(y)] ||
             (logits[static_cast<size_t>(x)] == logits[static_cast<size_t>(y)] && x < y);
    });
    Json row = Json::array();
    for (int k = 0; k < a.top_k; ++k) {
      const int32_t id = order[static_cast<size_t>(k)];
      row.push_back(Json::array({id, logits[static_cast<size_t>(id)]}));
    }
    topk.push_back(std::move(row));
  }
  if (a.json) {
    Json j;
    j["prompt_tokens"] = ids;
    j["topk"] = std::move(topk);
    PrintJson(j);
  } else {
    for (size_t pos = 0; pos < ids.size(); ++pos) {
      std::printf("%zu %d:", pos, ids[pos]);
      for (const Json& e : topk[pos]) std::printf(" %d=%.5f", e[0].get<int>(), e[1].get<double>());
      std::printf("\n");
    }
  }
  return 0;
}

struct TokenizeArgs {
  std::string model, text;
  bool no_bos = false;
  bool json = false;
};

int RunTokenize(const TokenizeArgs& a) {
  // Only the vocabulary is needed, so vocab-only GGUF files work too.
  auto file = MappedFile::Open(a.model);
  if (!file.ok()) return Fail(file.status());
  auto gguf = GgufFile::Parse(file->bytes());
  if (!gguf.ok()) return Fail(gguf.status().Context(a.model));
  auto tok = Tokenizer::FromGguf(*gguf);
  if (!tok.ok()) return Fail(tok.status().Context(a.model));
  auto ids = tok->Encode(a.text, !a.no_bos && tok->add_bos());
  if (!ids.ok()) return Fail(ids.status());
  if (a.json) {
    Json pieces = Json::array();
    for (int32_t id : *ids) pieces.push_back(std::string(tok->Text(id)));
    Json j;
    j["tokens"] = *ids;
    j["pieces"] = std::move(pieces);
    PrintJson(j);
  } else {
    for (size_t i = 0; i < ids->size(); ++i) std::printf(i == 0 ? "%d" : " %d", (*ids)[i]);
    std::printf("\n");
  }
  return 0;
}

struct ServeArgs {
  std::string model;
  int model_fd = -1;
  int channel_fd = -1;
  int threads = DefaultThreads();
  int64_t max_jobs = 8;
  std::string kv_type = "f32";
};

int RunServe(const ServeArgs& a) {
  auto fail = [](const Status& s) {
    Log("error: " + s.message());
    return 1;
  };
  StatusOr<std::unique_ptr<Model>> model = Status::Error("no model");
  if (a.model_fd >= 0) {
    const std::string name = "model fd " + std::to_string(a.model_fd);
    auto file = MappedFile::FromFd(a.model_fd, name);
    if (!file.ok()) return fail(file.status());
    model = Model::Load(std::move(*file), name);
  } else {
    model = Model::LoadPath(a.model);
  }
  if (!model.ok()) return fail(model.status());
  ContextOptions opts;
  opts.n_threads = a.threads;
  opts.n_seq = a.max_jobs;
  opts.kv_type = KvType(a.kv_type);
  auto ctx = Context::Create(**model, opts);
  if (!ctx.ok()) return fail(ctx.status());
  const LlamaConfig& c = (*model)->config();
  Log("model '" + (*model)->name() + "': " + std::to_string(c.n_layer) + " layers, dim " + std::to_string(c.n_embd) +
      ", " + std::to_string(c.n_head) + "/" + std::to_string(c.n_head_kv) + " heads, vocab " +
      std::to_string(c.n_vocab) + ", context " + std::to_string((*ctx)->n_ctx()) + " x " +
      std::to_string(a.max_jobs) + " jobs, " + a.kv_type + " KV cache; " + std::to_string(a.threads) +
      " threads, " + kernels::IsaName(kernels::ActiveIsa()) + " kernels, OpenBLAS " + BlasCoreName());
  Status s = Serve(**ctx, a.channel_fd);
  if (!s.ok()) return fail(s);
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{"appliance-runtime: the appliance's llama inference runtime"};
  app.require_subcommand(1);

  GenerateArgs gen;
  CLI::App* g = app.add_subcommand("generate", "generate text from a prompt or, with --chat, chat messages");
  g->add_option("--model", gen.model, "GGUF model file")->required();
  CLI::Option* gp = g->add_option("--prompt", gen.prompt, "prompt text (control tokens in it stay text)");
  g->add_option("--max-tokens", gen.max_tokens, "tokens to generate")->required()->check(CLI::Range(1, 1 << 20));
  g->add_option("--temperature", gen.sampling.temperature, "0 = greedy (default)");
  g->add_option("--top-p", gen.sampling.top_p, "nucleus sampling threshold in (0, 1] (default 1)");
  g->add_option("--top-k", gen.sampling.top_k, "keep the K most likely tokens (default 0: off)");
  g->add_option("--min-p", gen.sampling.min_p, "keep tokens with p >= P * p(most likely) (default 0: off)");
  g->add_option("--repeat-penalty", gen.sampling.repeat_penalty, "repetition penalty in (0, 10] (default 1: off)");
  g->add_option("--frequency-penalty", gen.sampling.frequency_penalty, "per-occurrence penalty (default 0)");
  g->add_option("--presence-penalty", gen.sampling.presence_penalty, "penalty for any occurrence (default 0)");
  g->add_option("--repeat-last-n", gen.sampling.repeat_last_n,
                "penalty window in tokens (default 64; 0: off, -1: the whole context)");
  g->add_option("--seed", gen.sampling.seed, "sampling seed (default 0)");
  g->add_option("--threads", gen.threads, "worker threads")->check(CLI::Range(1, 256));
  AddKvTypeOption(g, gen.kv_type);
  g->add_flag("--json", gen.json, "print JSON");
  CLI::Option* gc = g->add_flag("--chat", gen.chat, "render messages with the model's chat template");
  g->add_option("--message", gen.messages, "ROLE:TEXT (ROLE system, user or assistant); repeat in order")
      ->needs(gc)
      ->allow_extra_args(false);
  g->add_option("--messages", gen.messages_file, "JSON file: [{\"role\": ..., \"content\": ...}, ...]")->needs(gc);
  gp->excludes(gc);

  LogitsArgs lg;
  CLI::App* l = app.add_subcommand("logits", "top-k logits at every position (teacher forcing, one batch)");
  l->add_option("--model", lg.model, "GGUF model file")->required();
  CLI::Option* lp = l->add_option("--prompt", lg.prompt, "prompt text (tokenized with BOS)");
  CLI::Option* lt = l->add_option("--tokens", lg.tokens, "comma-separated token ids, used as given");
  lp->excludes(lt);
  l->add_option("--top-k", lg.top_k, "logits per position (default 8)");
  l->add_option("--threads", lg.threads, "worker threads")->check(CLI::Range(1, 256));
  l->add_flag("--json", lg.json, "print JSON");

  TokenizeArgs tk;
  CLI::App* t = app.add_subcommand("tokenize", "print the token ids of a text");
  t->add_option("--model", tk.model, "GGUF model or vocab file")->required();
  t->add_option("--text", tk.text, "text to tokenize")->required();
  t->add_flag("--no-bos", tk.no_bos, "do not add BOS");
  t->add_flag("--json", tk.json, "print JSON");

  ServeArgs sv;
  CLI::App* s = app.add_subcommand("serve", "serve jobs on a channel fd");
  CLI::Option* sm = s->add_option("--model", sv.model, "GGUF model file");
  CLI::Option* sf = s->add_option("--model-fd", sv.model_fd, "open fd of the GGUF model")->check(CLI::NonNegativeNumber);
  sm->excludes(sf);
  s->add_option("--channel-fd", sv.channel_fd, "fd of the job channel")->required()->check(CLI::NonNegativeNumber);
  s->add_option("--threads", sv.threads, "worker threads")->check(CLI::Range(1, 256));
  s->add_option("--max-jobs", sv.max_jobs, "jobs decoded together (default 8); more queue")
      ->check(CLI::Range(int64_t{1}, Context::kMaxSeqs));
  AddKvTypeOption(s, sv.kv_type);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }

  if (*g) {
    if (gp->count() == 0 && !gen.chat) {
      std::fprintf(stderr, "error: generate needs --prompt or --chat\n");
      return 2;
    }
    return RunGenerate(gen);
  }
  if (*l) {
    if (lp->count() == 0 && lt->count() == 0) {
      std::fprintf(stderr, "error: logits needs --prompt or --tokens\n");
      return 2;
    }
    return RunLogits(lg, lp->count() > 0);
  }
  if (*t) return RunTokenize(tk);
  if (*s) {
    if (sm->count() == 0 && sf->count() == 0) {
      std::fprintf(stderr, "error: serve needs --model or --model-fd\n");
      return 2;
    }
    return RunServe(sv);
  }
  return 2;
}

}  // namespace
}  // namespace appliance::runtime

int main(int argc, char** argv) {
  try {
    return appliance::runtime::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "error: unexpected exception\n");
  }
  return 1;
}
