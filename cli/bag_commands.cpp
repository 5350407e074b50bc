#include "bag_commands.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string_view>
#include <utility>

#include "exit_codes.hpp"
#include "io.hpp"
#include "progress.hpp"
#include "sheaf/bag.hpp"
#include "sheaf/type_name.hpp"

namespace sheaf::cli {
namespace {

// Bytes read, written or skipped at a time: large enough to stream fast,
// small enough to keep memory flat and the progress bar moving.
constexpr std::size_t kChunk = std::size_t{4} << 20;

Store open_store(const std::string& dir) {
  return Store::open(dir).value();
}

Error no_such_bag(const Store& store, const std::string& name) {
  return Error(Errc::kNotFound, "bag " + name + ": no such bag in store " + store.path());
}

// The library's message about a bag without its leading "bag NAME: ", for
// lines that name the bag already.
std::string problem_text(const std::string& name, const std::string& message) {
  const std::string prefix = "bag " + name + ": ";
  return message.rfind(prefix, 0) == 0 ? message.substr(prefix.size()) : message;
}

// --- Element types ---------------------------------------------------------------

struct ElementType {
  std::string name;
  std::uint32_t size = 0;
};

template <class T>
constexpr std::pair<std::string_view, std::uint32_t> known_type() {
  return {type_name<T>(), static_cast<std::uint32_t>(sizeof(T))};
}

// The names sheaf/type_name.hpp fixes, with their sizes.
constexpr std::array kKnownTypes = {
    known_type<std::int8_t>(),   known_type<std::uint8_t>(),  known_type<std::int16_t>(),
    known_type<std::uint16_t>(), known_type<std::int32_t>(),  known_type<std::uint32_t>(),
    known_type<std::int64_t>(),  known_type<std::uint64_t>(), known_type<float>(),
    known_type<double>(),        known_type<std::byte>(),     known_type<char>(),
    known_type<bool>()};

std::string known_type_list() {
  std::string list;
  for (const auto& [name, size] : kKnownTypes)
    list += (list.empty() ? "" : ", ") + std::string(name);
  return list;
}

// --type: a known name ("float32"), or NAME:SIZE for any other type, SIZE
// being the element's size in bytes. Throws std::invalid_argument.
ElementType parse_element_type(std::string_view text) {
  const auto bad = [&](const std::string& why) {
    return std::invalid_argument("invalid type '" + std::string(text) + "': " + why);
  };
  std::string_view name = text;
  std::uint32_t size = 0;
  // The size follows the last ':' (a C++ type name may hold "::" itself).
  const auto colon = text.rfind(':');
  if (colon != std::string_view::npos && colon + 1 < text.size()) {
    const std::string_view digits = text.substr(colon + 1);
    if (std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), size);
      if (ec != std::errc() || size == 0) throw bad("the element size must be 1 to 4294967295");
      name = text.substr(0, colon);
    }
  }
  if (name.empty()) throw bad("the type name is empty");
  for (const auto& [known, known_size] : kKnownTypes) {
    if (name != known) continue;
    if (size != 0 && size != known_size) {
      throw bad(std::string(known) + " elements are " + std::to_string(known_size) + " bytes");
    }
    return {std::string(name), known_size};
  }
  if (size == 0) {
    throw bad("not a known type (" + known_type_list() + "); give other types as NAME:SIZE");
  }
  return {std::string(name), size};
}

// --tag: KEY=VALUE (the value may be empty and may hold '='). Throws
// std::invalid_argument.
std::pair<std::string, std::string> parse_tag(std::string_view text) {
  const auto equals = text.find('=');
  if (equals == std::string_view::npos || equals == 0) {
    throw std::invalid_argument("invalid tag '" + std::string(text) + "': expected KEY=VALUE");
  }
  return {std::string(text.substr(0, equals)), std::string(text.substr(equals + 1))};
}

// A CLI11 check that runs a parser and reports what it throws.
template <class Parse>
CLI::Validator parser_check(Parse parse, const std::string& type_name) {
  return CLI::Validator(
      [parse](std::string& text) -> std::string {
        try {
          parse(text);
          return {};
        } catch (const std::invalid_argument& e) {
          return e.what();
        }
      },
      "", type_name);
}

// Throws unless bytes is a whole number of the bag's elements.
void check_whole_elements(const std::string& name, const BagWriteOptions& options,
                          std::uint64_t bytes, const std::string& what) {
  if (options.element_size == 0 || bytes % options.element_size == 0) return;
  throw Error(Errc::kInvalidArgument,
              "bag " + name + ": " + what + " holds " + std::to_string(bytes) +
                  " bytes, not a whole number of " + options.element_type + " elements (" +
                  std::to_string(options.element_size) + " bytes each); nothing stored");
}

// --- Copying in --------------------------------------------------------------------

// Appends bytes to the bag, whole zero pages as holes.
void write_sparse(BagWriter& writer, std::span<const std::byte> bytes) {
  for_each_zero_run(bytes, [&](std::span<const std::byte> run, bool zero) {
    if (zero) {
      writer.skip_zeros(run.size());
    } else {
      writer.write(run);
    }
  });
}

// Appends `bytes` zero bytes to the bag, in steps so the bar keeps moving.
void skip_zeros(BagWriter& writer, std::uint64_t bytes, ProgressBar& progress,
                std::uint64_t& done) {
  while (bytes > 0) {
    const std::uint64_t step = std::min<std::uint64_t>(bytes, std::uint64_t{16} * kChunk);
    writer.skip_zeros(step);
    bytes -= step;
    done += step;
    progress.update(done);
  }
}

// Copies `size` bytes of a regular file from offset `start`, jumping over its
// holes (SEEK_DATA / SEEK_HOLE) without reading them.
void copy_file(const InputFile& input, std::uint64_t start, std::uint64_t size, BagWriter& writer,
               ProgressBar& progress) {
  std::vector<std::byte> buffer(kChunk);
  const std::uint64_t end = start + size;
  std::uint64_t at = start;
  std::uint64_t done = 0;
  while (at < end) {
    const off_t data = ::lseek(input.fd(), static_cast<off_t>(at), SEEK_DATA);
    std::uint64_t data_at = at;  // where no hole support: all of it is data
    if (data >= 0) {
      data_at = std::min(end, static_cast<std::uint64_t>(data));
    } else if (errno == ENXIO) {
      data_at = end;  // nothing but a hole to the end
    } else if (errno != EINVAL && errno != EOPNOTSUPP) {
      throw Error::from_errno(errno, input.what());
    }
    skip_zeros(writer, data_at - at, progress, done);
    at = data_at;
    if (at == end) break;
    const off_t hole = ::lseek(input.fd(), static_cast<off_t>(at), SEEK_HOLE);
    const std::uint64_t hole_at =
        hole > static_cast<off_t>(at) ? std::min(end, static_cast<std::uint64_t>(hole)) : end;
    while (at < hole_at) {
      const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, hole_at - at));
      const ssize_t got = ::pread(input.fd(), buffer.data(), want, static_cast<off_t>(at));
      if (got < 0) {
        if (errno == EINTR) continue;
        throw Error::from_errno(errno, input.what());
      }
      if (got == 0) throw Error(Errc::kSystem, input.what() + ": the file shrank while being read");
      write_sparse(writer, std::span(buffer).first(static_cast<std::size_t>(got)));
      at += static_cast<std::uint64_t>(got);
      done += static_cast<std::uint64_t>(got);
      progress.update(done);
    }
  }
}

// Copies a pipe, a terminal or anything else that cannot seek, to its end.
void copy_stream(InputFile& input, BagWriter& writer, ProgressBar& progress) {
  std::vector<std::byte> buffer(kChunk);
  std::uint64_t done = 0;
  for (;;) {
    const std::size_t got = input.read_full(buffer);
    write_sparse(writer, std::span(buffer).first(got));
    done += got;
    progress.update(done);
    if (got < buffer.size()) return;
  }
}

// --- The verbs ---------------------------------------------------------------------

struct PutArgs {
  std::string store;
  std::string name;
  std::string file;
  std::string type;
  std::vector<std::string> tags;
  bool no_replace = false;
};

void bag_put(const PutArgs& args) {
  BagWriteOptions options;
  if (!args.type.empty()) {
    ElementType type = parse_element_type(args.type);
    options.element_type = std::move(type.name);
    options.element_size = type.size;
  }
  for (const std::string& text : args.tags) {
    auto [key, value] = parse_tag(text);
    if (options.tags.count(key) != 0) {
      throw Error(Errc::kInvalidArgument, "--tag: key '" + key + "' given more than once");
    }
    options.tags.emplace(std::move(key), std::move(value));
  }
  options.replace = !args.no_replace;

  InputFile input(args.file);
  struct stat st {};
  if (::fstat(input.fd(), &st) != 0) throw Error::from_errno(errno, input.what());
  // A regular file (even as standard input) tells its size, and its holes.
  const bool regular = S_ISREG(st.st_mode);
  std::uint64_t start = 0;
  std::uint64_t size = 0;
  if (regular) {
    const off_t position = ::lseek(input.fd(), 0, SEEK_CUR);
    start = position > 0 ? static_cast<std::uint64_t>(position) : 0;
    const auto file_size = static_cast<std::uint64_t>(st.st_size);
    size = file_size > start ? file_size - start : 0;
    check_whole_elements(args.name, options, size, input.what());  // before reading any of it
  }

  Store store = open_store(args.store);
  BagWriter writer = store.create_bag(args.name, options);
  ProgressBar progress("put " + args.name, regular ? size : 0);
  if (regular) {
    copy_file(input, start, size, writer, progress);
  } else {
    copy_stream(input, writer, progress);
  }
  progress.finish();
  check_whole_elements(args.name, options, writer.written(), input.what());
  writer.commit();
}

struct GetArgs {
  std::string store;
  std::string name;
  std::string output = "-";
  bool forensic = false;
  bool sync = false;
};

void bag_get(const GetArgs& args) {
  const Store store = open_store(args.store);
  // The bar's size until the bag is open: the file's (header included).
  struct stat st {};
  const bool sized = ::stat(store.bag_path(args.name).c_str(), &st) == 0;
  ProgressBar progress("get " + args.name, sized ? static_cast<std::uint64_t>(st.st_size) : 0);
  if (!args.forensic) progress.status("checking the payload checksum");

  OutputFile output(args.output);
  BagOpenOptions options;
  options.forensic = args.forensic;
  if (output.is_file()) {
    // Copied from file to file in the kernel while the checksum is checked
    // beside it; the file replaces the output only if the check passes.
    options.verify_payload = false;
    const Bag bag = store.open_bag(args.name, options).value();
    progress.restart(bag.info().size);
    output.copy_bag_payload(bag, /*verify=*/!args.forensic,
                            [&](std::uint64_t done, std::uint64_t) { progress.update(done); });
    progress.finish();
    output.commit(args.sync);
    return;
  }
  // A stream cannot take back what it was sent: the payload is verified
  // first, when the bag is opened, and then written from its mapping.
  options.verify_payload = !args.forensic;
  const Bag bag = store.open_bag(args.name, options).value();
  const std::span<const std::byte> bytes = bag.bytes();
  progress.restart(bytes.size());  // the rate is the copy's, not the check's
  for (std::size_t done = 0; done < bytes.size();) {
    const std::size_t step = std::min(kChunk, bytes.size() - done);
    output.write(bytes.subspan(done, step));
    done += step;
    progress.update(done);
  }
  progress.finish();
  output.commit(args.sync);
}

struct LsArgs {
  std::string store;
  bool json = false;
};

void bag_ls(const LsArgs& args) {
  const std::vector<BagEntry> entries = list_bags(open_store(args.store));
  if (args.json) {
    Json list = Json::array();
    for (const BagEntry& entry : entries) list.push_back(bag_entry_json(entry));
    print_json(list);
    return;
  }
  print_bag_table(entries, "NAME");
}

struct InfoArgs {
  std::string store;
  std::string name;
  bool json = false;
};

void bag_info(const InfoArgs& args) {
  const Store store = open_store(args.store);
  const BagInfo info = store.bag_info(args.name);
  const bool typed = info.element_size != 0;
  const std::uint64_t count = typed ? info.size / info.element_size : info.size;
  if (args.json) {
    print_json({{"name", info.name},
                {"path", store.bag_path(args.name)},
                {"size", info.size},
                {"type", info.element_type},
                {"element_size", info.element_size},
                {"count", count},
                {"checksum", info.checksum.hex()},
                {"checksum_algorithm", info.checksum.algorithm_name()},
                {"format", info.format},
                {"created", utc_time(info.created_ns)},
                {"created_ns", info.created_ns},
                {"tags", info.tags}});
    return;
  }
  std::vector<std::pair<std::string, std::string>> fields = {
      {"name", info.name},
      {"path", store.bag_path(args.name)},
      {"size", size_field(info.size)},
      {"type", typed ? info.element_type + " (" + std::to_string(info.element_size) +
                           " bytes each, " + std::to_string(count) + " elements)"
                     : std::string("untyped bytes")},
      {"checksum", info.checksum.hex() + " (" + info.checksum.algorithm_name() + ")"},
      {"created", local_time(info.created_ns)},
      {"tags", std::to_string(info.tags.size())}};
  for (const auto& [key, value] : info.tags) fields.emplace_back("tag " + key, value);
  print_fields(fields);
}

struct VerifyArgs {
  std::string store;
  std::string name;
  bool has_name = false;
  bool json = false;
};

void bag_verify(const VerifyArgs& args) {
  const Store store = open_store(args.store);
  std::optional<std::string_view> only;
  if (args.has_name) {
    struct stat st {};
    if (::stat(store.bag_path(args.name).c_str(), &st) != 0) throw no_such_bag(store, args.name);
    only = args.name;
  }
  ProgressBar progress("verify", 0);
  const std::vector<BagCheck> checks =
      store.verify(only, [&](std::uint64_t done, std::uint64_t total) {
        progress.set_total(total);
        progress.update(done);
      });
  progress.finish();

  const bool all_ok =
      std::all_of(checks.begin(), checks.end(), [](const BagCheck& check) { return check.ok(); });
  if (args.json) {
    Json bags = Json::array();
    for (const BagCheck& check : checks) {
      bags.push_back({{"name", check.name},
                      {"ok", check.ok()},
                      {"problem", check.ok() ? Json(nullptr)
                                             : Json(problem_text(check.name, check.problem))}});
    }
    print_json({{"ok", all_ok}, {"bags", bags}});
  } else {
    for (const BagCheck& check : checks) {
      if (check.ok()) {
        std::cout << "ok " << check.name << '\n';
      } else {
        std::cout << "BAD " << check.name << ": " << problem_text(check.name, check.problem)
                  << '\n';
      }
    }
  }
  if (!all_ok) throw CLI::RuntimeError(kExitFailure);
}

struct RmArgs {
  std::string store;
  std::string name;
};

void bag_rm(const RmArgs& args) {
  Store store = open_store(args.store);
  if (!store.remove_bag(args.name)) throw no_such_bag(store, args.name);
}

// --- Registration ------------------------------------------------------------------

void add_store_argument(CLI::App& verb, std::string& store) {
  verb.add_option("STORE", store, "The store directory")->required()->type_name("");
}

void add_name_argument(CLI::App& verb, std::string& name) {
  verb.add_option("NAME", name, "The bag's name")->required()->type_name("");
}

}  // namespace

std::vector<BagEntry> list_bags(const Store& store) {
  std::vector<BagEntry> entries;
  for (std::string& name : store.bag_names()) {
    BagEntry entry;
    try {
      entry.info = store.bag_info(name);
    } catch (const Error& e) {
      entry.problem = problem_text(name, e.message());
    }
    entry.name = std::move(name);
    entries.push_back(std::move(entry));
  }
  return entries;
}

Json bag_entry_json(const BagEntry& entry) {
  if (!entry.info) return {{"name", entry.name}, {"problem", entry.problem}};
  const BagInfo& info = *entry.info;
  return {{"name", entry.name},
          {"size", info.size},
          {"type", info.element_type},
          {"element_size", info.element_size},
          {"created", utc_time(info.created_ns)},
          {"created_ns", info.created_ns},
          {"tags", info.tags}};
}

void print_bag_table(const std::vector<BagEntry>& entries, const std::string& name_heading) {
  if (entries.empty()) return;  // like ls of an empty directory: no heading either
  std::vector<std::vector<std::string>> rows = {{name_heading, "SIZE", "TYPE", "CREATED", "TAGS"}};
  for (const BagEntry& entry : entries) {
    if (!entry.info) {
      rows.push_back({entry.name, "-", "-", "-", "-", "BAD: " + entry.problem});
      continue;
    }
    const BagInfo& info = *entry.info;
    rows.push_back({entry.name, std::to_string(info.size),
                    info.element_type.empty() ? "-" : info.element_type,
                    local_time(info.created_ns), std::to_string(info.tags.size())});
  }
  print_table(rows, {false, true, false, false, true});
}

void register_bag_commands(CLI::App& app) {
  CLI::App* bag = app.add_subcommand("bag", "Databags: named binary files in a store");
  bag->require_subcommand(1);

  auto put = std::make_shared<PutArgs>();
  CLI::App* verb = bag->add_subcommand(
      "put", "Store a file's bytes (or stdin's) as a bag, replacing one of that name");
  add_store_argument(*verb, put->store);
  add_name_argument(*verb, put->name);
  verb->add_option("FILE", put->file, "The file to read, or - for standard input")
      ->required()
      ->type_name("");
  verb->add_option(
          "--type", put->type,
          "Element type: " + known_type_list() + ", or NAME:SIZE for another type of SIZE bytes")
      ->check(parser_check(parse_element_type, "TYPE"))
      ->type_name("TYPE");
  verb->add_option("--tag", put->tags, "A tag, KEY=VALUE (repeatable)")
      ->allow_extra_args(false)
      ->check(parser_check(parse_tag, "KEY=VALUE"))
      ->type_name("KEY=VALUE");
  verb->add_flag("--no-replace", put->no_replace,
                 "Fail (status 4) if a bag of that name exists instead of replacing it");
  verb->callback([put] { bag_put(*put); });

  auto get = std::make_shared<GetArgs>();
  verb = bag->add_subcommand("get", "Write a bag's payload to standard output or a file");
  add_store_argument(*verb, get->store);
  add_name_argument(*verb, get->name);
  verb->add_option("-o,--output", get->output,
                   "Write to FILE instead (replaced atomically; zero pages become holes)")
      ->type_name("FILE");
  verb->add_flag("--forensic", get->forensic,
                 "Write the payload even if its checksums are wrong (no verification)");
  verb->add_flag("--sync", get->sync,
                 "Force FILE and its directory to the disk before returning (cp does not)");
  verb->callback([get] { bag_get(*get); });

  auto ls = std::make_shared<LsArgs>();
  verb = bag->add_subcommand("ls", "List the bags, sorted by name");
  add_store_argument(*verb, ls->store);
  add_json_flag(*verb, ls->json);
  verb->callback([ls] { bag_ls(*ls); });

  auto info = std::make_shared<InfoArgs>();
  verb = bag->add_subcommand("info", "Show a bag's metadata (header only)");
  add_store_argument(*verb, info->store);
  add_name_argument(*verb, info->name);
  add_json_flag(*verb, info->json);
  verb->callback([info] { bag_info(*info); });

  auto verify = std::make_shared<VerifyArgs>();
  verb = bag->add_subcommand("verify",
                             "Recompute payload checksums: one bag or all (exit 1 if any is bad)");
  add_store_argument(*verb, verify->store);
  CLI::Option* name = verb->add_option("NAME", verify->name, "Only this bag")->type_name("");
  add_json_flag(*verb, verify->json);
  verb->callback([verify, name] {
    verify->has_name = name->count() > 0;
    bag_verify(*verify);
  });

  auto rm = std::make_shared<RmArgs>();
  verb = bag->add_subcommand("rm", "Remove a bag (readers that have it open keep their copy)");
  add_store_argument(*verb, rm->store);
  add_name_argument(*verb, rm->name);
  verb->callback([rm] { bag_rm(*rm); });
}

}  // namespace sheaf::cli
