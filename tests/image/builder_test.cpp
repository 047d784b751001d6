// BuildImage's input checks: each bad input gives a clear error naming it,
// before anything is written. (The image itself: image_build_test.)
#include "image/image_builder.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "manifests/crypto.h"
#include "test_util.h"

namespace appliance::image {
namespace {

using testing::ScratchDir;
using testing::WriteAll;

class BuilderInputs : public ::testing::Test {
 protected:
  void SetUp() override {
    StatusOr<manifest::KeyPairPem> kp = manifest::GenerateKeyPair();
    ASSERT_TRUE(kp.ok()) << kp.status().message();
    WriteAll(dir_ / "signing.key", kp->private_pem);
    o_.model = std::string(APPLIANCE_SHARED_DIR) + "/models/stories260K.gguf";
    o_.key = dir_ / "signing.key";
    o_.out_dir = dir_ / "out";
    o_.init = dir_ / "missing-init";
    o_.runtime = dir_ / "missing-runtime";
    o_.kernel_dir = dir_ / "kernel";
    o_.level = "L1";
    o_.release = "0.1.0";
  }

  std::string Error() {
    StatusOr<BuildReport> r = BuildImage(o_);
    EXPECT_FALSE(r.ok());
    EXPECT_FALSE(std::filesystem::exists(o_.out_dir)) << "nothing is written when an input is bad";
    return r.ok() ? std::string() : r.status().message();
  }

  ScratchDir dir_;
  BuildOptions o_;
};

TEST_F(BuilderInputs, MissingModel) {
  o_.model = dir_ / "nope.gguf";
  EXPECT_EQ(Error(), "model " + o_.model + ": No such file or directory");
}

TEST_F(BuilderInputs, ModelIsADirectory) {
  o_.model = dir_.path();
  EXPECT_EQ(Error(), "model " + o_.model + ": not a regular file");
}

TEST_F(BuilderInputs, UnreadableKey) {
  o_.key = dir_ / "missing.key";
  EXPECT_EQ(Error(), "signing key: open " + o_.key + ": No such file or directory");
}

TEST_F(BuilderInputs, KeyThatIsNotAKey) {
  WriteAll(dir_ / "junk.key", "not a pem key\n");
  o_.key = dir_ / "junk.key";
  std::string e = Error();
  EXPECT_EQ(e.rfind("signing key " + o_.key + ": ", 0), 0u) << e;
}

TEST_F(BuilderInputs, HugeKeyFileIsRefusedBeforeReading) {
  WriteAll(dir_ / "huge.key", std::string(kMaxKeyBytes + 1, 'k'));
  o_.key = dir_ / "huge.key";
  std::string e = Error();
  EXPECT_NE(e.find("more than the limit"), std::string::npos) << e;
}

TEST_F(BuilderInputs, MissingInit) {
  EXPECT_EQ(Error(), "init " + o_.init + ": No such file or directory");
}

TEST_F(BuilderInputs, BadOptions) {
  o_.level = "L5";
  EXPECT_EQ(Error(), "integrity level must be one of L1 L2 L3 L4, got 'L5'");
  o_.level = "L1";
  o_.manifest_version = 0;
  EXPECT_EQ(Error(), "manifest version must be at least 1");
  o_.manifest_version = 1;
  o_.init.clear();
  EXPECT_EQ(Error(), "no appliance-init given (--init; this build has no default)");
}

TEST(SourceDateEpoch, Parsing) {
  EXPECT_EQ(ParseSourceDateEpoch(nullptr).value(), 0);
  EXPECT_EQ(ParseSourceDateEpoch("").value(), 0);
  EXPECT_EQ(ParseSourceDateEpoch("1700000000").value(), 1700000000);
  EXPECT_EQ(ParseSourceDateEpoch("4294967295").value(), 4294967295);
  EXPECT_FALSE(ParseSourceDateEpoch("4294967296").ok());
  EXPECT_FALSE(ParseSourceDateEpoch("-1").ok());
  EXPECT_FALSE(ParseSourceDateEpoch("12a").ok());
  EXPECT_FALSE(ParseSourceDateEpoch(" 1").ok());
  EXPECT_FALSE(ParseSourceDateEpoch("99999999999").ok());
}

}  // namespace
}  // namespace appliance::image
