// SHA-256 and Ed25519: known-answer vectors, refusals, and interoperability
// with the stock `openssl` tool an auditor would use.
#include "manifests/crypto.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>

#include "base/fd.h"
#include "tests/manifests/test_support.h"

namespace appliance::manifest {
namespace {

using test_support::AsBytes;
using test_support::ReadFile;
using test_support::RunProcess;
using test_support::TempDir;
using test_support::WriteFile;

std::string FromHex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out += static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
  }
  return out;
}

std::string Base64(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

// PKCS#8 PEM of a raw 32-byte Ed25519 seed (RFC 8410 structure), so the RFC
// 8032 test vectors can be fed through the PEM API.
std::string PrivatePemFromSeed(std::string_view seed_hex) {
  const std::string der = FromHex("302e020100300506032b657004220420") + FromHex(seed_hex);
  return "-----BEGIN PRIVATE KEY-----\n" + Base64(der) + "\n-----END PRIVATE KEY-----\n";
}

std::string PublicPemFromRaw(std::string_view pub_hex) {
  const std::string der = FromHex("302a300506032b6570032100") + FromHex(pub_hex);
  return "-----BEGIN PUBLIC KEY-----\n" + Base64(der) + "\n-----END PUBLIC KEY-----\n";
}

bool HaveOpenssl() { return std::string(APPLIANCE_OPENSSL_BIN).size() > 0; }

// ---- SHA-256 ----------------------------------------------------------------

TEST(Sha256, KnownAnswers) {
  EXPECT_EQ(ToHex(Sha256(AsBytes(""))), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(ToHex(Sha256(AsBytes("abc"))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(ToHex(Sha256(AsBytes("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256, ToHex) {
  const uint8_t bytes[] = {0x00, 0x01, 0xab, 0xff};
  EXPECT_EQ(ToHex(bytes), "0001abff");
  EXPECT_EQ(ToHex({}), "");
}

TEST(Sha256Fd, MatchesInMemoryHashAcrossBufferBoundaries) {
  TempDir dir;
  // Larger than the 1 MiB read buffer and not a multiple of it.
  const std::string content = test_support::RandomBytes((3u << 20) + 7, 1);
  WriteFile(dir / "f", content);
  UniqueFd fd(::open((dir / "f").c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  StatusOr<FdDigest> d = Sha256Fd(fd.get(), content.size(), "f");
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->bytes, content.size());
  EXPECT_EQ(d->digest, Sha256(AsBytes(content)));
}

TEST(Sha256Fd, EnforcesMaxBytes) {
  TempDir dir;
  const std::string content = test_support::RandomBytes((1u << 20) + 100, 2);
  WriteFile(dir / "f", content);
  UniqueFd fd(::open((dir / "f").c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  StatusOr<FdDigest> too_small = Sha256Fd(fd.get(), content.size() - 1, "models/m.gguf");
  ASSERT_FALSE(too_small.ok());
  EXPECT_EQ(too_small.status().message(), "models/m.gguf: more than " + std::to_string(content.size() - 1) + " bytes");
  // The bound is not read up to the end: at most one byte beyond it.
  ASSERT_EQ(::lseek(fd.get(), 0, SEEK_CUR), static_cast<off_t>(content.size()));
  ASSERT_EQ(::lseek(fd.get(), 0, SEEK_SET), 0);
  EXPECT_FALSE(Sha256Fd(fd.get(), 0, "f").ok());
  ASSERT_EQ(::lseek(fd.get(), 0, SEEK_SET), 0);
  StatusOr<FdDigest> exact = Sha256Fd(fd.get(), content.size(), "f");
  ASSERT_TRUE(exact.ok()) << exact.status().message();
  EXPECT_EQ(exact->digest, Sha256(AsBytes(content)));
}

TEST(Sha256Fd, HashesFromCurrentOffsetAndWorksOnPipes) {
  TempDir dir;
  WriteFile(dir / "f", "headerPAYLOAD");
  UniqueFd fd(::open((dir / "f").c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_EQ(::lseek(fd.get(), 6, SEEK_SET), 6);
  StatusOr<FdDigest> d = Sha256Fd(fd.get(), 100, "f");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->digest, Sha256(AsBytes("PAYLOAD")));

  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  UniqueFd read_end(p[0]), write_end(p[1]);
  ASSERT_EQ(::write(write_end.get(), "abc", 3), 3);
  write_end.reset();
  StatusOr<FdDigest> piped = Sha256Fd(read_end.get(), 3, "pipe");
  ASSERT_TRUE(piped.ok());
  EXPECT_EQ(ToHex(piped->digest), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256MappedFile, MatchesInMemoryHashAcrossWindows) {
  TempDir dir;
  // More than one mapping window, not a multiple of it or of a page.
  const std::string content = test_support::RandomBytes(kHashWindowBytes + 4096 * 3 + 7, 11);
  WriteFile(dir / "f", content);
  UniqueFd fd(::open((dir / "f").c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(::lseek(fd.get(), 5, SEEK_SET), 5);
  std::atomic<uint64_t> progress{0};
  StatusOr<FdDigest> d = Sha256MappedFile(fd.get(), content.size(), "f", &progress);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->bytes, content.size());
  EXPECT_EQ(d->digest, Sha256(AsBytes(content)));
  EXPECT_EQ(progress.load(), content.size());
  EXPECT_EQ(::lseek(fd.get(), 0, SEEK_CUR), 5) << "the fd's offset is not moved";
}

TEST(Sha256MappedFile, EmptyFileBoundsAndNonRegularFiles) {
  TempDir dir;
  WriteFile(dir / "empty", "");
  UniqueFd empty(::open((dir / "empty").c_str(), O_RDONLY | O_CLOEXEC));
  StatusOr<FdDigest> d = Sha256MappedFile(empty.get(), 0, "empty");
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(ToHex(d->digest), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

  WriteFile(dir / "f", "0123456789");
  UniqueFd fd(::open((dir / "f").c_str(), O_RDONLY | O_CLOEXEC));
  StatusOr<FdDigest> too_big = Sha256MappedFile(fd.get(), 9, "models/m.gguf");
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().message(), "models/m.gguf: more than 9 bytes");

  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  UniqueFd read_end(p[0]), write_end(p[1]);
  StatusOr<FdDigest> piped = Sha256MappedFile(read_end.get(), 10, "pipe");
  ASSERT_FALSE(piped.ok());
  EXPECT_EQ(piped.status().message(), "pipe: not a regular file");
}

TEST(Sha256Fd, ReportsReadErrors) {
  StatusOr<FdDigest> d = Sha256Fd(-1, 10, "nothing");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().message(), "read nothing: Bad file descriptor");
}

// ---- Ed25519: RFC 8032 section 7.1 vectors ---------------------------------

struct Rfc8032Vector {
  const char* seed;
  const char* pub;
  const char* message;
  const char* signature;
};
const Rfc8032Vector kVectors[] = {
    {"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"},
    {"4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"},
};

TEST(Ed25519, Rfc8032KnownAnswers) {
  for (const Rfc8032Vector& v : kVectors) {
    const std::string private_pem = PrivatePemFromSeed(v.seed);
    const std::string message = FromHex(v.message);
    StatusOr<std::string> sig = Sign(AsBytes(message), private_pem);
    ASSERT_TRUE(sig.ok()) << sig.status().message();
    EXPECT_EQ(ToHex(AsBytes(*sig)), v.signature);

    StatusOr<std::string> public_pem = PublicPemFromPrivatePem(private_pem);
    ASSERT_TRUE(public_pem.ok()) << public_pem.status().message();
    EXPECT_EQ(*public_pem, PublicPemFromRaw(v.pub));
    EXPECT_TRUE(Verify(AsBytes(message), AsBytes(*sig), *public_pem).ok());

    // Key id: SHA-256 of the raw public key.
    StatusOr<std::string> id = KeyIdFromPublicPem(*public_pem);
    ASSERT_TRUE(id.ok());
    EXPECT_EQ(*id, ToHex(Sha256(AsBytes(FromHex(v.pub)))));
  }
}

class Ed25519Test : public ::testing::Test {
 protected:
  void SetUp() override {
    StatusOr<KeyPairPem> pair = GenerateKeyPair();
    ASSERT_TRUE(pair.ok()) << pair.status().message();
    keys_ = *pair;
  }
  KeyPairPem keys_;
  const std::string message_ = "{\n  \"format\": \"sealed-appliance-manifest\"\n}\n";
};

TEST_F(Ed25519Test, GeneratedKeysArePem) {
  EXPECT_TRUE(keys_.private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n")) << keys_.private_pem;
  EXPECT_TRUE(keys_.public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n")) << keys_.public_pem;
  StatusOr<std::string> derived = PublicPemFromPrivatePem(keys_.private_pem);
  ASSERT_TRUE(derived.ok());
  EXPECT_EQ(*derived, keys_.public_pem);
  StatusOr<KeyPairPem> other = GenerateKeyPair();
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->private_pem, keys_.private_pem);
}

TEST_F(Ed25519Test, SignVerifyGood) {
  StatusOr<std::string> sig = Sign(AsBytes(message_), keys_.private_pem);
  ASSERT_TRUE(sig.ok()) << sig.status().message();
  EXPECT_EQ(sig->size(), kEd25519SignatureBytes);
  const Status s = Verify(AsBytes(message_), AsBytes(*sig), keys_.public_pem);
  EXPECT_TRUE(s.ok()) << s.message();
  // Deterministic (Ed25519 has no per-signature randomness).
  StatusOr<std::string> again = Sign(AsBytes(message_), keys_.private_pem);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *sig);
}

TEST_F(Ed25519Test, EveryFlippedSignatureBitIsRefused) {
  StatusOr<std::string> sig = Sign(AsBytes(message_), keys_.private_pem);
  ASSERT_TRUE(sig.ok());
  for (size_t bit = 0; bit < 8 * sig->size(); ++bit) {
    std::string bad = *sig;
    bad[bit / 8] = static_cast<char>(bad[bit / 8] ^ (1 << (bit % 8)));
    const Status s = Verify(AsBytes(message_), AsBytes(bad), keys_.public_pem);
    ASSERT_FALSE(s.ok()) << "bit " << bit;
  }
  std::string bad = *sig;
  bad[0] = static_cast<char>(bad[0] ^ 1);
  const Status s = Verify(AsBytes(message_), AsBytes(bad), keys_.public_pem);
  EXPECT_NE(s.message().find("signature does not verify with key " + *KeyIdFromPublicPem(keys_.public_pem)),
            std::string::npos)
      << s.message();
}

TEST_F(Ed25519Test, WrongKeyRefused) {
  StatusOr<std::string> sig = Sign(AsBytes(message_), keys_.private_pem);
  ASSERT_TRUE(sig.ok());
  StatusOr<KeyPairPem> other = GenerateKeyPair();
  ASSERT_TRUE(other.ok());
  const Status s = Verify(AsBytes(message_), AsBytes(*sig), other->public_pem);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("does not verify"), std::string::npos) << s.message();
}

TEST_F(Ed25519Test, TamperedMessageRefused) {
  StatusOr<std::string> sig = Sign(AsBytes(message_), keys_.private_pem);
  ASSERT_TRUE(sig.ok());
  for (size_t i = 0; i < message_.size(); ++i) {
    std::string tampered = message_;
    tampered[i] = static_cast<char>(tampered[i] ^ 0x20);
    ASSERT_FALSE(Verify(AsBytes(tampered), AsBytes(*sig), keys_.public_pem).ok()) << "byte " << i;
  }
  EXPECT_FALSE(Verify(AsBytes(message_ + " "), AsBytes(*sig), keys_.public_pem).ok());
  EXPECT_FALSE(Verify(AsBytes(message_.substr(1)), AsBytes(*sig), keys_.public_pem).ok());
}

TEST_F(Ed25519Test, RefusesWrongSignatureLengthAndBadKeys) {
  StatusOr<std::string> sig = Sign(AsBytes(message_), keys_.private_pem);
  ASSERT_TRUE(sig.ok());
  Status s = Verify(AsBytes(message_), AsBytes(sig->substr(0, 63)), keys_.public_pem);
  EXPECT_EQ(s.message(), "signature: 63 bytes, expected 64");
  s = Verify(AsBytes(message_), AsBytes(*sig + "x"), keys_.public_pem);
  EXPECT_EQ(s.message(), "signature: 65 bytes, expected 64");

  s = Verify(AsBytes(message_), AsBytes(*sig), "not a pem");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("public key: cannot read PEM"), std::string::npos) << s.message();
  // A private key where a public one is expected, and vice versa.
  EXPECT_FALSE(Verify(AsBytes(message_), AsBytes(*sig), keys_.private_pem).ok());
  EXPECT_FALSE(Sign(AsBytes(message_), keys_.public_pem).ok());
  EXPECT_FALSE(KeyIdFromPublicPem("").ok());
  EXPECT_FALSE(Sign(AsBytes(message_), std::string(100000, 'A')).ok());
}

// A P-256 key in PEM, generated through OpenSSL directly.
std::pair<std::string, std::string> EcKeyPem() {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"),
                                                          &EVP_PKEY_free);
  std::unique_ptr<BIO, decltype(&BIO_free)> priv(BIO_new(BIO_s_mem()), &BIO_free);
  std::unique_ptr<BIO, decltype(&BIO_free)> pub(BIO_new(BIO_s_mem()), &BIO_free);
  PEM_write_bio_PrivateKey(priv.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  PEM_write_bio_PUBKEY(pub.get(), key.get());
  char* p = nullptr;
  const long np = BIO_get_mem_data(priv.get(), &p);
  std::string priv_pem(p, static_cast<size_t>(np));
  const long nq = BIO_get_mem_data(pub.get(), &p);
  return {priv_pem, std::string(p, static_cast<size_t>(nq))};
}

TEST_F(Ed25519Test, RefusesOtherKeyTypes) {
  const auto [priv, pub] = EcKeyPem();
  ASSERT_FALSE(priv.empty());
  StatusOr<std::string> sig = Sign(AsBytes(message_), priv);
  ASSERT_FALSE(sig.ok());
  EXPECT_NE(sig.status().message().find("not an Ed25519 key"), std::string::npos) << sig.status().message();
  StatusOr<std::string> id = KeyIdFromPublicPem(pub);
  ASSERT_FALSE(id.ok());
  EXPECT_NE(id.status().message().find("not an Ed25519 key"), std::string::npos) << id.status().message();
}

TEST_F(Ed25519Test, EncryptedPrivateKeyRefusedWithoutPrompting) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(keys_.private_pem.data(),
                                                                static_cast<int>(keys_.private_pem.size())),
                                                &BIO_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr),
                                                          &EVP_PKEY_free);
  ASSERT_TRUE(key);
  std::unique_ptr<BIO, decltype(&BIO_free)> out(BIO_new(BIO_s_mem()), &BIO_free);
  char pass[] = "secret";
  ASSERT_EQ(PEM_write_bio_PKCS8PrivateKey(out.get(), key.get(), EVP_aes_256_cbc(), pass, 6, nullptr, nullptr), 1);
  char* p = nullptr;
  const long n = BIO_get_mem_data(out.get(), &p);
  const std::string encrypted(p, static_cast<size_t>(n));
  ASSERT_NE(encrypted.find("ENCRYPTED"), std::string::npos);
  StatusOr<std::string> sig = Sign(AsBytes(message_), encrypted);
  ASSERT_FALSE(sig.ok());
  EXPECT_NE(sig.status().message().find("private key: cannot read PEM"), std::string::npos) << sig.status().message();
}

// ---- stock openssl interoperability -----------------------------------------

TEST_F(Ed25519Test, StockOpensslVerifiesOurSignature) {
  if (!HaveOpenssl()) GTEST_SKIP() << "openssl binary not found";
  TempDir dir;
  StatusOr<std::string> sig = Sign(AsBytes(message_), keys_.private_pem);
  ASSERT_TRUE(sig.ok());
  WriteFile(dir / "k.pub", keys_.public_pem);
  WriteFile(dir / "manifest.json", message_);
  WriteFile(dir / "manifest.sig", *sig);
  // The auditor's command from docs/compliance.md, verbatim.
  test_support::RunResult r = RunProcess({APPLIANCE_OPENSSL_BIN, "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", "k.pub", "-in",
                              "manifest.json", "-sigfile", "manifest.sig"},
                             {}, {}, dir.path());
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("Signature Verified Successfully"), std::string::npos) << r.out << r.err;

  // And it refuses a tampered manifest: the check above can fail.
  WriteFile(dir / "manifest.json", message_ + " ");
  r = RunProcess({APPLIANCE_OPENSSL_BIN, "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", "k.pub", "-in", "manifest.json",
           "-sigfile", "manifest.sig"},
          {}, {}, dir.path());
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
}

TEST(Ed25519Interop, WeVerifyStockOpensslKeysAndSignatures) {
  if (!HaveOpenssl()) GTEST_SKIP() << "openssl binary not found";
  TempDir dir;
  const std::string message = "signed by openssl\n";
  WriteFile(dir / "msg", message);
  ASSERT_EQ(RunProcess({APPLIANCE_OPENSSL_BIN, "genpkey", "-algorithm", "ed25519", "-out", dir / "k.key"}).exit_code, 0);
  ASSERT_EQ(RunProcess({APPLIANCE_OPENSSL_BIN, "pkey", "-in", dir / "k.key", "-pubout", "-out", dir / "k.pub"}).exit_code, 0);
  ASSERT_EQ(RunProcess({APPLIANCE_OPENSSL_BIN, "pkeyutl", "-sign", "-rawin", "-inkey", dir / "k.key", "-in", dir / "msg",
                 "-out", dir / "msg.sig"})
                .exit_code,
            0);
  const std::string private_pem = ReadFile(dir / "k.key");
  const std::string public_pem = ReadFile(dir / "k.pub");
  const std::string sig = ReadFile(dir / "msg.sig");
  ASSERT_EQ(sig.size(), 64u);
  const Status s = Verify(AsBytes(message), AsBytes(sig), public_pem);
  EXPECT_TRUE(s.ok()) << s.message();
  StatusOr<std::string> ours = Sign(AsBytes(message), private_pem);
  ASSERT_TRUE(ours.ok()) << ours.status().message();
  EXPECT_EQ(*ours, sig);  // Ed25519 is deterministic: same key, same message, same bytes
  StatusOr<std::string> derived = PublicPemFromPrivatePem(private_pem);
  ASSERT_TRUE(derived.ok());
  EXPECT_EQ(*derived, public_pem);
}

}  // namespace
}  // namespace appliance::manifest
