// cli/mount_commands.hpp: `sheaf mount` and `sheaf umount`, a store as a filesystem.
#pragma once

#include <CLI/CLI.hpp>

namespace sheaf::cli {

// Adds the `mount` and `umount` commands. Failures are thrown as sheaf::Error.
void register_mount_commands(CLI::App& app);

}  // namespace sheaf::cli
