#include "mount_commands.hpp"

#include <memory>
#include <string>

#include "sheaf/mount.hpp"

namespace sheaf::cli {
namespace {

struct MountArgs {
  std::string store;
  std::string mountpoint;
  bool foreground = false;
  MountOptions options;
};

struct UmountArgs {
  std::string mountpoint;
  bool lazy = false;
};

}  // namespace

void register_mount_commands(CLI::App& app) {
  auto mount = std::make_shared<MountArgs>();
  CLI::App* verb = app.add_subcommand(
      "mount",
      "Show a store as files: heaps/<heap>/objects/<name>, heaps/<heap>/info, bags/<bag> "
      "(see docs/fs.md); returns once mounted and serves in the background");
  verb->add_option("STORE", mount->store, "The store directory")->required()->type_name("");
  verb->add_option("MOUNTPOINT", mount->mountpoint, "An empty directory to mount it on")
      ->required()
      ->type_name("");
  verb->add_flag("-f,--foreground", mount->foreground,
                 "Serve in this process until unmounted or interrupted");
  verb->add_flag("-r,--read-only", mount->options.read_only,
                 "Refuse every change (EROFS), as `mount -o ro` does");
  verb->add_flag("--allow-object-removal", mount->options.allow_object_removal,
                 "Let rm of heaps/H/objects/NAME free the object (off: EPERM, so that "
                 "rm -rf cannot empty a heap)");
  verb->add_option("--listing-ttl", mount->options.listing_ttl,
                   "Seconds the kernel may reuse the attributes a directory listing returned "
                   "(default 1; 0: ask again for every name)")
      ->check(CLI::Range(0.0, 3600.0))
      ->type_name("SECONDS");
  verb->add_option("--threads", mount->options.max_threads, "Serving threads at most (default 8)")
      ->check(CLI::Range(1u, 256u))
      ->type_name("N");
  verb->callback([mount] {
    serve_mount(mount->store, mount->mountpoint, mount->options, !mount->foreground).value();
  });

  auto umount = std::make_shared<UmountArgs>();
  verb = app.add_subcommand("umount",
                            "Unmount a mounted store (refused while files under it are open)");
  verb->add_option("MOUNTPOINT", umount->mountpoint, "Where the store is mounted")
      ->required()
      ->type_name("");
  verb->add_flag("-l,--lazy", umount->lazy,
                 "Detach now even if files are open; finish when they are closed");
  verb->callback([umount] { unmount(umount->mountpoint, umount->lazy).value(); });
}

}  // namespace sheaf::cli
