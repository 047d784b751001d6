// The `serve` mode: the job server on the channel fd (docs/architecture.md).
//
// Writes the ready event, then reads requests line by line and answers each
// in order; one job runs at a time (requests that arrive meanwhile wait in the
// channel). A bad request gets an error event and the server keeps serving.
// Returns OK after a shutdown request (the shutdown event is written first),
// and an error when the channel reaches EOF or fails: without a shutdown
// request nothing half-done is kept, and the caller exits non-zero.
#pragma once

#include "base/status.h"
#include "runtime/context.h"

namespace appliance::runtime {

Status Serve(Context& ctx, int channel_fd);

// Writes all of `data`, retrying partial writes, EINTR and EAGAIN (a
// non-blocking fd is waited on with poll).
Status WriteAll(int fd, std::string_view data);

}  // namespace appliance::runtime
