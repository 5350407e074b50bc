// The close policy of bags written through a mount (fs/src/bag_upload.hpp),
// on its own: which close publishes, keeps or abandons an upload, and what
// committing one does to the store. Real stores and files; no mount.
#include "bag_upload.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cerrno>
#include <span>
#include <string>

#include "../heap_test_util.hpp"
#include "bag_version.hpp"
#include "errors.hpp"
#include "sheaf/store.hpp"

namespace sheaf::fs {
namespace {

using testing::TempDir;

std::span<const std::byte> bytes_of(const std::string& text) {
  return std::as_bytes(std::span(text));
}

struct UploadTest : ::testing::Test {
  TempDir dir;
  Store store = Store::init(dir / "store").value();

  // An upload of bag `name` from process `opener`, with `payload` written.
  BagUpload& start(const std::string& name, const std::string& payload, pid_t opener = 100) {
    upload.name = name;
    upload.opener = opener;
    upload.writer.emplace(store.create_bag(name.front() == '.' ? name.substr(1) : name));
    upload.hidden = name.front() == '.';
    upload.writer->write(bytes_of(payload));
    return upload;
  }

  std::string payload_of(const std::string& name) {
    Bag bag = store.open_bag(name).value();
    const auto bytes = bag.bytes();
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }

  BagUpload upload;
};

Closer closer(pid_t process, bool dying = false, bool holds_another = false) {
  Closer c;
  c.answered = true;
  c.process = process;
  c.dying_of_signal = dying;
  c.holds_another = holds_another;
  return c;
}

TEST_F(UploadTest, TheOpenersLastCloseByALivingProcessPublishes) {
  start("b", "bytes", 100);
  EXPECT_EQ(at_flush(upload, closer(100)), AtFlush::kPublish);
  EXPECT_EQ(at_flush(upload, closer(100, false, /*holds_another=*/true)), AtFlush::kNothing);
  EXPECT_EQ(at_flush(upload, closer(200)), AtFlush::kNothing);  // a forked child's copy
  EXPECT_EQ(at_flush(upload, Closer{}), AtFlush::kNothing);     // not inspected in time
  EXPECT_EQ(at_flush(upload, closer(100, /*dying=*/true)), AtFlush::kAbandon);
}

TEST_F(UploadTest, AHiddenTemporaryIsNeverPublishedByAClose) {
  start(".b.XyZ123", "bytes", 100);
  EXPECT_EQ(at_flush(upload, closer(100)), AtFlush::kNothing);
  EXPECT_EQ(at_release(upload, /*opener_alive=*/false), AtRelease::kKeep);
  EXPECT_EQ(at_flush(upload, closer(100, /*dying=*/true)), AtFlush::kAbandon);
}

TEST_F(UploadTest, TheLastReleasePublishesUnlessAnUninspectedCloseLostItsOpener) {
  start("b", "bytes");
  EXPECT_EQ(at_release(upload, false), AtRelease::kPublish);
  upload.uninspected_close = true;
  EXPECT_EQ(at_release(upload, true), AtRelease::kPublish);
  EXPECT_EQ(at_release(upload, false), AtRelease::kAbandon);
}

TEST_F(UploadTest, CommitPublishesAndAbandonLeavesNothing) {
  start("b", "first");
  commit_upload(upload, store);
  EXPECT_TRUE(upload.published);
  EXPECT_FALSE(upload.writer);
  EXPECT_EQ(payload_of("b"), "first");

  BagUpload other;
  other.name = "c";
  other.writer.emplace(store.create_bag("c"));
  other.writer->write(bytes_of("never"));
  abandon(other, EIO);
  EXPECT_EQ(other.error, EIO);
  EXPECT_FALSE(store.open_bag("c").ok());
  EXPECT_TRUE(std::filesystem::is_empty(dir / "store/tmp"));
}

// What an in-place writer skips is the old version's: a part rewritten
// keeps the rest, a size past the old end adds zeros, and nothing written
// at all leaves the bag as it was (touch), with the times asked for.
TEST_F(UploadTest, AnInPlaceRewriteKeepsWhatItSkips) {
  const std::string old_bytes = "the old version";
  store.put_bag("b", bytes_of(old_bytes));
  auto in_place = [&](BagUpload& u) {
    u.name = "b";
    u.old = open_bag_version(store.bag_path("b"));
    u.in_place = true;
    u.old_size = u.old->info.size;
    u.writer.emplace(store.create_bag("b"));
  };
  BagUpload part;
  in_place(part);
  part.writer->write(bytes_of("THE"));
  commit_upload(part, store);
  EXPECT_EQ(payload_of("b"), "THE old version");

  BagUpload grown;  // a write past the end, as after lseek(SEEK_END)
  in_place(grown);
  copy_old_bytes(grown, 20, {});
  EXPECT_EQ(grown.writer->written(), 15u);
  grown.writer->skip_zeros(5);
  grown.writer->write(bytes_of("!"));
  commit_upload(grown, store);
  EXPECT_EQ(payload_of("b"), std::string("THE old version") + std::string(5, '\0') + "!");

  BagUpload shrunk;  // ftruncate to 3: the first 3 old bytes
  in_place(shrunk);
  copy_old_bytes(shrunk, 3, {});
  shrunk.size_set = true;
  commit_upload(shrunk, store);
  EXPECT_EQ(payload_of("b"), "THE");

  BagUpload touched;  // nothing written, a time set
  in_place(touched);
  touched.times = std::array<timespec, 2>{timespec{0, UTIME_OMIT}, timespec{981173106, 0}};
  commit_upload(touched, store);
  EXPECT_EQ(payload_of("b"), "THE");
  struct stat st {};
  ASSERT_EQ(::stat(store.bag_path("b").c_str(), &st), 0);
  EXPECT_EQ(st.st_mtim.tv_sec, 981173106);
}

TEST_F(UploadTest, AHiddenTemporaryIsPublishedUnderItsNewName) {
  store.put_bag("taken", bytes_of("taken"));
  start(".x.AbC123", "temporary");
  upload.mode = 0600;
  upload.mode_set = true;
  // Not over an existing bag when asked not to replace: EEXIST, nothing changes.
  EXPECT_THROW(commit_upload(upload, store, std::string("taken"), /*replace=*/false), Error);
  EXPECT_EQ(payload_of("taken"), "taken");

  start(".x.AbC123", "temporary");
  upload.mode = 0600;
  upload.mode_set = true;
  commit_upload(upload, store, std::string("x"));
  EXPECT_EQ(upload.name, "x");
  EXPECT_FALSE(upload.hidden);
  EXPECT_EQ(payload_of("x"), "temporary");
  struct stat st {};
  ASSERT_EQ(::stat(store.bag_path("x").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

}  // namespace
}  // namespace sheaf::fs
