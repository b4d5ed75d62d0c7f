/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * process_memwatch(2): get and/or clear the soft-dirty state of a range of
 * pages of a process named by a pidfd.
 *
 * long process_memwatch(int pidfd, unsigned long start, unsigned long len,
 *                       unsigned int flags, __u64 *vec, unsigned long vec_len);
 *
 * The system call number is 500 on x86_64, i386 and the generic table
 * (__NR_process_memwatch).  It is an out-of-tree number chosen well above
 * mainline's allocation frontier (469 in 6.18) and below x86_64's x32 range
 * (512), so that a stock kernel answers a probe with ENOSYS.
 *
 * The caller names itself with the generic pidfd sentinels of
 * <linux/pidfd.h>: PIDFD_SELF_THREAD (-10000) or PIDFD_SELF_THREAD_GROUP
 * (-10001).
 */
#ifndef _UAPI_LINUX_MEMWATCH_H
#define _UAPI_LINUX_MEMWATCH_H

/* Report soft-dirty pages in vec as byte offsets from start. */
#define MEMWATCH_SD_GET			0x1
/* Clear the soft-dirty state; with GET, atomically per page. */
#define MEMWATCH_SD_CLEAR		0x2
/* Ignore VM_SOFTDIRTY (newly mapped regions); per-page state only. */
#define MEMWATCH_SD_NO_REUSED_REGIONS	0x4

#endif /* _UAPI_LINUX_MEMWATCH_H */
