#include "runtime/chat_template.h"

namespace appliance::runtime {
namespace {

// Names as llama.cpp's LLM_CHAT_TEMPLATES; the rendered ones first.
constexpr std::string_view kRendered[] = {
    "chatml",     "phi4",       "llama2",           "llama2-sys", "llama2-sys-bos", "llama2-sys-strip",
    "mistral-v1", "mistral-v3", "mistral-v3-tekken", "mistral-v7", "mistral-v7-tekken", "llama3",
    "phi3",
};
constexpr std::string_view kOtherNames[] = {
    "falcon3", "zephyr",    "monarch", "gemma",    "orion",    "openchat",   "vicuna",      "vicuna-orca",
    "deepseek", "deepseek2", "deepseek3", "command-r", "chatglm3", "chatglm4", "glmedge",    "minicpm",
    "exaone3",  "exaone4",  "rwkv-world", "granite", "gigachat", "megrez",   "yandex",     "bailing",
    "llama4",   "smolvlm",  "hunyuan-moe", "hunyuan-dense", "kimi-k2", "dots1",
};

bool IsRendered(std::string_view name) {
  for (std::string_view n : kRendered) {
    if (n == name) return true;
  }
  return false;
}

// llama.cpp's llm_chat_detect_template: a built-in name, else the first rule
// whose characteristic substrings the source contains. "" when none does.
std::string DetectName(std::string_view t) {
  for (std::string_view n : kRendered) {
    if (t == n) return std::string(n);
  }
  for (std::string_view n : kOtherNames) {
    if (t == n) return std::string(n);
  }
  auto has = [t](std::string_view s) { return t.find(s) != std::string_view::npos; };
  if (has("<|im_start|>")) {
    return has("<|im_sep|>") ? "phi4" : has("<end_of_utterance>") ? "smolvlm" : "chatml";
  }
  if (t.rfind("mistral", 0) == 0 || has("[INST]")) {
    if (has("[SYSTEM_PROMPT]")) return "mistral-v7";
    if (has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]")) {
      if (has(" [INST]")) return "mistral-v1";
      if (has("\"[INST]\"")) return "mistral-v3-tekken";
      return "mistral-v3";
    }
    if (has("content.strip()")) return "llama2-sys-strip";
    if (has("bos_token + '[INST]")) return "llama2-sys-bos";
    if (has("<<SYS>>")) return "llama2-sys";
    return "llama2";
  }
  if (has("<|assistant|>") && has("<|end|>")) return "phi3";
  if (has("[gMASK]<sop>")) return "chatglm4";
  if (has("<|assistant|>") && has("<|user|>")) return has("</s>") ? "falcon3" : "glmedge";
  if (has("<|{{ item['role'] }}|>") && has("<|begin_of_image|>")) return "glmedge";
  if (has("<|user|>") && has("<|endoftext|>")) return "zephyr";
  if (has("bos_token + message['role']")) return "monarch";
  if (has("<start_of_turn>")) return "gemma";
  if (has("'\\n\\nAssistant: ' + eos_token")) return "orion";
  if (has("GPT4 Correct ")) return "openchat";
  if (has("USER: ") && has("ASSISTANT: ")) return has("SYSTEM: ") ? "vicuna-orca" : "vicuna";
  if (has("### Instruction:") && has("<|EOT|>")) return "deepseek";
  if (has("<|START_OF_TURN_TOKEN|>") && has("<|USER_TOKEN|>")) return "command-r";
  if (has("<|start_header_id|>") && has("<|end_header_id|>")) return "llama3";
  if (has("[gMASK]sop")) return "chatglm3";
  if (has("<\xe7\x94\xa8\xe6\x88\xb7>")) return "minicpm";  // <用户>
  if (has("'Assistant: ' + message['content'] + eos_token")) return "deepseek2";
  // <｜Assistant｜>, <｜User｜>, <｜end▁of▁sentence｜>
  if (has("<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>") && has("<\xef\xbd\x9c" "User\xef\xbd\x9c>") &&
      has("<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>")) {
    return "deepseek3";
  }
  if (has("[|system|]") && has("[|assistant|]") && has("[|endofturn|]")) return has("[|tool|]") ? "exaone4" : "exaone3";
  if (has("rwkv-world") || has("{{- 'User: ' + message['content']|trim + '\\n\\n' -}}")) return "rwkv-world";
  if (has("<|start_of_role|>")) return "granite";
  if (has("message['role'] + additional_special_tokens[0] + message['content'] + additional_special_tokens[1]")) {
    return "gigachat";
  }
  if (has("<|role_start|>")) return "megrez";
  if (has(" \xd0\x90\xd1\x81\xd1\x81\xd0\xb8\xd1\x81\xd1\x82\xd0\xb5\xd0\xbd\xd1\x82:")) return "yandex";  // " Ассистент:"
  if (has("<role>ASSISTANT</role>") && has("'HUMAN'")) return "bailing";
  if (has("<|header_start|>") && has("<|header_end|>")) return "llama4";
  if (has("<|endofuserprompt|>")) return "dots1";
  if (has("<|startoftext|>") && has("<|extra_4|>")) return "hunyuan-moe";
  if (has("<\xef\xbd\x9chy_place\xe2\x96\x81holder\xe2\x96\x81no\xe2\x96\x81" "2\xef\xbd\x9c>") &&
      has("<\xef\xbd\x9chy_place\xe2\x96\x81holder\xe2\x96\x81no\xe2\x96\x81" "3\xef\xbd\x9c>")) {
    return "hunyuan-dense";
  }
  if (has("<|im_assistant|>assistant<|im_middle|>")) return "kimi-k2";
  return "";
}

// llama.cpp's trim(): isspace() of the C locale at both ends.
std::string_view Trim(std::string_view s) {
  auto space = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

// Accumulates the prompt: Markup() is template text (control tokens allowed),
// Content() is message text.
class Builder {
 public:
  void Markup(std::string_view s) {
    if (s.empty()) return;
    const size_t begin = out_.text.size();
    out_.text.append(s);
    if (!out_.markup.empty() && out_.markup.back().end == begin) {
      out_.markup.back().end = out_.text.size();
    } else {
      out_.markup.push_back({begin, out_.text.size()});
    }
  }
  void Content(std::string_view s) { out_.text.append(s); }
  RenderedChat Take() { return std::move(out_); }

 private:
  RenderedChat out_;
};

}  // namespace

StatusOr<ChatTemplate> ChatTemplate::Detect(std::string_view source) {
  const std::string name = DetectName(source);
  if (name.empty()) {
    return Status::Error("chat template not recognised (supported: " + Supported() + ")");
  }
  if (!IsRendered(name)) {
    return Status::Error("chat template recognised as '" + name + "', which this runtime does not render (supported: " +
                         Supported() + ")");
  }
  ChatTemplate t;
  t.name_ = name;
  return t;
}

StatusOr<ChatTemplate> ChatTemplate::FromGguf(const GgufFile& gguf) {
  std::string_view source;
  RETURN_IF_ERROR(gguf.GetString("tokenizer.chat_template", &source, false));
  if (source.empty()) return Status::Error("the model has no chat template (tokenizer.chat_template)");
  StatusOr<ChatTemplate> t = Detect(source);
  if (!t.ok()) return t.status().Context("tokenizer.chat_template");
  return t;
}

std::string ChatTemplate::Supported() {
  std::string s;
  for (std::string_view n : kRendered) {
    if (!s.empty()) s += ", ";
    s += n;
  }
  return s;
}

std::string_view ChatTemplate::end_of_turn() const {
  if (name_ == "chatml" || name_ == "phi4") return "<|im_end|>";
  if (name_ == "llama3") return "<|eot_id|>";
  if (name_ == "phi3") return "<|end|>";
  return "</s>";  // llama2 and mistral variants end a turn with EOS
}

StatusOr<RenderedChat> ChatTemplate::Render(std::span<const ChatMessage> messages) const {
  if (messages.empty()) return Status::Error("chat: no messages");
  if (messages.size() > kMaxMessages) {
    return Status::Error("chat: " + std::to_string(messages.size()) + " messages (limit " +
                         std::to_string(kMaxMessages) + ")");
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    if (r != "system" && r != "user" && r != "assistant") {
      return Status::Error("chat: message " + std::to_string(i) + " has role '" + r.substr(0, 32) +
                           "' (expected system, user or assistant)");
    }
  }
  Builder b;
  const std::string& t = name_;
  if (t == "chatml") {
    for (const ChatMessage& m : messages) {
      b.Markup("<|im_start|>" + m.role + "\n");
      b.Content(m.content);
      b.Markup("<|im_end|>\n");
    }
    b.Markup("<|im_start|>assistant\n");
  } else if (t == "phi4") {
    for (const ChatMessage& m : messages) {
      b.Markup("<|im_start|>" + m.role + "<|im_sep|>");
      b.Content(m.content);
      b.Markup("<|im_end|>");
    }
    b.Markup("<|im_start|>assistant<|im_sep|>");
  } else if (t == "mistral-v7" || t == "mistral-v7-tekken") {
    const std::string_view sp = t == "mistral-v7" ? " " : "";
    for (const ChatMessage& m : messages) {
      if (m.role == "system") {
        b.Markup("[SYSTEM_PROMPT]" + std::string(sp));
        b.Content(m.content);
        b.Markup("[/SYSTEM_PROMPT]");
      } else if (m.role == "user") {
        b.Markup("[INST]" + std::string(sp));
        b.Content(m.content);
        b.Markup("[/INST]");
      } else {
        b.Markup(sp);
        b.Content(m.content);
        b.Markup("</s>");
      }
    }
  } else if (t == "mistral-v1" || t == "mistral-v3" || t == "mistral-v3-tekken") {
    const std::string leading = t == "mistral-v1" ? " " : "";
    const std::string trailing = t == "mistral-v3-tekken" ? "" : " ";
    const bool trim_assistant = t == "mistral-v3";
    bool inside_turn = false;
    for (const ChatMessage& m : messages) {
      if (!inside_turn) {
        b.Markup(leading + "[INST]" + trailing);
        inside_turn = true;
      }
      if (m.role == "system") {
        b.Content(m.content);
        b.Markup("\n\n");
      } else if (m.role == "user") {
        b.Content(m.content);
        b.Markup(leading + "[/INST]");
      } else {
        b.Markup(trailing);
        b.Content(trim_assistant ? Trim(m.content) : std::string_view(m.content));
        b.Markup("</s>");
        inside_turn = false;
      }
    }
  } else if (t == "llama2" || t == "llama2-sys" || t == "llama2-sys-bos" || t == "llama2-sys-strip") {
    const bool system_supported = t != "llama2";
    const bool bos_inside_history = t == "llama2-sys-bos";
    const bool strip = t == "llama2-sys-strip";
    bool inside_turn = true;  // the first [INST] has no BOS: the tokenizer adds it
    b.Markup("[INST] ");
    for (const ChatMessage& m : messages) {
      const std::string_view content = strip ? Trim(m.content) : std::string_view(m.content);
      if (!inside_turn) {
        inside_turn = true;
        b.Markup(bos_inside_history ? "<s>[INST] " : "[INST] ");
      }
      if (m.role == "system") {
        if (system_supported) {
          b.Markup("<<SYS>>\n");
          b.Content(content);
          b.Markup("\n<</SYS>>\n\n");
        } else {
          b.Content(content);  // folded into the first turn without <<SYS>>
          b.Markup("\n");
        }
      } else if (m.role == "user") {
        b.Content(content);
        b.Markup(" [/INST]");
      } else {
        b.Content(content);
        b.Markup("</s>");
        inside_turn = false;
      }
    }
  } else if (t == "llama3") {
    for (const ChatMessage& m : messages) {
      b.Markup("<|start_header_id|>" + m.role + "<|end_header_id|>\n\n");
      b.Content(Trim(m.content));
      b.Markup("<|eot_id|>");
    }
    b.Markup("<|start_header_id|>assistant<|end_header_id|>\n\n");
  } else if (t == "phi3") {
    for (const ChatMessage& m : messages) {
      b.Markup("<|" + m.role + "|>\n");
      b.Content(m.content);
      b.Markup("<|end|>\n");
    }
    b.Markup("<|assistant|>\n");
  } else {
    return Status::Error("chat template '" + t + "' cannot be rendered");  // Detect() admits only rendered names
  }
  return b.Take();
}

}  // namespace appliance::runtime
