#include "image/runtime_config.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace appliance::image {
namespace {

TEST(RuntimeConfig, MatchesTheArchitectureDocument) {
  StatusOr<RuntimeConfig> c = StandardRuntimeConfig(2);
  ASSERT_TRUE(c.ok()) << c.status().message();
  // Byte for byte the example in docs/architecture.md.
  EXPECT_EQ(RenderRuntimeConfig(*c),
            "{\n"
            "  \"argv\": [\"appliance-runtime\", \"serve\", \"--model-fd\", \"4\", \"--channel-fd\", \"3\", "
            "\"--threads\", \"2\"],\n"
            "  \"channel\": \"/dev/ttyS1\",\n"
            "  \"executable\": \"usr/bin/appliance-runtime\",\n"
            "  \"model\": \"models/model.gguf\"\n"
            "}\n");
}

TEST(RuntimeConfig, IsValidJsonWithTheThreadCount) {
  StatusOr<RuntimeConfig> c = StandardRuntimeConfig(7);
  ASSERT_TRUE(c.ok());
  nlohmann::json j = nlohmann::json::parse(RenderRuntimeConfig(*c));
  EXPECT_EQ(j["argv"].back(), "7");
  EXPECT_EQ(j["channel"], "/dev/ttyS1");
  EXPECT_EQ(j["executable"], "usr/bin/appliance-runtime");
  EXPECT_EQ(j["model"], "models/model.gguf");
  EXPECT_EQ(j.size(), 4u);
}

TEST(RuntimeConfig, ListsModulesInLoadOrderWhenThereAreAny) {
  StatusOr<RuntimeConfig> c = StandardRuntimeConfig(2, {"lib/modules/r/kernel/b.ko", "lib/modules/r/kernel/a.ko"});
  ASSERT_TRUE(c.ok());
  const std::string text = RenderRuntimeConfig(*c);
  EXPECT_NE(text.find("  \"model\": \"models/model.gguf\",\n  \"modules\": [\"lib/modules/r/kernel/b.ko\", "
                      "\"lib/modules/r/kernel/a.ko\"]\n}\n"),
            std::string::npos)
      << text;
  nlohmann::json j = nlohmann::json::parse(text);
  EXPECT_EQ(j["modules"].size(), 2u);
}

TEST(RuntimeConfig, EscapesStrings) {
  RuntimeConfig c;
  c.argv = {"a\"b", "c\\d", "e\nf"};
  c.channel = "x";
  c.executable = "y";
  c.model = "z";
  nlohmann::json j = nlohmann::json::parse(RenderRuntimeConfig(c));
  EXPECT_EQ(j["argv"][0], "a\"b");
  EXPECT_EQ(j["argv"][1], "c\\d");
  EXPECT_EQ(j["argv"][2], "e\nf");
}

TEST(RuntimeConfig, RefusesBadThreadCounts) {
  EXPECT_FALSE(StandardRuntimeConfig(0).ok());
  EXPECT_FALSE(StandardRuntimeConfig(kMaxRuntimeThreads + 1).ok());
  EXPECT_TRUE(StandardRuntimeConfig(kMaxRuntimeThreads).ok());
}

}  // namespace
}  // namespace appliance::image
