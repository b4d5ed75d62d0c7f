/* SPDX-License-Identifier: MIT */
/*
 * The uapi structs the C benchmarks need, copied from the 6.12 headers
 * (include/uapi/linux/fs.h, userfaultfd.h): Debian 12's installed headers
 * predate PAGEMAP_SCAN.  Shared by c_baseline.c and memwatch_cycle.c.
 */
#ifndef MEMWATCH_BENCH_UAPI_COMPAT_H
#define MEMWATCH_BENCH_UAPI_COMPAT_H

#include <stdint.h>

struct page_region {
	uint64_t start, end, categories;
};

struct pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};

struct uffdio_api {
	uint64_t api, features, ioctls;
};

struct uffdio_range {
	uint64_t start, len;
};

struct uffdio_register {
	struct uffdio_range range;
	uint64_t mode, ioctls;
};

struct uffdio_writeprotect {
	struct uffdio_range range;
	uint64_t mode;
};

#endif
