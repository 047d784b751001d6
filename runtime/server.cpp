#include "runtime/server.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "runtime/generate.h"
#include "runtime/log.h"
#include "runtime/protocol.h"

namespace appliance::runtime {
namespace {

// Accepted jobs waiting for a sequence. Each holds at most one request line
// (LineReader::kMaxLine), so the queue stays within a few MiB.
constexpr size_t kMaxQueuedJobs = 64;
// Bytes of queued events at which the handling of request lines pauses for a write.
constexpr size_t kMaxPendingEvents = 64 << 10;
// Prompt tokens per prefill chunk. A prompt is cut into chunks by this size
// alone (never by what else runs), so a job's arithmetic does not depend on
// the other jobs; between two prefill forwards the running jobs get a decode
// step. Where the matrix products treat rows independently
// (Context::RowsIndependent), the next chunks of several jobs share one
// forward, so jobs that arrive together start together. Equal to Context's
// attention query block, so a chunk's attention is shaped as in one
// whole-prompt Eval().
constexpr int64_t kPrefillChunk = 64;

Status WaitFor(int fd, short events, const char* what) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int r = ::poll(&p, 1, -1);
    if (r >= 0) return Status::Ok();
    if (errno != EINTR) return PosixError(std::string("poll channel for ") + what);
  }
}

std::string ShortId(const std::string& id) { return "job '" + id.substr(0, 64) + "'"; }

class Server {
 public:
  Server(Context& ctx, int fd)
      : ctx_(ctx),
        fd_(fd),
        chat_template_(ChatTemplate::FromGguf(ctx.model().gguf())),
        jobs_(static_cast<size_t>(ctx.n_seq())),
        rows_independent_(ctx.RowsIndependent()) {
    limits_.max_tokens = ctx.n_ctx();
    batch_.reserve(static_cast<size_t>(ctx.max_batch()));
    prefill_.reserve(static_cast<size_t>(ctx.n_seq()));
  }

  Status Run();

 private:
  // A job holding a sequence of the context (its index in jobs_).
  struct Job {
    std::string id;
    Generation gen;
    uint64_t order = 0;     // admission order: prompts are evaluated first come, first served
    int64_t prefilled = 0;  // prompt tokens evaluated; the job decodes once all are
  };

  bool Busy() const;
  // Reads what the channel has (waiting for it when `block`); false when
  // nothing was there.
  StatusOr<bool> ReadChannel(bool block);
  // Handles the lines read so far, in order, while the queue has room.
  void HandleLines();
  void HandleLine(const LineReader::Item& item);
  // Starts queued jobs on free sequences.
  void Admit();
  // Evaluates the next chunk of the earliest admitted job's prompt.
  void PrefillStep();
  // One forward over the next token of every job past its prompt.
  void DecodeStep();
  // Samples job `seq`'s next token from `logits` and queues its event; ends
  // the job when it is complete.
  void Advance(int64_t seq, std::span<const float> logits);
  // Ends job `seq` with its done event (status OK) or an error event.
  void End(int64_t seq, const Status& status);
  // Queues an event line; Flush writes the queue. The events of one step
  // leave in one write, so a client reading 8 jobs wakes once per step, not
  // once per token.
  void Emit(std::string_view event);
  Status Flush();

  Context& ctx_;
  const int fd_;
  ProtocolLimits limits_;
  // Recognised once; chat jobs get its error when the model has none this
  // runtime renders.
  const StatusOr<ChatTemplate> chat_template_;
  LineReader reader_;
  std::vector<LineReader::Item> lines_;  // read, handled up to next_line_
  size_t next_line_ = 0;
  std::deque<ParsedRequest> queue_;
  std::vector<std::optional<Job>> jobs_;  // [n_seq]
  std::vector<BatchToken> batch_;
  // The prompt chunks of one prefill forward.
  struct Chunk {
    int64_t seq = 0, tokens = 0;
  };
  std::vector<Chunk> prefill_;
  const bool rows_independent_;  // ctx_.RowsIndependent(): jobs' chunks may share a forward
  std::string out_;  // events not yet written
  uint64_t admitted_ = 0, finished_ = 0;
  bool shutdown_ = false;  // a shutdown request was read
  bool eof_ = false;
};

bool Server::Busy() const {
  return !queue_.empty() || std::any_of(jobs_.begin(), jobs_.end(), [](const auto& j) { return j.has_value(); });
}

Status Server::Run() {
  Log("tokenizer: " + ctx_.model().tokenizer().Describe() + "; chat template: " +
      (chat_template_.ok() ? chat_template_->name() : "unavailable: " + chat_template_.status().message()));
  const int flags = ::fcntl(fd_, F_GETFL);
  if (flags < 0 || ::fcntl(fd_, F_SETFL, flags | O_NONBLOCK) != 0) return PosixError("make the channel non-blocking");
  RETURN_IF_ERROR(WriteAll(fd_, ReadyEvent(ctx_.model().name(), ctx_.model().config().n_vocab)));
  Log("ready: serving jobs on fd " + std::to_string(fd_) + ", up to " + std::to_string(ctx_.n_seq()) + " at once");

  for (;;) {
    HandleLines();
    Admit();
    RETURN_IF_ERROR(Flush());
    const bool busy = Busy();
    if (!busy && shutdown_) {
      RETURN_IF_ERROR(WriteAll(fd_, ShutdownEvent()));
      Log("shutdown requested; " + std::to_string(finished_) + " jobs served");
      return Status::Ok();
    }
    if (!busy && eof_) {
      return Status::Error("channel closed (EOF) without a shutdown request after " + std::to_string(finished_) +
                           " jobs");
    }
    if (!eof_ && next_line_ == lines_.size() && queue_.size() < kMaxQueuedJobs) {
      ASSIGN_OR_RETURN(const bool read, ReadChannel(/*block=*/!busy));
      // Idle, handle what arrived at once; busy, after this step (so a peer
      // that keeps writing cannot hold the running jobs up).
      if (read && !busy) continue;
    }
    PrefillStep();
    DecodeStep();
    RETURN_IF_ERROR(Flush());
  }
}

void Server::Emit(std::string_view event) { out_ += event; }

Status Server::Flush() {
  if (out_.empty()) return Status::Ok();
  const Status s = WriteAll(fd_, out_);
  out_.clear();
  return s;
}

StatusOr<bool> Server::ReadChannel(bool block) {
  pollfd p{fd_, POLLIN, 0};
  for (;;) {
    const int r = ::poll(&p, 1, block ? -1 : 0);
    if (r == 0) return false;
    if (r > 0) break;
    if (errno != EINTR) return PosixError("poll channel for reading");
  }
  char buf[64 * 1024];
  for (;;) {
    const ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n > 0) {
      lines_.clear();
      next_line_ = 0;
      reader_.Feed(std::string_view(buf, static_cast<size_t>(n)), &lines_);
      return true;
    }
    if (n == 0) {
      if (reader_.InLine()) Log("channel closed in the middle of a request line; the partial line is dropped");
      eof_ = true;
      return true;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
    return PosixError("read channel");
  }
}

void Server::HandleLines() {
  // A read full of bad lines queues an error event per line: stop at
  // kMaxPendingEvents bytes, so Run writes them before handling the rest.
  while (next_line_ < lines_.size() && queue_.size() < kMaxQueuedJobs && out_.size() < kMaxPendingEvents) {
    HandleLine(lines_[next_line_++]);
  }
}

void Server::HandleLine(const LineReader::Item& item) {
  if (item.kind == LineReader::Item::Kind::kOversize) {
    Log("request line longer than " + std::to_string(LineReader::kMaxLine) + " bytes refused");
    Emit(ErrorEvent(std::nullopt, "request line exceeds " + std::to_string(LineReader::kMaxLine) + " bytes"));
    return;
  }
  if (item.line.find_first_not_of(" \t") == std::string::npos) return;  // blank line
  ParsedRequest req = ParseRequest(item.line, limits_);
  switch (req.kind) {
    case ParsedRequest::Kind::kError:
      Log("bad request: " + req.error);
      Emit(ErrorEvent(req.id, req.error));
      return;
    case ParsedRequest::Kind::kShutdown:
      if (shutdown_) {
        Log("repeated shutdown request ignored");
      } else {
        Log("shutdown requested: finishing " + std::to_string(queue_.size()) + " queued and the running jobs");
      }
      shutdown_ = true;
      return;
    case ParsedRequest::Kind::kGenerate:
    case ParsedRequest::Kind::kChat:
      if (shutdown_) {
        Log(ShortId(req.generate.id) + " refused: it came after the shutdown request");
        Emit(ErrorEvent(req.generate.id, "the server is shutting down"));
        return;
      }
      queue_.push_back(std::move(req));
      return;
  }
}

void Server::Admit() {
  size_t seq = 0;
  while (!queue_.empty()) {
    while (seq < jobs_.size() && jobs_[seq]) ++seq;
    if (seq == jobs_.size()) break;
    const ParsedRequest req = std::move(queue_.front());
    queue_.pop_front();
    const GenerateRequest& g = req.generate;
    GenerateParams params;
    params.max_tokens = g.max_tokens;
    params.sampling = g.sampling;
    StatusOr<Generation> gen = Status::Error("not started");
    try {  // tokenizing allocates: an allocation failure fails the job, not the server
      if (req.kind == ParsedRequest::Kind::kChat) {
        gen = chat_template_.ok() ? Generation::StartChat(ctx_.model(), ctx_.n_ctx(), *chat_template_, g.messages, params)
                                  : StatusOr<Generation>(chat_template_.status());
      } else {
        gen = Generation::Start(ctx_.model(), ctx_.n_ctx(), g.prompt, params);
      }
    } catch (const std::exception& e) {
      gen = Status::Error(std::string("internal error: ") + e.what());
    }
    if (!gen.ok()) {
      ++finished_;
      Log(ShortId(g.id) + " failed: " + gen.status().message());
      Emit(ErrorEvent(g.id, gen.status().message()));
      continue;  // the sequence is still free
    }
    jobs_[seq] = Job{g.id, std::move(*gen), admitted_++, 0};
  }
}

void Server::PrefillStep() {
  // Jobs with prompt left, in admission order.
  prefill_.clear();
  for (size_t s = 0; s < jobs_.size(); ++s) {
    const std::optional<Job>& j = jobs_[s];
    if (j && j->prefilled < static_cast<int64_t>(j->gen.prompt_tokens().size())) {
      prefill_.push_back({static_cast<int64_t>(s), 0});
    }
  }
  std::sort(prefill_.begin(), prefill_.end(), [&](const Chunk& a, const Chunk& b) {
    return jobs_[static_cast<size_t>(a.seq)]->order < jobs_[static_cast<size_t>(b.seq)]->order;
  });
  batch_.clear();
  size_t taken = 0;
  for (; taken < prefill_.size(); ++taken) {
    Chunk& c = prefill_[taken];
    const Job& job = *jobs_[static_cast<size_t>(c.seq)];
    const std::vector<int32_t>& prompt = job.gen.prompt_tokens();
    const int64_t n_prompt = static_cast<int64_t>(prompt.size());
    c.tokens = std::min({kPrefillChunk, ctx_.max_batch(), n_prompt - job.prefilled});
    const bool fits = static_cast<int64_t>(batch_.size()) + c.tokens <= ctx_.max_batch();
    if (taken > 0 && !(rows_independent_ && fits)) break;
    for (int64_t i = 0; i < c.tokens; ++i) {
      const int64_t pos = job.prefilled + i;
      batch_.push_back({prompt[static_cast<size_t>(pos)], static_cast<int32_t>(c.seq), pos, pos == n_prompt - 1});
    }
  }
  if (taken == 0) return;
  prefill_.resize(taken);
  if (Status s = ctx_.Decode(batch_); !s.ok()) {
    for (const Chunk& c : prefill_) End(c.seq, s);
    return;
  }
  int64_t row = 0;  // logits rows: the last prompt token of each job completed here
  for (const Chunk& c : prefill_) {
    Job& job = *jobs_[static_cast<size_t>(c.seq)];
    job.prefilled += c.tokens;
    if (job.prefilled == static_cast<int64_t>(job.gen.prompt_tokens().size())) Advance(c.seq, ctx_.Logits(row++));
  }
}

void Server::DecodeStep() {
  batch_.clear();
  for (size_t s = 0; s < jobs_.size(); ++s) {
    const std::optional<Job>& j = jobs_[s];
    if (!j || j->prefilled < static_cast<int64_t>(j->gen.prompt_tokens().size())) continue;
    const int64_t seq = static_cast<int64_t>(s);
    batch_.push_back({j->gen.next_token(), static_cast<int32_t>(seq), ctx_.seq_len(seq), true});
  }
  if (batch_.empty()) return;
  const Status s = ctx_.Decode(batch_);
  for (size_t i = 0; i < batch_.size(); ++i) {
    const int64_t seq = batch_[i].seq;
    if (s.ok()) {
      Advance(seq, ctx_.Logits(static_cast<int64_t>(i)));
    } else {
      End(seq, s);
    }
  }
}

void Server::Advance(int64_t seq, std::span<const float> logits) {
  Job& job = *jobs_[static_cast<size_t>(seq)];
  StatusOr<bool> more = false;
  try {  // the job's text and events allocate: an allocation failure fails the job
    more = job.gen.Next(logits, [&](int32_t token, std::string_view text) {
      Emit(TokenEvent(job.id, token, text));
      return Status::Ok();
    });
  } catch (const std::exception& e) {
    more = Status::Error(std::string("internal error: ") + e.what());
  }
  if (!more.ok() || !*more) End(seq, more.status());
}

void Server::End(int64_t seq, const Status& status) {
  std::optional<Job>& slot = jobs_[static_cast<size_t>(seq)];
  const std::string id = std::move(slot->id);
  const GenerateResult result = slot->gen.Finish();
  slot.reset();
  ++finished_;
  if (!status.ok()) {
    Log(ShortId(id) + " failed: " + status.message());
    Emit(ErrorEvent(id, status.message()));
    return;
  }
  Emit(DoneEvent(id, result));
  Log(ShortId(id) + ": " + std::to_string(result.prompt_tokens.size()) + " prompt tokens, " +
      std::to_string(result.tokens.size()) + " generated, " +
      std::to_string(static_cast<int64_t>(result.tokens_per_s())) + " tok/s");
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
  return Server(ctx, channel_fd).Run();
}

}  // namespace appliance::runtime
