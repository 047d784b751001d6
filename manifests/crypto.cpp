#include "manifests/crypto.h"

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>

namespace appliance::manifest {
namespace {

// Every OpenSSL object lives in a unique_ptr with its own free function, so
// every early return releases it.
template <auto FreeFn>
struct OpenSslDeleter {
  template <typename T>
  void operator()(T* p) const {
    FreeFn(p);
  }
};
using BioPtr = std::unique_ptr<BIO, OpenSslDeleter<&BIO_free>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, OpenSslDeleter<&EVP_PKEY_free>>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, OpenSslDeleter<&EVP_PKEY_CTX_free>>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, OpenSslDeleter<&EVP_MD_CTX_free>>;

constexpr size_t kEd25519PublicKeyBytes = 32;
// A PEM Ed25519 key is ~120 bytes; anything near this bound is not one.
constexpr size_t kMaxPemBytes = 64 * 1024;

// libcrypto would otherwise load openssl.cnf from $OPENSSL_CONF on first use.
// PID 1's environment comes from the kernel command line, which is outside the
// signed image: a config there could swap providers (e.g. activate only the
// "null" provider) under the verifier. Only the built-in default provider is
// used; the first OpenSSL call of the process must come through here for this
// to take effect, which holds for init and the CLI.
void InitOpenSsl() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, nullptr) != 1) {
      std::fputs("appliance: fatal: OPENSSL_init_crypto failed\n", stderr);
      std::abort();
    }
  });
}

// SHA-256 fetched once from the default provider: EVP_sha256() would make
// every EVP_DigestInit_ex fetch it again (a lock and a lookup per file).
const EVP_MD* Sha256Md() {
  static const EVP_MD* const md = [] {
    const EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA2-256", nullptr);
    return fetched != nullptr ? fetched : EVP_sha256();
  }();
  return md;
}

// "<what>: <OpenSSL's queued errors>". Drains the thread's error queue so a
// later failure does not report stale errors.
Status OpenSslError(const std::string& what) {
  std::string detail;
  for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!detail.empty()) detail += "; ";
    detail += buf;
  }
  if (detail.empty()) detail = "unknown OpenSSL error";
  return Status::Error(what + ": " + detail);
}

// PEM keys are never encrypted here; without this callback OpenSSL would
// prompt for a passphrase on the controlling terminal (init has none).
int NoPassphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*u*/) { return -1; }

// EVP calls want a non-null pointer even for an empty message.
const unsigned char* DataOrEmpty(std::span<const uint8_t> bytes) {
  static const unsigned char kEmpty = 0;
  return bytes.empty() ? &kEmpty : bytes.data();
}

StatusOr<BioPtr> ReadOnlyBio(std::string_view pem, const char* what) {
  if (pem.size() > kMaxPemBytes) {
    return Status::Error(std::string(what) + ": " + std::to_string(pem.size()) + " bytes, too large for a PEM key");
  }
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return OpenSslError(std::string(what) + ": BIO_new_mem_buf");
  return bio;
}

Status RequireEd25519(const EVP_PKEY* key, const char* what) {
  if (EVP_PKEY_get_base_id(key) != EVP_PKEY_ED25519) {
    return Status::Error(std::string(what) + ": not an Ed25519 key (" + OBJ_nid2sn(EVP_PKEY_get_base_id(key)) + ")");
  }
  return Status::Ok();
}

StatusOr<PkeyPtr> ReadPrivateKey(std::string_view pem) {
  ERR_clear_error();
  ASSIGN_OR_RETURN(BioPtr bio, ReadOnlyBio(pem, "private key"));
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!key) return OpenSslError("private key: cannot read PEM (unencrypted PKCS#8 Ed25519 expected)");
  RETURN_IF_ERROR(RequireEd25519(key.get(), "private key"));
  return key;
}

StatusOr<PkeyPtr> ReadPublicKey(std::string_view pem) {
  ERR_clear_error();
  ASSIGN_OR_RETURN(BioPtr bio, ReadOnlyBio(pem, "public key"));
  PkeyPtr key(PEM_read_bio_PUBKEY(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!key) return OpenSslError("public key: cannot read PEM (SubjectPublicKeyInfo Ed25519 expected)");
  RETURN_IF_ERROR(RequireEd25519(key.get(), "public key"));
  return key;
}

StatusOr<std::string> BioContents(BIO* bio, const char* what) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  if (n < 0 || (n > 0 && data == nullptr)) return OpenSslError(std::string(what) + ": BIO_get_mem_data");
  return std::string(data, static_cast<size_t>(n));
}

StatusOr<std::string> PublicPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio) return OpenSslError("public key: BIO_new");
  if (PEM_write_bio_PUBKEY(bio.get(), key) != 1) return OpenSslError("public key: PEM_write_bio_PUBKEY");
  return BioContents(bio.get(), "public key");
}

StatusOr<std::string> KeyId(EVP_PKEY* key) {
  uint8_t raw[kEd25519PublicKeyBytes];
  size_t len = sizeof raw;
  if (EVP_PKEY_get_raw_public_key(key, raw, &len) != 1) return OpenSslError("public key: EVP_PKEY_get_raw_public_key");
  if (len != sizeof raw) return Status::Error("public key: raw key has " + std::to_string(len) + " bytes, expected 32");
  return ToHex(Sha256(std::span<const uint8_t>(raw, len)));
}

}  // namespace

std::string ToHex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out += kDigits[b >> 4];
    out += kDigits[b & 0xf];
  }
  return out;
}

Sha256Digest Sha256(std::span<const uint8_t> bytes) {
  InitOpenSsl();
  Sha256Digest digest{};
  unsigned int len = 0;
  if (EVP_Digest(DataOrEmpty(bytes), bytes.size(), digest.data(), &len, Sha256Md(), nullptr) != 1 ||
      len != digest.size()) {
    // Only possible if the library itself is broken (no SHA-256 provider, no
    // memory). There is no error channel here, and returning some digest
    // anyway could let a check pass: stop instead.
    std::fputs("appliance: fatal: OpenSSL SHA-256 failed\n", stderr);
    std::abort();
  }
  return digest;
}

StatusOr<FdDigest> Sha256Fd(int fd, uint64_t max_bytes, const std::string& name, std::atomic<uint64_t>* progress) {
  InitOpenSsl();
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) return OpenSslError(name + ": EVP_MD_CTX_new");
  if (EVP_DigestInit_ex(ctx.get(), Sha256Md(), nullptr) != 1) return OpenSslError(name + ": EVP_DigestInit_ex");

  // Heap buffer: PID 1 should not put it on its stack (and each hashing thread has its own).
  auto buffer = std::make_unique_for_overwrite<uint8_t[]>(kHashBufferBytes);
  FdDigest result{};
  for (;;) {
    const uint64_t room = max_bytes - result.bytes;
    // Ask for at most one byte more than allowed: that byte proves the file is
    // too big without reading the rest of an arbitrarily large file.
    const size_t want = room >= kHashBufferBytes ? kHashBufferBytes : static_cast<size_t>(room) + 1;
    const ssize_t n = ::read(fd, buffer.get(), want);
    if (n < 0) {
      if (errno == EINTR) continue;
      return PosixError("read " + name);
    }
    if (n == 0) break;
    if (static_cast<uint64_t>(n) > room) {
      return Status::Error(name + ": more than " + std::to_string(max_bytes) + " bytes");
    }
    if (EVP_DigestUpdate(ctx.get(), buffer.get(), static_cast<size_t>(n)) != 1) {
      return OpenSslError(name + ": EVP_DigestUpdate");
    }
    result.bytes += static_cast<uint64_t>(n);
    if (progress != nullptr) progress->fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
  }
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), result.digest.data(), &len) != 1 || len != result.digest.size()) {
    return OpenSslError(name + ": EVP_DigestFinal_ex");
  }
  return result;
}

namespace {

// One read-only window of a file, unmapped when it goes out of scope.
class Mapping {
 public:
  Mapping(int fd, uint64_t offset, size_t length) : length_(length) {
    // MAP_POPULATE: the window's pages are mapped in one go instead of a
    // page fault every few pages while hashing.
    void* p = ::mmap(nullptr, length, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, static_cast<off_t>(offset));
    if (p != MAP_FAILED) data_ = static_cast<const uint8_t*>(p);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), length_);
  }
  const uint8_t* data() const { return data_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t length_;
};

}  // namespace

StatusOr<FdDigest> Sha256MappedFile(int fd, uint64_t max_bytes, const std::string& name,
                                    std::atomic<uint64_t>* progress) {
  InitOpenSsl();
  struct stat st {};
  if (::fstat(fd, &st) != 0) return PosixError("fstat " + name);
  if (!S_ISREG(st.st_mode)) return Status::Error(name + ": not a regular file");
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size > max_bytes) return Status::Error(name + ": more than " + std::to_string(max_bytes) + " bytes");

  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) return OpenSslError(name + ": EVP_MD_CTX_new");
  if (EVP_DigestInit_ex(ctx.get(), Sha256Md(), nullptr) != 1) return OpenSslError(name + ": EVP_DigestInit_ex");
  for (uint64_t offset = 0; offset < size; offset += kHashWindowBytes) {
    const auto length = static_cast<size_t>(std::min<uint64_t>(kHashWindowBytes, size - offset));
    const Mapping window(fd, offset, length);
    if (window.data() == nullptr) return PosixError("mmap " + name);
    if (EVP_DigestUpdate(ctx.get(), window.data(), length) != 1) return OpenSslError(name + ": EVP_DigestUpdate");
    if (progress != nullptr) progress->fetch_add(length, std::memory_order_relaxed);
  }
  FdDigest result{};
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), result.digest.data(), &len) != 1 || len != result.digest.size()) {
    return OpenSslError(name + ": EVP_DigestFinal_ex");
  }
  // Nothing past the size that was hashed: a file that grew meanwhile fails.
  struct stat after {};
  if (::fstat(fd, &after) != 0) return PosixError("fstat " + name);
  uint8_t extra = 0;
  const ssize_t n = ::pread(fd, &extra, 1, static_cast<off_t>(size));
  if (n < 0) return PosixError("read " + name);
  if (n > 0 || static_cast<uint64_t>(after.st_size) != size) {
    return Status::Error(name + ": changed size while being hashed (" + std::to_string(size) + " bytes, then " +
                         std::to_string(after.st_size) + ")");
  }
  result.bytes = size;
  return result;
}

StatusOr<std::string> KeyIdFromPublicPem(std::string_view public_pem) {
  InitOpenSsl();
  ASSIGN_OR_RETURN(PkeyPtr key, ReadPublicKey(public_pem));
  return KeyId(key.get());
}

StatusOr<KeyPairPem> GenerateKeyPair() {
  InitOpenSsl();
  ERR_clear_error();
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr));
  if (!ctx) return OpenSslError("keygen: EVP_PKEY_CTX_new_id");
  if (EVP_PKEY_keygen_init(ctx.get()) != 1) return OpenSslError("keygen: EVP_PKEY_keygen_init");
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_keygen(ctx.get(), &raw) != 1) return OpenSslError("keygen: EVP_PKEY_keygen");
  PkeyPtr key(raw);

  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio) return OpenSslError("keygen: BIO_new");
  // Unencrypted PKCS#8 ("BEGIN PRIVATE KEY"), what `openssl genpkey` writes;
  // the key file's protection is its mode (0600) and where it is kept.
  if (PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return OpenSslError("keygen: PEM_write_bio_PrivateKey");
  }
  KeyPairPem pair;
  ASSIGN_OR_RETURN(pair.private_pem, BioContents(bio.get(), "keygen"));
  ASSIGN_OR_RETURN(pair.public_pem, PublicPem(key.get()));
  return pair;
}

StatusOr<std::string> PublicPemFromPrivatePem(std::string_view private_pem) {
  InitOpenSsl();
  ASSIGN_OR_RETURN(PkeyPtr key, ReadPrivateKey(private_pem));
  return PublicPem(key.get());
}

StatusOr<std::string> Sign(std::span<const uint8_t> message, std::string_view private_pem) {
  InitOpenSsl();
  ASSIGN_OR_RETURN(PkeyPtr key, ReadPrivateKey(private_pem));
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) return OpenSslError("sign: EVP_MD_CTX_new");
  // Ed25519 is "pure": no separate digest, so md must be NULL and the whole
  // message goes through the one-shot EVP_DigestSign.
  if (EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1) {
    return OpenSslError("sign: EVP_DigestSignInit");
  }
  std::string signature(kEd25519SignatureBytes, '\0');
  size_t len = signature.size();
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(signature.data()), &len, DataOrEmpty(message),
                     message.size()) != 1) {
    return OpenSslError("sign: EVP_DigestSign");
  }
  if (len != kEd25519SignatureBytes) {
    return Status::Error("sign: signature has " + std::to_string(len) + " bytes, expected 64");
  }
  return signature;
}

Status Verify(std::span<const uint8_t> message, std::span<const uint8_t> signature, std::string_view public_pem) {
  InitOpenSsl();
  if (signature.size() != kEd25519SignatureBytes) {
    return Status::Error("signature: " + std::to_string(signature.size()) + " bytes, expected 64");
  }
  ASSIGN_OR_RETURN(PkeyPtr key, ReadPublicKey(public_pem));
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) return OpenSslError("verify: EVP_MD_CTX_new");
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1) {
    return OpenSslError("verify: EVP_DigestVerifyInit");
  }
  const int rc = EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), DataOrEmpty(message), message.size());
  if (rc == 1) return Status::Ok();
  if (rc == 0) {
    // A plain mismatch: the queue may hold OpenSSL's generic "bad signature";
    // the message below says more.
    ERR_clear_error();
    ASSIGN_OR_RETURN(std::string id, KeyId(key.get()));
    return Status::Error("signature does not verify with key " + id + " (wrong key, or the signed bytes were changed)");
  }
  return OpenSslError("verify: EVP_DigestVerify");
}

}  // namespace appliance::manifest
