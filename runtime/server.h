// The `serve` mode: the job server on the channel fd (docs/architecture.md).
//
// Writes the ready event, then schedules jobs continuously: up to ctx.n_seq()
// jobs run at once, each on its own sequence of the context, and every decode
// step is ONE forward over the next token of every running job, so each
// weight read serves all of them. A new job's prompt is evaluated in chunks
// between decode steps, so running jobs keep producing tokens meanwhile.
// Further jobs wait in a bounded queue, in order; while it is full the
// channel is not read (the client's writes wait; nothing is dropped). The
// channel fd is made non-blocking and polled between steps.
//
// Token events of different jobs interleave; each job's events stay in order
// and it ends with exactly one done or error event. A bad request gets an
// error event and the server keeps serving.
//
// A shutdown request stops new work: every job accepted before it (running or
// queued) still runs to its done or error event, each job request read after
// it is answered with an error, then the shutdown event is written and Serve
// returns OK. EOF on the channel also lets accepted jobs finish, then returns
// an error: without a shutdown request nothing half-done is kept, and the
// caller exits non-zero. A channel that fails (write error, peer gone) ends
// the server at once with an error.
#pragma once

#include "base/status.h"
#include "runtime/context.h"

namespace appliance::runtime {

Status Serve(Context& ctx, int channel_fd);

// Writes all of `data`, retrying partial writes, EINTR and EAGAIN (a
// non-blocking fd is waited on with poll).
Status WriteAll(int fd, std::string_view data);

}  // namespace appliance::runtime
