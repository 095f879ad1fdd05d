/*
 * Connect-rate client in C: COUNT connections to 127.0.0.1:PORT back to back, each a new TCP connection,
 * a full TLS 1.3 handshake (no session resumption; the server certificate verified against CAFILE and
 * 127.0.0.1), MQTT 3.1.1 CONNECT, CONNACK, DISCONNECT, close. Stops early after DEADLINE seconds.
 * Prints one JSON line: ok, errors, first_error, elapsed (the same as bench/connector.py).
 *
 *   connect_rate PORT COUNT DEADLINE CAFILE [CERTFILE KEYFILE]
 *
 * The harness builds it with: cc -O2 -o connect_rate connect_rate.c -lssl -lcrypto
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char first_error[256];

static void remember(const char *what) {
    if (first_error[0]) return;
    unsigned long code = ERR_peek_error();
    if (code) {
        char reason[160];
        ERR_error_string_n(code, reason, sizeof reason);
        snprintf(first_error, sizeof first_error, "%s: %s", what, reason);
    } else {
        snprintf(first_error, sizeof first_error, "%s", what);
    }
}

static int read_exactly(SSL *ssl, unsigned char *buf, int len) {
    int got = 0;
    while (got < len) {
        int n = SSL_read(ssl, buf + got, len - got);
        if (n <= 0) return -1;
        got += n;
    }
    return 0;
}

/* One connection; 0 on success. */
static int one_connection(SSL_CTX *ctx, const struct sockaddr_in *addr, const unsigned char *connect_packet,
                          int connect_len) {
    static const unsigned char disconnect[] = {0xe0, 0x00};
    unsigned char connack[4];
    int rc = -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { remember("socket"); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0) { remember("connect"); close(fd); return -1; }
    SSL *ssl = SSL_new(ctx);
    if (!ssl) { remember("SSL_new"); close(fd); return -1; }
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), "127.0.0.1");
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) { remember("handshake"); goto out; }
    if (SSL_write(ssl, connect_packet, connect_len) != connect_len) { remember("write CONNECT"); goto out; }
    if (read_exactly(ssl, connack, 4) != 0) { remember("read CONNACK"); goto out; }
    if (connack[0] != 0x20 || connack[1] != 0x02 || connack[3] != 0) { remember("CONNACK refused"); goto out; }
    if (SSL_write(ssl, disconnect, 2) != 2) { remember("write DISCONNECT"); goto out; }
    rc = 0;
out:
    SSL_free(ssl);  /* no close_notify: like most MQTT clients, the DISCONNECT is the goodbye */
    close(fd);
    ERR_clear_error();
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 7) {
        fprintf(stderr, "usage: %s PORT COUNT DEADLINE CAFILE [CERTFILE KEYFILE]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    long count = atol(argv[2]);
    double deadline = atof(argv[3]);
    if (port <= 0 || port > 65535 || count <= 0 || deadline <= 0) {
        fprintf(stderr, "bad PORT, COUNT or DEADLINE\n");
        return 2;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, argv[4], NULL) != 1) {
        fprintf(stderr, "cannot load CA file %s\n", argv[4]);
        return 2;
    }
    if (argc == 7 && (SSL_CTX_use_certificate_chain_file(ctx, argv[5]) != 1 ||
                      SSL_CTX_use_PrivateKey_file(ctx, argv[6], SSL_FILETYPE_PEM) != 1)) {
        fprintf(stderr, "cannot load client certificate %s / key %s\n", argv[5], argv[6]);
        return 2;
    }
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    /* MQTT 3.1.1 CONNECT, clean session, keep-alive 0, client id "bench-conn-<pid>" */
    char client_id[32];
    int id_len = snprintf(client_id, sizeof client_id, "bench-conn-%d", (int)getpid());
    unsigned char packet[64];
    int body = 10 + 2 + id_len;
    int n = 0;
    packet[n++] = 0x10;
    packet[n++] = (unsigned char)body;
    memcpy(packet + n, "\x00\x04MQTT\x04\x02\x00\x00", 10);
    n += 10;
    packet[n++] = 0;
    packet[n++] = (unsigned char)id_len;
    memcpy(packet + n, client_id, id_len);
    n += id_len;

    long ok = 0, errors = 0;
    double start = now();
    for (long i = 0; i < count && now() - start < deadline; i++) {
        if (one_connection(ctx, &addr, packet, n) == 0) ok++; else errors++;
    }
    double elapsed = now() - start;
    for (char *p = first_error; *p; p++) if (*p == '"' || *p == '\\') *p = '\'';
    printf("{\"ok\": %ld, \"errors\": %ld, \"first_error\": \"%s\", \"elapsed\": %.6f}\n", ok, errors, first_error,
           elapsed);
    SSL_CTX_free(ctx);
    return 0;
}
