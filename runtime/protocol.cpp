#include "runtime/protocol.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

namespace appliance::runtime {
namespace {

using Json = nlohmann::ordered_json;

constexpr size_t kMaxIdBytes = 256;
constexpr int kMaxDepth = 16;
constexpr double kMaxTemperature = 100.0;

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
  if (op != "generate") return Error(id, "unknown op '" + op.substr(0, 64) + "'");

  // Unknown fields are refused: a misspelt "max_token" must not silently
  // fall back to a default.
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    if (k != "id" && k != "op" && k != "prompt" && k != "max_tokens" && k != "temperature" && k != "top_p" &&
        k != "seed") {
      return Error(id, "unknown field '" + k.substr(0, 64) + "' for op 'generate'");
    }
  }
  if (!id) return Error(std::nullopt, "op 'generate' needs an 'id' string");
  ParsedRequest r;
  r.kind = ParsedRequest::Kind::kGenerate;
  r.id = id;
  GenerateRequest& g = r.generate;
  g.id = *id;

  auto prompt = j.find("prompt");
  if (prompt == j.end()) return Error(id, "missing field 'prompt'");
  if (!prompt->is_string()) return Error(id, "field 'prompt' must be a string");
  g.prompt = prompt->get_ref<const std::string&>();

  auto max_tokens = j.find("max_tokens");
  if (max_tokens == j.end()) return Error(id, "missing field 'max_tokens'");
  if (!max_tokens->is_number_integer()) return Error(id, "field 'max_tokens' must be an integer");
  // nlohmann stores non-negative integers as unsigned and negative ones as
  // signed; read each kind as what it is so no value wraps around.
  const bool in_range = max_tokens->is_number_unsigned()
                            ? max_tokens->get<uint64_t>() >= 1 &&
                                  max_tokens->get<uint64_t>() <= static_cast<uint64_t>(limits.max_tokens)
                            : max_tokens->get<int64_t>() >= 1 && max_tokens->get<int64_t>() <= limits.max_tokens;
  if (!in_range) {
    return Error(id, "field 'max_tokens' must be in [1, " + std::to_string(limits.max_tokens) + "] (the context size)");
  }
  g.max_tokens = max_tokens->get<int64_t>();

  if (auto t = j.find("temperature"); t != j.end()) {
    double v = 0;
    if (!GetNumber(*t, &v)) return Error(id, "field 'temperature' must be a finite number");
    if (v < 0 || v > kMaxTemperature) return Error(id, "field 'temperature' must be in [0, 100]");
    g.sampling.temperature = static_cast<float>(v);
  }
  if (auto p = j.find("top_p"); p != j.end()) {
    double v = 0;
    if (!GetNumber(*p, &v)) return Error(id, "field 'top_p' must be a finite number");
    if (!(v > 0 && v <= 1)) return Error(id, "field 'top_p' must be in (0, 1]");
    g.sampling.top_p = static_cast<float>(v);
  }
  if (auto s = j.find("seed"); s != j.end()) {
    if (!s->is_number_integer() || (!s->is_number_unsigned() && s->get<int64_t>() < 0)) {
      return Error(id, "field 'seed' must be a non-negative integer");
    }
    g.sampling.seed = s->get<uint64_t>();
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
