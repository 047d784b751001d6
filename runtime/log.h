// Log lines on stderr (the console in the appliance), each prefixed
// "appliance-runtime: " and written with one write() so lines from several
// threads or processes do not interleave.
#pragma once

#include <string_view>

namespace appliance::runtime {

void Log(std::string_view message);

}  // namespace appliance::runtime
