// Tests of the sheaf command: each runs the built binary (SHEAF_CLI_PATH) in a
// fresh temporary directory and checks its exit status, output and files.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr const char* kSheaf = SHEAF_CLI_PATH;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// n random bytes, with NULs at the start, the end and in the middle.
std::string random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::string bytes(n, '\0');
  for (char& c : bytes) c = static_cast<char>(rng() & 0xff);
  if (n >= 3) bytes[0] = bytes[n / 2] = bytes[n - 1] = '\0';
  return bytes;
}

struct Output {
  int status = -1;  // exit status, or 128 + signal
  std::string out;
  std::string err;
};

// A sheaf process started with stdin, stdout and stderr redirected to files.
class Process {
 public:
  Process(const std::vector<std::string>& args, const fs::path& in, fs::path out, fs::path err)
      : out_(std::move(out)), err_(std::move(err)) {
    std::vector<char*> argv;
    std::string program = kSheaf;
    argv.push_back(program.data());
    std::vector<std::string> copies = args;
    for (std::string& arg : copies) argv.push_back(arg.data());
    argv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, in.c_str(), O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int rc = posix_spawn(&pid_, kSheaf, &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) pid_ = -1;
  }

  // For a process that runs until told to stop (sheaf msg manager, listen).
  void signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  const fs::path& out_path() const { return out_; }

  Output wait() {
    Output result;
    int status = 0;
    if (pid_ > 0 && waitpid(pid_, &status, 0) == pid_) {
      result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    result.out = read_file(out_);
    result.err = read_file(err_);
    return result;
  }

 private:
  pid_t pid_ = -1;
  fs::path out_;
  fs::path err_;
};

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "sheaf-cli-test-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Starts sheaf with the given arguments; stdin is `input` if given, else empty.
  Process start(const std::vector<std::string>& args, const std::string& input = "") {
    const std::string id = std::to_string(next_id_++);
    const fs::path in = dir_ / ("stdin." + id);
    write_file(in, input);
    return Process(args, in, dir_ / ("stdout." + id), dir_ / ("stderr." + id));
  }
  Output run(const std::vector<std::string>& args, const std::string& input = "") {
    return start(args, input).wait();
  }

  // Runs a command that must succeed and returns its stdout.
  std::string ok(const std::vector<std::string>& args, const std::string& input = "") {
    Output result = run(args, input);
    EXPECT_EQ(result.status, 0) << "sheaf " << testing::PrintToString(args) << ": " << result.err;
    return result.out;
  }
  Json ok_json(const std::vector<std::string>& args) {
    std::string out = ok(args);
    Json json = Json::parse(out, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(json.is_discarded()) << "not JSON: " << out;
    return json;
  }

  std::string make_heap(const std::string& name = "h.heap") {
    std::string heap = path(name);
    ok({"heap", "create", heap});
    return heap;
  }

  // Runs another program (argv[0] a full path), stdin empty; for shell pipes
  // and script(1).
  Output run_program(std::vector<std::string> argv) {
    const std::string id = std::to_string(next_id_++);
    const fs::path out = dir_ / ("stdout." + id);
    const fs::path err = dir_ / ("stderr." + id);
    std::vector<char*> pointers;
    for (std::string& arg : argv) pointers.push_back(arg.data());
    pointers.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid = -1;
    Output result;
    if (posix_spawn(&pid, pointers[0], &actions, nullptr, pointers.data(), environ) == 0) {
      int status = 0;
      if (waitpid(pid, &status, 0) == pid) {
        result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
    }
    posix_spawn_file_actions_destroy(&actions);
    result.out = read_file(out);
    result.err = read_file(err);
    return result;
  }

  std::string make_store(const std::string& name = "store") {
    std::string store = path(name);
    ok({"store", "init", store});
    return store;
  }

  fs::path dir_;
  int next_id_ = 0;
};

// One line on stderr, "sheaf: ...", as main prints a sheaf::Error.
void expect_one_error_line(const Output& result) {
  EXPECT_EQ(result.err.rfind("sheaf: ", 0), 0u) << result.err;
  ASSERT_FALSE(result.err.empty());
  EXPECT_EQ(result.err.find('\n'), result.err.size() - 1) << result.err;
}

TEST_F(CliTest, RoundTripCreateInfoPutLsCatRm) {
  const std::string heap = make_heap();

  Json info = ok_json({"heap", "info", heap, "--json"});
  for (const char* field : {"path", "uuid", "format_version", "mode", "size", "max_size",
                            "growth_limit", "used", "free", "largest_free", "page_size", "objects",
                            "generation", "sessions", "recoveries", "walked_recoveries"}) {
    EXPECT_TRUE(info.contains(field)) << field << " missing from " << info.dump();
  }
  EXPECT_EQ(info["objects"], 0);
  EXPECT_GE(info["size"].get<std::uint64_t>(), 8u << 20);
  EXPECT_FALSE(info["uuid"].get<std::string>().empty());

  const std::string data = random_bytes(100000, 1);
  write_file(path("data.bin"), data);
  ok({"heap", "put", heap, "blob", path("data.bin")});

  Json list = ok_json({"heap", "ls", heap, "--json"});
  ASSERT_EQ(list.size(), 1u) << list.dump();
  EXPECT_EQ(list[0]["name"], "blob");
  EXPECT_EQ(list[0]["type"], "byte");
  EXPECT_EQ(list[0]["size"], data.size());
  EXPECT_EQ(list[0]["count"], data.size());
  EXPECT_EQ(ok({"heap", "ls", heap, "-1"}), "blob\n");

  const std::string back = ok({"heap", "cat", heap, "blob"});
  EXPECT_EQ(back.size(), data.size());
  EXPECT_TRUE(back == data) << "cat returned different bytes";

  EXPECT_EQ(ok_json({"heap", "info", heap, "--json"})["objects"], 1);

  ok({"heap", "rm", heap, "blob"});
  EXPECT_EQ(ok_json({"heap", "ls", heap, "--json"}), Json::array());
  EXPECT_EQ(ok({"heap", "ls", heap}), "");
}

// A heap of the first format (tests/data) is read as it is, and upgraded.
TEST_F(CliTest, UpgradeBringsAnOldHeapToTheCurrentFormat) {
  const std::string heap = path("old.heap");
  fs::copy_file(SHEAF_TEST_DATA "/heap-format-1.heap", heap);
  Json info = ok_json({"heap", "info", heap, "--json"});
  EXPECT_EQ(info["format_version"], 1);
  EXPECT_EQ(info["features"], Json::array());
  EXPECT_EQ(ok({"heap", "cat", heap, "greeting"}), "hello, sheaf\n");
  EXPECT_EQ(ok_json({"heap", "ls", heap, "--json"})[0]["serial"], 0);

  EXPECT_EQ(ok({"heap", "upgrade", heap}),
            "upgraded " + heap +
                " from format 1 to 2 (features: object-serials, cache-ledgers, holds, used-tags, "
                "shared-readers, held-serials)\n");
  info = ok_json({"heap", "info", heap, "--json"});
  EXPECT_EQ(info["format_version"], 2);
  EXPECT_EQ(info["features"], Json::array({"object-serials", "cache-ledgers", "holds", "used-tags",
                                           "shared-readers", "held-serials"}));
  Json list = ok_json({"heap", "ls", heap, "--json"});
  ASSERT_EQ(list.size(), 2u);
  EXPECT_NE(list[0]["serial"], list[1]["serial"]);
  EXPECT_GT(list[0]["serial"].get<std::uint64_t>(), 0u);
  Json again = ok_json({"heap", "upgrade", heap, "--json"});
  EXPECT_EQ(again["upgraded"], false);
  ok({"heap", "check", heap});
}

TEST_F(CliTest, InfoHumanOutputIsAlignedWithUnits) {
  const std::string heap = make_heap();
  const std::string out = ok({"heap", "info", heap});
  EXPECT_NE(out.find("size:"), std::string::npos) << out;
  EXPECT_NE(out.find("MiB)"), std::string::npos) << out;
  EXPECT_NE(out.find("largest free:"), std::string::npos) << out;
  // Every value starts in the same column.
  std::size_t column = std::string::npos;
  std::size_t start = 0;
  while (start < out.size()) {
    const std::size_t end = out.find('\n', start);
    const std::string line = out.substr(start, end - start);
    const std::size_t colon = line.find(':');
    ASSERT_NE(colon, std::string::npos) << line;
    const std::size_t value = line.find_first_not_of(' ', colon + 1);
    if (column == std::string::npos) column = value;
    EXPECT_EQ(value, column) << line;
    start = end + 1;
  }
}

TEST_F(CliTest, ListingIsSortedByName) {
  const std::string heap = make_heap();
  for (const char* name : {"zeta", "alpha", "mid"}) ok({"heap", "put", heap, name, "-"}, "xyz");
  EXPECT_EQ(ok({"heap", "ls", heap, "--names"}), "alpha\nmid\nzeta\n");
  const std::string out = ok({"heap", "ls", heap});
  EXPECT_LT(out.find("alpha"), out.find("mid"));
  EXPECT_LT(out.find("mid"), out.find("zeta"));
  EXPECT_NE(out.find("byte"), std::string::npos) << out;
  Json list = ok_json({"heap", "ls", heap, "--json"});
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0]["name"], "alpha");
  EXPECT_EQ(list[2]["name"], "zeta");
}

TEST_F(CliTest, PutFromStandardInput) {
  const std::string heap = make_heap();
  // Larger than a pipe buffer and than one read chunk, so reading must loop.
  const std::string data = random_bytes((3 << 20) + 12345, 2);
  ok({"heap", "put", heap, "from-stdin", "-"}, data);
  EXPECT_EQ(ok_json({"heap", "ls", heap, "--json"})[0]["size"], data.size());
  EXPECT_TRUE(ok({"heap", "cat", heap, "from-stdin"}) == data);
}

TEST_F(CliTest, PutEmptyInput) {
  const std::string heap = make_heap();
  Output result = run({"heap", "put", heap, "empty", "-"});
  if (result.status == 0) {  // the library allows arrays of no elements
    Json list = ok_json({"heap", "ls", heap, "--json"});
    ASSERT_EQ(list.size(), 1u);
    EXPECT_EQ(list[0]["size"], 0);
    EXPECT_EQ(ok({"heap", "cat", heap, "empty"}), "");
  } else {  // it does not: a clear error, and nothing stored
    expect_one_error_line(result);
    EXPECT_EQ(ok_json({"heap", "ls", heap, "--json"}), Json::array());
  }
}

TEST_F(CliTest, PutExistingNameNeedsForce) {
  const std::string heap = make_heap();
  ok({"heap", "put", heap, "x", "-"}, "first");
  Output result = run({"heap", "put", heap, "x", "-"}, "second");
  EXPECT_EQ(result.status, 4) << result.err;
  expect_one_error_line(result);
  EXPECT_EQ(ok({"heap", "cat", heap, "x"}), "first");

  ok({"heap", "put", heap, "x", "-", "--force"}, "second, longer");
  EXPECT_EQ(ok({"heap", "cat", heap, "x"}), "second, longer");
  EXPECT_EQ(ok_json({"heap", "ls", heap, "--json"}).size(), 1u);
}

TEST_F(CliTest, PutMissingInputFileIsNotFound) {
  const std::string heap = make_heap();
  Output result = run({"heap", "put", heap, "x", path("no-such-file")});
  EXPECT_EQ(result.status, 3) << result.err;
  EXPECT_NE(result.err.find("no-such-file"), std::string::npos) << result.err;
  EXPECT_EQ(ok_json({"heap", "ls", heap, "--json"}), Json::array());
}

TEST_F(CliTest, PutBeyondMaxSizeIsOutOfSpace) {
  const std::string heap = path("small.heap");
  ok({"heap", "create", heap, "--size", "64K", "--max-size", "1M"});
  Output result = run({"heap", "put", heap, "big", "-"}, random_bytes(2 << 20, 6));
  EXPECT_EQ(result.status, 6) << result.err;
  expect_one_error_line(result);
  EXPECT_EQ(ok_json({"heap", "ls", heap, "--json"}), Json::array());
  EXPECT_EQ(ok_json({"heap", "check", heap, "--json"})["ok"], true);
}

TEST_F(CliTest, InvalidObjectNameIsUsageError) {
  const std::string heap = make_heap();
  Output result = run({"heap", "put", heap, "", "-"}, "data");
  EXPECT_EQ(result.status, 2) << result.err;
  expect_one_error_line(result);
}

TEST_F(CliTest, MissingObjectIsNotFound) {
  const std::string heap = make_heap();
  for (const char* verb : {"cat", "rm"}) {
    Output result = run({"heap", verb, heap, "ghost"});
    EXPECT_EQ(result.status, 3) << verb << ": " << result.err;
    expect_one_error_line(result);
    EXPECT_NE(result.err.find("ghost"), std::string::npos) << result.err;
    EXPECT_TRUE(result.out.empty());
  }
}

TEST_F(CliTest, SizeSuffixesAreAccepted) {
  struct Case {
    const char* text;
    std::uint64_t at_least;
  };
  int n = 0;
  for (Case c : {Case{"1048576", 1u << 20}, Case{"64K", 64u << 10}, Case{"2M", 2u << 20},
                 Case{"1.5M", 3u << 19}, Case{"3MiB", 3u << 20}}) {
    const std::string heap = path("sized" + std::to_string(n++) + ".heap");
    ok({"heap", "create", heap, "--size", c.text, "--max-size", "1G", "--mode", "local"});
    Json info = ok_json({"heap", "info", heap, "--json"});
    EXPECT_GE(info["size"].get<std::uint64_t>(), c.at_least) << c.text;
    EXPECT_LT(info["size"].get<std::uint64_t>(), c.at_least + (1u << 20)) << c.text;
  }
}

TEST_F(CliTest, BadSizeIsUsageErrorNamingTheValue) {
  for (const char* bad :
       {"12Q", "lots", "-5", "1.5", "1..5G", "99999999999999999999", "20000000000T", "1G2"}) {
    const std::string heap = path("bad.heap");
    Output result = run({"heap", "create", heap, "--size", bad});
    EXPECT_EQ(result.status, 2) << bad << ": " << result.err;
    EXPECT_NE(result.err.find(std::string("'") + bad + "'"), std::string::npos)
        << bad << ": " << result.err;
    EXPECT_FALSE(fs::exists(heap)) << bad;
  }
  Output result = run({"heap", "create", path("m.heap"), "--max-size", "huge"});
  EXPECT_EQ(result.status, 2);
  EXPECT_NE(result.err.find("huge"), std::string::npos) << result.err;
}

// A maximum size the format cannot address is refused, not quietly cut to
// the reservation; one it can is recorded as given, beside what this process
// may grow the heap to.
TEST_F(CliTest, MaxSizeIsRecordedAsGivenOrRefused) {
  const std::string huge = path("huge.heap");
  Output refused = run({"heap", "create", huge, "--max-size", "99999T"});
  EXPECT_EQ(refused.status, 2) << refused.err;
  EXPECT_NE(refused.err.find("256 TiB"), std::string::npos) << refused.err;
  EXPECT_FALSE(fs::exists(huge));

  const std::string big = path("big.heap");
  ASSERT_EQ(run({"heap", "create", big, "--max-size", "1T"}).status, 0);
  Json info = ok_json({"heap", "info", big, "--json"});
  EXPECT_EQ(info["max_size"].get<std::uint64_t>(), std::uint64_t{1} << 40);
  EXPECT_EQ(info["growth_limit"].get<std::uint64_t>(), std::uint64_t{64} << 30);
  Output text = run({"heap", "info", big});
  EXPECT_NE(text.out.find("1.0 TiB"), std::string::npos) << text.out;
  EXPECT_EQ(ok_json({"heap", "info", make_heap(), "--json"})["max_size"], 0);
}

TEST_F(CliTest, UsageErrorsExit2) {
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {},
           {"heap"},
           {"nonsense"},
           {"heap", "frobnicate"},
           {"heap", "info"},
           {"heap", "put", path("h.heap"), "name"},
           {"heap", "create", path("h.heap"), "--mode", "carrier-pigeon"},
           {"heap", "info", path("h.heap"), "--no-such-flag"}}) {
    Output result = run(args);
    EXPECT_EQ(result.status, 2) << testing::PrintToString(args) << ": " << result.err;
    EXPECT_FALSE(result.err.empty()) << testing::PrintToString(args);
  }
}

// An unknown command is named, with the commands there are (git-style),
// not answered with "A subcommand is required".
TEST_F(CliTest, AnUnknownCommandIsNamed) {
  for (const auto& [args, said] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"bag", "frob"}, "'frob' is not a command of 'sheaf bag'"},
           {{"frob"}, "'frob' is not a command of 'sheaf'"},
           {{"heap", "frobnicate", "x"}, "'frobnicate' is not a command of 'sheaf heap'"}}) {
    Output result = run(args);
    EXPECT_EQ(result.status, 2) << result.err;
    EXPECT_NE(result.err.find(said), std::string::npos) << result.err;
    EXPECT_NE(result.err.find("see 'sheaf"), std::string::npos) << result.err;
  }
  Output bag = run({"bag", "frob"});
  EXPECT_NE(bag.err.find("put, get, ls"), std::string::npos) << bag.err;
}

TEST_F(CliTest, HelpAndVersion) {
  Output help = run({"--help"});
  EXPECT_EQ(help.status, 0);
  EXPECT_NE(help.out.find("heap"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("Exit status"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("already exists"), std::string::npos) << help.out;

  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"heap", "--help"}, {"heap", "create", "--help"}, {"heap", "put", "--help"}}) {
    Output result = run(args);
    EXPECT_EQ(result.status, 0) << testing::PrintToString(args);
    EXPECT_NE(result.out.find("Usage"), std::string::npos) << result.out;
  }

  Output version = run({"--version"});
  EXPECT_EQ(version.status, 0);
  EXPECT_EQ(version.out.rfind("sheaf ", 0), 0u) << version.out;
}

TEST_F(CliTest, InfoOnMissingFileIsNotFound) {
  Output result = run({"heap", "info", path("absent.heap")});
  EXPECT_EQ(result.status, 3) << result.err;
  expect_one_error_line(result);
  EXPECT_FALSE(fs::exists(path("absent.heap")));
}

TEST_F(CliTest, OtherSystemErrorsExit8) {
  fs::create_directory(path("a-directory"));
  Output result = run({"heap", "info", path("a-directory")});
  EXPECT_EQ(result.status, 8) << result.err;
  expect_one_error_line(result);
  EXPECT_NE(result.err.find("Is a directory"), std::string::npos) << result.err;
}

TEST_F(CliTest, NonHeapFilesAreBadFilesAndLeftAlone) {
  write_file(path("random.bin"), random_bytes(64 << 10, 3));
  write_file(path("text.txt"), "This is not a heap.\nIt is a text file.\n");
  write_file(path("empty"), "");
  const std::string real = make_heap("real.heap");
  const std::string heap_bytes = read_file(real);
  write_file(path("head.heap"), heap_bytes.substr(0, 100));
  write_file(path("half.heap"), heap_bytes.substr(0, heap_bytes.size() / 2));

  for (const char* name : {"random.bin", "text.txt", "empty", "head.heap", "half.heap"}) {
    const std::string before = read_file(path(name));
    for (const char* verb : {"info", "ls"}) {
      Output result = run({"heap", verb, path(name)});
      EXPECT_EQ(result.status, 5) << verb << " " << name << ": " << result.err;
      expect_one_error_line(result);
      EXPECT_TRUE(read_file(path(name)) == before) << verb << " changed " << name;
    }
    // check reports a damaged heap as a problem (exit 1) and a file that is
    // no heap at all as a bad file (exit 5); either way it fails and writes nothing.
    Output checked = run({"heap", "check", path(name)});
    const bool damaged_heap = std::string(name).find(".heap") != std::string::npos;
    EXPECT_EQ(checked.status, damaged_heap ? 1 : 5) << name << ": " << checked.out << checked.err;
    EXPECT_TRUE(read_file(path(name)) == before) << "check changed " << name;
  }
}

TEST_F(CliTest, CreateOnExistingPathIsAlreadyExistsAndChangesNothing) {
  const std::string heap = make_heap();
  ok({"heap", "put", heap, "keep", "-"}, "precious");
  const std::string heap_before = read_file(heap);
  Output result = run({"heap", "create", heap, "--size", "1M"});
  EXPECT_EQ(result.status, 4) << result.err;
  expect_one_error_line(result);
  EXPECT_TRUE(read_file(heap) == heap_before);
  EXPECT_EQ(ok({"heap", "cat", heap, "keep"}), "precious");

  write_file(path("notes.txt"), "mine\n");
  result = run({"heap", "create", path("notes.txt")});
  EXPECT_EQ(result.status, 4) << result.err;
  EXPECT_EQ(read_file(path("notes.txt")), "mine\n");
}

TEST_F(CliTest, CheckHealthyHeap) {
  const std::string heap = make_heap();
  ok({"heap", "put", heap, "a", "-"}, random_bytes(5000, 4));
  ok({"heap", "put", heap, "b", "-"}, random_bytes(70000, 5));

  const std::string out = ok({"heap", "check", heap});
  EXPECT_EQ(out.rfind("ok: ", 0), 0u) << out;
  EXPECT_NE(out.find("2 objects"), std::string::npos) << out;

  Json report = ok_json({"heap", "check", heap, "--json"});
  EXPECT_EQ(report["ok"], true) << report.dump();
  EXPECT_EQ(report["objects"], 2);
  EXPECT_EQ(report["problems"], Json::array());
  EXPECT_GT(report["blocks"].get<std::uint64_t>(), 0u);
}

// Damage no crash explains (here: a freed block's size rewritten to swallow
// the object after it): `heap check` reports it, exit 1, and changes nothing;
// a verb that opens the heap to write refuses it (exit 5); `heap check
// --repair` rebuilds the heap from its blocks.
TEST_F(CliTest, CheckReportsDamageWithoutTouchingItAndRepairsOnRequest) {
  const std::string heap = make_heap();
  ok({"heap", "put", heap, "first", "-"}, "makes the name table");
  ok({"heap", "put", heap, "a", "-"}, std::string(500, 'a'));
  ok({"heap", "put", heap, "victim", "-"}, std::string(100, 'v'));
  ok({"heap", "put", heap, "z", "-"}, std::string(100, 'z'));
  // A byte array's block starts 16 + align16(48 + name + "byte") before it.
  std::uint64_t block_a = 0;
  for (const Json& object : ok_json({"heap", "ls", heap, "--json"})) {
    if (object["name"] != "a") continue;
    const std::uint64_t head = (48 + 1 + 4 + 15) / 16 * 16;
    block_a = object["offset"].get<std::uint64_t>() - head - 16;
  }
  ASSERT_NE(block_a, 0u);
  ok({"heap", "rm", heap, "a"});
  {
    std::fstream file(heap, std::ios::in | std::ios::out | std::ios::binary);
    std::uint64_t words[2] = {0, 0};
    file.seekg(static_cast<std::streamoff>(block_a));
    file.read(reinterpret_cast<char*>(&words[0]), 8);
    ASSERT_EQ(words[0] & 0xF, 0u) << "a's block is not free";
    file.seekg(static_cast<std::streamoff>(block_a + (words[0] & ~std::uint64_t{0xF})));
    file.read(reinterpret_cast<char*>(&words[1]), 8);
    ASSERT_EQ(words[1] & 0xF, 2u) << "the next block is not the named victim";
    const std::uint64_t swallowing =
        (words[0] & ~std::uint64_t{0xF}) + (words[1] & ~std::uint64_t{0xF});
    file.seekp(static_cast<std::streamoff>(block_a));
    file.write(reinterpret_cast<const char*>(&swallowing), 8);
  }
  const std::string damaged = read_file(heap);

  Output checked = run({"heap", "check", heap});
  EXPECT_EQ(checked.status, 1) << checked.out << checked.err;
  EXPECT_NE(checked.out.find("damaged: "), std::string::npos) << checked.out;
  EXPECT_NE(checked.out.find("--repair"), std::string::npos) << checked.out;
  EXPECT_TRUE(read_file(heap) == damaged) << "checking changed the file";

  Output refused = run({"heap", "put", heap, "new", "-"}, "x");
  EXPECT_EQ(refused.status, 5) << refused.err;
  EXPECT_NE(refused.err.find("damaged"), std::string::npos) << refused.err;
  EXPECT_TRUE(read_file(heap) == damaged) << "refusing changed the file";

  Json repaired = ok_json({"heap", "check", heap, "--repair", "--json"});
  EXPECT_EQ(repaired["ok"], true) << repaired.dump();
  EXPECT_FALSE(repaired["repaired"].empty()) << repaired.dump();
  EXPECT_EQ(ok({"heap", "ls", heap, "-1"}), "first\nz\n");
  EXPECT_EQ(ok({"heap", "cat", heap, "z"}), std::string(100, 'z'));
  EXPECT_EQ(ok({"heap", "check", heap}).rfind("ok: ", 0), 0u);
}

TEST_F(CliTest, ConcurrentPutsAllLand) {
  const std::string heap = make_heap();
  constexpr int kWriters = 4;
  std::vector<std::string> data;
  // 3 MiB each: together more than the 8 MiB heap, so it grows under contention.
  for (int i = 0; i < kWriters; ++i) {
    data.push_back(random_bytes(3 << 20, 100 + static_cast<std::uint32_t>(i)));
    write_file(path("in" + std::to_string(i)), data.back());
  }
  std::vector<Process> writers;
  for (int i = 0; i < kWriters; ++i) {
    const std::string n = std::to_string(i);
    writers.push_back(start({"heap", "put", heap, "object-" + n, path("in" + n)}));
  }
  for (int i = 0; i < kWriters; ++i) {
    Output result = writers[static_cast<std::size_t>(i)].wait();
    EXPECT_EQ(result.status, 0) << "writer " << i << ": " << result.err;
  }

  Json list = ok_json({"heap", "ls", heap, "--json"});
  ASSERT_EQ(list.size(), static_cast<std::size_t>(kWriters)) << list.dump();
  for (int i = 0; i < kWriters; ++i) {
    const std::string name = "object-" + std::to_string(i);
    EXPECT_EQ(list[static_cast<std::size_t>(i)]["name"], name);
    EXPECT_TRUE(ok({"heap", "cat", heap, name}) == data[static_cast<std::size_t>(i)]) << name;
  }
  EXPECT_EQ(ok_json({"heap", "check", heap, "--json"})["ok"], true);
}

// --- Stores and bags -------------------------------------------------------------

// Changes one byte of a file in place (as a disk error or a stray write would).
void flip_byte(const fs::path& file, std::uint64_t offset) {
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  io.seekg(static_cast<std::streamoff>(offset));
  const char c = static_cast<char>(io.get());
  io.seekp(static_cast<std::streamoff>(offset));
  io.put(static_cast<char>(c ^ 0x20));
  ASSERT_TRUE(io.good()) << file;
}

// Bytes of disk a file takes (what du counts).
std::uint64_t allocated_bytes(const fs::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) return ~std::uint64_t{0};
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

// The data extents of a file, as [begin, end) pairs (SEEK_DATA / SEEK_HOLE).
std::vector<std::pair<std::uint64_t, std::uint64_t>> data_extents(int fd, std::uint64_t size) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> extents;
  std::uint64_t at = 0;
  while (at < size) {
    const off_t data = lseek(fd, static_cast<off_t>(at), SEEK_DATA);
    if (data < 0) break;
    const off_t hole = lseek(fd, data, SEEK_HOLE);
    const std::uint64_t end = hole < 0 ? size : static_cast<std::uint64_t>(hole);
    extents.emplace_back(static_cast<std::uint64_t>(data), end);
    at = end;
  }
  return extents;
}

// Whether two files hold the same bytes, as cmp would say, without reading
// their holes: outside both files' data extents both read as zeros.
bool same_contents(const fs::path& a, const fs::path& b) {
  const int fa = open(a.c_str(), O_RDONLY);
  const int fb = open(b.c_str(), O_RDONLY);
  bool same = fa >= 0 && fb >= 0 && fs::file_size(a) == fs::file_size(b);
  const std::uint64_t size = same ? fs::file_size(a) : 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges = data_extents(fa, size);
  for (const auto& range : data_extents(fb, size)) ranges.push_back(range);
  std::vector<char> ba(1 << 20);
  std::vector<char> bb(1 << 20);
  for (const auto& [begin, end] : ranges) {
    for (std::uint64_t at = begin; same && at < end;) {
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(ba.size(), end - at));
      same = pread(fa, ba.data(), n, static_cast<off_t>(at)) == static_cast<ssize_t>(n) &&
             pread(fb, bb.data(), n, static_cast<off_t>(at)) == static_cast<ssize_t>(n) &&
             std::equal(ba.begin(), ba.begin() + static_cast<std::ptrdiff_t>(n), bb.begin());
      at += n;
    }
  }
  if (fa >= 0) close(fa);
  if (fb >= 0) close(fb);
  return same;
}

// A sparse file of `size` bytes with a few blocks of data: at the start, at an
// unaligned offset in the middle, and at the end.
std::string make_sparse_file(const fs::path& file, std::uint64_t size) {
  { std::ofstream create(file, std::ios::binary | std::ios::trunc); }
  fs::resize_file(file, size);
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  const std::string data = random_bytes(100000, 42);
  for (std::uint64_t offset : {std::uint64_t{0}, size / 2 + 12345, size - data.size()}) {
    io.seekp(static_cast<std::streamoff>(offset));
    io.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  EXPECT_TRUE(io.good()) << file;
  return file.string();
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The files in a directory, dotfiles included.
std::vector<std::string> files_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

TEST_F(CliTest, StoreInitAndLs) {
  const std::string store = path("store");
  EXPECT_NE(ok({"store", "init", store}).find("created store"), std::string::npos);
  EXPECT_TRUE(fs::exists(store + "/.sheaf-store"));
  for (const char* sub : {"heaps", "bags", "tmp"}) EXPECT_TRUE(fs::is_directory(store + "/" + sub));
  // Again: the store is left as it is.
  EXPECT_NE(ok({"store", "init", store}).find("already a store"), std::string::npos);

  // An empty store lists nothing.
  EXPECT_EQ(ok({"store", "ls", store}), "");
  Json empty = ok_json({"store", "ls", store, "--json"});
  EXPECT_EQ(empty["heaps"], Json::array());
  EXPECT_EQ(empty["bags"], Json::array());

  ok({"heap", "create", store + "/counters", "--size", "1M"});
  ok({"bag", "put", store, "weights", "-", "--type", "float32"}, std::string(4000, 'w'));
  Json listing = ok_json({"store", "ls", store, "--json"});
  ASSERT_EQ(listing["heaps"].size(), 1u) << listing.dump();
  EXPECT_EQ(listing["heaps"][0]["name"], "counters");
  EXPECT_EQ(listing["heaps"][0]["size"], fs::file_size(store + "/heaps/counters.heap"));
  ASSERT_EQ(listing["bags"].size(), 1u) << listing.dump();
  EXPECT_EQ(listing["bags"][0]["name"], "weights");
  EXPECT_EQ(listing["bags"][0]["size"], 4000);
  EXPECT_EQ(listing["bags"][0]["type"], "float32");
  EXPECT_GT(listing["bags"][0]["created_ns"].get<std::uint64_t>(), 0u);

  const std::string out = ok({"store", "ls", store});
  EXPECT_NE(out.find("counters"), std::string::npos) << out;
  EXPECT_NE(out.find("weights"), std::string::npos) << out;
  EXPECT_NE(out.find("float32"), std::string::npos) << out;
}

TEST_F(CliTest, StoreInitRefusesANonEmptyDirectoryAndLsNeedsAStore) {
  fs::create_directory(path("full"));
  write_file(path("full/mine.txt"), "keep\n");
  Output result = run({"store", "init", path("full")});
  EXPECT_EQ(result.status, 4) << result.err;
  expect_one_error_line(result);
  EXPECT_EQ(files_in(path("full")), std::vector<std::string>{"mine.txt"});

  for (const char* dir : {"full", "absent"}) {
    result = run({"store", "ls", path(dir)});
    EXPECT_EQ(result.status, 3) << dir << ": " << result.err;
    expect_one_error_line(result);
    result = run({"bag", "ls", path(dir)});
    EXPECT_EQ(result.status, 3) << dir << ": " << result.err;
  }
}

// A file is not a directory, and a store this user may not read is not
// "not a store": each is said as it is (run as user nobody).
TEST_F(CliTest, StoreErrorsSayWhatIsWrong) {
  write_file(path("plain"), "x\n");
  Output file = run({"store", "ls", path("plain")});
  EXPECT_EQ(file.status, 2) << file.err;
  EXPECT_NE(file.err.find("not a directory"), std::string::npos) << file.err;

  const std::string store = make_store();
  fs::permissions(dir_, fs::perms::owner_all | fs::perms::others_exec);  // nobody may pass
  fs::permissions(store, fs::perms::owner_all);                          // but not look inside
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"store", "ls", store}, {"bag", "ls", store}, {"bag", "get", store, "b", "-o", "-"}}) {
    std::vector<std::string> argv = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                                     "--clear-groups", kSheaf};
    argv.insert(argv.end(), args.begin(), args.end());
    Output denied = run_program(argv);
    EXPECT_EQ(denied.status, 8) << testing::PrintToString(args) << ": " << denied.err;
    EXPECT_NE(denied.err.find("Permission denied"), std::string::npos) << denied.err;
    EXPECT_EQ(denied.err.find("not a Sheaf store"), std::string::npos) << denied.err;
  }
  fs::permissions(store, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                             fs::perms::others_read | fs::perms::others_exec);
}

// A directory named like a bag is reported as what it is, not as a failed
// mmap ("No such device").
TEST_F(CliTest, ADirectoryNamedLikeABagIsNotABag) {
  const std::string store = make_store();
  fs::create_directory(store + "/bags/x.bag");
  Output info = run({"bag", "info", store, "x"});
  EXPECT_NE(info.status, 0);
  EXPECT_NE(info.err.find("not a regular file"), std::string::npos) << info.err;
  EXPECT_EQ(info.err.find("mmap"), std::string::npos) << info.err;
  const std::string listing = ok({"bag", "ls", store});
  EXPECT_NE(listing.find("not a regular file"), std::string::npos) << listing;
}

TEST_F(CliTest, BagPutGetRoundTripFromFile) {
  const std::string store = make_store();
  // Larger than one 4 MiB chunk, with NULs and a run of zero pages inside.
  std::string data = random_bytes((5 << 20) + 777, 7);
  std::fill(data.begin() + (1 << 20) + 5, data.begin() + (3 << 20), '\0');
  write_file(path("data.bin"), data);
  ok({"bag", "put", store, "blob", path("data.bin")});

  EXPECT_TRUE(ok({"bag", "get", store, "blob"}) == data) << "stdout differs";
  ok({"bag", "get", store, "blob", "-o", path("back.bin")});
  EXPECT_TRUE(read_file(path("back.bin")) == data) << "-o file differs";
  EXPECT_EQ(ok_json({"bag", "info", store, "blob", "--json"})["size"], data.size());
  // The temporary beside the output is gone.
  for (const std::string& name : files_in(dir_)) EXPECT_NE(name.rfind(".back.bin", 0), 0u) << name;

  // -o replaces an existing file.
  write_file(path("back.bin"), "old contents");
  ok({"bag", "get", store, "blob", "--output", path("back.bin")});
  EXPECT_TRUE(read_file(path("back.bin")) == data);
}

TEST_F(CliTest, BagGetOutputThroughLinksAndIntoFifos) {
  const std::string store = make_store();
  const std::string data = random_bytes(300000, 15);
  ok({"bag", "put", store, "b", "-"}, data);

  // A symbolic link: the file it points to is replaced, keeping its mode.
  write_file(path("target"), "old");
  fs::permissions(path("target"),
                  fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  fs::create_symlink(path("target"), path("link"));
  ok({"bag", "get", store, "b", "-o", path("link")});
  EXPECT_TRUE(fs::is_symlink(path("link")));
  EXPECT_TRUE(read_file(path("target")) == data);
  EXPECT_EQ(fs::status(path("target")).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);

  // A FIFO (like /dev/null or /dev/stdout, not a regular file) is written
  // in place, never renamed over.
  ASSERT_EQ(mkfifo(path("fifo").c_str(), 0600), 0);
  // Opened for reading first, without blocking, so that nothing here can
  // hang if the command fails.
  const int fifo = open(path("fifo").c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(fifo, 0);
  Process get = start({"bag", "get", store, "b", "-o", path("fifo")});
  std::string received;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (received.size() < data.size() && std::chrono::steady_clock::now() < deadline) {
    pollfd ready{fifo, POLLIN, 0};
    poll(&ready, 1, 100);
    char buffer[65536];
    const ssize_t n = read(fifo, buffer, sizeof(buffer));
    if (n > 0) received.append(buffer, static_cast<std::size_t>(n));
  }
  close(fifo);
  Output result = get.wait();
  EXPECT_EQ(result.status, 0) << result.err;
  EXPECT_TRUE(received == data);
  EXPECT_TRUE(fs::is_fifo(path("fifo")));
}

TEST_F(CliTest, BagPutFromStandardInput) {
  const std::string store = make_store();
  std::string data = random_bytes((4 << 20) + 4321, 8);
  std::fill(data.begin() + 100, data.begin() + 200000, '\0');
  ok({"bag", "put", store, "piped", "-"}, data);
  EXPECT_TRUE(ok({"bag", "get", store, "piped"}) == data);
  Json info = ok_json({"bag", "info", store, "piped", "--json"});
  EXPECT_EQ(info["size"], data.size());
  EXPECT_EQ(info["type"], "");
  EXPECT_EQ(info["element_size"], 0);
}

TEST_F(CliTest, BagPutFromAPipe) {
  // The other tests' standard input is a file, which put reads like one; a
  // pipe is read as a stream, to its end.
  const std::string store = make_store();
  std::string data = random_bytes((4 << 20) + 99, 14);
  std::fill(data.begin() + 8192, data.begin() + 3 * 8192, '\0');
  write_file(path("data.bin"), data);
  const std::string sheaf = std::string("'") + kSheaf + "'";
  Output result = run_program({"/bin/sh", "-c",
                               "cat '" + path("data.bin") + "' | " + sheaf + " bag put '" + store +
                                   "' piped - && " + sheaf + " bag get '" + store + "' piped"});
  EXPECT_EQ(result.status, 0) << result.err;
  EXPECT_TRUE(result.out == data) << "the bag differs";

  // Checked at the end, for a stream: 4 MiB + 99 bytes are no whole int32s.
  result = run_program({"/bin/sh", "-c",
                        "cat '" + path("data.bin") + "' | " + sheaf + " bag put '" + store +
                            "' typed - --type int32"});
  EXPECT_EQ(result.status, 2) << result.err;
  EXPECT_NE(result.err.find("nothing stored"), std::string::npos) << result.err;
  EXPECT_EQ(ok_json({"bag", "ls", store, "--json"}).size(), 1u);
  EXPECT_TRUE(fs::is_empty(store + "/tmp"));
}

TEST_F(CliTest, BagPutEmptyInput) {
  const std::string store = make_store();
  write_file(path("empty"), "");
  ok({"bag", "put", store, "from-file", path("empty")});
  ok({"bag", "put", store, "from-stdin", "-"});
  for (const char* name : {"from-file", "from-stdin"}) {
    EXPECT_EQ(ok_json({"bag", "info", store, name, "--json"})["size"], 0) << name;
    EXPECT_EQ(ok({"bag", "get", store, name}), "") << name;
    ok({"bag", "get", store, name, "-o", path("out")});
    EXPECT_TRUE(fs::exists(path("out")));
    EXPECT_EQ(fs::file_size(path("out")), 0u);
  }
  EXPECT_EQ(ok({"bag", "verify", store}), "ok from-file\nok from-stdin\n");
}

TEST_F(CliTest, BagPutReplacesUnlessNoReplace) {
  const std::string store = make_store();
  ok({"bag", "put", store, "x", "-"}, "first");
  ok({"bag", "put", store, "x", "-"}, "second");
  EXPECT_EQ(ok({"bag", "get", store, "x"}), "second");

  Output result = run({"bag", "put", store, "x", "-", "--no-replace"}, "third");
  EXPECT_EQ(result.status, 4) << result.err;
  expect_one_error_line(result);
  EXPECT_EQ(ok({"bag", "get", store, "x"}), "second");
  EXPECT_TRUE(fs::is_empty(store + "/tmp"));

  ok({"bag", "put", store, "y", "-", "--no-replace"}, "new");
  EXPECT_EQ(ok({"bag", "get", store, "y"}), "new");
}

TEST_F(CliTest, BagTypeMustDivideThePayload) {
  const std::string store = make_store();
  write_file(path("odd.bin"), random_bytes(4001, 9));
  for (const std::string& input : {path("odd.bin"), std::string("-")}) {
    Output result =
        run({"bag", "put", store, "odd", input, "--type", "float32"}, read_file(path("odd.bin")));
    EXPECT_EQ(result.status, 2) << input << ": " << result.err;
    expect_one_error_line(result);
    EXPECT_NE(result.err.find("float32"), std::string::npos) << result.err;
    EXPECT_NE(result.err.find("4001"), std::string::npos) << result.err;
  }
  EXPECT_EQ(ok_json({"bag", "ls", store, "--json"}), Json::array());
  EXPECT_TRUE(fs::is_empty(store + "/tmp"));
  EXPECT_TRUE(fs::is_empty(store + "/bags"));

  ok({"bag", "put", store, "floats", "-", "--type", "float32"}, random_bytes(4000, 10));
  Json info = ok_json({"bag", "info", store, "floats", "--json"});
  EXPECT_EQ(info["type"], "float32");
  EXPECT_EQ(info["element_size"], 4);
  EXPECT_EQ(info["count"], 1000);

  // Other types give their size; a known type's size must be its own.
  ok({"bag", "put", store, "points", "-", "--type", "geo::Point:12"}, random_bytes(120, 11));
  info = ok_json({"bag", "info", store, "points", "--json"});
  EXPECT_EQ(info["type"], "geo::Point");
  EXPECT_EQ(info["element_size"], 12);
  EXPECT_EQ(info["count"], 10);
  for (const char* bad : {"Point", "float32:8", "x:0", ":4", "uint8:99999999999"}) {
    Output result = run({"bag", "put", store, "bad", "-", "--type", bad}, "abcd");
    EXPECT_EQ(result.status, 2) << bad << ": " << result.err;
    EXPECT_NE(result.err.find(bad), std::string::npos) << result.err;
  }
  EXPECT_EQ(ok_json({"bag", "ls", store, "--json"}).size(), 2u);
}

TEST_F(CliTest, BagTagsAndInfo) {
  const std::string store = make_store();
  // --tag before the positionals too: one value per --tag, never the STORE.
  ok({"bag", "put", "--tag", "source=sensor-7", store, "t", "-", "--tag", "expr=a=b", "--tag",
      "empty="},
     "payload");
  Json info = ok_json({"bag", "info", store, "t", "--json"});
  EXPECT_EQ(info["tags"], Json({{"empty", ""}, {"expr", "a=b"}, {"source", "sensor-7"}}));
  EXPECT_EQ(info["name"], "t");
  EXPECT_EQ(info["size"], 7);
  const std::string checksum = info["checksum"];
  EXPECT_EQ(checksum.size(), 32u) << checksum;  // XXH3-128
  EXPECT_EQ(info["checksum_algorithm"], "XXH3-128");
  EXPECT_EQ(info["format"], 2);
  EXPECT_EQ(checksum.find_first_not_of("0123456789abcdef"), std::string::npos) << checksum;
  EXPECT_GT(info["created_ns"].get<std::uint64_t>(), 0u);
  EXPECT_EQ(info["created"].get<std::string>().back(), 'Z');

  const std::string out = ok({"bag", "info", store, "t"});
  EXPECT_NE(out.find(checksum + " (XXH3-128)"), std::string::npos) << out;
  EXPECT_NE(out.find("sensor-7"), std::string::npos) << out;
  EXPECT_NE(out.find("untyped"), std::string::npos) << out;

  for (std::vector<std::string> tags : std::vector<std::vector<std::string>>{
           {"--tag", "novalue"}, {"--tag", "=v"}, {"--tag", "k=1", "--tag", "k=2"}, {"--tag"}}) {
    std::vector<std::string> args = {"bag", "put", store, "bad", "-"};
    args.insert(args.end(), tags.begin(), tags.end());
    Output result = run(args, "data");
    EXPECT_EQ(result.status, 2) << testing::PrintToString(tags) << ": " << result.err;
  }
  EXPECT_EQ(ok_json({"bag", "ls", store, "--json"}).size(), 1u);
}

TEST_F(CliTest, BagLs) {
  const std::string store = make_store();
  EXPECT_EQ(ok({"bag", "ls", store}), "");
  EXPECT_EQ(ok_json({"bag", "ls", store, "--json"}), Json::array());
  ok({"bag", "put", store, "zeta", "-", "--tag", "a=1", "--tag", "b=2"}, "zz");
  ok({"bag", "put", store, "alpha", "-", "--type", "int16"}, "aaaa");
  Json list = ok_json({"bag", "ls", store, "--json"});
  ASSERT_EQ(list.size(), 2u) << list.dump();
  EXPECT_EQ(list[0]["name"], "alpha");
  EXPECT_EQ(list[0]["size"], 4);
  EXPECT_EQ(list[0]["type"], "int16");
  EXPECT_EQ(list[1]["name"], "zeta");
  EXPECT_EQ(list[1]["tags"].size(), 2u);
  EXPECT_FALSE(list[1].contains("problem"));

  const std::string out = ok({"bag", "ls", store});
  EXPECT_EQ(out.rfind("NAME", 0), 0u) << out;
  EXPECT_LT(out.find("alpha"), out.find("zeta")) << out;

  // A bag whose header is damaged is listed, marked, and the rest still are.
  flip_byte(store + "/bags/alpha.bag", 20);
  list = ok_json({"bag", "ls", store, "--json"});
  ASSERT_EQ(list.size(), 2u) << list.dump();
  EXPECT_EQ(list[0]["name"], "alpha");
  EXPECT_FALSE(list[0]["problem"].get<std::string>().empty()) << list.dump();
  EXPECT_EQ(list[1]["size"], 2);
  const std::string marked = ok({"bag", "ls", store});
  EXPECT_NE(marked.find("BAD"), std::string::npos) << marked;
  EXPECT_NE(marked.find("zeta"), std::string::npos) << marked;
  EXPECT_EQ(ok_json({"store", "ls", store, "--json"})["bags"][0].contains("problem"), true);
}

TEST_F(CliTest, BagVerifyAndCorruption) {
  const std::string store = make_store();
  const std::string good = random_bytes(50000, 12);
  ok({"bag", "put", store, "good", "-"}, good);
  ok({"bag", "put", store, "victim", "-"}, random_bytes(50000, 13));
  EXPECT_EQ(ok({"bag", "verify", store}), "ok good\nok victim\n");
  EXPECT_EQ(ok({"bag", "verify", store, "victim"}), "ok victim\n");
  EXPECT_EQ(ok_json({"bag", "verify", store, "--json"})["ok"], true);

  // One payload byte (the payload starts at the file's end minus its size).
  const fs::path bag = store + "/bags/victim.bag";
  flip_byte(bag, fs::file_size(bag) - 50000 + 1234);

  Output result = run({"bag", "verify", store});
  EXPECT_EQ(result.status, 1) << result.err;
  EXPECT_NE(result.out.find("ok good\n"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("BAD victim: "), std::string::npos) << result.out;
  result = run({"bag", "verify", store, "victim", "--json"});
  EXPECT_EQ(result.status, 1);
  Json report = Json::parse(result.out);
  EXPECT_EQ(report["ok"], false);
  ASSERT_EQ(report["bags"].size(), 1u);
  EXPECT_EQ(report["bags"][0]["name"], "victim");
  EXPECT_EQ(report["bags"][0]["ok"], false);
  EXPECT_FALSE(report["bags"][0]["problem"].get<std::string>().empty());
  EXPECT_EQ(ok({"bag", "verify", store, "good"}), "ok good\n");

  // get refuses it, and leaves no file (nor temporary) behind.
  const auto before = files_in(dir_);
  result = run({"bag", "get", store, "victim", "-o", path("out.bin")});
  EXPECT_EQ(result.status, 5) << result.err;
  expect_one_error_line(result);
  EXPECT_NE(result.err.find("victim"), std::string::npos) << result.err;
  EXPECT_FALSE(fs::exists(path("out.bin")));
  result = run({"bag", "get", store, "victim"});
  EXPECT_EQ(result.status, 5);
  EXPECT_EQ(result.out, "");
  auto after = files_in(dir_);
  after.erase(std::remove_if(after.begin(), after.end(),
                             [](const std::string& name) { return name.rfind("std", 0) == 0; }),
              after.end());
  auto expected = before;
  expected.erase(std::remove_if(expected.begin(), expected.end(),
                                [](const std::string& name) { return name.rfind("std", 0) == 0; }),
                 expected.end());
  EXPECT_EQ(after, expected);

  // --forensic hands it over anyway, damage included.
  const std::string damaged = ok({"bag", "get", store, "victim", "--forensic"});
  EXPECT_EQ(damaged.size(), 50000u);
  EXPECT_NE(damaged, random_bytes(50000, 13));

  result = run({"bag", "verify", store, "ghost"});
  EXPECT_EQ(result.status, 3) << result.err;
  expect_one_error_line(result);
}

TEST_F(CliTest, BagRm) {
  const std::string store = make_store();
  ok({"bag", "put", store, "gone", "-"}, "bytes");
  ok({"bag", "rm", store, "gone"});
  EXPECT_EQ(ok_json({"bag", "ls", store, "--json"}), Json::array());
  for (std::vector<std::string> args :
       std::vector<std::vector<std::string>>{{"bag", "rm", store, "gone"},
                                             {"bag", "get", store, "gone"},
                                             {"bag", "info", store, "gone"}}) {
    Output result = run(args);
    EXPECT_EQ(result.status, 3) << testing::PrintToString(args) << ": " << result.err;
    expect_one_error_line(result);
    EXPECT_NE(result.err.find("gone"), std::string::npos) << result.err;
  }
}

TEST_F(CliTest, BagUsageErrors) {
  const std::string store = make_store();
  for (std::vector<std::string> args :
       std::vector<std::vector<std::string>>{{"bag"},
                                             {"bag", "put", store, "name"},
                                             {"bag", "get", store},
                                             {"bag", "put", store, "bad name", "-"},
                                             {"bag", "put", store, ".hidden", "-"},
                                             {"bag", "info", store, "../escape"},
                                             {"store"},
                                             {"store", "init"}}) {
    Output result = run(args, "data");
    EXPECT_EQ(result.status, 2) << testing::PrintToString(args) << ": " << result.err;
    EXPECT_FALSE(result.err.empty()) << testing::PrintToString(args);
  }
  EXPECT_TRUE(fs::is_empty(store + "/bags"));
  Output result = run({"bag", "put", store, "x", path("no-such-file")});
  EXPECT_EQ(result.status, 3) << result.err;
  EXPECT_NE(result.err.find("no-such-file"), std::string::npos) << result.err;
}

TEST_F(CliTest, HeapCommandsTakeStoreSlashName) {
  const std::string store = make_store();
  const std::string heap = store + "/shared";
  EXPECT_NE(ok({"heap", "create", heap, "--size", "1M"}).find("heaps/shared.heap"),
            std::string::npos);
  EXPECT_TRUE(fs::is_regular_file(store + "/heaps/shared.heap"));
  ok({"heap", "put", heap, "greeting", "-"}, "hello");
  Json list = ok_json({"heap", "ls", heap, "--json"});
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["name"], "greeting");
  EXPECT_EQ(ok({"heap", "cat", heap, "greeting"}), "hello");
  EXPECT_EQ(ok_json({"heap", "check", heap, "--json"})["ok"], true);
  EXPECT_EQ(ok_json({"heap", "info", heap, "--json"})["objects"], 1);
  // The same heap by its path.
  EXPECT_EQ(ok({"heap", "cat", store + "/heaps/shared.heap", "greeting"}), "hello");
  EXPECT_EQ(ok_json({"store", "ls", store, "--json"})["heaps"][0]["name"], "shared");

  Output result = run({"heap", "info", store + "/absent"});
  EXPECT_EQ(result.status, 3) << result.err;
  result = run({"heap", "create", store + "/bad name"});
  EXPECT_EQ(result.status, 2) << result.err;
}

TEST_F(CliTest, SparseFileRoundTripStaysSparse) {
  const std::string store = make_store();
  constexpr std::uint64_t kSize = std::uint64_t{3} << 30;
  const std::string input = make_sparse_file(path("sparse.img"), kSize);
  ASSERT_LT(allocated_bytes(input), std::uint64_t{16} << 20) << "no sparse files here?";

  auto start = std::chrono::steady_clock::now();
  ok({"bag", "put", store, "disk", input});
  const double put_seconds = seconds_since(start);
  EXPECT_LT(put_seconds, 20.0) << "put read the holes?";
  const std::string bag = store + "/bags/disk.bag";
  EXPECT_EQ(fs::file_size(bag) - kSize, 4096u);  // one page of header
  EXPECT_LT(allocated_bytes(bag), std::uint64_t{16} << 20) << "the bag is not sparse";
  EXPECT_TRUE(fs::is_empty(store + "/tmp"));

  // get verifies the payload (the library reads all of it, holes too), then
  // writes only the data.
  start = std::chrono::steady_clock::now();
  ok({"bag", "get", store, "disk", "-o", path("back.img")});
  const double get_seconds = seconds_since(start);
  EXPECT_LT(get_seconds, 120.0);
  EXPECT_EQ(fs::file_size(path("back.img")), kSize);
  EXPECT_LT(allocated_bytes(path("back.img")), std::uint64_t{16} << 20) << "holes were filled";
  EXPECT_TRUE(same_contents(input, path("back.img")));
  std::cout << "3 GiB sparse: put " << put_seconds << " s, get " << get_seconds << " s\n";
}

TEST_F(CliTest, NoProgressBarWithoutATerminal) {
  const std::string store = make_store();
  const std::string input = make_sparse_file(path("big.img"), std::uint64_t{200} << 20);
  Output result = run({"bag", "put", store, "big", input});
  EXPECT_EQ(result.status, 0) << result.err;
  EXPECT_EQ(result.err, "");
  result = run({"bag", "get", store, "big", "-o", path("back.img")});
  EXPECT_EQ(result.status, 0);
  EXPECT_EQ(result.err, "");
  result = run({"bag", "verify", store});
  EXPECT_EQ(result.err, "");
}

TEST_F(CliTest, ProgressBarOnATerminal) {
  if (!fs::exists("/usr/bin/script")) GTEST_SKIP() << "no script(1) to give sheaf a terminal";
  const std::string store = make_store();
  const std::string input = make_sparse_file(path("big.img"), std::uint64_t{200} << 20);
  // script runs the command on a pseudo-terminal (stdout and stderr) and
  // copies what it printed to its own standard output.
  const std::string command = "'" + std::string(kSheaf) + "' bag put '" + store + "' big '" +
                              input + "' && '" + kSheaf + "' bag put '" + store +
                              "' small - </dev/null";
  const Output result = run_program({"/usr/bin/script", "-qc", command, "/dev/null"});
  EXPECT_EQ(result.status, 0) << result.err;

  const std::string& text = result.out;
  EXPECT_NE(text.find("\rput big  "), std::string::npos) << text;
  EXPECT_NE(text.find("200.0 MiB"), std::string::npos) << text;
  EXPECT_NE(text.find("MiB/s"), std::string::npos) << text;
  EXPECT_NE(text.find('['), std::string::npos) << text;
  // The line is cleared at the end, and the small put draws nothing.
  EXPECT_EQ(text.substr(text.size() >= 4 ? text.size() - 4 : 0), "\r\033[K") << text;
  EXPECT_EQ(text.find("small"), std::string::npos) << text;
  EXPECT_EQ(ok_json({"bag", "info", store, "big", "--json"})["size"], 200u << 20);
}

// --- sheaf msg ------------------------------------------------------------------

// A manager on a free loopback port, stopped (and reaped) when the test ends.
class ManagerProcess {
 public:
  explicit ManagerProcess(Process process) : process_(std::move(process)) {
    for (int i = 0; i < 200 && address_.empty(); ++i) {
      const std::string out = read_file(process_.out_path());
      if (const auto at = out.find("listening on "); at != std::string::npos) {
        const auto end = out.find('\n', at);
        if (end != std::string::npos) address_ = out.substr(at + 13, end - at - 13);
      }
      if (address_.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
  }
  ~ManagerProcess() { stop(); }
  void stop() {
    if (stopped_) return;
    stopped_ = true;
    process_.signal(SIGTERM);
    process_.wait();
  }
  const std::string& address() const { return address_; }

 private:
  Process process_;
  std::string address_;
  bool stopped_ = false;
};

TEST_F(CliTest, MsgVerbsTalkThroughAChannel) {
  ManagerProcess manager(start({"msg", "manager", "--listen", "127.0.0.1:0"}));
  ASSERT_FALSE(manager.address().empty()) << "the manager printed no address";
  const std::string m = manager.address();
  Process listener = start({"msg", "listen", "greet", "--echo", "--count", "2", "--manager", m});
  Json channels;
  for (int i = 0; i < 200; ++i) {
    channels = ok_json({"msg", "channels", "--json", "--manager", m});
    if (channels.is_array() && !channels.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  ASSERT_EQ(channels.size(), 1u) << channels.dump();
  EXPECT_EQ(channels[0]["name"], "greet");
  EXPECT_EQ(channels[0]["max_buffered"], 64);
  EXPECT_TRUE(channels[0]["owner"].get<std::string>().starts_with("cli-"));

  EXPECT_EQ(ok({"msg", "ping", "greet", "--manager", m}).find("answer from greet"), 0u);
  EXPECT_EQ(ok({"msg", "send", "greet", "hello, channel", "--manager", m}), "hello, channel");
  const Json reply =
      ok_json({"msg", "send", "greet", "abc", "--type", "7", "--json", "--manager", m});
  EXPECT_EQ(reply["answer"], 7);  // --echo answers with the message's own type and bytes
  EXPECT_EQ(reply["text"], "abc");
  Output done = listener.wait();
  EXPECT_EQ(done.status, 0) << done.err;
  EXPECT_NE(done.out.find("message from"), std::string::npos) << done.out;
  EXPECT_NE(done.out.find("hello, channel"), std::string::npos) << done.out;

  // The listener has gone: its channel with it.
  Output gone = run({"msg", "send", "greet", "x", "--manager", m});
  EXPECT_EQ(gone.status, 3) << gone.err;
  EXPECT_NE(gone.err.find("no channel named 'greet'"), std::string::npos) << gone.err;
  manager.stop();
  Output nobody = run({"msg", "channels", "--manager", m});
  EXPECT_EQ(nobody.status, 8) << nobody.err;
  EXPECT_NE(nobody.err.find("no manager answers"), std::string::npos) << nobody.err;
}

// The verbs' other ways: data from standard input, a buffered send, a
// listener's events as JSON lines, several pings as JSON.
TEST_F(CliTest, MsgVerbsReadStdinSendBufferedAndSpeakJson) {
  ManagerProcess manager(start({"msg", "manager", "--listen", "127.0.0.1:0"}));
  ASSERT_FALSE(manager.address().empty()) << "the manager printed no address";
  const std::string m = manager.address();
  Process listener =
      start({"msg", "listen", "jsonl", "--reply", "ok", "--count", "2", "--json", "--manager", m});
  Json pings;
  for (int i = 0; i < 200; ++i) {  // until the listener's channel exists
    Output tried = run({"msg", "ping", "jsonl", "-c", "3", "--json", "--manager", m});
    if (tried.status == 0) {
      pings = Json::parse(tried.out);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  ASSERT_EQ(pings["channel"], "jsonl") << pings.dump();
  ASSERT_EQ(pings["round_trips_us"].size(), 3u) << pings.dump();
  for (const Json& us : pings["round_trips_us"]) EXPECT_GT(us.get<double>(), 0);

  const Json buffered = ok_json(
      {"msg", "send", "jsonl", "queued", "--buffered", "--type", "5", "--json", "--manager", m});
  EXPECT_EQ(buffered["sent"], 6);
  EXPECT_EQ(ok({"msg", "send", "jsonl", "-", "--type", "6", "--manager", m}, "from stdin"), "ok");

  Output done = listener.wait();
  EXPECT_EQ(done.status, 0) << done.err;
  // One JSON object per line and event; the senders' (and pingers')
  // disconnections are events too.
  std::vector<Json> lines;
  std::istringstream out(done.out);
  for (std::string line; std::getline(out, line);) {
    const Json event = Json::parse(line);
    if (event["event"] != "disconnect") lines.push_back(event);
  }
  ASSERT_EQ(lines.size(), 2u) << done.out;
  EXPECT_EQ(lines[0]["event"], "buffered");
  EXPECT_EQ(lines[0]["type"], 5);
  EXPECT_EQ(lines[0]["text"], "queued");
  EXPECT_EQ(lines[0]["by_reference"], false);
  EXPECT_EQ(lines[1]["event"], "message");
  EXPECT_EQ(lines[1]["type"], 6);
  EXPECT_EQ(lines[1]["text"], "from stdin");
  EXPECT_EQ(lines[1]["bytes"], 10);
}

TEST_F(CliTest, MsgBenchPrintsBothPathsAsJson) {
  const Json runs = ok_json({"msg", "bench", "--sizes", "64,1M", "--rounds", "3", "--json"});
  ASSERT_EQ(runs.size(), 2u) << runs.dump();
  EXPECT_EQ(runs[1]["bytes"], 1 << 20);
  for (const Json& r : runs) {
    EXPECT_GT(r["by_reference_p50_us"].get<double>(), 0);
    EXPECT_GT(r["by_copy_p50_us"].get<double>(), 0);
  }
  // --plot draws a PNG with gnuplot (installed by scripts/install-deps).
  const std::string png = path("plot.png");
  ok({"msg", "bench", "--sizes", "64,4K", "--rounds", "3", "--plot", png});
  EXPECT_EQ(read_file(png).substr(0, 4), "\x89PNG");
  Output bad = run({"msg", "bench", "--sizes", "lots"});
  EXPECT_EQ(bad.status, 2) << bad.err;
}

// Between two hosts one runs `--serve CHANNEL`, the other `--to CHANNEL`,
// through one manager and one heap (tests/gluster runs them on two hosts;
// here both run on this one).
TEST_F(CliTest, MsgBenchServesAndMeasuresAcrossTwoCommands) {
  const std::string heap = path("bench.heap");
  ok({"heap", "create", heap});
  Output lonely = run({"msg", "bench", "--to", "x"});
  EXPECT_EQ(lonely.status, 2) << lonely.err;
  EXPECT_NE(lonely.err.find("--heap"), std::string::npos) << lonely.err;
  ManagerProcess manager(start({"msg", "manager", "--listen", "127.0.0.1:0"}));
  ASSERT_FALSE(manager.address().empty()) << "the manager printed no address";
  const std::string m = manager.address();
  Process peer = start(
      {"msg", "bench", "--serve", "tb", "--heap", heap, "--manager", m, "--tcp", "127.0.0.1:0"});
  const Json runs = ok_json({"msg", "bench", "--to", "tb", "--heap", heap, "--manager", m,
                             "--sizes", "64,64K", "--rounds", "3", "--json"});
  ASSERT_EQ(runs.size(), 2u) << runs.dump();
  for (const Json& r : runs) EXPECT_GT(r["by_reference_p50_us"].get<double>(), 0);
  Output served = peer.wait();  // one run served, then it ends
  EXPECT_EQ(served.status, 0) << served.err;
  EXPECT_NE(served.out.find("serving channel tb"), std::string::npos) << served.out;
  ok({"heap", "check", heap});
}

}  // namespace
