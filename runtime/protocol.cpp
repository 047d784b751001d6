#include "runtime/protocol.h"

#include <cmath>
#include <limits>
#include <optional>
#include <nlohmann/json.hpp>

namespace appliance::runtime {
namespace {

using Json = nlohmann::ordered_json;

constexpr size_t kMaxIdBytes = 256;
constexpr int kMaxDepth = 16;

std::string Dump(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n";
}

// Nesting depth of the JSON text, strings skipped. Checked before parsing so
// that no input can make the parser or the value's destructor recurse deeply.
int MaxDepth(std::string_view s) {
  int depth = 0, max = 0;
  bool in_string = false, escaped = false;
  for (char c : s) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      max = std::max(max, ++depth);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return max;
}

ParsedRequest Error(std::optional<std::string> id, std::string message) {
  ParsedRequest r;
  r.kind = ParsedRequest::Kind::kError;
  r.id = std::move(id);
  r.error = std::move(message);
  return r;
}

bool GetNumber(const Json& v, double* out) {
  if (!v.is_number()) return false;
  *out = v.get<double>();
  return std::isfinite(*out);
}

// A double as float without undefined behaviour: magnitudes beyond any valid
// parameter become infinities, which every range check refuses.
float ToFloat(double v) {
  if (v > 1e30) return std::numeric_limits<float>::infinity();
  if (v < -1e30) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(v);
}

// An integer of either JSON sign; unsigned values beyond int64 saturate (and
// then fail the caller's range check).
bool GetInt(const Json& v, int64_t* out) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    *out = u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max()
                                                                           : static_cast<int64_t>(u);
  } else {
    *out = v.get<int64_t>();
  }
  return true;
}

constexpr const char* kSamplingFields[] = {"max_tokens",        "temperature",      "top_p",          "seed",
                                           "top_k",             "min_p",            "repeat_penalty", "frequency_penalty",
                                           "presence_penalty",  "repeat_last_n"};

// messages: [{"role": "system"|"user"|"assistant", "content": "..."}, ...]
std::optional<std::string> ParseMessages(const Json& j, std::vector<ChatMessage>* out) {
  auto it = j.find("messages");
  if (it == j.end()) return "missing field 'messages'";
  if (!it->is_array() || it->empty()) return "field 'messages' must be a non-empty array of {\"role\", \"content\"} objects";
  if (it->size() > ChatTemplate::kMaxMessages) {
    return "field 'messages' has more than " + std::to_string(ChatTemplate::kMaxMessages) + " entries";
  }
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& m = (*it)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return where + " must be an object with 'role' and 'content'";
    for (auto f = m.begin(); f != m.end(); ++f) {
      if (f.key() != "role" && f.key() != "content") return where + ": unknown field '" + f.key().substr(0, 64) + "'";
    }
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) return where + ": field 'role' must be a string";
    const std::string& r = role->get_ref<const std::string&>();
    if (r != "system" && r != "user" && r != "assistant") {
      return where + ": field 'role' must be one of system, user, assistant";
    }
    auto content = m.find("content");
    if (content == m.end() || !content->is_string()) return where + ": field 'content' must be a string";
    out->push_back({r, content->get_ref<const std::string&>()});
  }
  return std::nullopt;
}

ParsedRequest ParseObject(const Json& j, const ProtocolLimits& limits) {
  std::optional<std::string> id;
  if (auto it = j.find("id"); it != j.end()) {
    if (!it->is_string()) return Error(std::nullopt, "field 'id' must be a string");
    const std::string& s = it->get_ref<const std::string&>();
    if (s.size() > kMaxIdBytes) {
      return Error(std::nullopt, "field 'id' is longer than " + std::to_string(kMaxIdBytes) + " bytes");
    }
    id = s;
  }
  auto op_it = j.find("op");
  if (op_it == j.end()) return Error(id, "missing field 'op'");
  if (!op_it->is_string()) return Error(id, "field 'op' must be a string");
  const std::string& op = op_it->get_ref<const std::string&>();

  if (op == "shutdown") {
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key() != "op" && it.key() != "id") return Error(id, "unknown field '" + it.key() + "' for op 'shutdown'");
    }
    ParsedRequest r;
    r.kind = ParsedRequest::Kind::kShutdown;
    r.id = id;
    return r;
  }
  if (op != "generate" && op != "chat") return Error(id, "unknown op '" + op.substr(0, 64) + "'");
  const bool chat = op == "chat";
  const char* input_field = chat ? "messages" : "prompt";

  // Unknown fields are refused: a misspelt "max_token" must not silently
  // fall back to a default.
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    bool known = k == "id" || k == "op" || k == input_field;
    for (const char* f : kSamplingFields) known = known || k == f;
    if (!known) return Error(id, "unknown field '" + k.substr(0, 64) + "' for op '" + op + "'");
  }
  if (!id) return Error(std::nullopt, "op '" + op + "' needs an 'id' string");
  ParsedRequest r;
  r.kind = chat ? ParsedRequest::Kind::kChat : ParsedRequest::Kind::kGenerate;
  r.id = id;
  GenerateRequest& g = r.generate;
  g.id = *id;

  if (chat) {
    if (std::optional<std::string> err = ParseMessages(j, &g.messages)) return Error(id, *err);
  } else {
    auto prompt = j.find("prompt");
    if (prompt == j.end()) return Error(id, "missing field 'prompt'");
    if (!prompt->is_string()) return Error(id, "field 'prompt' must be a string");
    g.prompt = prompt->get_ref<const std::string&>();
  }

  auto max_tokens = j.find("max_tokens");
  if (max_tokens == j.end()) return Error(id, "missing field 'max_tokens'");
  int64_t mt = 0;
  if (!GetInt(*max_tokens, &mt)) return Error(id, "field 'max_tokens' must be an integer");
  if (mt < 1 || mt > limits.max_tokens) {
    return Error(id, "field 'max_tokens' must be in [1, " + std::to_string(limits.max_tokens) + "] (the context size)");
  }
  g.max_tokens = mt;

  SamplerParams& sp = g.sampling;
  struct FloatField {
    const char* name;
    float* out;
  };
  for (const FloatField& f : {FloatField{"temperature", &sp.temperature}, FloatField{"top_p", &sp.top_p},
                              FloatField{"min_p", &sp.min_p}, FloatField{"repeat_penalty", &sp.repeat_penalty},
                              FloatField{"frequency_penalty", &sp.frequency_penalty},
                              FloatField{"presence_penalty", &sp.presence_penalty}}) {
    auto it = j.find(f.name);
    if (it == j.end()) continue;
    double v = 0;
    if (!GetNumber(*it, &v)) return Error(id, std::string("field '") + f.name + "' must be a finite number");
    *f.out = ToFloat(v);
  }
  for (const char* name : {"top_k", "repeat_last_n"}) {
    auto it = j.find(name);
    if (it == j.end()) continue;
    int64_t v = 0;
    if (!GetInt(*it, &v)) return Error(id, std::string("field '") + name + "' must be an integer");
    (std::string_view(name) == "top_k" ? sp.top_k : sp.repeat_last_n) = v;
  }
  if (auto s = j.find("seed"); s != j.end()) {
    if (!s->is_number_integer() || (!s->is_number_unsigned() && s->get<int64_t>() < 0)) {
      return Error(id, "field 'seed' must be a non-negative integer");
    }
    sp.seed = s->get<uint64_t>();
  }
  if (Status st = ValidateSamplerParams(sp, limits.max_tokens, ParamStyle::kJson); !st.ok()) {
    return Error(id, st.message());
  }
  return r;
}

}  // namespace

ParsedRequest ParseRequest(std::string_view line, const ProtocolLimits& limits) {
  if (MaxDepth(line) > kMaxDepth) return Error(std::nullopt, "malformed request: JSON nested too deeply");
  try {
    const Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return Error(std::nullopt, "malformed request: not valid JSON");
    if (!j.is_object()) return Error(std::nullopt, "malformed request: not a JSON object");
    return ParseObject(j, limits);
  } catch (const std::exception& e) {
    // nlohmann only throws on misuse or allocation failure; never let it out.
    return Error(std::nullopt, std::string("malformed request: ") + e.what());
  }
}

StatusOr<std::vector<ChatMessage>> ParseChatMessages(std::string_view json_text) {
  if (MaxDepth(json_text) > kMaxDepth) return Status::Error("messages: JSON nested too deeply");
  try {
    Json j = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return Status::Error("messages: not valid JSON");
    const Json wrapped = {{"messages", std::move(j)}};
    std::vector<ChatMessage> out;
    if (std::optional<std::string> err = ParseMessages(wrapped, &out)) return Status::Error(*err);
    return out;
  } catch (const std::exception& e) {
    return Status::Error(std::string("messages: ") + e.what());
  }
}

std::string ReadyEvent(std::string_view model_name, int64_t n_vocab) {
  Json j;
  j["event"] = "ready";
  j["model"] = std::string(model_name);
  j["n_vocab"] = n_vocab;
  return Dump(j);
}

std::string TokenEvent(std::string_view id, int32_t token, std::string_view text) {
  Json j;
  j["id"] = std::string(id);
  j["event"] = "token";
  j["token"] = token;
  j["text"] = std::string(text);
  return Dump(j);
}

namespace {
double Round3(double v) { return std::round(v * 1000.0) / 1000.0; }
}  // namespace

std::string DoneEvent(std::string_view id, const GenerateResult& result) {
  Json j;
  j["id"] = std::string(id);
  j["event"] = "done";
  j["tokens"] = result.tokens;
  j["n_prompt_tokens"] = result.prompt_tokens.size();
  j["n_tokens"] = result.tokens.size();
  j["text"] = result.text;
  j["stop"] = result.stopped_by_eos ? "eos" : "length";
  j["timings"] = {{"prompt_ms", Round3(result.prompt_ms)},
                  {"generate_ms", Round3(result.generate_ms)},
                  {"tokens_per_s", Round3(result.tokens_per_s())}};
  return Dump(j);
}

std::string ErrorEvent(const std::optional<std::string>& id, std::string_view message) {
  Json j;
  j["id"] = id ? Json(*id) : Json(nullptr);
  j["event"] = "error";
  j["error"] = std::string(message);
  return Dump(j);
}

std::string ShutdownEvent() { return Dump(Json{{"event", "shutdown"}}); }

void LineReader::Feed(std::string_view bytes, std::vector<Item>* out) {
  while (!bytes.empty()) {
    const size_t nl = bytes.find('\n');
    const std::string_view chunk = bytes.substr(0, nl);  // all of it when there is no '\n'
    if (!discarding_) {
      if (buffer_.size() + chunk.size() > kMaxLine + 1) {  // +1: a '\r' that is dropped below
        out->push_back({Item::Kind::kOversize, {}});
        buffer_.clear();
        discarding_ = true;
      } else {
        buffer_.append(chunk);
      }
    }
    if (nl == std::string_view::npos) break;
    bytes.remove_prefix(nl + 1);
    if (discarding_) {
      discarding_ = false;
      continue;
    }
    if (!buffer_.empty() && buffer_.back() == '\r') buffer_.pop_back();
    if (buffer_.size() > kMaxLine) {
      out->push_back({Item::Kind::kOversize, {}});
    } else {
      out->push_back({Item::Kind::kLine, std::move(buffer_)});
    }
    buffer_.clear();
  }
}

}  // namespace appliance::runtime
