#include "image/kernel_modules.h"

#include <cstring>
#include <filesystem>

#include <gtest/gtest.h>

#include "test_util.h"

namespace appliance::image {
namespace {

using testing::ScratchDir;
using testing::WriteAll;

template <typename T>
void Put(std::string& b, size_t off, T v) {
  std::memcpy(b.data() + off, &v, sizeof(T));
}

// A minimal ELF64 LE relocatable with a .shstrtab and a .modinfo section.
std::string FakeModule(const std::string& modinfo) {
  const std::string shstrtab = std::string("\0.shstrtab\0.modinfo\0", 20);
  std::string b(64, '\0');
  const size_t strtab_off = b.size();
  b += shstrtab;
  const size_t info_off = b.size();
  b += modinfo;
  while (b.size() % 8) b.push_back('\0');
  const size_t shoff = b.size();
  b.resize(shoff + 3 * 64, '\0');  // null section, .shstrtab, .modinfo
  b[0] = 0x7f;
  b[1] = 'E';
  b[2] = 'L';
  b[3] = 'F';
  b[4] = 2;  // 64-bit
  b[5] = 1;  // little-endian
  b[6] = 1;
  Put<uint16_t>(b, 0x10, 1);   // ET_REL
  Put<uint16_t>(b, 0x12, 62);  // x86-64
  Put<uint64_t>(b, 0x28, shoff);
  Put<uint16_t>(b, 0x3a, 64);
  Put<uint16_t>(b, 0x3c, 3);
  Put<uint16_t>(b, 0x3e, 1);
  auto section = [&](int i, uint32_t name, uint32_t type, size_t off, size_t size) {
    size_t h = shoff + static_cast<size_t>(i) * 64;
    Put<uint32_t>(b, h, name);
    Put<uint32_t>(b, h + 4, type);
    Put<uint64_t>(b, h + 0x18, off);
    Put<uint64_t>(b, h + 0x20, size);
  };
  section(1, 1, 3 /* SHT_STRTAB */, strtab_off, shstrtab.size());
  section(2, 11, 1 /* SHT_PROGBITS */, info_off, modinfo.size());
  return b;
}

std::span<const uint8_t> Bytes(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

TEST(ParseModuleInfo, ReadsNameAndDepends) {
  std::string info = std::string("license=GPL\0depends=virtio_ring,vsock-core\0name=my-mod\0vermagic=6.1\0", 66);
  StatusOr<ModuleInfo> m = ParseModuleInfo(Bytes(FakeModule(info)), "m.ko");
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(m->name, "my_mod");
  EXPECT_EQ(m->depends, (std::vector<std::string>{"virtio_ring", "vsock_core"}));
}

TEST(ParseModuleInfo, EmptyDepends) {
  StatusOr<ModuleInfo> m = ParseModuleInfo(Bytes(FakeModule(std::string("depends=\0name=a\0", 16))), "a.ko");
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_TRUE(m->depends.empty());
}

TEST(ParseModuleInfo, RefusesMalformedFiles) {
  const std::string good = FakeModule(std::string("name=a\0", 7));
  auto err = [](const std::string& bytes) {
    StatusOr<ModuleInfo> m = ParseModuleInfo(Bytes(bytes), "x.ko");
    return m.ok() ? std::string("ok") : m.status().message();
  };
  EXPECT_EQ(err("short"), "x.ko: too small for an ELF header");
  std::string b = good;
  b[0] = 'X';
  EXPECT_EQ(err(b), "x.ko: not an ELF file");
  b = good;
  b[4] = 1;
  EXPECT_EQ(err(b), "x.ko: not a 64-bit little-endian ELF file");
  // Section headers cut off.
  EXPECT_EQ(err(good.substr(0, good.size() - 10)), "x.ko: section headers past the end");
  // A section pointing past the end.
  b = good;
  Put<uint64_t>(b, good.size() - 64 + 0x20, uint64_t{1} << 40);
  EXPECT_NE(err(b).find("lies past the end"), std::string::npos);
  // Overflowing offset + size.
  b = good;
  Put<uint64_t>(b, good.size() - 64 + 0x18, ~uint64_t{0});
  EXPECT_NE(err(b).find("lies past the end"), std::string::npos);
  // Section table offset overflow.
  b = good;
  Put<uint64_t>(b, 0x28, ~uint64_t{0} - 8);
  EXPECT_EQ(err(b), "x.ko: section headers past the end");
  b = good;
  Put<uint16_t>(b, 0x3e, 9);
  EXPECT_EQ(err(b), "x.ko: section name table index out of range");
  // No .modinfo.
  b = good;
  Put<uint32_t>(b, good.size() - 64, 2);  // rename .modinfo to "shstrtab"
  EXPECT_EQ(err(b), "x.ko: no .modinfo section (not a kernel module?)");
}

class FakeKernelTree : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteAll(dir_ / "version", "6.1.0-test\n");
    std::filesystem::create_directories(root() + "/kernel/drivers/x");
    std::filesystem::create_directories(root() + "/kernel/net/y");
    Module("kernel/drivers/x/base.ko", "base", "");
    Module("kernel/drivers/x/mid-a.ko", "mid_a", "base");
    Module("kernel/net/y/mid_b.ko", "mid_b", "base,builtin_one");
    Module("kernel/net/y/top.ko", "top", "mid_a,mid-b");
    WriteAll(root() + "/modules.builtin", "kernel/drivers/tty/builtin_one.ko\n");
  }
  std::string root() const { return dir_ / "modules/6.1.0-test"; }
  void Module(const std::string& rel, const std::string& name, const std::string& deps) {
    std::string info = "name=" + name + std::string(1, '\0') + "depends=" + deps + std::string(1, '\0');
    WriteAll(root() + "/" + rel, FakeModule(info));
  }
  std::vector<std::string> Order(const std::vector<std::string>& names) {
    StatusOr<std::vector<ModuleFile>> r = ResolveModules(dir_.path(), names);
    EXPECT_TRUE(r.ok()) << r.status().message();
    std::vector<std::string> out;
    if (r.ok()) {
      for (const ModuleFile& m : *r) out.push_back(m.name);
    }
    return out;
  }
  ScratchDir dir_;
};

TEST_F(FakeKernelTree, DependenciesComeFirstAndOnce) {
  EXPECT_EQ(Order({"top"}), (std::vector<std::string>{"base", "mid_a", "mid_b", "top"}));
  EXPECT_EQ(Order({"mid-b", "top"}), (std::vector<std::string>{"base", "mid_b", "mid_a", "top"}));
  EXPECT_EQ(Order({"builtin-one"}), std::vector<std::string>{});  // built in: nothing to load
  StatusOr<std::vector<ModuleFile>> r = ResolveModules(dir_.path(), {"mid_a"});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[1].image_path, "lib/modules/6.1.0-test/kernel/drivers/x/mid-a.ko");
  EXPECT_EQ((*r)[1].host_path, root() + "/kernel/drivers/x/mid-a.ko");
}

TEST_F(FakeKernelTree, Errors) {
  auto err = [&](const std::vector<std::string>& names) {
    StatusOr<std::vector<ModuleFile>> r = ResolveModules(dir_.path(), names);
    return r.ok() ? std::string("ok") : r.status().message();
  };
  EXPECT_EQ(err({"nope"}), "kernel module nope: not found under " + root());
  Module("kernel/net/y/needs.ko", "needs", "missing_dep");
  EXPECT_EQ(err({"needs"}), "kernel module missing_dep (needed by needs): not found under " + root());
  Module("kernel/net/y/c1.ko", "c1", "c2");
  Module("kernel/net/y/c2.ko", "c2", "c1");
  EXPECT_EQ(err({"c1"}), "kernel modules: dependency cycle through c1");
  WriteAll(root() + "/kernel/net/y/packed.ko.xz", "xz");
  EXPECT_EQ(err({"packed"}), "kernel module packed: kernel/net/y/packed.ko.xz is compressed; only plain .ko files are supported");
  Module("kernel/net/y/liar.ko", "someone_else", "");
  EXPECT_NE(err({"liar"}).find("its .modinfo says name=someone_else"), std::string::npos);
  WriteAll(root() + "/kernel/net/y/junk.ko", "not an elf");
  EXPECT_NE(err({"junk"}).find("junk.ko: too small for an ELF header"), std::string::npos);
  EXPECT_EQ(ResolveModules(dir_.path(), {}).value().size(), 0u);  // nothing asked, nothing read
  EXPECT_NE(ResolveModules(dir_ / "nokernel", {"top"}).status().message().find("scripts/fetch-kernel"),
            std::string::npos);
}

TEST(RealKernel, VsockTransportAndItsDependencies) {
  const std::string kernel_dir = APPLIANCE_KERNEL_DIR;
  if (!std::filesystem::exists(kernel_dir + "/version")) GTEST_SKIP() << "no kernel in " << kernel_dir;
  StatusOr<std::vector<ModuleFile>> r = ResolveModules(kernel_dir, {"vmw_vsock_virtio_transport"});
  ASSERT_TRUE(r.ok()) << r.status().message();
  std::vector<std::string> names;
  for (const ModuleFile& m : *r) names.push_back(m.name);
  ASSERT_FALSE(names.empty());
  EXPECT_EQ(names.back(), "vmw_vsock_virtio_transport");
  auto pos = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) - names.begin(); };
  EXPECT_LT(pos("vsock"), pos("vmw_vsock_virtio_transport_common"));
  EXPECT_LT(pos("vmw_vsock_virtio_transport_common"), pos("vmw_vsock_virtio_transport"));
}

}  // namespace
}  // namespace appliance::image
