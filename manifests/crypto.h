// SHA-256 and Ed25519 through OpenSSL 3 (EVP). Keys are PEM files/strings as
// written by `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.
// These functions initialise libcrypto without reading openssl.cnf
// (OPENSSL_INIT_NO_LOAD_CONFIG), so $OPENSSL_CONF -- which for PID 1 comes from
// the unsigned kernel command line -- cannot change providers. That only works
// if they run before any other OpenSSL call of the process.
#pragma once

#include <array>
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
struct FdDigest {
  Sha256Digest digest;
  uint64_t bytes = 0;
};
StatusOr<FdDigest> Sha256Fd(int fd, uint64_t max_bytes, const std::string& name);

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
