/*
 * cpg-bridge: relays one corosync CPG group membership to a parent process over stdin/stdout
 * (used by the sheepdog `corosync` cluster driver, drivers/corosync.ts).
 *
 *   cpg-bridge [GROUP]        (default group "sheepdog")
 *
 * stdout: frames  u32 len (LE, counts type + body) | u8 type | body
 *   1 HELLO    nodeid u32, pid u32                       (first frame, after cpg_join)
 *   2 CONFCHG  n_members u32, n_left u32, n_joined u32,
 *              then members, left, joined: (nodeid u32, pid u32, reason u32) each
 *   3 DELIVER  nodeid u32, pid u32, message bytes
 * stdin:  frames  u32 len (LE) | message bytes (len <= 1 MiB), multicast with CPG_TYPE_AGREED.
 *
 * Exit status: 0 when stdin closes (the parent is gone or done), 2 when corosync cannot be
 * reached, 3 on a stdout/stdin error, 4 when corosync goes away (cpg_dispatch fails), 5 on a
 * multicast failure, 6 on a protocol error. Diagnostics go to stderr.
 */
#include <corosync/cpg.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/uio.h>

#define MAX_MSG (1024 * 1024)
#define TRY_AGAIN_LIMIT_MS 60000

enum { F_HELLO = 1, F_CONFCHG = 2, F_DELIVER = 3 };

static cpg_handle_t handle;
static uint8_t inbuf[MAX_MSG];

/* cs_strerror() lives in libcorosync_common; the few codes we can meet are named here. */
static const char *errname(cs_error_t err)
{
	switch (err) {
	case CS_ERR_LIBRARY: return "CS_ERR_LIBRARY";
	case CS_ERR_TIMEOUT: return "CS_ERR_TIMEOUT";
	case CS_ERR_TRY_AGAIN: return "CS_ERR_TRY_AGAIN";
	case CS_ERR_BAD_HANDLE: return "CS_ERR_BAD_HANDLE";
	case CS_ERR_ACCESS: return "CS_ERR_ACCESS";
	case CS_ERR_NOT_EXIST: return "CS_ERR_NOT_EXIST";
	case CS_ERR_EXIST: return "CS_ERR_EXIST";
	case CS_ERR_TOO_BIG: return "CS_ERR_TOO_BIG";
	case CS_ERR_SECURITY: return "CS_ERR_SECURITY";
	default: return "error";
	}
}

static void die(int code, const char *what, cs_error_t err)
{
	if (err != CS_OK)
		fprintf(stderr, "cpg-bridge: %s: %s (%d)\n", what, errname(err), err);
	else
		fprintf(stderr, "cpg-bridge: %s\n", what);
	exit(code);
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = v & 0xff;
	p[1] = (v >> 8) & 0xff;
	p[2] = (v >> 16) & 0xff;
	p[3] = (v >> 24) & 0xff;
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Writes a whole frame; stdout is a pipe and a blocking write is the backpressure we want. */
static void emit(uint8_t type, const void *head, size_t hlen, const void *body, size_t blen)
{
	uint8_t pre[5];
	struct iovec iov[3] = {
		{ pre, sizeof(pre) }, { (void *)head, hlen }, { (void *)body, blen },
	};
	int idx = 0, cnt = 3;

	put32(pre, (uint32_t)(1 + hlen + blen));
	pre[4] = type;
	while (cnt > 0) {
		ssize_t n = writev(STDOUT_FILENO, iov + idx, cnt);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die(3, "write to stdout failed", CS_OK);
		}
		while (cnt > 0 && (size_t)n >= iov[idx].iov_len) {
			n -= iov[idx].iov_len;
			idx++;
			cnt--;
		}
		if (cnt > 0) {
			iov[idx].iov_base = (uint8_t *)iov[idx].iov_base + n;
			iov[idx].iov_len -= n;
		}
	}
}

static void on_deliver(cpg_handle_t h, const struct cpg_name *group, uint32_t nodeid, uint32_t pid,
		       void *msg, size_t len)
{
	uint8_t head[8];

	(void)h;
	(void)group;
	put32(head, nodeid);
	put32(head + 4, pid);
	emit(F_DELIVER, head, sizeof(head), msg, len);
}

static size_t put_list(uint8_t *p, const struct cpg_address *l, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		put32(p + i * 12, l[i].nodeid);
		put32(p + i * 12 + 4, l[i].pid);
		put32(p + i * 12 + 8, l[i].reason);
	}
	return n * 12;
}

static void on_confchg(cpg_handle_t h, const struct cpg_name *group,
		       const struct cpg_address *members, size_t n_members,
		       const struct cpg_address *left, size_t n_left,
		       const struct cpg_address *joined, size_t n_joined)
{
	static uint8_t buf[12 + 3 * CPG_MEMBERS_MAX * 12];
	size_t off = 12;

	(void)h;
	(void)group;
	if (n_members > CPG_MEMBERS_MAX || n_left > CPG_MEMBERS_MAX || n_joined > CPG_MEMBERS_MAX)
		die(6, "configuration change larger than CPG_MEMBERS_MAX", CS_OK);
	put32(buf, n_members);
	put32(buf + 4, n_left);
	put32(buf + 8, n_joined);
	off += put_list(buf + off, members, n_members);
	off += put_list(buf + off, left, n_left);
	off += put_list(buf + off, joined, n_joined);
	emit(F_CONFCHG, buf, off, NULL, 0);
}

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static void dispatch(void)
{
	cs_error_t err = cpg_dispatch(handle, CS_DISPATCH_ALL);

	if (err != CS_OK && err != CS_ERR_TRY_AGAIN)
		die(4, "cpg_dispatch failed (corosync gone?)", err);
}

/* CS_ERR_TRY_AGAIN means corosync is busy (flow control, membership sync): keep dispatching so
 * it can drain, back off, and retry. */
static void mcast(const uint8_t *msg, size_t len)
{
	struct iovec iov = { (void *)msg, len };
	long start = now_ms(), backoff = 1;

	for (;;) {
		cs_error_t err = cpg_mcast_joined(handle, CPG_TYPE_AGREED, &iov, 1);

		if (err == CS_OK)
			return;
		if (err != CS_ERR_TRY_AGAIN)
			die(5, "cpg_mcast_joined failed", err);
		if (now_ms() - start > TRY_AGAIN_LIMIT_MS)
			die(5, "cpg_mcast_joined kept returning TRY_AGAIN", err);
		dispatch();
		sleep_ms(backoff);
		if (backoff < 64)
			backoff *= 2;
	}
}

int main(int argc, char **argv)
{
	cpg_callbacks_t callbacks = { .cpg_deliver_fn = on_deliver, .cpg_confchg_fn = on_confchg };
	struct cpg_name group;
	const char *name = argc > 1 ? argv[1] : "sheepdog";
	unsigned int nodeid = 0;
	uint8_t hello[8], lenbuf[4];
	size_t len_got = 0, body_len = 0, body_got = 0;
	int in_body = 0, fd = -1;
	long start;
	cs_error_t err;

	signal(SIGPIPE, SIG_IGN);
	if (strlen(name) == 0 || strlen(name) >= CPG_MAX_NAME_LENGTH) {
		fprintf(stderr, "cpg-bridge: group name must be 1..%d bytes\n", CPG_MAX_NAME_LENGTH - 1);
		return 6;
	}
	group.length = strlen(name);
	memcpy(group.value, name, group.length);

	err = cpg_initialize(&handle, &callbacks);
	if (err != CS_OK)
		die(2, "cannot connect to corosync (is it running?): cpg_initialize", err);
	start = now_ms();
	while ((err = cpg_join(handle, &group)) == CS_ERR_TRY_AGAIN && now_ms() - start < 10000)
		sleep_ms(10);
	if (err != CS_OK)
		die(2, "cpg_join", err);
	err = cpg_local_get(handle, &nodeid);
	if (err != CS_OK)
		die(2, "cpg_local_get", err);
	err = cpg_fd_get(handle, &fd);
	if (err != CS_OK)
		die(2, "cpg_fd_get", err);
	put32(hello, nodeid);
	put32(hello + 4, (uint32_t)getpid());
	emit(F_HELLO, hello, sizeof(hello), NULL, 0);

	for (;;) {
		struct pollfd pfd[2] = { { fd, POLLIN, 0 }, { STDIN_FILENO, POLLIN, 0 } };

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die(3, "poll failed", CS_OK);
		}
		if (pfd[0].revents & (POLLIN | POLLERR | POLLHUP | POLLNVAL)) {
			if (pfd[0].revents & POLLNVAL)
				die(4, "corosync connection closed", CS_OK);
			dispatch();
		}
		if (pfd[1].revents & (POLLIN | POLLERR | POLLHUP)) {
			/* Read only what the current frame still needs: no buffering beyond one message. */
			uint8_t *dst = in_body ? inbuf + body_got : lenbuf + len_got;
			size_t want = in_body ? body_len - body_got : 4 - len_got;
			ssize_t n = read(STDIN_FILENO, dst, want);

			if (n < 0) {
				if (errno == EINTR || errno == EAGAIN)
					continue;
				die(3, "read from stdin failed", CS_OK);
			}
			if (n == 0) {
				/* The parent closed our stdin (or died): leave the group and go. */
				cpg_leave(handle, &group);
				cpg_finalize(handle);
				return 0;
			}
			if (!in_body) {
				len_got += n;
				if (len_got == 4) {
					body_len = get32(lenbuf);
					len_got = 0;
					if (body_len == 0 || body_len > MAX_MSG)
						die(6, "input frame length out of range", CS_OK);
					in_body = 1;
					body_got = 0;
				}
			} else {
				body_got += n;
				if (body_got == body_len) {
					mcast(inbuf, body_len);
					in_body = 0;
				}
			}
		}
	}
}
