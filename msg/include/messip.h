/* messip.h: MESSIP's C API over Sheaf's message layer (docs/msg.md).
 *
 * Programs written for MESSIP (message passing over TCP/IP with a manager,
 * seed 002) compile unchanged against this header and link with libsheaf_msg.
 * The types, function names, signatures, constants and return codes are
 * MESSIP's; what differs is what MESSIP got wrong: a dead server makes a
 * blocked send return -1 instead of aborting the client, nothing raises
 * SIGPIPE, sizes from the wire are checked, buffered messages go straight to
 * the receiver (never through the manager), and messages have no 64 KiB
 * limit. The manager is `sheaf msg manager` (default port 9200, as MESSIP's).
 *
 * Return codes: a function that returns int gives MESSIP_OK (1) on success,
 * MESSIP_MSG_TIMEOUT when its timeout passed, and -1 on any other failure
 * (the reason is logged at MESSIP_LOG_ERROR). messip_receive returns the
 * index to reply with (>= 0), or one of the MESSIP_MSG_ events below.
 */
#ifndef SHEAF_MESSIP_H_
#define SHEAF_MESSIP_H_

#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MESSIP_DEFAULT_PORT 9200

#define MESSIP_OK 1
#define MESSIP_NOK 0
#define MESSIP_TRUE -1
#define MESSIP_FALSE 0

#define MESSIP_MAXLEN_ID 8
#define MESSIP_CHANNEL_NAME_MAXLEN 47

/* What messip_receive returns instead of an index. */
#define MESSIP_MSG_DISCONNECT -2    /* a client disconnected (or died, without death notify) */
#define MESSIP_MSG_DISMISSED -3     /* (not returned: a late reply is dropped by its sender) */
#define MESSIP_MSG_TIMEOUT -4       /* the timeout passed; also returned by sends */
#define MESSIP_MSG_TIMER -5         /* a timer fired; *type is the timer's type */
#define MESSIP_MSG_NOREPLY -6       /* a buffered message: nothing to reply */
#define MESSIP_MSG_DEATH_PROCESS -7 /* a client died (after messip_death_notify) */

#define MESSIP_NOTIMEOUT -1

#define MESSIP_LOG_ERROR 0x01
#define MESSIP_LOG_WARNING 0x02
#define MESSIP_LOG_INFO 0x04
#define MESSIP_LOG_INFO_VERBOSE 0x08
#define MESSIP_LOG_DEBUG 0x10

typedef char messip_id_t[MESSIP_MAXLEN_ID + 1];

/* A connection to the manager. */
typedef struct messip_cnx {
  messip_id_t id;        /* this process's id, as given to messip_connect */
  messip_id_t remote_id; /* (kept for source compatibility) */
  int32_t death_notify;  /* set by messip_death_notify */
  void* sheaf;           /* the sheaf::msg::Client */
} messip_cnx_t;

/* A channel: created (server side) or connected to (client side). */
typedef struct messip_channel_t {
  char name[MESSIP_CHANNEL_NAME_MAXLEN + 1];
  messip_cnx_t* cnx;
  messip_id_t remote_id; /* server: the sender of the last message received */
  int32_t datalen;       /* length of the last message (or reply) received */
  int32_t datalenr;      /* bytes of it copied into the caller's buffer */
  void* sheaf;           /* the sheaf::msg::Channel or sheaf::msg::Connection */
  int32_t is_owner;      /* created by messip_channel_create */
} messip_channel_t;

void messip_init(void);
/* mgr_ref: "host:port", or NULL for $SHEAF_MANAGER, /etc/sheaf/manager, localhost:9200.
 * id: MESSIP declares it `messip_id_t const`, an array parameter, which C
 * adjusts to this very pointer type (so the two declarations are the same
 * function); spelled as a pointer, GCC does not warn about shorter ids. */
messip_cnx_t* messip_connect(char* mgr_ref, const char* id, int msec_timeout);
messip_channel_t* messip_channel_create(messip_cnx_t* cnx, const char* name, int msec_timeout,
                                        int32_t maxnb_msg_buffered);
/* Refused (-1) while clients are connected. */
int messip_channel_delete(messip_channel_t* ch, int msec_timeout);
messip_channel_t* messip_channel_connect(messip_cnx_t* cnx, const char* name, int msec_timeout);
int messip_channel_disconnect(messip_channel_t* ch, int msec_timeout);
int messip_channel_ping(messip_channel_t* ch, int msec_timeout);
/* maxlen 0: buffer is a char ** that receives a malloc()ed copy of the
 * message (the caller frees it). A longer message is cut to maxlen bytes
 * (ch->datalen says how long it was, ch->datalenr how much was copied). */
int messip_receive(messip_channel_t* ch, int32_t* type, void* buffer, int maxlen, int msec_timeout);
int messip_reply(messip_channel_t* ch, int index, int32_t answer, void* reply_buffer, int reply_len,
                 int msec_timeout);
/* reply_maxlen 0: reply_buffer is a char ** that receives a malloc()ed reply. */
int messip_send(messip_channel_t* ch, int32_t type, void* send_buffer, int send_len,
                int32_t* answer, void* reply_buffer, int reply_maxlen, int msec_timeout);
/* MESSIP_MSG_TIMEOUT when the receiver's buffer stayed full for the timeout. */
int32_t messip_buffered_send(messip_channel_t* ch, int32_t type, void* send_buffer, int send_len,
                             int msec_timeout);
/* Fires as MESSIP_MSG_TIMER on the channel, in messip_receive (no thread, no
 * signal); (timer_t)0 on failure. */
timer_t messip_timer_create(messip_channel_t* ch, int32_t type, int msec_1st_shot,
                            int msec_rep_shot, int msec_timeout);
int messip_timer_delete(messip_channel_t* ch, timer_t timer_id);
/* status MESSIP_TRUE: a client of this process's channels that dies is
 * reported as MESSIP_MSG_DEATH_PROCESS instead of MESSIP_MSG_DISCONNECT. */
int messip_death_notify(messip_cnx_t* cnx, int msec_timeout, int status);
void messip_set_log_level(unsigned level);
unsigned messip_get_log_level(void);
int messip_log(unsigned level, const char* fmt, ...);

#ifdef __cplusplus
}
#endif

#endif /* SHEAF_MESSIP_H_ */
