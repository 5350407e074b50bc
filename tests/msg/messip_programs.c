/* messip_programs.c: MESSIP programs, written as MESSIP's documentation
 * describes its API (seed 002), built against Sheaf's messip.h.
 *
 *   messip_programs server   creates channel "one"; answers, counts events
 *   messip_programs client   pings, sends (fixed and library-allocated buffers),
 *                            buffered sends, then disconnects
 *   messip_programs dying    connects, sends one buffered message, kills itself
 *
 * The manager comes from $SHEAF_MANAGER (messip_connect(NULL, ...)). Each
 * program exits 0 when everything it checked held; a failed check prints
 * what and exits 1. tests/msg/messip_test.sh runs them.
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "messip.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

enum { kBig = 5000, kLong = 200 };

static messip_channel_t* connect_to_one(messip_cnx_t* cnx) {
  for (int attempt = 0; attempt < 100; ++attempt) { /* the server may not be up yet */
    messip_channel_t* ch = messip_channel_connect(cnx, "one", 1000);
    if (ch != NULL) return ch;
    const struct timespec pause = {0, 50 * 1000 * 1000};
    nanosleep(&pause, NULL);
  }
  return NULL;
}

static int server(void) {
  messip_init();
  /* Logging: a level below the one set is not written; messip_log says how
     much it wrote. */
  messip_set_log_level(MESSIP_LOG_ERROR | MESSIP_LOG_WARNING | MESSIP_LOG_INFO);
  CHECK(messip_get_log_level() == (MESSIP_LOG_ERROR | MESSIP_LOG_WARNING | MESSIP_LOG_INFO));
  CHECK(messip_log(MESSIP_LOG_DEBUG, "not written\n") == 0);
  CHECK(messip_log(MESSIP_LOG_INFO, "server %s\n", "starting") == (int)strlen("server starting\n"));
  messip_cnx_t* cnx = messip_connect(NULL, "srv", 5000);
  CHECK(cnx != NULL);
  CHECK(messip_death_notify(cnx, MESSIP_NOTIMEOUT, MESSIP_TRUE) == MESSIP_OK);
  messip_channel_t* ch = messip_channel_create(cnx, "one", 5000, 4);
  CHECK(ch != NULL);
  CHECK(strcmp(ch->name, "one") == 0);
  timer_t timer = messip_timer_create(ch, 77, 50, 0, 1000);
  CHECK(timer != (timer_t)0);
  /* A repeating timer, deleted after its third tick: no fourth comes. */
  timer_t repeating = messip_timer_create(ch, 78, 20, 20, 1000);
  CHECK(repeating != (timer_t)0 && repeating != timer);
  int repeats = 0;

  int timers = 0, hellos = 0, cut = 0, allocated = 0, buffered = 0, disconnects = 0, deaths = 0;
  int next_allocated = 0;
  const time_t started = time(NULL);
  while (!(timers && repeats == 3 && hellos && cut && allocated && buffered == 3 && disconnects &&
           deaths)) {
    CHECK(time(NULL) - started < 30);
    char buffer[80];
    char* big = NULL;
    int32_t type = 0;
    int index;
    memset(buffer, 0, sizeof(buffer));
    if (next_allocated) {
      index = messip_receive(ch, &type, &big, 0, 1000);
    } else {
      index = messip_receive(ch, &type, buffer, sizeof(buffer), 1000);
    }
    if (index == MESSIP_MSG_TIMEOUT) continue;
    CHECK(index != -1);
    if (index == MESSIP_MSG_TIMER && type == 78) {
      CHECK(++repeats <= 3);
      if (repeats == 3) CHECK(messip_timer_delete(ch, repeating) == MESSIP_OK);
    } else if (index == MESSIP_MSG_TIMER) {
      CHECK(type == 77);
      CHECK(++timers == 1); /* one shot */
    } else if (index == MESSIP_MSG_NOREPLY) {
      CHECK(buffer[0] == 'b');
      ++buffered;
    } else if (index == MESSIP_MSG_DISCONNECT) {
      CHECK(strcmp(ch->remote_id, "cli") == 0);
      ++disconnects;
    } else if (index == MESSIP_MSG_DEATH_PROCESS) {
      CHECK(strcmp(ch->remote_id, "dying") == 0);
      ++deaths;
    } else if (type == 123) {
      CHECK(strcmp(buffer, "Hello") == 0);
      CHECK(strcmp(ch->remote_id, "cli") == 0);
      CHECK(messip_reply(ch, index, 987, "Bonjour", 8, 1000) == MESSIP_OK);
      ++hellos;
    } else if (type == 124) { /* longer than the buffer: cut, and told so */
      CHECK(ch->datalen == kLong);
      CHECK(ch->datalenr == (int32_t)sizeof(buffer));
      CHECK(messip_reply(ch, index, ch->datalen, NULL, 0, 1000) == MESSIP_OK);
      ++cut;
    } else if (type == 499) { /* the next message comes into a buffer the library allocates */
      next_allocated = 1;
      CHECK(messip_reply(ch, index, 0, NULL, 0, 1000) == MESSIP_OK);
    } else if (type == 125) {
      CHECK(big != NULL);
      CHECK(ch->datalen == kBig);
      for (int i = 0; i < kBig; ++i) CHECK(big[i] == (char)(i % 97));
      CHECK(messip_reply(ch, index, 1, big, kBig, 1000) == MESSIP_OK);
      free(big);
      next_allocated = 0;
      ++allocated;
    } else {
      fprintf(stderr, "unexpected message type %d\n", (int)type);
      return 1;
    }
  }
  CHECK(messip_channel_delete(ch, 1000) == MESSIP_OK);
  return 0;
}

static int client(void) {
  messip_init();
  messip_cnx_t* cnx = messip_connect(NULL, "cli", 5000);
  CHECK(cnx != NULL);
  messip_channel_t* ch = connect_to_one(cnx);
  CHECK(ch != NULL);
  CHECK(messip_channel_ping(ch, 5000) == MESSIP_OK);

  char reply[80];
  int32_t answer = 0;
  memset(reply, 0, sizeof(reply));
  CHECK(messip_send(ch, 123, "Hello", 6, &answer, reply, sizeof(reply), 5000) == MESSIP_OK);
  CHECK(answer == 987);
  CHECK(strcmp(reply, "Bonjour") == 0);

  char long_message[kLong];
  memset(long_message, 'x', sizeof(long_message));
  CHECK(messip_send(ch, 124, long_message, kLong, &answer, NULL, 0, 5000) == MESSIP_OK);
  CHECK(answer == kLong);

  CHECK(messip_send(ch, 499, NULL, 0, &answer, reply, sizeof(reply), 5000) == MESSIP_OK);
  char* big = malloc(kBig);
  CHECK(big != NULL);
  for (int i = 0; i < kBig; ++i) big[i] = (char)(i % 97);
  char* echoed = NULL;
  CHECK(messip_send(ch, 125, big, kBig, &answer, &echoed, 0, 5000) == MESSIP_OK);
  CHECK(echoed != NULL);
  CHECK(ch->datalen == kBig);
  CHECK(memcmp(echoed, big, kBig) == 0);
  free(echoed);
  free(big);

  for (int i = 0; i < 3; ++i) {
    char text[8];
    snprintf(text, sizeof(text), "b%d", i);
    CHECK(messip_buffered_send(ch, 200 + i, text, (int)strlen(text) + 1, 5000) == MESSIP_OK);
  }
  CHECK(messip_channel_disconnect(ch, 1000) == MESSIP_OK);
  return 0;
}

static int dying(void) {
  messip_init();
  messip_cnx_t* cnx = messip_connect(NULL, "dying", 5000);
  CHECK(cnx != NULL);
  messip_channel_t* ch = connect_to_one(cnx);
  CHECK(ch != NULL);
  CHECK(messip_channel_ping(ch, 5000) == MESSIP_OK); /* the server knows us */
  kill(getpid(), SIGKILL);
  return 1;
}

/* A server that did not ask for death notices: a client's death comes as a
   disconnection; and a channel with a client connected is not deleted. */
static int plain_server(void) {
  messip_init();
  messip_cnx_t* cnx = messip_connect(NULL, "plain", 5000);
  CHECK(cnx != NULL);
  messip_channel_t* ch = messip_channel_create(cnx, "two", 5000, 0);
  CHECK(ch != NULL);
  int asked = 0, gone = 0;
  const time_t started = time(NULL);
  while (!(asked && gone)) {
    CHECK(time(NULL) - started < 30);
    char buffer[16];
    int32_t type = 0;
    const int index = messip_receive(ch, &type, buffer, sizeof(buffer), 1000);
    if (index == MESSIP_MSG_TIMEOUT) continue;
    if (index == MESSIP_MSG_DISCONNECT) {
      CHECK(strcmp(ch->remote_id, "dying2") == 0);
      ++gone;
    } else {
      CHECK(index >= 0 && type == 7);
      CHECK(messip_channel_delete(ch, 1000) == -1); /* its client waits on us */
      CHECK(messip_reply(ch, index, 8, NULL, 0, 1000) == MESSIP_OK);
      ++asked;
    }
  }
  CHECK(messip_channel_delete(ch, 1000) == MESSIP_OK);
  return 0;
}

static int dying_unnoticed(void) {
  messip_init();
  messip_cnx_t* cnx = messip_connect(NULL, "dying2", 5000);
  CHECK(cnx != NULL);
  messip_channel_t* ch = NULL;
  for (int attempt = 0; attempt < 100 && ch == NULL; ++attempt) {
    ch = messip_channel_connect(cnx, "two", 1000);
    if (ch == NULL) {
      const struct timespec pause = {0, 50 * 1000 * 1000};
      nanosleep(&pause, NULL);
    }
  }
  CHECK(ch != NULL);
  int32_t answer = 0;
  CHECK(messip_send(ch, 7, NULL, 0, &answer, NULL, 0, 5000) == MESSIP_OK);
  CHECK(answer == 8);
  kill(getpid(), SIGKILL);
  return 1;
}

int main(int argc, char* argv[]) {
  messip_set_log_level(MESSIP_LOG_ERROR | MESSIP_LOG_WARNING);
  CHECK(messip_get_log_level() == (MESSIP_LOG_ERROR | MESSIP_LOG_WARNING));
  if (argc == 2 && strcmp(argv[1], "server") == 0) return server();
  if (argc == 2 && strcmp(argv[1], "client") == 0) return client();
  if (argc == 2 && strcmp(argv[1], "dying") == 0) return dying();
  if (argc == 2 && strcmp(argv[1], "plain-server") == 0) return plain_server();
  if (argc == 2 && strcmp(argv[1], "dying-unnoticed") == 0) return dying_unnoticed();
  fprintf(stderr, "usage: %s server|client|dying|plain-server|dying-unnoticed\n", argv[0]);
  return 2;
}
