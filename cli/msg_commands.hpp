// cli/msg_commands.hpp: `sheaf msg <verb>`, the message layer from the shell.
#pragma once

#include <CLI/CLI.hpp>

namespace sheaf::cli {

// Adds the `msg` noun and its verbs (manager, channels, send, listen, ping, bench).
void register_msg_commands(CLI::App& app);

}  // namespace sheaf::cli
