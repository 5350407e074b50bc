// Tests of the sheaf command: each runs the built binary (SHEAF_CLI_PATH) in a
// fresh temporary directory and checks its exit status, output and files.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
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
  for (const char* field :
       {"path", "uuid", "format_version", "mode", "size", "max_size", "used", "free",
        "largest_free", "page_size", "objects", "generation", "sessions", "recoveries"}) {
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

}  // namespace
