// Helpers the tests share for running the project's programs as a user would
// (by path, with arguments) and reading what they leave behind. No gtest
// macros: the tamper matrix calls RunCommand from its boot threads.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace appliance::testing {

struct CommandResult {
  int exit_code = -1;  // 128 + signal when killed; -1 when it could not start
  std::string out;
  std::string err;
  double seconds = 0;  // wall time
};

// Runs args[0] (a path) with args, stdin from /dev/null, stdout and stderr
// captured; kills it after `timeout_s` (a note is appended to err). Each pair
// in `inherit` (child fd, parent fd) hands a parent fd to the child under
// that number.
CommandResult RunCommand(const std::vector<std::string>& args, int timeout_s,
                         const std::vector<std::pair<int, int>>& inherit = {});

// The whole file, or "" when it cannot be read.
std::string ReadFile(const std::filesystem::path& path);

// One JSON value per non-empty line; a line that is not JSON becomes a
// discarded value (is_discarded()), so tests can point at it.
std::vector<nlohmann::json> ParseJsonLines(const std::string& text);

}  // namespace appliance::testing
