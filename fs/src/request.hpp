// request.hpp: how a request handler of the mounted store fails. Internal.
//
// A handler runs inside guarded(); it fails by throwing an errno (fail()) or
// a sheaf::Error, which guarded() turns into the request's one error reply.
#pragma once

#include <fuse3/fuse_lowlevel.h>

#include <cerrno>
#include <exception>
#include <new>

#include "errors.hpp"
#include "sheaf/error.hpp"

namespace sheaf::fs {

// Runs a handler's body; whatever it throws becomes the request's error
// reply. The body replies itself on success, as its last step.
// `server` logs what no caller can be told (StoreFs::log).
template <class Server, class Body>
void guarded(const Server& fs, fuse_req_t req, Body&& body) {
  try {
    body();
  } catch (const Errno& e) {
    fuse_reply_err(req, e.value);
  } catch (const Error& e) {
    const int value = errno_for(e);
    if (value == EIO) fs.log(e.message());
    fuse_reply_err(req, value);
  } catch (const std::bad_alloc&) {
    fuse_reply_err(req, ENOMEM);
  } catch (const std::exception& e) {
    fs.log(e.what());
    fuse_reply_err(req, EIO);
  }
}

}  // namespace sheaf::fs
