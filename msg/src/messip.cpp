// messip.cpp: MESSIP's C API (messip.h) on sheaf::msg. Every function turns
// the C arguments into a call of the C++ API and its exceptions into
// MESSIP's return codes; nothing here throws into C.
#include "messip.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "sheaf/error.hpp"
#include "sheaf/msg.hpp"

namespace {

using sheaf::msg::Channel;
using sheaf::msg::Client;
using sheaf::msg::Connection;
using sheaf::msg::Event;
using sheaf::msg::Timeout;

unsigned g_log_level = MESSIP_LOG_ERROR | MESSIP_LOG_WARNING;

Timeout timeout_of(int msec) {
  return msec < 0 ? sheaf::msg::kForever : Timeout(msec);
}

void copy_id(messip_id_t out, const std::string& id) {
  std::snprintf(out, sizeof(messip_id_t), "%s", id.c_str());  // MESSIP's ids are 8 characters
}

Client& client_of(messip_cnx_t* cnx) {
  return *static_cast<Client*>(cnx->sheaf);
}
Channel& owned(messip_channel_t* ch) {
  return *static_cast<Channel*>(ch->sheaf);
}
Connection& connected(messip_channel_t* ch) {
  return *static_cast<Connection*>(ch->sheaf);
}

// An error as MESSIP reports it: logged, then -1 (or MESSIP_MSG_TIMEOUT).
int fail(const char* function, const sheaf::Error& e) {
  messip_log(MESSIP_LOG_ERROR, "%s: %s\n", function, e.message().c_str());
  return e.code() == sheaf::Errc::kTimedOut ? MESSIP_MSG_TIMEOUT : -1;
}

// Copies `bytes` into the caller's buffer of `maxlen` bytes, or (maxlen 0)
// into a malloc()ed one stored at *(char **)buffer; sets datalen/datalenr.
void deliver(messip_channel_t* ch, std::span<const std::byte> bytes, void* buffer, int maxlen) {
  ch->datalen = static_cast<int32_t>(bytes.size());
  if (maxlen == 0 && buffer != nullptr) {
    char* copy = static_cast<char*>(std::malloc(bytes.size() + 1));
    if (copy == nullptr) throw std::bad_alloc();
    std::memcpy(copy, bytes.data(), bytes.size());
    copy[bytes.size()] = '\0';
    *static_cast<char**>(buffer) = copy;
    ch->datalenr = static_cast<int32_t>(bytes.size());
    return;
  }
  const std::size_t n = std::min<std::size_t>(bytes.size(), maxlen > 0 ? maxlen : 0);
  if (n > 0 && buffer != nullptr) std::memcpy(buffer, bytes.data(), n);
  ch->datalenr = static_cast<int32_t>(n);
}

std::span<const std::byte> span_of(const void* buffer, int length) {
  if (buffer == nullptr || length <= 0) return {};
  return {static_cast<const std::byte*>(buffer), static_cast<std::size_t>(length)};
}

messip_channel_t* new_channel(messip_cnx_t* cnx, const char* name, void* sheaf, bool is_owner) {
  auto* ch = static_cast<messip_channel_t*>(std::calloc(1, sizeof(messip_channel_t)));
  if (ch == nullptr) return nullptr;
  std::snprintf(ch->name, sizeof(ch->name), "%s", name);
  ch->cnx = cnx;
  ch->sheaf = sheaf;
  ch->is_owner = is_owner ? 1 : 0;
  return ch;
}

}  // namespace

extern "C" {

void messip_init(void) {}

messip_cnx_t* messip_connect(char* mgr_ref, const char* id, int msec_timeout) {
  if (id == nullptr) return nullptr;
  try {
    const std::string manager = mgr_ref != nullptr ? mgr_ref : "";
    auto* client =
        new Client(Client::connect(id, {.manager = manager, .timeout = timeout_of(msec_timeout)}));
    auto* cnx = static_cast<messip_cnx_t*>(std::calloc(1, sizeof(messip_cnx_t)));
    if (cnx == nullptr) {
      delete client;
      return nullptr;
    }
    copy_id(cnx->id, id);
    cnx->sheaf = client;
    return cnx;
  } catch (const sheaf::Error& e) {
    fail("messip_connect", e);
    return nullptr;
  }
}

messip_channel_t* messip_channel_create(messip_cnx_t* cnx, const char* name, int /*msec_timeout*/,
                                        int32_t maxnb_msg_buffered) {
  if (cnx == nullptr || name == nullptr) return nullptr;
  try {
    sheaf::msg::ChannelOptions options;
    // MESSIP's 0 means no buffered messages; ours needs room for one.
    options.max_buffered =
        static_cast<std::uint32_t>(maxnb_msg_buffered > 0 ? maxnb_msg_buffered : 1);
    auto* channel = new Channel(client_of(cnx).create_channel(name, options));
    messip_channel_t* ch = new_channel(cnx, name, channel, true);
    if (ch == nullptr) delete channel;
    return ch;
  } catch (const sheaf::Error& e) {
    fail("messip_channel_create", e);
    return nullptr;
  }
}

int messip_channel_delete(messip_channel_t* ch, int /*msec_timeout*/) {
  if (ch == nullptr || !ch->is_owner) return -1;
  if (owned(ch).clients() > 0) {
    messip_log(MESSIP_LOG_WARNING, "messip_channel_delete: channel %s still has clients\n",
               ch->name);
    return -1;
  }
  delete &owned(ch);
  std::free(ch);
  return MESSIP_OK;
}

messip_channel_t* messip_channel_connect(messip_cnx_t* cnx, const char* name, int msec_timeout) {
  if (cnx == nullptr || name == nullptr) return nullptr;
  try {
    auto* connection =
        new Connection(client_of(cnx).connect_channel(name, timeout_of(msec_timeout)));
    messip_channel_t* ch = new_channel(cnx, name, connection, false);
    if (ch == nullptr) delete connection;
    return ch;
  } catch (const sheaf::Error& e) {
    fail("messip_channel_connect", e);
    return nullptr;
  }
}

int messip_channel_disconnect(messip_channel_t* ch, int /*msec_timeout*/) {
  if (ch == nullptr || ch->is_owner) return -1;
  delete &connected(ch);  // says goodbye
  std::free(ch);
  return MESSIP_OK;
}

int messip_channel_ping(messip_channel_t* ch, int msec_timeout) {
  if (ch == nullptr || ch->is_owner) return -1;
  try {
    connected(ch).ping(timeout_of(msec_timeout));
    return MESSIP_OK;
  } catch (const sheaf::Error& e) {
    return fail("messip_channel_ping", e);
  }
}

int messip_receive(messip_channel_t* ch, int32_t* type, void* buffer, int maxlen,
                   int msec_timeout) {
  if (ch == nullptr || !ch->is_owner) return -1;
  try {
    sheaf::msg::Message m = owned(ch).receive(timeout_of(msec_timeout));
    if (type != nullptr) *type = m.type;
    copy_id(ch->remote_id, m.sender);
    switch (m.event) {
      case Event::kMessage:
        deliver(ch, m.payload.bytes(), buffer, maxlen);
        return m.index;
      case Event::kBuffered:
        deliver(ch, m.payload.bytes(), buffer, maxlen);
        return MESSIP_MSG_NOREPLY;
      case Event::kTimer:
        ch->datalen = ch->datalenr = 0;
        return MESSIP_MSG_TIMER;
      case Event::kDisconnect:
        return MESSIP_MSG_DISCONNECT;
      case Event::kDeath:
        return ch->cnx->death_notify ? MESSIP_MSG_DEATH_PROCESS : MESSIP_MSG_DISCONNECT;
      case Event::kTimeout:
        return MESSIP_MSG_TIMEOUT;
    }
    return -1;
  } catch (const sheaf::Error& e) {
    return fail("messip_receive", e);
  } catch (const std::bad_alloc&) {
    messip_log(MESSIP_LOG_ERROR, "messip_receive: out of memory\n");
    return -1;
  }
}

int messip_reply(messip_channel_t* ch, int index, int32_t answer, void* reply_buffer, int reply_len,
                 int /*msec_timeout*/) {
  if (ch == nullptr || !ch->is_owner) return -1;
  try {
    owned(ch).reply(index, answer, span_of(reply_buffer, reply_len));
    return MESSIP_OK;
  } catch (const sheaf::Error& e) {
    return fail("messip_reply", e);
  }
}

int messip_send(messip_channel_t* ch, int32_t type, void* send_buffer, int send_len,
                int32_t* answer, void* reply_buffer, int reply_maxlen, int msec_timeout) {
  if (ch == nullptr || ch->is_owner) return -1;
  try {
    sheaf::msg::Reply r =
        connected(ch).send(type, span_of(send_buffer, send_len), timeout_of(msec_timeout));
    if (answer != nullptr) *answer = r.answer;
    deliver(ch, r.payload.bytes(), reply_buffer, reply_maxlen);
    return MESSIP_OK;
  } catch (const sheaf::Error& e) {
    return fail("messip_send", e);
  } catch (const std::bad_alloc&) {
    messip_log(MESSIP_LOG_ERROR, "messip_send: out of memory\n");
    return -1;
  }
}

int32_t messip_buffered_send(messip_channel_t* ch, int32_t type, void* send_buffer, int send_len,
                             int msec_timeout) {
  if (ch == nullptr || ch->is_owner) return -1;
  try {
    connected(ch).buffered_send(type, span_of(send_buffer, send_len), timeout_of(msec_timeout));
    return MESSIP_OK;
  } catch (const sheaf::Error& e) {
    if (e.code() == sheaf::Errc::kBusy) {  // back-pressure: the receiver's buffer stayed full
      messip_log(MESSIP_LOG_WARNING, "messip_buffered_send: %s\n", e.message().c_str());
      return MESSIP_MSG_TIMEOUT;
    }
    return fail("messip_buffered_send", e);
  }
}

timer_t messip_timer_create(messip_channel_t* ch, int32_t type, int msec_1st_shot,
                            int msec_rep_shot, int /*msec_timeout*/) {
  if (ch == nullptr || !ch->is_owner) return timer_t{};
  try {
    const int id = owned(ch).timer_create(type, Timeout(msec_1st_shot), Timeout(msec_rep_shot));
    return reinterpret_cast<timer_t>(static_cast<std::intptr_t>(id));
  } catch (const sheaf::Error& e) {
    fail("messip_timer_create", e);
    return timer_t{};
  }
}

int messip_timer_delete(messip_channel_t* ch, timer_t timer_id) {
  if (ch == nullptr || !ch->is_owner) return -1;
  try {
    owned(ch).timer_delete(static_cast<int>(reinterpret_cast<std::intptr_t>(timer_id)));
    return MESSIP_OK;
  } catch (const sheaf::Error& e) {
    return fail("messip_timer_delete", e);
  }
}

int messip_death_notify(messip_cnx_t* cnx, int /*msec_timeout*/, int status) {
  if (cnx == nullptr) return -1;
  cnx->death_notify = status != MESSIP_FALSE ? 1 : 0;
  return MESSIP_OK;
}

void messip_set_log_level(unsigned level) {
  g_log_level = level;
}
unsigned messip_get_log_level(void) {
  return g_log_level;
}

int messip_log(unsigned level, const char* fmt, ...) {
  if ((level & g_log_level) == 0) return 0;
  std::va_list args;
  va_start(args, fmt);
  std::fputs("messip: ", stderr);
  const int n = std::vfprintf(stderr, fmt, args);
  va_end(args);
  return n;
}

}  // extern "C"
