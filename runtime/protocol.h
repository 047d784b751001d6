// The job channel protocol (docs/architecture.md): newline-delimited JSON
// requests in, JSON event lines out. Pure functions and a line splitter, no
// I/O, so every rule is unit-tested without a channel.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/generate.h"
#include "runtime/sampler.h"

namespace appliance::runtime {

struct ProtocolLimits {
  int64_t max_tokens = 0;  // upper bound for "max_tokens": the context size
};

// A "generate" or "chat" job.
struct GenerateRequest {
  std::string id;
  std::string prompt;                 // generate
  std::vector<ChatMessage> messages;  // chat
  int64_t max_tokens = 0;
  SamplerParams sampling;
};

struct ParsedRequest {
  enum class Kind { kGenerate, kChat, kShutdown, kError };
  Kind kind = Kind::kError;
  GenerateRequest generate;       // kGenerate, kChat
  std::optional<std::string> id;  // kError: the request's id if it had a valid one
  std::string error;              // kError
};

// Parses one request line (without its newline). Never throws.
ParsedRequest ParseRequest(std::string_view line, const ProtocolLimits& limits);

// A JSON array of chat messages, [{"role": "user", "content": "..."}, ...],
// checked as the "messages" field of a chat job (used by `generate --chat
// --messages FILE`). Never throws.
StatusOr<std::vector<ChatMessage>> ParseChatMessages(std::string_view json_text);

// Reply lines, each ending in '\n'. Text fields may hold any bytes: invalid
// UTF-8 is replaced by U+FFFD so a reply is always valid JSON.
std::string ReadyEvent(std::string_view model_name, int64_t n_vocab);
std::string TokenEvent(std::string_view id, int32_t token, std::string_view text);
std::string DoneEvent(std::string_view id, const GenerateResult& result);
std::string ErrorEvent(const std::optional<std::string>& id, std::string_view message);
std::string ShutdownEvent();

// Splits a byte stream into lines of at most kMaxLine bytes (excluding the
// '\n'; a '\r' before it is dropped). A longer line is reported once as
// kOversize as soon as it passes the limit, and the rest of it, up to and
// including its '\n', is discarded: memory stays bounded by kMaxLine.
class LineReader {
 public:
  static constexpr size_t kMaxLine = 65536;

  struct Item {
    enum class Kind { kLine, kOversize };
    Kind kind = Kind::kLine;
    std::string line;
  };

  void Feed(std::string_view bytes, std::vector<Item>* out);
  // True when bytes of an unterminated line are buffered (or being discarded).
  bool InLine() const { return !buffer_.empty() || discarding_; }

 private:
  std::string buffer_;
  bool discarding_ = false;
};

}  // namespace appliance::runtime
