// SHA-256 and Ed25519 through OpenSSL 3 (EVP). Keys are PEM files/strings as
// written by `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.
// These functions initialise libcrypto without reading openssl.cnf
// (OPENSSL_INIT_NO_LOAD_CONFIG), so $OPENSSL_CONF -- which for PID 1 comes from
// the unsigned kernel command line -- cannot change providers. That only works
// if they run before any other OpenSSL call of the process.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <span>
#include <string>

#include "base/status.h"

namespace appliance::manifest {

using Sha256Digest = std::array<uint8_t, 32>;
inline constexpr size_t kEd25519SignatureBytes = 64;

std::string ToHex(std::span<const uint8_t> bytes);
Sha256Digest Sha256(std::span<const uint8_t> bytes);
// Hashes everything readable from `fd` from its current offset (read loop, no
// mmap). Fails if more than `max_bytes` would be read. Returns bytes hashed too.
// If `progress` is given, every chunk hashed is added to it (it may be shared
// by several threads hashing at once, and read by another one).
struct FdDigest {
  Sha256Digest digest;
  uint64_t bytes = 0;
};
StatusOr<FdDigest> Sha256Fd(int fd, uint64_t max_bytes, const std::string& name,
                            std::atomic<uint64_t>* progress = nullptr);
// Hashes the regular file `fd` from offset 0 to its end without copying it:
// the file is mapped read-only in windows of kHashWindowBytes (each populated
// up front) and hashed from the mapping. Fails if the file is larger than
// `max_bytes`, or if it changed size while being hashed (checked after, by
// fstat and by reading one byte at the old end). Does not move the fd's
// offset. The caller must make sure nobody truncates the file meanwhile
// (reading a mapping past a truncated end is SIGBUS): true for init, which
// verifies before any other process exists.
StatusOr<FdDigest> Sha256MappedFile(int fd, uint64_t max_bytes, const std::string& name,
                                    std::atomic<uint64_t>* progress = nullptr);
inline constexpr size_t kHashWindowBytes = 8 << 20;

// The read buffer Sha256Fd uses: small enough to stay in a core's L2 cache
// between read() filling it and SHA-256 consuming it (bench/verify_bench).
inline constexpr size_t kHashBufferBytes = 256 * 1024;

// Key id: lowercase hex SHA-256 of the raw 32-byte Ed25519 public key.
StatusOr<std::string> KeyIdFromPublicPem(std::string_view public_pem);

struct KeyPairPem {
  std::string private_pem;
  std::string public_pem;
};
StatusOr<KeyPairPem> GenerateKeyPair();
StatusOr<std::string> PublicPemFromPrivatePem(std::string_view private_pem);

StatusOr<std::string> Sign(std::span<const uint8_t> message, std::string_view private_pem);  // 64 raw bytes
// OK only if `signature` is a valid Ed25519 signature of `message` by `public_pem`.
Status Verify(std::span<const uint8_t> message, std::span<const uint8_t> signature,
              std::string_view public_pem);

}  // namespace appliance::manifest
