// SPDX-License-Identifier: GPL-2.0
/*
 * What one write to a sync-userfaultfd-WP page costs, step by step, and how
 * many WP faults the handler sees per write (issue 10: on Debian's 6.1 a
 * polled page was reported ~11 times per write; 6.12 and 6.18: once).
 * Mirrors src/uffd.cpp: a handler thread (lock; count; un-protect DONTWAKE;
 * unlock; UFFDIO_WAKE), and optionally a polling thread (lock; take the
 * bit; re-protect; unlock) in a tight loop.
 *
 *   cc -O2 -Wall -Wextra -pthread -o uffd_wp_retry uffd_wp_retry.c
 *   ./uffd_wp_retry [writes=2000 [poll=0|1 [fix=0|1|2|3 [gap_us=0]]]]
 *     fix 0: as the backend was (un-protect, then wake)
 *     fix 1: after the un-protect, MADV_POPULATE_WRITE the page under the
 *            lock (the PTE is then writable: the retry is a plain store)
 *     fix 2: un-protect without DONTWAKE (the kernel wakes, under the lock)
 *            instead of the separate UFFDIO_WAKE after the unlock
 *     fix 3: 1 and 2: un-protect (DONTWAKE), MADV_POPULATE_WRITE, UFFDIO_WAKE,
 *            all under the lock
 *     env RW_NOTIMEOUT=1: the handler polls without a timeout (as src/uffd.cpp)
 *     env RW_SIGMASK=1: the handler blocks every signal (as src/uffd.cpp)
 *     env RW_PIN=same|diff: writer on CPU 0, handler on CPU 0 or 1
 *   ./uffd_wp_retry pingpong  (eventfd round trip between two threads on the
 *                              same CPU and on two CPUs: the wakeup cost alone)
 *     gap_us: the writer spins that long between writes (a Python loop's pace)
 *
 * Prints per-write medians (us): fault -> message read by the handler,
 * un-protect ioctl, populate, wake ioctl, wake -> the writer's store done,
 * whole write; WP faults per write (histogram) and, with a poller, reports
 * per write; and UFFDIO_WRITEPROTECT on/off of one page without faults.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static int uffd, efd;
static char *page;
static long ps;
static int fix;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_int bit;
static atomic_long faults, reports, handled;	/* handled: faults whose t_* are all set */
static atomic_int done, waking, handler_cpu;
static long cross_cpu;	/* faults whose handler ran on another CPU than the writer */
static atomic_long early_reprotects;	/* poller re-protected before the wake */
static _Atomic uint64_t t_msg, t_unprot, t_pop, t_wake;	/* last fault's, ns */
static int nr2;
static double *d_retry2, *d_msg, *d_unprot, *d_pop, *d_wakeop, *d_retry, *d_write;

static uint64_t now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void pin(int cpu);

static void wp(int on, int dontwake)
{
	struct uffdio_writeprotect w = {
		.range = { (uintptr_t)page, ps },
		.mode = (on ? UFFDIO_WRITEPROTECT_MODE_WP : 0) |
			(dontwake ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0),
	};

	while (ioctl(uffd, UFFDIO_WRITEPROTECT, &w) < 0)
		if (errno != EAGAIN) {
			perror("UFFDIO_WRITEPROTECT");
			exit(1);
		}
}

static void *handler(void *arg)
{
	struct pollfd pfd[2] = { { uffd, POLLIN, 0 }, { efd, POLLIN, 0 } };
	struct uffd_msg msg;

	(void)arg;
	if (getenv("RW_PIN"))
		pin(strcmp(getenv("RW_PIN"), "same") ? 1 : 0);
	while (!atomic_load(&done)) {
		if (poll(pfd, 2, getenv("RW_NOTIMEOUT") ? -1 : 100) <= 0 || pfd[1].revents)
			continue;
		if (read(uffd, &msg, sizeof(msg)) != sizeof(msg))
			continue;
		t_msg = now();
		handler_cpu = sched_getcpu();
		t_unprot = t_msg;
		pthread_mutex_lock(&mu);
		atomic_fetch_add(&faults, 1);
		atomic_store(&bit, 1);
		wp(0, fix != 2);
		t_unprot = now();
		if ((fix == 1 || fix == 3) && madvise(page, ps, MADV_POPULATE_WRITE))
			perror("MADV_POPULATE_WRITE");
		t_pop = now();
		if (fix == 3) {
			struct uffdio_range r = { (uintptr_t)page, ps };

			ioctl(uffd, UFFDIO_WAKE, &r);
		}
		atomic_store(&waking, fix < 2);
		pthread_mutex_unlock(&mu);
		if (fix < 2) {
			struct uffdio_range r = { (uintptr_t)page, ps };

			ioctl(uffd, UFFDIO_WAKE, &r);
		}
		t_wake = now();
		atomic_store(&waking, 0);
		atomic_fetch_add(&handled, 1);
	}
	return NULL;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double med(double *v, int n)
{
	qsort(v, n, sizeof(*v), cmp);
	return n ? v[n / 2] : 0;
}

static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set))
		perror("pthread_setaffinity_np");
}

static int pp_a, pp_b;

static void *pp_echo(void *arg)
{
	uint64_t v;

	pin(*(int *)arg);
	while (read(pp_a, &v, sizeof(v)) == sizeof(v) && v != 2)
		if (write(pp_b, &v, sizeof(v)) != sizeof(v))
			break;
	return NULL;
}

static void pingpong(void)
{
	for (int cpu = 0; cpu < 2; cpu++) {
		double rt[300];
		uint64_t v = 1;
		pthread_t t;

		pp_a = eventfd(0, EFD_CLOEXEC);
		pp_b = eventfd(0, EFD_CLOEXEC);
		pin(0);
		pthread_create(&t, NULL, pp_echo, &cpu);
		for (int i = 0; i < 300; i++) {
			uint64_t a = now();

			if (write(pp_a, &v, sizeof(v)) != sizeof(v) ||
			    read(pp_b, &v, sizeof(v)) != sizeof(v))
				perror("eventfd");
			rt[i] = (now() - a) / 1e3;
		}
		v = 2;
		if (write(pp_a, &v, sizeof(v)) != sizeof(v))
			perror("eventfd");
		pthread_join(t, NULL);
		close(pp_a);
		close(pp_b);
		printf("eventfd round trip, %s CPU: median %.1f us\n", cpu ? "other" : "same",
		       med(rt, 300));
	}
}

static void *poller(void *arg)
{
	(void)arg;
	while (!atomic_load(&done)) {
		pthread_mutex_lock(&mu);
		if (atomic_exchange(&bit, 0)) {
			atomic_fetch_add(&reports, 1);
			if (atomic_load(&waking))
				atomic_fetch_add(&early_reprotects, 1);
			wp(1, 0);
		}
		pthread_mutex_unlock(&mu);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 2000;
	int use_poller = argc > 2 ? atoi(argv[2]) : 0;
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP |
					      UFFD_FEATURE_EVENT_REMOVE };
	struct uffdio_register reg;
	pthread_t th, tp;
	long hist[8] = { 0 };

	if (argc > 1 && !strcmp(argv[1], "pingpong")) {
		pingpong();
		return 0;
	}
	if (getenv("RW_PIN"))
		pin(0);
	fix = argc > 3 ? atoi(argv[3]) : 0;
	double gap = argc > 4 ? atof(argv[4]) : 0;
	ps = sysconf(_SC_PAGESIZE);
	uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
		perror("userfaultfd");
		return 1;
	}
	page = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	page[0] = 1;
	reg.range.start = (uintptr_t)page;
	reg.range.len = ps;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg)) {
		perror("UFFDIO_REGISTER");
		return 1;
	}
	d_msg = calloc(n, sizeof(double));
	d_unprot = calloc(n, sizeof(double));
	d_pop = calloc(n, sizeof(double));
	d_wakeop = calloc(n, sizeof(double));
	d_retry = calloc(n, sizeof(double));
	d_write = calloc(n, sizeof(double));
	d_retry2 = calloc(n, sizeof(double));

	/* UFFDIO_WRITEPROTECT on/off without faults */
	{
		double on[201], off[201];

		for (int i = 0; i < 201; i++) {
			uint64_t a = now();

			wp(1, 0);
			uint64_t b = now();

			wp(0, 1);
			off[i] = (now() - b) / 1e3;
			on[i] = (b - a) / 1e3;
		}
		printf("writeprotect on %.1f us, off %.1f us (medians, no fault)\n",
		       med(on, 201), med(off, 201));
	}
	efd = eventfd(0, EFD_CLOEXEC);
	if (getenv("RW_SIGMASK")) {
		sigset_t all, old;

		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		pthread_create(&th, NULL, handler, NULL);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	} else {
		pthread_create(&th, NULL, handler, NULL);
	}
	wp(1, 0);
	if (use_poller)
		pthread_create(&tp, NULL, poller, NULL);
	uint64_t t_all = now();

	for (int i = 0; i < n; i++) {
		for (uint64_t g = now(); now() - g < gap * 1e3;)
			;
		long f0 = atomic_load(&faults);

		if (!use_poller) {
			pthread_mutex_lock(&mu);
			atomic_store(&bit, 0);
			wp(1, 0);
			pthread_mutex_unlock(&mu);
		}
		uint64_t a = now();
		int cpu = sched_getcpu();

		*(volatile char *)page = (char)i;
		uint64_t b = now();
		long k = atomic_load(&faults) - f0;

		hist[k < 7 ? k : 7]++;
		if (k >= 1 && handler_cpu != cpu)
			cross_cpu++;
		if (k >= 1)
			d_retry2[nr2++] = (b - t_wake) / 1e3;
		if (k == 1 && !use_poller) {
			/* the writer can run before the handler took its last stamp */
			while (atomic_load(&handled) < atomic_load(&faults))
				;
			d_msg[i] = (t_msg - a) / 1e3;
			d_unprot[i] = (t_unprot - t_msg) / 1e3;
			d_pop[i] = (t_pop - t_unprot) / 1e3;
			d_wakeop[i] = (t_wake - t_pop) / 1e3;
			d_retry[i] = (b - t_pop) / 1e3;
		}
		d_write[i] = (b - a) / 1e3;
	}
	double total = (now() - t_all) / 1e6;

	atomic_store(&done, 1);
	{
		uint64_t one = 1;

		if (write(efd, &one, sizeof(one)) != sizeof(one))
			perror("eventfd");
	}
	if (use_poller)
		pthread_join(tp, NULL);
	pthread_join(th, NULL);
	if (bit)
		reports++;
	printf("fix %d poller %d: %d writes in %.1f ms; WP faults per write:", fix, use_poller, n,
	       total);
	for (int k = 0; k < 8; k++)
		printf(" %d%s:%ld", k, k == 7 ? "+" : "", hist[k]);
	printf("\n");
	if (use_poller)
		printf("  faults %ld reports %ld excess %ld; re-protects before the wake %ld; last wake->store done median %.1f us\n",
		       (long)faults, (long)reports, (long)reports > n ? (long)reports - n : 0,
		       (long)early_reprotects, med(d_retry2, nr2));
	else
		printf("  handler on another CPU than the writer: %ld of %d faulting writes\n",
		       cross_cpu, n - (int)hist[0]),
		printf("  median us: fault->msg %.1f  unprotect %.1f  populate %.1f  wake-ioctl %.1f  unprotect-done->store-done %.1f  write %.1f\n",
		       med(d_msg, n), med(d_unprot, n), med(d_pop, n), med(d_wakeop, n),
		       med(d_retry, n), med(d_write, n));
	return 0;
}
