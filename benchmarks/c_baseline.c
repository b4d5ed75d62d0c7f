// SPDX-License-Identifier: GPL-2.0
/*
 * Plain C baseline for the per-call overhead of memwatch's scanning
 * mechanisms: the same kernel work as the extension's scan() without Python
 * or pybind11 in between, on a populated private anonymous range.
 *
 *   cc -O2 -Wall -Wextra -o c_baseline c_baseline.c
 *   ./c_baseline [pages=1024] [dirty=10] [iterations=20000] [repeats=7] [mode=lib]
 *
 * mode:
 *   lib      PAGEMAP_SCAN over a uffd-wp(async) range with exactly the
 *            arguments of PagemapScan::scan() in src/pagemap_scan.cpp
 *            (WRITTEN, populated, not the zero page), the returned regions
 *            expanded into a u64 array of byte offsets;
 *   written  the same with category_mask = PAGE_IS_WRITTEN alone (the
 *            kernel's fast path; what this program did before the library
 *            added the populated/zero-page masks);
 *   syscall  process_memwatch(PIDFD_SELF, GET[|CLEAR]|NO_REUSED_REGIONS),
 *            as src/syscall.cpp calls it (patched kernel only).
 *
 * Every call is timed on its own; prints one line per measurement:
 * "<name> <median ns> <10th percentile ns>" over all repeats*iterations calls
 * (the p10 is the better estimate on a busy machine):
 *   scan_noreset     scan of a range holding `dirty` written pages, no reset
 *   dirty_scan_reset write `dirty` pages (untimed), then one scan with reset
 *
 * The uapi definitions are spelled out (Debian 12's headers predate 6.7),
 * with the values of the 6.12 tree's include/uapi/linux/fs.h and
 * userfaultfd.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "uapi_compat.h"

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PAGE_IS_WRITTEN (1ULL << 1)
#define PM_SCAN_WP_MATCHING (1ULL << 0)
#define PM_SCAN_CHECK_WPASYNC (1ULL << 1)
#define UFFD_API 0xAAULL
#define UFFD_FEATURE_WP_UNPOPULATED (1ULL << 13)
#define UFFD_FEATURE_WP_ASYNC (1ULL << 15)
#define UFFDIO_API _IOWR(0xAA, 0x3F, struct uffdio_api)
#define UFFDIO_REGISTER _IOWR(0xAA, 0x00, struct uffdio_register)
#define UFFDIO_WRITEPROTECT _IOWR(0xAA, 0x06, struct uffdio_writeprotect)
#define UFFDIO_REGISTER_MODE_WP (1ULL << 1)
#define UFFDIO_WRITEPROTECT_MODE_WP (1ULL << 0)
#define PAGE_IS_PRESENT (1ULL << 3)
#define PAGE_IS_SWAPPED (1ULL << 4)
#define PAGE_IS_PFNZERO (1ULL << 5)
#define NR_process_memwatch 500
#define PIDFD_SELF (-10000)
#define MEMWATCH_SD_GET 0x1
#define MEMWATCH_SD_CLEAR 0x2
#define MEMWATCH_SD_NO_REUSED_REGIONS 0x4

enum { MODE_LIB, MODE_WRITTEN, MODE_SYSCALL };
static int mode = MODE_LIB;

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static int pagemap_fd;
static struct page_region *regions;
static size_t nregions;
static long psize;

/* The same loops as SyscallMech::scan() and PagemapScan::scan(). */
static size_t scan(uintptr_t start, size_t len, uint64_t *out, size_t cap, int reset)
{
	struct pm_scan_arg arg = {
		.size = sizeof(arg),
		.flags = reset ? PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC : 0,
		.end = start + len,
		.vec = (uintptr_t)regions,
		.vec_len = nregions,
		.category_mask = PAGE_IS_WRITTEN,
		.return_mask = PAGE_IS_WRITTEN,
	};
	uint64_t cur = start;
	size_t n = 0;

	if (mode == MODE_SYSCALL) {
		long r = syscall(NR_process_memwatch, PIDFD_SELF, start, len,
				 MEMWATCH_SD_GET | (reset ? MEMWATCH_SD_CLEAR : 0) |
				 MEMWATCH_SD_NO_REUSED_REGIONS, out, cap);

		if (r < 0)
			die("process_memwatch");
		return (size_t)r;
	}
	if (mode == MODE_LIB) {
		arg.category_inverted = PAGE_IS_PFNZERO;
		arg.category_mask = PAGE_IS_WRITTEN | PAGE_IS_PFNZERO;
		arg.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
	}

	while (n < cap && cur < start + len) {
		size_t before = n;
		int r;

		arg.start = cur;
		arg.max_pages = cap - n;
		r = ioctl(pagemap_fd, PAGEMAP_SCAN, &arg);
		if (r < 0)
			die("PAGEMAP_SCAN");
		for (int i = 0; i < r; i++)
			for (uint64_t a = regions[i].start; a < regions[i].end && n < cap; a += psize)
				out[n++] = a - start;
		if ((size_t)r < nregions && n - before < arg.max_pages)
			break;
		if (arg.walk_end <= cur)
			break;
		cur = arg.walk_end;
	}
	return n;
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

static uint64_t median(uint64_t *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_u64);
	return v[n / 2];
}

/* "<name> <median> <p10>" in ns per call, timer cost subtracted. */
static void report(const char *name, uint64_t *v, int n, uint64_t tcost)
{
	uint64_t med, p10;

	qsort(v, (size_t)n, sizeof(*v), cmp_u64);
	med = v[n / 2];
	p10 = v[n / 10];
	printf("%s %llu %llu\n", name, (unsigned long long)(med > tcost ? med - tcost : 0),
	       (unsigned long long)(p10 > tcost ? p10 - tcost : 0));
}

int main(int argc, char **argv)
{
	size_t pages = argc > 1 ? strtoul(argv[1], NULL, 0) : 1024;
	size_t dirty = argc > 2 ? strtoul(argv[2], NULL, 0) : 10;
	long iters = argc > 3 ? strtol(argv[3], NULL, 0) : 20000;
	int repeats = argc > 4 ? atoi(argv[4]) : 7;
	const char *mode_name = argc > 5 ? argv[5] : "lib";
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED };
	struct uffdio_register reg = { 0 };
	struct uffdio_writeprotect wp = { 0 };
	uint64_t *out, *samples[2], timer[1000], tcost;
	long ns = 0, nr = 0;
	volatile char *mem;
	size_t len;
	int uffd;

	if (repeats < 1 || dirty > pages || !pages)
		return 2;
	if (!strcmp(mode_name, "written"))
		mode = MODE_WRITTEN;
	else if (!strcmp(mode_name, "syscall"))
		mode = MODE_SYSCALL;
	else if (strcmp(mode_name, "lib"))
		return 2;
	psize = sysconf(_SC_PAGESIZE);
	len = pages * psize;
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	/* Populated, like the Python side's mapping; no huge pages (one page per write). */
	madvise((void *)mem, len, MADV_NOHUGEPAGE);
	memset((void *)mem, 0, len);
	nregions = pages < 4096 ? pages : 4096;
	regions = calloc(nregions, sizeof(*regions));
	out = calloc(pages, sizeof(*out));
	if (!regions || !out)
		die("calloc");
	if (mode == MODE_SYSCALL) {
		if (syscall(NR_process_memwatch, PIDFD_SELF, (uintptr_t)mem, len,
			    MEMWATCH_SD_CLEAR | MEMWATCH_SD_NO_REUSED_REGIONS, NULL, 0) < 0)
			die("process_memwatch CLEAR");
		goto measure;
	}
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pagemap_fd < 0)
		die("open pagemap");
	if (mode == MODE_LIB)	/* the extension does not ask for it (src/pagemap_scan.cpp) */
		api.features = UFFD_FEATURE_WP_ASYNC;
	uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0)
		die("userfaultfd");
	if (ioctl(uffd, UFFDIO_API, &api))
		die("UFFDIO_API");
	reg.range.start = (uintptr_t)mem;
	reg.range.len = len;
	reg.mode = UFFDIO_REGISTER_MODE_WP;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		die("UFFDIO_REGISTER");
	wp.range = reg.range;
	wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
	if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp))
		die("UFFDIO_WRITEPROTECT");
measure:
	samples[0] = calloc((size_t)iters * repeats, sizeof(uint64_t));
	samples[1] = calloc((size_t)iters * repeats, sizeof(uint64_t));
	if (!samples[0] || !samples[1])
		die("calloc");
	/* Spread the dirty pages so each is its own region.  Every call is timed
	 * on its own (clock_gettime pair cost subtracted). */
	for (int r = 0; r < repeats; r++) {
		for (size_t i = 0; i < dirty; i++)
			mem[(i * (pages / dirty)) * psize] = 1;
		for (long k = 0; k < iters; k++) {
			uint64_t t0 = now_ns();

			if (scan((uintptr_t)mem, len, out, pages, 0) != dirty)
				die("scan_noreset count");
			samples[0][ns++] = now_ns() - t0;
		}
	}
	for (int r = 0; r < repeats; r++) {
		for (long k = 0; k < iters; k++) {
			uint64_t t0;

			for (size_t i = 0; i < dirty; i++)
				mem[(i * (pages / dirty)) * psize] = 1;
			t0 = now_ns();
			if (scan((uintptr_t)mem, len, out, pages, 1) != dirty)
				die("dirty_scan_reset count");
			samples[1][nr++] = now_ns() - t0;
		}
	}
	for (long k = 0; k < 100000; k++) {
		uint64_t t0 = now_ns();

		timer[k % 1000] = now_ns() - t0;
	}
	tcost = median(timer, 1000);
	report("scan_noreset", samples[0], (int)ns, tcost);
	report("dirty_scan_reset", samples[1], (int)nr, tcost);
	return 0;
}
