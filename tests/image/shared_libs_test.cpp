#include "image/shared_libs.h"

#include <gtest/gtest.h>

namespace appliance::image {
namespace {

TEST(ParseLddOutput, TypicalDynamicExecutable) {
  StatusOr<LddResult> r = ParseLddOutput(
      "\tlinux-vdso.so.1 (0x00007ffd1b9f2000)\n"
      "\tlibopenblas.so.0 => /lib/x86_64-linux-gnu/libopenblas.so.0 (0x00007f0c2d000000)\n"
      "\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f0c2ce00000)\n"
      "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c2cc1f000)\n"
      "\t/lib64/ld-linux-x86-64.so.2 (0x00007f0c2f4c4000)\n");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_FALSE(r->is_static);
  EXPECT_EQ(r->loader, "/lib64/ld-linux-x86-64.so.2");
  ASSERT_EQ(r->libraries.size(), 3u);
  // Sorted by soname.
  EXPECT_EQ(r->libraries[0].soname, "libc.so.6");
  EXPECT_EQ(r->libraries[0].host_path, "/lib/x86_64-linux-gnu/libc.so.6");
  EXPECT_EQ(r->libraries[1].soname, "libopenblas.so.0");
  EXPECT_EQ(r->libraries[2].soname, "libstdc++.so.6");
}

TEST(ParseLddOutput, LoaderListedWithAnArrow) {
  StatusOr<LddResult> r = ParseLddOutput(
      "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n"
      "\tld-linux-x86-64.so.2 => /lib64/ld-linux-x86-64.so.2 (0x2)\n");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->loader, "/lib64/ld-linux-x86-64.so.2");
  ASSERT_EQ(r->libraries.size(), 1u);  // the loader is not a library-dir entry
}

TEST(ParseLddOutput, StaticExecutable) {
  StatusOr<LddResult> r = ParseLddOutput("\tstatically linked\n");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->is_static);
  EXPECT_TRUE(r->libraries.empty());
  r = ParseLddOutput("\tnot a dynamic executable\n");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->is_static);
}

TEST(ParseLddOutput, MissingLibraryIsAnError) {
  StatusOr<LddResult> r = ParseLddOutput(
      "\tlibmissing.so.3 => not found\n"
      "\t/lib64/ld-linux-x86-64.so.2 (0x1)\n");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "shared library libmissing.so.3 not found (ldd)");
}

TEST(ParseLddOutput, RefusesWhatItDoesNotUnderstand) {
  EXPECT_FALSE(ParseLddOutput("\tsomething odd\n\t/lib64/ld-linux-x86-64.so.2 (0x1)\n").ok());
  EXPECT_FALSE(ParseLddOutput("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n").ok());  // no interpreter
  EXPECT_FALSE(ParseLddOutput("\t../evil.so => /tmp/evil.so (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x1)\n").ok());
  EXPECT_FALSE(ParseLddOutput("\tlibc.so.6 => relative/libc.so.6 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x1)\n").ok());
  EXPECT_FALSE(ParseLddOutput("\tlibc.so.6 => /a/libc.so.6 (0x1)\n\tlibc.so.6 => /b/libc.so.6 (0x2)\n"
                              "\t/lib64/ld-linux-x86-64.so.2 (0x1)\n")
                   .ok());
}

TEST(ResolveSharedLibraries, RealDynamicExecutable) {
  StatusOr<LddResult> r = ResolveSharedLibraries("/bin/true");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_FALSE(r->is_static);
  EXPECT_EQ(r->loader, "/lib64/ld-linux-x86-64.so.2");
  bool has_libc = false;
  for (const SharedLibrary& l : r->libraries) has_libc |= l.soname == "libc.so.6";
  EXPECT_TRUE(has_libc);
}

TEST(ResolveSharedLibraries, RealStaticExecutable) {
  // Debian's ldconfig is a static-pie binary.
  StatusOr<LddResult> r = ResolveSharedLibraries("/sbin/ldconfig");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->is_static);
}

TEST(ResolveSharedLibraries, MissingFileIsAClearError) {
  StatusOr<LddResult> r = ResolveSharedLibraries("/nonexistent/appliance-runtime");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("ldd /nonexistent/appliance-runtime"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("No such file or directory"), std::string::npos) << r.status().message();
}

}  // namespace
}  // namespace appliance::image
