// Errors as values. Every fallible function returns Status or StatusOr<T>;
// the message names what failed and why (file, field, offset, errno text).
// Callers add context on the way up with Status::Context(); the error is
// logged exactly once, by whoever decides what to do about it (main, init's
// top loop, the job server). See docs/errors.md.
#pragma once

#include <cerrno>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace appliance {

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  static Status Ok() { return Status(); }
  static Status Error(std::string message) { return Status(std::move(message)); }

  bool ok() const { return !failed_; }
  const std::string& message() const { return message_; }

  // Prefix the message with what the caller was doing: "verify manifest: ...".
  Status Context(std::string_view what) const& {
    if (ok()) return *this;
    return Status(std::string(what) + ": " + message_);
  }

 private:
  explicit Status(std::string message) : failed_(true), message_(std::move(message)) {}
  bool failed_ = false;
  std::string message_;
};

// "open /models/model.gguf: No such file or directory"
Status PosixError(std::string_view context, int err = errno);

template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T value) : v_(std::move(value)) {}          // NOLINT(google-explicit-constructor)
  StatusOr(Status status) : v_(std::move(status)) {}   // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(v_); }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace appliance

#define APPLIANCE_CONCAT_INNER(a, b) a##b
#define APPLIANCE_CONCAT(a, b) APPLIANCE_CONCAT_INNER(a, b)

// Return the Status from the enclosing function if `expr` failed.
#define RETURN_IF_ERROR(expr)                              \
  do {                                                     \
    ::appliance::Status appliance_status_ = (expr);        \
    if (!appliance_status_.ok()) return appliance_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, F());` binds x to F()'s value or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(APPLIANCE_CONCAT(appliance_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(tmp).value()
