// SPDX-License-Identifier: GPL-2.0
/*
 * One write-tracking cycle per mechanism, all in one process (one guest run):
 * write N pages of a populated 20000-page private anonymous region, then
 * collect the written pages and reset the tracking.  Prints a markdown table
 * of median microseconds per cycle (writes included: the faults they take
 * are what the mechanisms differ in), then the sparse row: the same
 * process_memwatch cycle on 64 MiB populated inside a 1 TiB MAP_NORESERVE
 * reservation versus on a 64 MiB mapping alone.
 *
 *   cc -O2 -Wall -Wextra -pthread -o memwatch_cycle memwatch_cycle.c
 *   ./memwatch_cycle [repeats=11 [rows=01234]]   (rows: indexes into the list below)
 *   ./memwatch_cycle micro [iters=300]           (fixed and per-page cost split up)
 *
 * Rows:
 *   process_memwatch GET|CLEAR          syscall 500, default mode
 *   process_memwatch GET|CLEAR|NRR      ... with MEMWATCH_SD_NO_REUSED_REGIONS
 *   PAGEMAP_SCAN + uffd WP_ASYNC        PM_SCAN_WP_MATCHING on PAGE_IS_WRITTEN
 *   mprotect + SIGSEGV                  handler unprotects the page, collect
 *                                       re-protects each written run
 *   sync userfaultfd + handler thread   UFFD WP (sync), a thread resolves each
 *                                       fault; collect re-protects each run
 *
 * Rows 0-2 take turns cycle by cycle (each on its own region), so that load
 * on the host hits them alike; rows 3-4 run after them, one by one.
 *
 * Every collect is checked: it must return exactly the N written pages (the
 * regions are MADV_NOHUGEPAGE), or the row is marked with '!'.  A mechanism
 * the kernel lacks is printed as "n/a".  The uapi values are spelled out:
 * Debian 12's headers predate them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NR_process_memwatch 500
#define MEMWATCH_SD_GET 0x1
#define MEMWATCH_SD_CLEAR 0x2
#define MEMWATCH_SD_NO_REUSED_REGIONS 0x4
#define PIDFD_SELF_THREAD (-10000)	/* v2 accepts only this one */

#include "uapi_compat.h"

struct uffd_msg {
	uint8_t event, reserved1;
	uint16_t reserved2;
	uint32_t reserved3;
	union {
		struct {
			uint64_t flags, address;
			uint32_t ptid;
		} pagefault;
		uint64_t reserved[3];
	} arg;
} __attribute__((packed));

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PAGE_IS_WRITTEN (1ULL << 1)
#define PM_SCAN_WP_MATCHING (1ULL << 0)
#define PM_SCAN_CHECK_WPASYNC (1ULL << 1)
#define UFFD_API 0xAAULL
#define UFFD_FEATURE_WP_UNPOPULATED (1ULL << 13)
#define UFFD_FEATURE_WP_ASYNC (1ULL << 15)
#define UFFDIO_API _IOWR(0xAA, 0x3F, struct uffdio_api)
#define UFFDIO_REGISTER _IOWR(0xAA, 0x00, struct uffdio_register)
#define UFFDIO_UNREGISTER _IOR(0xAA, 0x01, struct uffdio_range)
#define UFFDIO_WRITEPROTECT _IOWR(0xAA, 0x06, struct uffdio_writeprotect)
#define UFFDIO_REGISTER_MODE_WP (1ULL << 1)
#define UFFDIO_WRITEPROTECT_MODE_WP (1ULL << 0)
#define UFFD_EVENT_PAGEFAULT 0x12

#define PAGES 20000
#define MAXREP 64

static long psize;
static char *mem;		/* the region under test */
static size_t npages;
static uint64_t *out;		/* collected byte offsets */
static volatile uint8_t *seen;	/* mprotect/uffd: one byte per page */

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static char *map_region(size_t pages, int populate)
{
	char *p = mmap(NULL, pages * psize, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		die("mmap");
	if (madvise(p, pages * psize, MADV_NOHUGEPAGE))
		die("MADV_NOHUGEPAGE");
	if (populate)
		for (size_t i = 0; i < pages; i++)
			p[i * psize] = 1;
	return p;
}

static void write_pages(char *base, size_t pages, size_t n)
{
	for (size_t i = 0; i < n; i++)
		base[(i * (pages / n)) * psize]++;
}

/* ---- process_memwatch ---------------------------------------------------- */

static unsigned int mw_flags;

static long memwatch(char *base, size_t len, unsigned int flags, uint64_t *vec,
		     size_t cap)
{
	return syscall(NR_process_memwatch, PIDFD_SELF_THREAD,
		       (unsigned long)base, len, flags, vec, cap);
}

static long mw_collect(char *base, size_t pages)
{
	long r = memwatch(base, pages * psize,
			  MEMWATCH_SD_GET | MEMWATCH_SD_CLEAR | mw_flags, out,
			  pages);

	if (r < 0)
		die("process_memwatch");
	return r;
}

static int mw_setup(void)
{
	uint64_t v;

	if (memwatch(mem, psize, MEMWATCH_SD_GET, &v, 1) < 0)
		return -1;
	if (memwatch(mem, npages * psize, MEMWATCH_SD_CLEAR | mw_flags, NULL, 0))
		die("process_memwatch CLEAR");
	return 0;
}

/* ---- PAGEMAP_SCAN + WP_ASYNC --------------------------------------------- */

static int pagemap_fd = -1, uffd = -1;
static struct page_region regions[4096];

static long pm_collect(char *base, size_t pages)
{
	struct pm_scan_arg arg = {
		.size = sizeof(arg),
		.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
		.end = (uintptr_t)base + pages * psize,
		.vec = (uintptr_t)regions,
		.vec_len = 4096,
		.category_mask = PAGE_IS_WRITTEN,
		.return_mask = PAGE_IS_WRITTEN,
	};
	uint64_t cur = (uintptr_t)base;
	size_t n = 0;

	while (cur < arg.end) {
		int r;

		arg.start = cur;
		arg.max_pages = pages - n;
		r = ioctl(pagemap_fd, PAGEMAP_SCAN, &arg);
		if (r < 0)
			die("PAGEMAP_SCAN");
		for (int i = 0; i < r; i++)
			for (uint64_t a = regions[i].start; a < regions[i].end; a += psize)
				out[n++] = a - (uintptr_t)base;
		if (r < 4096 || arg.walk_end <= cur)
			break;
		cur = arg.walk_end;
	}
	return (long)n;
}

static int uffd_open(uint64_t features)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	struct uffdio_register reg = { 0 };
	struct uffdio_writeprotect wp = { 0 };

	uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0)
		return -1;
	if (ioctl(uffd, UFFDIO_API, &api))
		goto fail;
	reg.range.start = (uintptr_t)mem;
	reg.range.len = npages * psize;
	reg.mode = UFFDIO_REGISTER_MODE_WP;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		goto fail;
	wp.range = reg.range;
	wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
	if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp))
		goto fail;
	return 0;
fail:
	close(uffd);
	uffd = -1;
	return -1;
}

static void uffd_close(void)
{
	struct uffdio_range range = { (uintptr_t)mem, npages * psize };

	if (uffd < 0)
		return;
	ioctl(uffd, UFFDIO_UNREGISTER, &range);
	close(uffd);
	uffd = -1;
}

static int pm_setup(void)
{
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pagemap_fd < 0)
		return -1;
	if (uffd_open(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED))
		return -1;
	pm_collect(mem, npages);
	return 0;
}

static void pm_teardown(void)
{
	uffd_close();
}

/* ---- mprotect + SIGSEGV -------------------------------------------------- */

static void segv(int sig, siginfo_t *si, void *uc)
{
	uintptr_t a = (uintptr_t)si->si_addr & ~(uintptr_t)(psize - 1);

	(void)sig;
	(void)uc;
	if (a < (uintptr_t)mem || a >= (uintptr_t)mem + npages * psize)
		abort();
	seen[(a - (uintptr_t)mem) / psize] = 1;
	if (mprotect((void *)a, psize, PROT_READ | PROT_WRITE))
		abort();
}

/* Collect the seen pages; reset them, one protection change per run. */
static long seen_collect(int (*reprotect)(size_t first, size_t n))
{
	size_t n = 0, i = 0;

	while (i < npages) {
		size_t j;

		if (!seen[i]) {
			i++;
			continue;
		}
		for (j = i; j < npages && seen[j]; j++) {
			seen[j] = 0;
			out[n++] = j * psize;
		}
		if (reprotect(i, j - i))
			die("reprotect");
		i = j;
	}
	return (long)n;
}

static int mprotect_run(size_t first, size_t n)
{
	return mprotect(mem + first * psize, n * psize, PROT_READ);
}

static long mp_collect(char *base, size_t pages)
{
	(void)base;
	(void)pages;
	return seen_collect(mprotect_run);
}

static int mp_setup(void)
{
	struct sigaction sa = { .sa_sigaction = segv, .sa_flags = SA_SIGINFO };

	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGSEGV, &sa, NULL))
		return -1;
	return mprotect(mem, npages * psize, PROT_READ);
}

static void mp_teardown(void)
{
	mprotect(mem, npages * psize, PROT_READ | PROT_WRITE);
	signal(SIGSEGV, SIG_DFL);
}

/* ---- sync userfaultfd + handler thread ----------------------------------- */

static pthread_t handler;
static volatile int stop_handler;

static int uffd_wp(uint64_t start, uint64_t len, uint64_t mode)
{
	struct uffdio_writeprotect wp = { { start, len }, mode };

	return ioctl(uffd, UFFDIO_WRITEPROTECT, &wp);
}

static void *handle(void *arg)
{
	struct pollfd pfd = { .events = POLLIN };
	struct uffd_msg msg;

	(void)arg;
	pfd.fd = uffd;
	while (!stop_handler) {
		uint64_t a;

		if (poll(&pfd, 1, 50) <= 0)
			continue;
		if (read(uffd, &msg, sizeof(msg)) != sizeof(msg))
			continue;
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		a = msg.arg.pagefault.address & ~(uint64_t)(psize - 1);
		seen[(a - (uintptr_t)mem) / psize] = 1;
		/* Unprotect and wake the faulting thread. */
		if (uffd_wp(a, psize, 0))
			abort();
	}
	return NULL;
}

static int uffd_run(size_t first, size_t n)
{
	return uffd_wp((uintptr_t)mem + first * psize, n * psize,
		       UFFDIO_WRITEPROTECT_MODE_WP);
}

static long uf_collect(char *base, size_t pages)
{
	(void)base;
	(void)pages;
	return seen_collect(uffd_run);
}

static int uf_setup(void)
{
	if (uffd_open(0))
		return -1;
	stop_handler = 0;
	return pthread_create(&handler, NULL, handle, NULL) ? -1 : 0;
}

static void uf_teardown(void)
{
	stop_handler = 1;
	pthread_join(handler, NULL);
	uffd_close();
}

/* ---- driver --------------------------------------------------------------- */

struct mech {
	const char *name;
	unsigned int mw_flags;
	int (*setup)(void);
	long (*collect)(char *base, size_t pages);
	void (*teardown)(void);
};

static const struct mech mechs[] = {
	{ "process_memwatch GET\\|CLEAR", 0, mw_setup, mw_collect, NULL },
	{ "process_memwatch GET\\|CLEAR\\|NRR", MEMWATCH_SD_NO_REUSED_REGIONS,
	  mw_setup, mw_collect, NULL },
	{ "PAGEMAP_SCAN + uffd WP_ASYNC", 0, pm_setup, pm_collect, pm_teardown },
	{ "mprotect + SIGSEGV", 0, mp_setup, mp_collect, mp_teardown },
	{ "sync userfaultfd + handler thread", 0, uf_setup, uf_collect,
	  uf_teardown },
};

static const size_t ns[] = { 1, 10, 100, 1000, 10000 };

/* Median microseconds of @reps cycles of writing n pages and collecting. */
static double cycle(char *base, size_t pages, size_t n, int reps,
		    long (*collect)(char *, size_t), int *bad)
{
	uint64_t t[MAXREP];

	for (int r = 0; r < reps; r++) {
		uint64_t t0 = now_ns();
		long got;

		write_pages(base, pages, n);
		got = collect(base, pages);
		t[r] = now_ns() - t0;
		if (got != (long)n)
			*bad = 1;
	}
	qsort(t, reps, sizeof(*t), cmp_u64);
	return t[reps / 2] / 1000.0;
}

static int reps_for(size_t n, int repeats)
{
	int r = n >= 10000 ? repeats / 4 : n >= 1000 ? repeats / 2 : repeats;

	return r < 3 ? 3 : r > MAXREP ? MAXREP : r;
}

/*
 * Rows 0-2 (process_memwatch in both modes, PAGEMAP_SCAN) take turns cycle
 * by cycle, each on a region of its own, so that load on the host hits them
 * alike: their ratios are what the table is for.  The mprotect and
 * userfaultfd rows own process-wide state (a SIGSEGV handler, a handler
 * thread) and run one after the other, after these.
 */
#define TURNS 3
#define NS (sizeof(ns) / sizeof(*ns))

static void turns(const char *rows, int repeats)
{
	char *region[TURNS] = { NULL };
	int ok[TURNS] = { 0 }, err[TURNS] = { 0 }, bad[TURNS][NS] = { { 0 } };
	uint64_t t[TURNS][MAXREP];
	double us[TURNS][NS];

	for (int m = 0; m < TURNS; m++) {
		if (!strchr(rows, '0' + m))
			continue;
		npages = PAGES;
		mem = region[m] = map_region(PAGES, 1);
		mw_flags = mechs[m].mw_flags;
		ok[m] = !mechs[m].setup();
		err[m] = errno;
	}
	for (size_t i = 0; i < NS; i++) {
		int reps = reps_for(ns[i], repeats);

		for (int r = -1; r < reps; r++) {	/* r == -1: untimed */
			for (int m = 0; m < TURNS; m++) {
				double c;

				if (!ok[m])
					continue;
				mw_flags = mechs[m].mw_flags;
				c = cycle(region[m], PAGES, ns[i], 1,
					  mechs[m].collect, &bad[m][i]);
				if (r >= 0)
					t[m][r] = (uint64_t)(c * 1000);
			}
		}
		for (int m = 0; m < TURNS; m++) {
			if (!ok[m])
				continue;
			qsort(t[m], reps, sizeof(uint64_t), cmp_u64);
			us[m][i] = t[m][reps / 2] / 1000.0;
		}
	}
	for (int m = 0; m < TURNS; m++) {
		if (!region[m])
			continue;
		printf("| %s |", mechs[m].name);
		if (!ok[m])
			printf(" n/a (%s) |", strerror(err[m]));
		for (size_t i = 0; ok[m] && i < NS; i++)
			printf(" %.0f%s |", us[m][i], bad[m][i] ? "!" : "");
		printf("\n");
		mem = region[m];
		if (ok[m] && mechs[m].teardown)
			mechs[m].teardown();
		munmap(region[m], PAGES * psize);
	}
	fflush(stdout);
}

/* ---- micro: what one collect costs, split up ------------------------------ */

#define MICRO_ROUNDS 31

struct micro_variant {
	const char *name;
	char *base;
	size_t pages;
	unsigned int flags;	/* PAGEMAP_SCAN: nonzero = WP */
	int real_pidfd;
	size_t vec_len;
	int pm;			/* PAGEMAP_SCAN instead of process_memwatch */
	uint64_t t[MICRO_ROUNDS];
};

static int micro_pidfd = -1;

static void micro_call(const struct micro_variant *v)
{
	if (v->pm) {
		struct pm_scan_arg arg = {
			.size = sizeof(arg),
			.flags = v->flags ? PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC : 0,
			.start = (uintptr_t)v->base,
			.end = (uintptr_t)v->base + v->pages * psize,
			.vec = (uintptr_t)regions,
			.vec_len = 4096,
			.category_mask = PAGE_IS_WRITTEN,
			.return_mask = PAGE_IS_WRITTEN,
		};

		if (ioctl(pagemap_fd, PAGEMAP_SCAN, &arg) < 0)
			die("PAGEMAP_SCAN (micro)");
	} else if (v->flags) {
		int get = v->flags & MEMWATCH_SD_GET;

		if (syscall(NR_process_memwatch,
			    v->real_pidfd ? micro_pidfd : PIDFD_SELF_THREAD,
			    (unsigned long)v->base, v->pages * psize, v->flags,
			    get ? out : NULL, get ? v->vec_len : 0) < 0)
			die("process_memwatch (micro)");
	} else {
		syscall(SYS_getppid);
	}
}

/*
 * Median nanoseconds to write n pages of a tracked region, the collect that
 * resets them not timed: the write-fault cost of each mechanism.
 */
static double micro_write_ns(char *base, size_t pages, size_t n,
			     long (*collect)(char *, size_t))
{
	uint64_t t[MICRO_ROUNDS];

	collect(base, pages);
	for (int b = 0; b < MICRO_ROUNDS; b++) {
		uint64_t t0 = now_ns();

		write_pages(base, pages, n);
		t[b] = now_ns() - t0;
		if (collect(base, pages) != (long)n)
			die("micro: wrong count");
	}
	qsort(t, MICRO_ROUNDS, sizeof(*t), cmp_u64);
	return (double)t[MICRO_ROUNDS / 2] / n;
}

/* Median nanoseconds per page of collecting n written pages, writes untimed. */
static double micro_collect_ns(char *base, size_t pages, size_t n,
			       long (*collect)(char *, size_t))
{
	uint64_t t[MICRO_ROUNDS];

	collect(base, pages);
	for (int b = 0; b < MICRO_ROUNDS; b++) {
		uint64_t t0;

		write_pages(base, pages, n);
		t0 = now_ns();
		if (collect(base, pages) != (long)n)
			die("micro: wrong count");
		t[b] = now_ns() - t0;
	}
	qsort(t, MICRO_ROUNDS, sizeof(*t), cmp_u64);
	return (double)t[MICRO_ROUNDS / 2] / n;
}

/*
 * ./memwatch_cycle micro [iters]: the fixed cost of one call (a clean
 * one-page range) and the per-page cost of a clean 20000-page range, for
 * process_memwatch (several argument variants) and PAGEMAP_SCAN, and the
 * write-fault cost per page of each.  The variants take turns, one batch of
 * @iters calls (@iters / 100 on 20000 pages) each per round, so that load on
 * the host hits them alike; median nanoseconds per call over the rounds.
 */
static int micro(int iters)
{
	char *mwmem = map_region(PAGES, 1), *pmmem;
	const unsigned int gc = MEMWATCH_SD_GET | MEMWATCH_SD_CLEAR;
	uint64_t v;

	if (syscall(NR_process_memwatch, PIDFD_SELF_THREAD, (unsigned long)mwmem,
		    psize, MEMWATCH_SD_GET, &v, 1) < 0)
		die("process_memwatch");
	if (syscall(NR_process_memwatch, PIDFD_SELF_THREAD, (unsigned long)mwmem,
		    PAGES * psize, MEMWATCH_SD_CLEAR, NULL, 0))
		die("process_memwatch CLEAR");
	npages = PAGES;
	mem = pmmem = map_region(PAGES, 1);
	if (pm_setup())
		die("PAGEMAP_SCAN setup");
	micro_pidfd = syscall(SYS_pidfd_open, getpid(), 0);
	if (micro_pidfd < 0)
		die("pidfd_open");

	struct micro_variant vs[] = {
		{ "getppid()", NULL, 0, 0, 0, 0, 0, { 0 } },
		{ "memwatch GET\\|CLEAR, 1 clean page", mwmem, 1, gc, 0, PAGES, 0, { 0 } },
		{ "memwatch GET\\|CLEAR, 1 clean page, vec_len 1", mwmem, 1, gc, 0, 1, 0, { 0 } },
		{ "memwatch GET\\|CLEAR, 1 clean page, real pidfd", mwmem, 1, gc, 1, PAGES, 0, { 0 } },
		{ "memwatch GET, 1 clean page", mwmem, 1, MEMWATCH_SD_GET, 0, PAGES, 0, { 0 } },
		{ "memwatch CLEAR, 1 clean page", mwmem, 1, MEMWATCH_SD_CLEAR, 0, 0, 0, { 0 } },
		{ "PAGEMAP_SCAN WP, 1 clean page", pmmem, 1, 1, 0, 0, 1, { 0 } },
		{ "PAGEMAP_SCAN no WP, 1 clean page", pmmem, 1, 0, 0, 0, 1, { 0 } },
		{ "memwatch GET\\|CLEAR, 20000 clean pages", mwmem, PAGES, gc, 0, PAGES, 0, { 0 } },
		{ "memwatch GET, 20000 clean pages", mwmem, PAGES, MEMWATCH_SD_GET, 0, PAGES, 0, { 0 } },
		{ "PAGEMAP_SCAN WP, 20000 clean pages", pmmem, PAGES, 1, 0, 0, 1, { 0 } },
	};
	const size_t nv = sizeof(vs) / sizeof(*vs);

	for (size_t i = 0; i < nv; i++)
		micro_call(&vs[i]);
	for (int r = 0; r < MICRO_ROUNDS; r++) {
		for (size_t i = 0; i < nv; i++) {
			int n = vs[i].pages > 1 ? iters / 100 + 1 : iters;
			uint64_t t0 = now_ns();

			for (int k = 0; k < n; k++)
				micro_call(&vs[i]);
			vs[i].t[r] = (now_ns() - t0) / n;
		}
	}
	printf("| ns per call (median of %d rounds) | value |\n|---|---|\n",
	       MICRO_ROUNDS);
	for (size_t i = 0; i < nv; i++) {
		qsort(vs[i].t, MICRO_ROUNDS, sizeof(uint64_t), cmp_u64);
		printf("| %s | %llu |\n", vs[i].name,
		       (unsigned long long)vs[i].t[MICRO_ROUNDS / 2]);
	}
	mw_flags = 0;
	printf("| memwatch: write fault, per page (N=10000) | %.0f |\n",
	       micro_write_ns(mwmem, PAGES, 10000, mw_collect));
	printf("| PAGEMAP_SCAN: write fault, per page (N=10000) | %.0f |\n",
	       micro_write_ns(pmmem, PAGES, 10000, pm_collect));
	printf("| memwatch: collect, per dirty page (N=10000) | %.0f |\n",
	       micro_collect_ns(mwmem, PAGES, 10000, mw_collect));
	printf("| PAGEMAP_SCAN: collect, per dirty page (N=10000) | %.0f |\n",
	       micro_collect_ns(pmmem, PAGES, 10000, pm_collect));
	pm_teardown();
	return 0;
}

int main(int argc, char **argv)
{
	int repeats = argc > 1 ? atoi(argv[1]) : 11;
	const char *rows = argc > 2 ? argv[2] : "01234";
	size_t sparse_pages = (64UL << 20) / sysconf(_SC_PAGESIZE);
	size_t huge_pages = (1UL << 40) / sysconf(_SC_PAGESIZE);

	if (argc > 1 && !strcmp(argv[1], "micro")) {
		psize = sysconf(_SC_PAGESIZE);
		out = calloc(PAGES, sizeof(*out));
		if (!out)
			die("calloc");
		return micro(argc > 2 ? atoi(argv[2]) : 300);
	}
	if (repeats < 3)
		repeats = 3;
	if (repeats > MAXREP)
		repeats = MAXREP;
	psize = sysconf(_SC_PAGESIZE);
	out = calloc(sparse_pages > PAGES ? sparse_pages : PAGES, sizeof(*out));
	seen = calloc(PAGES, 1);
	if (!out || !seen)
		die("calloc");

	printf("| N pages |");
	for (size_t i = 0; i < sizeof(ns) / sizeof(*ns); i++)
		printf(" %zu |", ns[i]);
	printf("\n|---|");
	for (size_t i = 0; i < sizeof(ns) / sizeof(*ns); i++)
		printf("---|");
	printf("\n");

	turns(rows, repeats);
	for (size_t m = TURNS; m < sizeof(mechs) / sizeof(*mechs); m++) {
		const struct mech *me = &mechs[m];

		if (!strchr(rows, (int)('0' + m)))
			continue;
		npages = PAGES;
		mem = map_region(PAGES, 1);
		mw_flags = me->mw_flags;
		printf("| %s |", me->name);
		if (me->setup()) {
			printf(" n/a (%s) |\n", strerror(errno));
			munmap(mem, PAGES * psize);
			continue;
		}
		for (size_t i = 0; i < sizeof(ns) / sizeof(*ns); i++) {
			int bad = 0;
			double us;

			/* one untimed cycle first */
			cycle(mem, PAGES, ns[i], 1, me->collect, &bad);
			us = cycle(mem, PAGES, ns[i], reps_for(ns[i], repeats),
				   me->collect, &bad);
			printf(" %.0f%s |", us, bad ? "!" : "");
			fflush(stdout);
		}
		printf("\n");
		if (me->teardown)
			me->teardown();
		munmap(mem, PAGES * psize);
	}

	/* Sparse: 64 MiB populated in the middle of a 1 TiB reservation. */
	for (int nrr = 1; nrr >= 0; nrr--) {
		char *alone, *huge, *pop;
		double a, h;
		int bad = 0;

		mw_flags = nrr ? MEMWATCH_SD_NO_REUSED_REGIONS : 0;
		alone = map_region(sparse_pages, 1);
		huge = map_region(huge_pages, 0);
		pop = huge + (huge_pages / 2) * psize;
		for (size_t i = 0; i < sparse_pages; i++)
			pop[i * psize] = 1;
		if (memwatch(alone, psize, MEMWATCH_SD_GET, out, 1) < 0) {
			printf("\nsparse: n/a (%s)\n", strerror(errno));
			break;
		}
		/* clear both whole (CLEAR alone has no vec to fill), untimed */
		if (memwatch(alone, sparse_pages * psize,
			     MEMWATCH_SD_CLEAR | mw_flags, NULL, 0) ||
		    memwatch(huge, huge_pages * psize,
			     MEMWATCH_SD_CLEAR | mw_flags, NULL, 0))
			die("process_memwatch CLEAR");
		/*
		 * The cycle writes in pop and collects over all of huge.  The
		 * two regions take turns, cycle by cycle, so that load on the
		 * host hits both alike: the ratio is what is reported.
		 */
		{
			uint64_t ta[MAXREP], th[MAXREP];

			cycle(alone, sparse_pages, 100, 1, mw_collect, &bad);
			for (int r = 0; r < repeats; r++) {
				uint64_t t0;
				long got;

				ta[r] = (uint64_t)(cycle(alone, sparse_pages, 100, 1,
							 mw_collect, &bad) * 1000);
				t0 = now_ns();
				write_pages(pop, sparse_pages, 100);
				got = memwatch(huge, huge_pages * psize,
					       MEMWATCH_SD_GET | MEMWATCH_SD_CLEAR |
					       mw_flags, out, sparse_pages);
				th[r] = now_ns() - t0;
				if (got != 100)
					bad = 1;
			}
			qsort(ta, repeats, sizeof(*ta), cmp_u64);
			qsort(th, repeats, sizeof(*th), cmp_u64);
			a = ta[repeats / 2] / 1000.0;
			h = th[repeats / 2] / 1000.0;
		}
		printf("%ssparse%s (N=100): 64 MiB alone %.0f us, 64 MiB in 1 TiB %.0f us, ratio %.2fx%s\n",
		       nrr ? "\n" : "", nrr ? " NRR" : "", a, h, h / a,
		       bad ? " (!: wrong count)" : "");
		munmap(alone, sparse_pages * psize);
		munmap(huge, huge_pages * psize);
	}
	return 0;
}
