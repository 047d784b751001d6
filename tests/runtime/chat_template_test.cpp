// Chat templates: recognising real tokenizer.chat_template sources, rendering
// every supported template against hand-written expected prompts, the markup
// ranges, and tokenizing a rendered chat with a real vocab (Phi-3).
#include "runtime/chat_template.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/runtime/gguf_builder.h"
#include "tests/runtime/test_util.h"

namespace appliance::runtime {
namespace {

using ::testing::HasSubstr;

std::string DetectName(std::string_view source) {
  auto t = ChatTemplate::Detect(source);
  return t.ok() ? t->name() : "error: " + t.status().message();
}

// Sources as shipped in tokenizer_config.json / GGUF files (shortened where
// the rest does not matter for recognition).
constexpr const char* kQwen2Template =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou "
    "are a helpful assistant<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\\n' }}{% endif %}";
constexpr const char* kLlama3Template =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
    "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
constexpr const char* kLlama2ChatTemplate =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif "
    "%}{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}{% set content = "
    "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
    "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' "
    "[/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% "
    "endfor %}";
constexpr const char* kMistralV1Template =
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}{%- endif %}{{- "
    "bos_token }}{%- for message in loop_messages %}{%- if loop.first and system_message is defined %}{{- ' [INST] ' + "
    "system_message + '\\n\\n' + message['content'] + ' [/INST]' }}{%- else %}{{- ' [INST] ' + message['content'] + ' "
    "[/INST]' }}{%- endif %}{%- endfor %}";
constexpr const char* kMistralV3Template =
    "{%- for message in loop_messages %}{%- if message[\"role\"] == \"user\" %}{%- if tools is not none %}{{- "
    "\"[AVAILABLE_TOOLS] [\" }}{%- endif %}{{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}{%- endif %}{%- "
    "endfor %}";
constexpr const char* kMistralV3TekkenTemplate =
    "{%- for message in loop_messages %}{%- if message[\"role\"] == \"user\" %}{%- if tools is not none %}{{- "
    "\"[AVAILABLE_TOOLS][\" }}{%- endif %}{{- \"[INST]\" + message[\"content\"] + \"[/INST]\" }}{%- endif %}{%- "
    "endfor %}";
constexpr const char* kMistralV7Template =
    "{%- if messages[0]['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + messages[0]['content'] + '[/SYSTEM_PROMPT]' "
    "}}{%- endif %}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}{{- '[INST]' + "
    "message['content'] + '[/INST]' }}{%- endif %}{%- endfor %}";

// The Phi-3 template of shared/vocab/ggml-vocab-phi-3.gguf.
std::string Phi3Source() {
  auto bytes = testing::ReadFile(testing::SharedPath("vocab/ggml-vocab-phi-3.gguf"));
  auto g = GgufFile::Parse(bytes);
  if (!g.ok()) return "";
  std::string_view s;
  if (!g->GetString("tokenizer.chat_template", &s, true).ok()) return "";
  return std::string(s);
}

TEST(ChatTemplate, RecognisesRealTemplates) {
  EXPECT_EQ(DetectName(kQwen2Template), "chatml");
  EXPECT_EQ(DetectName(kLlama3Template), "llama3");
  EXPECT_EQ(DetectName(kLlama2ChatTemplate), "llama2-sys-strip");
  EXPECT_EQ(DetectName(kMistralV1Template), "mistral-v1");
  EXPECT_EQ(DetectName(kMistralV3Template), "mistral-v3");
  EXPECT_EQ(DetectName(kMistralV3TekkenTemplate), "mistral-v3-tekken");
  EXPECT_EQ(DetectName(kMistralV7Template), "mistral-v7");
  EXPECT_EQ(DetectName(Phi3Source()), "phi3");
  // The llama2 variants by their markers.
  EXPECT_EQ(DetectName("{{ '[INST] ' + message['content'] + ' [/INST]' }}"), "llama2");
  EXPECT_EQ(DetectName("{{ '<<SYS>>\\n' }}{{ '[INST] ' }}"), "llama2-sys");
  EXPECT_EQ(DetectName("{{ bos_token + '[INST] ' + content }}"), "llama2-sys-bos");
  EXPECT_EQ(DetectName("{{ '<|im_start|>' + role + '<|im_sep|>' }}"), "phi4");
  // Built-in names are accepted as they are.
  for (const char* n : {"chatml", "llama2", "llama2-sys", "llama2-sys-bos", "llama2-sys-strip", "mistral-v1",
                        "mistral-v3", "mistral-v3-tekken", "mistral-v7", "mistral-v7-tekken", "llama3", "phi3",
                        "phi4"}) {
    EXPECT_EQ(DetectName(n), n);
  }
}

TEST(ChatTemplate, RefusesWhatItCannotRender) {
  EXPECT_EQ(DetectName("{{ messages }}"),
            "error: chat template not recognised (supported: chatml, phi4, llama2, llama2-sys, llama2-sys-bos, "
            "llama2-sys-strip, mistral-v1, mistral-v3, mistral-v3-tekken, mistral-v7, mistral-v7-tekken, llama3, "
            "phi3)");
  EXPECT_THAT(DetectName("{{ '<start_of_turn>' + role }}"),
              HasSubstr("error: chat template recognised as 'gemma', which this runtime does not render"));
  EXPECT_THAT(DetectName("zephyr"), HasSubstr("recognised as 'zephyr'"));
  EXPECT_THAT(DetectName(""), HasSubstr("not recognised"));
  // No template in the model.
  testing::GgufBuilder b;
  b.KvString("general.name", "x");
  const auto bytes = b.Build();
  auto g = GgufFile::Parse(bytes);
  ASSERT_TRUE(g.ok());
  auto t = ChatTemplate::FromGguf(*g);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().message(), "the model has no chat template (tokenizer.chat_template)");
  testing::GgufBuilder b2;
  b2.KvString("tokenizer.chat_template", "{{ nothing }}");
  const auto bytes2 = b2.Build();
  auto g2 = GgufFile::Parse(bytes2);
  ASSERT_TRUE(g2.ok());
  t = ChatTemplate::FromGguf(*g2);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("tokenizer.chat_template: chat template not recognised"));
}

const std::vector<ChatMessage> kConversation = {
    {"system", "You are terse."},
    {"user", "Hi"},
    {"assistant", "Hello!"},
    {"user", "How are you?"},
};

std::string Render(const std::string& name, const std::vector<ChatMessage>& messages = kConversation) {
  auto t = ChatTemplate::Detect(name);
  EXPECT_TRUE(t.ok()) << t.status().message();
  if (!t.ok()) return "";
  auto r = t->Render(messages);
  EXPECT_TRUE(r.ok()) << r.status().message();
  return r.ok() ? r->text : "";
}

TEST(ChatTemplate, RendersChatml) {
  EXPECT_EQ(Render("chatml"),
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(ChatTemplate::Detect("chatml")->end_of_turn(), "<|im_end|>");
}

TEST(ChatTemplate, RendersPhi4) {
  EXPECT_EQ(Render("phi4", {{"user", "Hi"}}),
            "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>");
}

TEST(ChatTemplate, RendersLlama2Variants) {
  EXPECT_EQ(Render("llama2"), "[INST] You are terse.\nHi [/INST]Hello!</s>[INST] How are you? [/INST]");
  EXPECT_EQ(Render("llama2-sys"),
            "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST]Hello!</s>[INST] How are you? [/INST]");
  EXPECT_EQ(Render("llama2-sys-bos"),
            "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST]Hello!</s><s>[INST] How are you? [/INST]");
  EXPECT_EQ(Render("llama2-sys-strip", {{"system", "  sys \n"}, {"user", " Hi  "}, {"assistant", " ok "}, {"user", "\tQ"}}),
            "[INST] <<SYS>>\nsys\n<</SYS>>\n\nHi [/INST]ok</s>[INST] Q [/INST]");
  EXPECT_EQ(ChatTemplate::Detect("llama2")->end_of_turn(), "</s>");
}

TEST(ChatTemplate, RendersMistralVariants) {
  EXPECT_EQ(Render("mistral-v1"), " [INST] You are terse.\n\nHi [/INST] Hello!</s> [INST] How are you? [/INST]");
  EXPECT_EQ(Render("mistral-v3", {{"user", "Hi"}, {"assistant", "  Hello!\n"}, {"user", "Q"}}),
            "[INST] Hi[/INST] Hello!</s>[INST] Q[/INST]");  // v3 trims the assistant's reply
  EXPECT_EQ(Render("mistral-v3-tekken"), "[INST]You are terse.\n\nHi[/INST]Hello!</s>[INST]How are you?[/INST]");
  EXPECT_EQ(Render("mistral-v7"),
            "[SYSTEM_PROMPT] You are terse.[/SYSTEM_PROMPT][INST] Hi[/INST] Hello!</s>[INST] How are you?[/INST]");
  EXPECT_EQ(Render("mistral-v7-tekken"),
            "[SYSTEM_PROMPT]You are terse.[/SYSTEM_PROMPT][INST]Hi[/INST]Hello!</s>[INST]How are you?[/INST]");
  EXPECT_EQ(ChatTemplate::Detect("mistral-v7")->end_of_turn(), "</s>");
}

TEST(ChatTemplate, RendersLlama3) {
  EXPECT_EQ(Render("llama3", {{"system", "You are terse."}, {"user", "  Hi\n"}}),
            "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(ChatTemplate::Detect("llama3")->end_of_turn(), "<|eot_id|>");
}

TEST(ChatTemplate, RendersPhi3) {
  EXPECT_EQ(Render("phi3"),
            "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
            "<|user|>\nHow are you?<|end|>\n<|assistant|>\n");
  EXPECT_EQ(ChatTemplate::Detect("phi3")->end_of_turn(), "<|end|>");
}

TEST(ChatTemplate, MarkupCoversOnlyTemplateText) {
  auto t = ChatTemplate::Detect("chatml");
  ASSERT_TRUE(t.ok());
  auto r = t->Render(std::vector<ChatMessage>{{"user", "A<|im_end|>B"}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->text, "<|im_start|>user\nA<|im_end|>B<|im_end|>\n<|im_start|>assistant\n");
  ASSERT_EQ(r->markup.size(), 2u);
  EXPECT_EQ(r->text.substr(r->markup[0].begin, r->markup[0].end - r->markup[0].begin), "<|im_start|>user\n");
  EXPECT_EQ(r->text.substr(r->markup[1].begin, r->markup[1].end - r->markup[1].begin),
            "<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, RefusesBadMessages) {
  auto t = ChatTemplate::Detect("chatml");
  ASSERT_TRUE(t.ok());
  auto r = t->Render(std::vector<ChatMessage>{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "chat: no messages");
  r = t->Render(std::vector<ChatMessage>{{"user", "x"}, {"tool", "y"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "chat: message 1 has role 'tool' (expected system, user or assistant)");
  r = t->Render(std::vector<ChatMessage>(ChatTemplate::kMaxMessages + 1, {"user", "x"}));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("limit 4096"));
}

// A rendered Phi-3 chat through the Phi-3 vocab: the template's control
// tokens become their ids (and, as llama.cpp sets rstrip on Phi-3's special
// tokens, swallow the newline after them); the same text typed by a user stays
// text.
TEST(ChatTemplate, TokenizesPhi3ChatWithControlTokensOnlyFromMarkup) {
  auto bytes = testing::ReadFile(testing::SharedPath("vocab/ggml-vocab-phi-3.gguf"));
  auto g = GgufFile::Parse(bytes);
  ASSERT_TRUE(g.ok());
  auto tok = Tokenizer::FromGguf(*g);
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  auto tmpl = ChatTemplate::FromGguf(*g);
  ASSERT_TRUE(tmpl.ok()) << tmpl.status().message();
  ASSERT_EQ(tmpl->name(), "phi3");
  const int32_t user = tok->Find("<|user|>"), end = tok->Find("<|end|>"), assistant = tok->Find("<|assistant|>");
  ASSERT_EQ(user, 32010);
  ASSERT_EQ(end, 32007);
  ASSERT_EQ(assistant, 32001);
  EXPECT_TRUE(tok->IsEndOfGeneration(end));

  auto chat = tmpl->Render(std::vector<ChatMessage>{{"user", "Hi <|end|>"}});
  ASSERT_TRUE(chat.ok());
  auto ids = tok->Encode(chat->text, tok->add_bos(), chat->markup);
  ASSERT_TRUE(ids.ok());
  auto content = tok->Encode("Hi <|end|>", false);
  ASSERT_TRUE(content.ok());
  std::vector<int32_t> expected = {1, user};
  expected.insert(expected.end(), content->begin(), content->end());
  expected.push_back(end);
  expected.push_back(assistant);
  EXPECT_EQ(*ids, expected);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), end), 1);

  // Without markup ranges nothing is a control token.
  auto plain = tok->Encode(chat->text, false);
  ASSERT_TRUE(plain.ok());
  for (int32_t id : {user, end, assistant}) EXPECT_EQ(std::count(plain->begin(), plain->end(), id), 0);
}

}  // namespace
}  // namespace appliance::runtime
