#include "image/channel.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace appliance::image {

namespace {

int MillisUntil(std::chrono::steady_clock::time_point deadline) {
  auto now = std::chrono::steady_clock::now();
  if (now >= deadline) return 0;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1;
  return static_cast<int>(std::min<long long>(ms, 60'000));
}

std::optional<nlohmann::json> ParseObject(std::string_view line) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  return j;
}

}  // namespace

StatusOr<UniqueFd> ConnectUnix(const std::string& path) {
  if (path.empty() || path.size() > kMaxUnixPathBytes) {
    return Status::Error("socket path '" + path + "': empty or longer than " + std::to_string(kMaxUnixPathBytes) +
                         " bytes");
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return PosixError("socket(AF_UNIX)");
  sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  int r;
  do {
    r = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  } while (r != 0 && errno == EINTR);
  if (r != 0) return PosixError("connect " + path);
  return fd;
}

Status SendAll(int fd, std::string_view bytes, std::chrono::steady_clock::time_point deadline) {
  while (!bytes.empty()) {
    ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n > 0) {
      bytes.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      int left = MillisUntil(deadline);
      if (left == 0) return Status::Error("send on the channel: timeout");
      pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, left) < 0 && errno != EINTR) return PosixError("poll channel");
      continue;
    }
    return PosixError("send on the channel");
  }
  return Status::Ok();
}

StatusOr<Reply> ParseReply(std::string_view line) {
  std::optional<nlohmann::json> j = ParseObject(line);
  if (!j) return Status::Error("reply is not a JSON object: " + std::string(line.substr(0, 200)));
  Reply r;
  auto ev = j->find("event");
  if (ev != j->end() && ev->is_string()) r.event = ev->get<std::string>();
  auto id = j->find("id");
  if (id != j->end()) r.id = *id;
  r.body = std::move(*j);
  return r;
}

StatusOr<std::string> ChannelReader::ReadLine(std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    if (std::optional<std::string> line = framer_.Next()) return std::move(*line);
    if (framer_.failed()) return Status::Error("channel: reply line longer than " + std::to_string(kMaxReplyLineBytes) + " bytes");
    int left = MillisUntil(deadline);
    if (left == 0) return Status::Error("timeout");
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, left);
    if (r < 0) {
      if (errno == EINTR) continue;
      return PosixError("poll channel");
    }
    if (r == 0) continue;  // re-check the deadline
    char buf[65536];
    ssize_t n = ::read(fd_, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return PosixError("read channel");
    }
    if (n == 0) return Status::Error("channel closed by the appliance");
    if (Status s = framer_.Feed(std::string_view(buf, static_cast<size_t>(n))); !s.ok()) {
      // Lines complete before the overlong one are still delivered first.
      if (std::optional<std::string> line = framer_.Next()) return std::move(*line);
      return s.Context("channel");
    }
  }
}

nlohmann::json RequestId(std::string_view line) {
  std::optional<nlohmann::json> j = ParseObject(line);
  if (!j) return nullptr;
  auto id = j->find("id");
  return id == j->end() ? nlohmann::json(nullptr) : *id;
}

bool IsShutdownRequest(std::string_view line) {
  std::optional<nlohmann::json> j = ParseObject(line);
  if (!j) return false;
  auto op = j->find("op");
  return op != j->end() && op->is_string() && op->get<std::string>() == "shutdown";
}

}  // namespace appliance::image
