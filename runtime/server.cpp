#include "runtime/server.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <exception>
#include <string>
#include <vector>

#include "runtime/generate.h"
#include "runtime/log.h"
#include "runtime/protocol.h"

namespace appliance::runtime {
namespace {

Status WaitFor(int fd, short events, const char* what) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int r = ::poll(&p, 1, -1);
    if (r >= 0) return Status::Ok();
    if (errno != EINTR) return PosixError(std::string("poll channel for ") + what);
  }
}

}  // namespace

Status WriteAll(int fd, std::string_view data) {
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      RETURN_IF_ERROR(WaitFor(fd, POLLOUT, "writing"));
      continue;
    }
    if (n == 0) return Status::Error("write channel: wrote nothing");
    return PosixError("write channel");
  }
  return Status::Ok();
}

Status Serve(Context& ctx, int channel_fd) {
  // A client that hangs up must turn into EPIPE from write(), not a signal
  // that kills the process before it can log why.
  ::signal(SIGPIPE, SIG_IGN);

  const Model& model = ctx.model();
  ProtocolLimits limits;
  limits.max_tokens = ctx.n_ctx();
  // The chat template is recognised once; chat jobs get its error when the
  // model has none this runtime renders.
  const StatusOr<ChatTemplate> chat_template = ChatTemplate::FromGguf(model.gguf());
  Log("tokenizer: " + model.tokenizer().Describe() + "; chat template: " +
      (chat_template.ok() ? chat_template->name() : "unavailable: " + chat_template.status().message()));
  RETURN_IF_ERROR(WriteAll(channel_fd, ReadyEvent(model.name(), model.config().n_vocab)));
  Log("ready: serving jobs on fd " + std::to_string(channel_fd));

  LineReader reader;
  std::vector<LineReader::Item> items;
  std::vector<char> buf(64 * 1024);
  uint64_t jobs = 0;
  for (;;) {
    const ssize_t n = ::read(channel_fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        RETURN_IF_ERROR(WaitFor(channel_fd, POLLIN, "reading"));
        continue;
      }
      return PosixError("read channel");
    }
    if (n == 0) {
      if (reader.InLine()) Log("channel closed in the middle of a request line; the partial line is dropped");
      return Status::Error("channel closed (EOF) without a shutdown request after " + std::to_string(jobs) + " jobs");
    }
    items.clear();
    reader.Feed(std::string_view(buf.data(), static_cast<size_t>(n)), &items);
    for (size_t i = 0; i < items.size(); ++i) {
      const LineReader::Item& item = items[i];
      if (item.kind == LineReader::Item::Kind::kOversize) {
        Log("request line longer than " + std::to_string(LineReader::kMaxLine) + " bytes refused");
        RETURN_IF_ERROR(WriteAll(channel_fd, ErrorEvent(std::nullopt, "request line exceeds " +
                                                                          std::to_string(LineReader::kMaxLine) +
                                                                          " bytes")));
        continue;
      }
      if (item.line.find_first_not_of(" \t") == std::string::npos) continue;  // blank line
      const ParsedRequest req = ParseRequest(item.line, limits);
      if (req.kind == ParsedRequest::Kind::kError) {
        Log("bad request: " + req.error);
        RETURN_IF_ERROR(WriteAll(channel_fd, ErrorEvent(req.id, req.error)));
        continue;
      }
      if (req.kind == ParsedRequest::Kind::kShutdown) {
        if (i + 1 < items.size() || reader.InLine()) Log("requests after the shutdown request are dropped");
        RETURN_IF_ERROR(WriteAll(channel_fd, ShutdownEvent()));
        Log("shutdown requested after " + std::to_string(jobs) + " jobs");
        return Status::Ok();
      }

      const GenerateRequest& g = req.generate;
      Status write_status;  // a failed write to the channel ends the server, not just the job
      TokenCallback on_token = [&](int32_t token, std::string_view text) -> Status {
        write_status = WriteAll(channel_fd, TokenEvent(g.id, token, text));
        return write_status;
      };
      GenerateParams params;
      params.max_tokens = g.max_tokens;
      params.sampling = g.sampling;
      StatusOr<GenerateResult> result = Status::Error("not run");
      try {
        if (req.kind == ParsedRequest::Kind::kChat) {
          result = chat_template.ok() ? GenerateChat(ctx, *chat_template, g.messages, params, on_token)
                                      : StatusOr<GenerateResult>(chat_template.status());
        } else {
          result = Generate(ctx, g.prompt, params, on_token);
        }
      } catch (const std::exception& e) {  // allocation failure: answer it, keep serving
        result = Status::Error(std::string("internal error: ") + e.what());
      }
      RETURN_IF_ERROR(write_status);
      ++jobs;
      if (!result.ok()) {
        Log("job '" + g.id.substr(0, 64) + "' failed: " + result.status().message());
        RETURN_IF_ERROR(WriteAll(channel_fd, ErrorEvent(g.id, result.status().message())));
        continue;
      }
      RETURN_IF_ERROR(WriteAll(channel_fd, DoneEvent(g.id, *result)));
      Log("job '" + g.id.substr(0, 64) + "': " + std::to_string(result->prompt_tokens.size()) + " prompt tokens, " +
          std::to_string(result->tokens.size()) + " generated, " + std::to_string(static_cast<int64_t>(result->tokens_per_s())) +
          " tok/s");
    }
  }
}

}  // namespace appliance::runtime
