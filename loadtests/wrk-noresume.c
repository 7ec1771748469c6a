/*
 * wrk-noresume.c — an LD_PRELOAD shim that makes wrk do a FULL TLS handshake on every
 * connection (used by bench.sh's `handshake` mode).
 *
 * Why: with `-H 'Connection: close'`, wrk reconnects after each response, but it reuses
 * its SSL object (SSL_shutdown + SSL_clear), and SSL_clear keeps the session of a cleanly
 * closed connection — so every reconnect offers that session (TLS 1.3 PSK ticket or
 * TLS 1.2 session id) and the server resumes it: no certificate, no signature. h2load
 * (nghttp2 1.52) resumes too; `openssl s_time -new` does full handshakes but cannot send
 * SNI (OpenSSL 3.0) and runs one connection at a time. bench.sh checks both properties
 * against an nginx that logs $ssl_session_reused before it measures.
 *
 * What: before a handshake starts (SSL_in_before), drop the session the SSL object still
 * holds, so SSL_connect sends a ClientHello with no session to resume. Nothing else of
 * wrk changes. Needs only libdl; the libssl functions are looked up in the libssl wrk
 * already loaded, so no OpenSSL headers are needed to build it:
 *
 *   cc -O2 -shared -fPIC -o wrk-noresume.so wrk-noresume.c -ldl
 *   LD_PRELOAD=./wrk-noresume.so wrk -H 'Connection: close' https://…
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;

static int (*real_connect)(SSL *);
static int (*in_before)(const SSL *);
static SSL_SESSION *(*get_session)(const SSL *);
static int (*set_session)(SSL *, SSL_SESSION *);

/* At load time, before wrk starts its threads (libssl is mapped by then). In a program
 * without libssl the lookups fail and nothing happens. */
__attribute__((constructor)) static void init(void) {
    in_before = (int (*)(const SSL *))dlsym(RTLD_NEXT, "SSL_in_before");
    get_session = (SSL_SESSION * (*)(const SSL *)) dlsym(RTLD_NEXT, "SSL_get_session");
    set_session = (int (*)(SSL *, SSL_SESSION *))dlsym(RTLD_NEXT, "SSL_set_session");
    real_connect = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
}

int SSL_connect(SSL *s) {
    if (real_connect == NULL || in_before == NULL || get_session == NULL || set_session == NULL) {
        fprintf(stderr, "wrk-noresume: libssl functions not found\n");
        abort();
    }
    /* wrk calls SSL_connect again while the handshake wants I/O: only the first call of a
     * connection (state "before") may drop the session. */
    if (in_before(s) && get_session(s) != NULL) {
        set_session(s, NULL);
    }
    return real_connect(s);
}
