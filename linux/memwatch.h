/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * process_memwatch(2): get and/or clear the soft-dirty state of a range of
 * pages of a process named by a pidfd.
 *
 * long process_memwatch(int pidfd, unsigned long start, unsigned long len,
 *                       unsigned int flags, __u64 *vec, unsigned long vec_len);
 */
#ifndef _UAPI_LINUX_MEMWATCH_H
#define _UAPI_LINUX_MEMWATCH_H

/* Report dirty pages in vec as byte offsets from start, ascending. */
#define MEMWATCH_SD_GET			0x1
/* Clear the soft-dirty state; with GET, atomically per page. */
#define MEMWATCH_SD_CLEAR		0x2
/*
 * Do not report a page merely because its mapping is new (or was merged
 * with a new one): in such a mapping, report only the populated pages.
 */
#define MEMWATCH_SD_NO_REUSED_REGIONS	0x4

#endif /* _UAPI_LINUX_MEMWATCH_H */
