// Chat templates: turn a list of messages into the prompt text a chat model
// was trained on. The template is chosen by recognising the model's
// tokenizer.chat_template (a Jinja source, or a built-in name such as
// "chatml") by characteristic substrings, the way llama.cpp's
// llm_chat_detect_template does, and rendered by hand-written code identical
// to llama.cpp's llm_chat_apply_template (no Jinja interpreter). A template
// that is not recognised, or recognised as one this runtime does not render,
// is refused with an error that says so.
//
// Rendered:  chatml, phi4 (<|im_start|> ... <|im_end|>), llama2 and its
// variants llama2-sys, llama2-sys-bos, llama2-sys-strip ([INST] ... [/INST]),
// mistral-v1, mistral-v3, mistral-v3-tekken, mistral-v7, mistral-v7-tekken,
// llama3 (<|start_header_id|> ... <|eot_id|>), phi3 (<|user|> ... <|end|>).
//
// The rendered text marks which byte ranges are the template's own markup:
// only there are control tokens such as <|im_start|> recognised when it is
// tokenized, so message content cannot forge a turn.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "runtime/gguf.h"
#include "runtime/tokenizer.h"

namespace appliance::runtime {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct RenderedChat {
  std::string text;
  std::vector<SpecialSpan> markup;  // the template's own text, in order
};

class ChatTemplate {
 public:
  static constexpr size_t kMaxMessages = 4096;

  // From a template source or built-in name.
  static StatusOr<ChatTemplate> Detect(std::string_view source);
  // From the model's tokenizer.chat_template (an error when it has none).
  static StatusOr<ChatTemplate> FromGguf(const GgufFile& gguf);

  // llama.cpp's name of the template, e.g. "chatml", "llama2-sys".
  const std::string& name() const { return name_; }

  // The prompt for `messages` followed by the opening of the assistant's
  // reply (what llama.cpp renders with add_ass = true). Roles must be
  // system, user or assistant; there must be at least one message.
  StatusOr<RenderedChat> Render(std::span<const ChatMessage> messages) const;

  // Text of the token that ends a turn in this template ("<|im_end|>",
  // "<|eot_id|>", "<|end|>", "</s>"); generation stops at it.
  std::string_view end_of_turn() const;

  // The names Render() supports, for messages.
  static std::string Supported();

 private:
  std::string name_;
};

}  // namespace appliance::runtime
