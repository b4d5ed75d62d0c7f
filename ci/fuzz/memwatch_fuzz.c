// SPDX-License-Identifier: GPL-2.0
/*
 * Random-argument fuzzing and race stress for process_memwatch(2).
 *
 * Usage: memwatch_fuzz [--calls N] [--seed S] [--callers T] [--verbose]
 *
 * Two targets change their address space all the time: this process (named
 * by the pidfd sentinels) and a forked child (named by a pidfd), each with a
 * 16 MiB window in which a mutator thread maps, unmaps, mprotects, mremaps,
 * madvises (DONTNEED, FREE, PAGEOUT, MERGEABLE, HUGEPAGE, COLLAPSE) and forks,
 * while writer threads write at random addresses (faults on holes are
 * caught).  Caller threads issue N calls in all with random pidfds (the
 * sentinels, the child, a dead child, bad and closed descriptors), ranges
 * (unaligned, wrapping, huge, holes, kernel addresses), flags (all 32 bits),
 * vec pointers (NULL, unmapped, read-only, ending mid-page before a read-only
 * page, kernel) and vec_len.  The child is replaced every few thousand calls.
 *
 * Checked: every error is one the v3 ABI documents (EINVAL, EFAULT, EBADF,
 * ESRCH, ENOMEM, EINTR; EOPNOTSUPP is gone: hugetlb now reads as dirty), a success
 * returns at most vec_len offsets, page aligned, ascending and inside the
 * range.  Kernel reports (KASAN, lockdep, WARN) are the guest log's job
 * (ci/vm-run.sh fails the run on them).  Prints one line of counts; exits 1
 * on any unexpected result, 2 on a setup failure.
 *
 * Not part of the kernel series on purpose: upstream, random-argument
 * fuzzing is syzkaller's job (a syzlang description would go there), and a
 * selftest must be deterministic; this is the project's CI stress tool.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef __NR_process_memwatch
#define __NR_process_memwatch 500
#endif
#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#define PIDFD_SELF_THREAD	(-10000)
#define PIDFD_SELF_THREAD_GROUP	(-10001)
#define MW_GET		0x1
#define MW_CLEAR	0x2
#define MW_NRR		0x4

#define WIN_PAGES	4096UL	/* 16 MiB with 4 KiB pages */
#define WRITERS		2

static unsigned long ps;
static char *win;		/* same address in this process and the child */
static volatile int stop_all;

/* xorshift64*, one state per thread. */
static uint64_t rnd(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

static uint64_t pick(uint64_t *s, uint64_t n)
{
	return n ? rnd(s) % n : 0;
}

/* ---- target side: writers and a mutator in a window ---- */

static __thread sigjmp_buf fault_jmp;
static __thread volatile int fault_armed;

static void on_fault(int sig)
{
	if (fault_armed)
		siglongjmp(fault_jmp, 1);
	signal(sig, SIG_DFL);
	raise(sig);
}

/* Write one byte to each of @n pages at @a; a fault ends the loop. */
static __attribute__((noinline)) void try_touch(char *a, unsigned long n,
						 bool add)
{
	unsigned long i;

	fault_armed = 1;
	if (!sigsetjmp(fault_jmp, 1)) {
		for (i = 0; i < n; i++) {
			if (add)
				__atomic_fetch_add((uint64_t *)(a + i * ps), 1,
						   __ATOMIC_RELAXED);
			else
				a[i * ps] = 1;
		}
	}
	fault_armed = 0;
}

static void *writer_fn(void *arg)
{
	uint64_t s = (uintptr_t)arg * 0x9e3779b97f4a7c15ULL + 1;
	unsigned long writes = 0;

	while (!stop_all) {
		char *p = win + pick(&s, WIN_PAGES) * ps + pick(&s, ps / 8) * 8;

		try_touch(p, 1, true);
		if (!(++writes & 1023))
			sched_yield();
	}
	return NULL;
}

static void mutate_once(uint64_t *s)
{
	unsigned long first = pick(s, WIN_PAGES), n = 1 + pick(s, 64);
	char *a, *b;
	pid_t pid;
	int fd;

	if (first + n > WIN_PAGES)
		n = WIN_PAGES - first;
	a = win + first * ps;
	switch (pick(s, 12)) {
	case 0:
	case 1:
		mmap(a, n * ps, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_ANONYMOUS |
		     (pick(s, 4) ? MAP_PRIVATE : MAP_SHARED), -1, 0);
		break;
	case 2:
		/* Leave a hole (still reserved for us: PROT_NONE). */
		mmap(a, n * ps, PROT_NONE, MAP_FIXED | MAP_ANONYMOUS | MAP_PRIVATE |
		     MAP_NORESERVE, -1, 0);
		break;
	case 3:
		munmap(a, n * ps);
		break;
	case 4:
		mprotect(a, n * ps, pick(s, 3) ? PROT_READ | PROT_WRITE : PROT_READ);
		break;
	case 5:
		b = win + pick(s, WIN_PAGES - n) * ps;
		mremap(a, n * ps, n * ps, MREMAP_MAYMOVE | MREMAP_FIXED, b);
		break;
	case 6: {
		static const int advice[] = { MADV_DONTNEED, MADV_FREE, MADV_PAGEOUT,
					      MADV_MERGEABLE, MADV_UNMERGEABLE,
					      MADV_HUGEPAGE, MADV_NOHUGEPAGE,
					      MADV_COLLAPSE, MADV_COLD };

		madvise(a, n * ps, advice[pick(s, sizeof(advice) / sizeof(advice[0]))]);
		break;
	}
	case 7:
		fd = memfd_create("memwatch_fuzz", 0);
		if (fd >= 0) {
			if (!ftruncate(fd, n * ps))
				mmap(a, n * ps, PROT_READ | PROT_WRITE,
				     MAP_FIXED | (pick(s, 2) ? MAP_SHARED : MAP_PRIVATE),
				     fd, 0);
			close(fd);
		}
		break;
	case 8:
		/* fork() write-protects every private PTE. */
		pid = fork();
		if (!pid) {
			try_touch(a, 1, false);
			_exit(0);
		}
		if (pid > 0)
			waitpid(pid, NULL, 0);
		break;
	default:
		/* Populate: a write fault per page. */
		try_touch(a, n, false);
		break;
	}
}

static void *mutator_fn(void *arg)
{
	uint64_t s = (uintptr_t)arg * 0xda942042e4dd58b5ULL + 7;

	while (!stop_all)
		mutate_once(&s);
	return NULL;
}

static void start_target_threads(uintptr_t seed)
{
	struct sigaction sa = { .sa_handler = on_fault, .sa_flags = SA_NODEFER };
	pthread_t t;
	int i;

	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	for (i = 0; i < WRITERS; i++)
		if (pthread_create(&t, NULL, writer_fn, (void *)(seed + i)))
			exit(2);
	if (pthread_create(&t, NULL, mutator_fn, (void *)seed))
		exit(2);
}

static pid_t spawn_child(uintptr_t seed, int *pidfd)
{
	pid_t pid = fork();

	if (pid < 0)
		return -1;
	if (!pid) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		start_target_threads(seed);
		for (;;)
			pause();
	}
	*pidfd = syscall(__NR_pidfd_open, pid, 0);
	return pid;
}

/* ---- caller side ---- */

enum { E_OK, E_INVAL, E_FAULT, E_BADF, E_SRCH, E_NOMEM, E_INTR,
       E_OTHER, E_BADOUT, E_NR };
static const char *const e_names[E_NR] = {
	"ok", "EINVAL", "EFAULT", "EBADF", "ESRCH", "ENOMEM",
	"EINTR", "unexpected-errno", "bad-output",
};
static unsigned long counts[E_NR], reported_total, calls_done;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_rwlock_t child_lock = PTHREAD_RWLOCK_INITIALIZER;
static int child_pidfd = -1, dead_pidfd = -1, file_fd = -1;
static int verbose;

/* Buffers for vec: a good one per caller thread, and a read-only page. */
#define VEC_GOOD_LEN 1024
static __thread uint64_t vec_good[VEC_GOOD_LEN];
static char *vec_ro;

static int classify(int err)
{
	switch (err) {
	case EINVAL: return E_INVAL;
	case EFAULT: return E_FAULT;
	case EBADF: return E_BADF;
	case ESRCH: return E_SRCH;
	case ENOMEM: return E_NOMEM;
	case EINTR: return E_INTR;
	default: return E_OTHER;
	}
}

static unsigned long rnd_start(uint64_t *s)
{
	unsigned long w = (unsigned long)win;

	switch (pick(s, 10)) {
	case 0: return rnd(s);
	case 1: return 0;
	case 2: return -ps * (1 + pick(s, 16));		/* kernel half */
	case 3: return w + pick(s, WIN_PAGES * ps);	/* unaligned */
	case 4: return (w - pick(s, 64) * ps);		/* before the window */
	default: return w + pick(s, WIN_PAGES) * ps;
	}
}

static unsigned long rnd_len(uint64_t *s, unsigned long start)
{
	switch (pick(s, 10)) {
	case 0: return 0;
	case 1: return rnd(s);
	case 2: return -start + pick(s, 4) * ps;	/* wraps */
	case 3: return ~0UL >> pick(s, 20);		/* huge */
	case 4: return 1 + pick(s, 3 * ps);		/* rounded up */
	case 5: return (1UL << 30) + pick(s, 4) * ps;	/* several chunks */
	default: return (1 + pick(s, WIN_PAGES)) * ps;
	}
}

static unsigned int rnd_flags(uint64_t *s)
{
	static const unsigned int valid[] = {
		MW_GET, MW_CLEAR, MW_GET | MW_CLEAR, MW_GET | MW_NRR,
		MW_CLEAR | MW_NRR, MW_GET | MW_CLEAR | MW_NRR,
	};

	switch (pick(s, 8)) {
	case 0: return rnd(s);				/* all 32 bits */
	case 1: return valid[pick(s, 6)] | 1U << pick(s, 32);
	default: return valid[pick(s, 6)];
	}
}

/* Returns the vec; *good says whether its first *cap entries are writable. */
static uint64_t *rnd_vec(uint64_t *s, unsigned long *cap)
{
	*cap = 0;
	switch (pick(s, 10)) {
	case 0: return NULL;
	case 1: return (uint64_t *)(uintptr_t)rnd(s);
	case 2: return (uint64_t *)vec_ro;
	case 3: *cap = 1 + pick(s, 8);			/* mid-page, then read-only */
		return (uint64_t *)vec_ro - *cap;
	case 4: return (uint64_t *)(-ps * 4);		/* kernel address */
	case 5: return (uint64_t *)(win + pick(s, WIN_PAGES) * ps); /* racing */
	default: *cap = VEC_GOOD_LEN;
		return vec_good;
	}
}

static unsigned long rnd_vec_len(uint64_t *s)
{
	switch (pick(s, 8)) {
	case 0: return 0;
	case 1: return rnd(s);
	case 2: return ~0UL / 8 + pick(s, 4);		/* size overflows */
	case 3: return 1 + pick(s, 4);
	default: return 1 + pick(s, VEC_GOOD_LEN);
	}
}

static void one_call(uint64_t *s)
{
	unsigned long start, len, vec_len, cap, i;
	unsigned int flags;
	uint64_t *vec;
	int pidfd, e, fd = -1;
	long ret;

	pthread_rwlock_rdlock(&child_lock);
	/*
	 * Most calls are valid, so that they race with the targets' changes
	 * deep in the walk; the rest draw every argument from its bad classes.
	 */
	if (pick(s, 10) < 6) {
		unsigned long first = pick(s, WIN_PAGES);
		static const unsigned int valid[] = {
			MW_GET, MW_CLEAR, MW_GET | MW_CLEAR, MW_GET | MW_NRR,
			MW_CLEAR | MW_NRR, MW_GET | MW_CLEAR | MW_NRR,
		};

		pidfd = pick(s, 3) ? child_pidfd :
			pick(s, 2) ? PIDFD_SELF_THREAD : PIDFD_SELF_THREAD_GROUP;
		start = (unsigned long)win + first * ps;
		len = (1 + pick(s, WIN_PAGES - first)) * ps;
		flags = valid[pick(s, 6)];
		if (flags & MW_GET) {
			vec = vec_good;
			cap = VEC_GOOD_LEN;
			vec_len = 1 + pick(s, VEC_GOOD_LEN);
		} else {
			vec = NULL;
			cap = 0;
			vec_len = 0;
		}
		goto call;
	}
	switch (pick(s, 12)) {
	case 0: pidfd = PIDFD_SELF_THREAD; break;
	case 1: pidfd = PIDFD_SELF_THREAD_GROUP; break;
	case 2: pidfd = dead_pidfd; break;
	case 3: pidfd = -1; break;
	case 4: pidfd = (int)rnd(s); break;
	case 5: pidfd = file_fd; break;
	case 6: fd = syscall(__NR_pidfd_open, getpid(), 0);	/* then closed */
		close(fd);
		pidfd = fd;
		break;
	case 7: pidfd = PIDFD_SELF_THREAD - 2 + (int)pick(s, 5); break;
	default: pidfd = child_pidfd; break;
	}
	start = rnd_start(s);
	len = rnd_len(s, start);
	flags = rnd_flags(s);
	vec = rnd_vec(s, &cap);
	vec_len = rnd_vec_len(s);
	if ((flags & (MW_GET | MW_CLEAR)) == MW_CLEAR && pick(s, 2)) {
		vec = NULL;
		vec_len = 0;
	}

call:
	ret = syscall(__NR_process_memwatch, pidfd, start, len, flags, vec, vec_len);
	e = ret < 0 ? classify(errno) : E_OK;
	pthread_rwlock_unlock(&child_lock);

	if (ret >= 0 && ((unsigned long)ret > vec_len || (ret && !(flags & MW_GET))))
		e = E_BADOUT;
	if (ret > 0 && vec == vec_good && cap >= (unsigned long)ret) {
		for (i = 0; i < (unsigned long)ret; i++) {
			if (vec[i] % ps || vec[i] >= len + ps ||
			    (i && vec[i] <= vec[i - 1])) {
				e = E_BADOUT;
				break;
			}
		}
	}
	if (verbose && (e == E_OTHER || e == E_BADOUT))
		fprintf(stderr, "# %s: pidfd %d start %#lx len %#lx flags %#x vec %p vec_len %#lx -> %ld (%s)\n",
			e_names[e], pidfd, start, len, flags, (void *)vec, vec_len,
			ret, ret < 0 ? strerror(errno) : "ok");
	pthread_mutex_lock(&count_lock);
	counts[e]++;
	calls_done++;
	if (ret > 0)
		reported_total += ret;
	pthread_mutex_unlock(&count_lock);
}

struct caller {
	pthread_t thread;
	unsigned long calls;
	uint64_t seed;
};

static void *caller_fn(void *arg)
{
	struct caller *c = arg;
	unsigned long i;

	for (i = 0; i < c->calls; i++)
		one_call(&c->seed);
	return NULL;
}

int main(int argc, char **argv)
{
	unsigned long calls = 10000, done = 0, batch, i;
	unsigned long seed = 1, ncallers = 2;
	struct caller *callers;
	pid_t child, dead;
	int e, bad;

	for (i = 1; i < (unsigned long)argc; i++) {
		if (!strcmp(argv[i], "--calls") && i + 1 < (unsigned long)argc)
			calls = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--seed") && i + 1 < (unsigned long)argc)
			seed = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--callers") && i + 1 < (unsigned long)argc)
			ncallers = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--verbose"))
			verbose = 1;
		else {
			fprintf(stderr, "usage: %s [--calls N] [--seed S] [--callers T] [--verbose]\n",
				argv[0]);
			return 2;
		}
	}
	if (!ncallers)
		ncallers = 1;
	ps = sysconf(_SC_PAGESIZE);
	if (syscall(__NR_process_memwatch, PIDFD_SELF_THREAD, 0, 0, MW_GET,
		    &seed, 1) < 0 && errno == ENOSYS) {
		printf("memwatch_fuzz: SKIP: process_memwatch() not implemented\n");
		return 4;
	}
	win = mmap(NULL, WIN_PAGES * ps, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	vec_ro = mmap(NULL, 2 * ps, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	file_fd = open("/proc/self/exe", O_RDONLY);
	if (win == MAP_FAILED || vec_ro == MAP_FAILED || file_fd < 0 ||
	    mprotect(vec_ro + ps, ps, PROT_READ)) {
		perror("memwatch_fuzz: setup");
		return 2;
	}
	vec_ro += ps;
	/* A dead child: its pidfd gives ESRCH. */
	dead = spawn_child(seed + 100, &dead_pidfd);
	if (dead < 0 || dead_pidfd < 0) {
		perror("memwatch_fuzz: fork");
		return 2;
	}
	kill(dead, SIGKILL);
	waitpid(dead, NULL, 0);
	child = spawn_child(seed + 200, &child_pidfd);
	if (child < 0 || child_pidfd < 0) {
		perror("memwatch_fuzz: fork");
		return 2;
	}
	start_target_threads(seed + 300);	/* this process is a target too */

	callers = calloc(ncallers, sizeof(*callers));
	if (!callers)
		return 2;
	for (i = 0; i < ncallers; i++)
		callers[i].seed = seed * 0x2545f4914f6cdd1dULL + i + 1;
	/* Batches of up to 2000 calls; a new child after each. */
	while (done < calls) {
		batch = calls - done < 2000 ? calls - done : 2000;
		for (i = 0; i < ncallers; i++) {
			callers[i].calls = batch / ncallers + (i < batch % ncallers);
			if (pthread_create(&callers[i].thread, NULL, caller_fn, &callers[i]))
				return 2;
		}
		for (i = 0; i < ncallers; i++)
			pthread_join(callers[i].thread, NULL);
		done += batch;
		pthread_rwlock_wrlock(&child_lock);
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		close(child_pidfd);
		child = spawn_child(seed + 200 + done, &child_pidfd);
		pthread_rwlock_unlock(&child_lock);
		if (child < 0 || child_pidfd < 0) {
			perror("memwatch_fuzz: fork");
			return 2;
		}
	}
	stop_all = 1;
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);

	printf("memwatch_fuzz: %lu calls (seed %lu, %lu callers), %lu offsets reported:",
	       calls_done, seed, ncallers, reported_total);
	for (e = 0; e < E_NR; e++)
		printf(" %s=%lu", e_names[e], counts[e]);
	printf("\n");
	bad = counts[E_OTHER] || counts[E_BADOUT];
	if (bad)
		printf("memwatch_fuzz: FAIL: unexpected errors or bad output (rerun with --verbose)\n");
	fflush(stdout);
	_exit(bad ? 1 : 0);
}
