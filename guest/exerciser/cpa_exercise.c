// SPDX-License-Identifier: GPL-2.0
/*
 * The CPA exerciser: drives change_page_attr where the in-kernel self-test
 * does not go. The self-test only toggles a software bit, so it never changes
 * a caching attribute and never needs a cache flush; this module does, through
 * the API drivers use (set_memory_uc/wc/wb, set_pages_array_uc/wb), and checks
 * after every change that each page it touched has the cache mode it asked
 * for, by the kernel's own page-table lookup.
 *
 * Modes (module parameter mode=):
 *   cache       uc, wb, wc, wb on allocated RAM ranges of 1, 16, 512 and 1024
 *               pages, and on a scattered page array: per-page TLB flushes and
 *               flush_tlb_all, CLFLUSH per page or, without CLFLUSH, WBINVD on
 *               every CPU (cpa_flush_all);
 *   concurrent  1, 2, 4 ... threads= kernel threads, one per CPU, each on a
 *               range of its own and on its slice of a 2M block the threads
 *               share, so that they split the same large page at once;
 *   alloc-fail  changes that must split a large page, with the n-th page
 *               allocation of the call failed on purpose (fault injection's
 *               per-task fail-nth, which fails nothing outside this task);
 *               each failed call must return an error, leave every page with
 *               its old or its new mode, and be undone by set_memory_wb.
 *
 * Everything runs in the module's init, so insmod returns when the work is
 * done; the results are lines in the kernel log, each "cpa_exercise: run=ID"
 * and words key=value, ending with "done". The harness reads them with dmesg.
 * A load that ran is unloaded before the next: busybox's insmod retries a
 * failed finit_module with init_module, which would run the work twice.
 */

#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/kthread.h>
#include <linux/completion.h>
#include <linux/ktime.h>
#include <linux/mm.h>
#include <linux/gfp.h>
#include <linux/slab.h>
#include <linux/sched.h>
#include <linux/cpumask.h>
#include <asm/set_memory.h>
#include <asm/memtype.h>
#include <asm/pgtable.h>
#include <asm/cpufeature.h>

static char *mode = "cache";
module_param(mode, charp, 0444);
MODULE_PARM_DESC(mode, "cache, concurrent or alloc-fail");
static char *run = "";
module_param(run, charp, 0444);
MODULE_PARM_DESC(run, "an id the harness puts on every line, to tell runs apart");
static unsigned int rounds = 4;
module_param(rounds, uint, 0444);
MODULE_PARM_DESC(rounds, "changes of each kind (cache, concurrent) or failure points (alloc-fail)");
static unsigned int threads;
module_param(threads, uint, 0444);
MODULE_PARM_DESC(threads, "concurrent: most threads (default: every online CPU)");

#define MAX_MISMATCH_LINES 16
#define SHARED_ORDER 9		/* 2M: one large page on x86_64 and PAE */

static atomic_t mismatches = ATOMIC_INIT(0);
static atomic_t unclean = ATOMIC_INIT(0);

#define say(fmt, ...) pr_info("cpa_exercise: run=%s " fmt "\n", run, ##__VA_ARGS__)

/*
 * Cache attributes as the PTE bits CPA writes for a mode (cachemode2protval,
 * 4k format: the PAT bit at bit 7). Several modes can share bits on a machine
 * (WC is UC- without PAT); the first mode with the bits names them.
 */
static const enum page_cache_mode modes[] = {
	_PAGE_CACHE_MODE_WB, _PAGE_CACHE_MODE_WC, _PAGE_CACHE_MODE_UC_MINUS,
	_PAGE_CACHE_MODE_UC, _PAGE_CACHE_MODE_WT, _PAGE_CACHE_MODE_WP,
};
static const char *const mode_names[] = { "WB", "WC", "UC-", "UC", "WT", "WP" };

static long bits_of(enum page_cache_mode cm)
{
	return cachemode2protval(cm);
}

static const char *bits_name(long bits)
{
	unsigned int i;

	if (bits < 0)
		return "unmapped";
	for (i = 0; i < ARRAY_SIZE(modes); i++)
		if (bits_of(modes[i]) == bits)
			return mode_names[i];
	return "other";
}

static const char *level_name(unsigned int level)
{
	switch (level) {
	case PG_LEVEL_4K: return "4k";
	case PG_LEVEL_2M: return IS_ENABLED(CONFIG_X86_64) || IS_ENABLED(CONFIG_X86_PAE) ?
				 "2M" : "4M";
	case PG_LEVEL_1G: return "1G";
	default: return "?";
	}
}

/*
 * The cache bits the direct map gives addr, from the entry that maps it, in
 * 4k format (a large page has its PAT bit at bit 12). -1 when not mapped.
 */
static long found_bits(unsigned long addr, unsigned int *level, unsigned long *entry)
{
	pte_t *pte = lookup_address(addr, level);
	unsigned long flags;

	if (!pte) {
		*entry = 0;
		return -1;
	}
	*entry = pte_val(*pte);
	if (!(*entry & _PAGE_PRESENT))
		return -1;
	if (*level == PG_LEVEL_4K)
		return pte_flags(*pte) & _PAGE_CACHE_MASK;
#ifdef CONFIG_X86_64
	if (*level == PG_LEVEL_1G)
		flags = pud_flags(*(pud_t *)pte);
	else
#endif
		flags = pmd_flags(*(pmd_t *)pte);
	return pgprot_val(pgprot_large_2_4k(__pgprot(flags))) & _PAGE_CACHE_MASK;
}

/*
 * Check that every page of [addr, addr + n pages) has mode want (or, with
 * other >= 0, either want or other); one line per page that has not, up to
 * MAX_MISMATCH_LINES in the whole run. Returns how many pages have want.
 */
static int check(const char *what, unsigned long addr, int n, long want, long other)
{
	int i, have = 0;

	for (i = 0; i < n; i++) {
		unsigned long a = addr + i * PAGE_SIZE, entry;
		unsigned int level;
		long found = found_bits(a, &level, &entry);

		if (found == want) {
			have++;
			continue;
		}
		if (other >= 0 && found == other)
			continue;
		if (atomic_inc_return(&mismatches) <= MAX_MISMATCH_LINES)
			say("mismatch after=%s addr=0x%lx want=%s found=%s level=%s entry=0x%lx",
			    what, a, bits_name(want), bits_name(found), level_name(level), entry);
	}
	return have;
}

#define LARGE_TRIES 64

/* Whether every 2M of the block is still mapped by a large page. */
static bool mapped_large(struct page *p, unsigned int order)
{
	unsigned long addr = (unsigned long)page_address(p), off, entry;
	unsigned int level;

	for (off = 0; off < (PAGE_SIZE << order); off += 1UL << 21)
		if (found_bits(addr + off, &level, &entry) < 0 || level == PG_LEVEL_4K)
			return false;
	return true;
}

/*
 * A free block the direct map still maps with large pages, so that changing
 * part of it must split one. CPA never merges a split page again, so after
 * the self-test's passes many blocks are 4k already: up to LARGE_TRIES are
 * taken, the ones that will not do held until one does, then given back.
 * NULL when none was found.
 */
static struct page *alloc_large(unsigned int order)
{
	struct page *held[LARGE_TRIES], *p = NULL;
	unsigned int n = 0;

	while (n < LARGE_TRIES) {
		p = alloc_pages(GFP_KERNEL | __GFP_NOWARN, order);
		if (!p || mapped_large(p, order))
			break;
		held[n++] = p;
		p = NULL;
	}
	while (n--)
		__free_pages(held[n], order);
	return p;
}

typedef int (*set_fn)(unsigned long addr, int numpages);

struct change {
	const char *name;
	set_fn set;
	enum page_cache_mode cm;
};

/* uc, back to wb, wc, back to wb: memtype tracking wants WB between two others. */
static const struct change cycle[] = {
	{ "uc", set_memory_uc, _PAGE_CACHE_MODE_UC_MINUS },
	{ "wb", set_memory_wb, _PAGE_CACHE_MODE_WB },
	{ "wc", set_memory_wc, _PAGE_CACHE_MODE_WC },
	{ "wb", set_memory_wb, _PAGE_CACHE_MODE_WB },
};

struct tally {
	unsigned long changes, failed, checked;
};

/* One change and its check; a call that fails here (no fault injected) is unclean. */
static void change(struct tally *t, const struct change *c, unsigned long addr, int n)
{
	int ret = c->set(addr, n);

	t->changes++;
	if (ret) {
		t->failed++;
		atomic_inc(&unclean);
		say("error call=set_memory_%s addr=0x%lx pages=%d ret=%d", c->name, addr, n, ret);
		return;
	}
	check(c->name, addr, n, bits_of(c->cm), -1);
	t->checked += n;
}

typedef int (*set_array_fn)(struct page **pages, int numpages);

struct array_change {
	const char *name, *what;	/* the call's suffix; the check's name */
	set_array_fn set;
	enum page_cache_mode cm;
};

static const struct array_change array_cycle[] = {
	{ "uc", "array-uc", set_pages_array_uc, _PAGE_CACHE_MODE_UC_MINUS },
	{ "wb", "array-wb", set_pages_array_wb, _PAGE_CACHE_MODE_WB },
};

/* One change of a page array and its check; a failure here is unclean. */
static int array_change(struct tally *t, const struct array_change *c, struct page **pages,
			int n)
{
	int ret = c->set(pages, n), k;

	t->changes++;
	if (ret) {
		t->failed++;
		atomic_inc(&unclean);
		say("error call=set_pages_array_%s ret=%d", c->name, ret);
		return ret;
	}
	for (k = 0; k < n; k++)
		check(c->what, (unsigned long)page_address(pages[k]), 1, bits_of(c->cm), -1);
	t->checked += n;
	return 0;
}

static int exercise_cache(void)
{
	static const unsigned int orders[] = { 0, 4, 9, 10 };	/* 1, 16, 512, 1024 pages */
	struct page *pages[16];
	unsigned int i, r, k;

	for (i = 0; i < ARRAY_SIZE(orders); i++) {
		struct page *p = alloc_pages(GFP_KERNEL, orders[i]);
		struct tally t = { 0 };
		unsigned long addr;
		u64 start;

		if (!p) {
			say("cache pages=%u skipped=no-memory", 1U << orders[i]);
			continue;
		}
		addr = (unsigned long)page_address(p);
		start = ktime_get_ns();
		for (r = 0; r < rounds; r++)
			for (k = 0; k < ARRAY_SIZE(cycle); k++)
				change(&t, &cycle[k], addr, 1 << orders[i]);
		say("cache pages=%u changes=%lu failed=%lu checked=%lu ns=%llu", 1U << orders[i],
		    t.changes, t.failed, t.checked, ktime_get_ns() - start);
		__free_pages(p, orders[i]);
	}

	/* A scattered array (CPA_PAGES_ARRAY): one call, a flush per page. */
	for (k = 0; k < ARRAY_SIZE(pages); k++) {
		pages[k] = alloc_page(GFP_KERNEL);
		if (!pages[k]) {
			while (k--)
				__free_page(pages[k]);
			say("cache array=%zu skipped=no-memory", ARRAY_SIZE(pages));
			return 0;
		}
	}
	{
		struct tally t = { 0 };
		u64 start = ktime_get_ns();

		for (r = 0; r < rounds; r++)
			if (array_change(&t, &array_cycle[0], pages, ARRAY_SIZE(pages)) ||
			    array_change(&t, &array_cycle[1], pages, ARRAY_SIZE(pages)))
				break;
		say("cache array=%zu changes=%lu failed=%lu checked=%lu ns=%llu", ARRAY_SIZE(pages),
		    t.changes, t.failed, t.checked, ktime_get_ns() - start);
	}
	for (k = 0; k < ARRAY_SIZE(pages); k++)
		__free_page(pages[k]);
	return 0;
}

struct worker {
	struct completion done;
	unsigned int index, count;
	struct page *own;		/* 4 pages of its own */
	unsigned long *shared;		/* rounds 2M blocks, one slice each */
	struct tally t;
};

static int worker_fn(void *arg)
{
	struct worker *w = arg;
	/* never the whole block (from its second page on): every slice needs a split */
	unsigned long slice = ((1UL << SHARED_ORDER) - 1) / w->count;
	unsigned int r;

	for (r = 0; r < rounds; r++) {
		unsigned long mine = (unsigned long)page_address(w->own);
		unsigned long part = w->shared[r] + (1 + w->index * slice) * PAGE_SIZE;

		change(&w->t, &cycle[0], mine, 4);
		change(&w->t, &cycle[0], part, slice);
		change(&w->t, &cycle[1], mine, 4);
		change(&w->t, &cycle[1], part, slice);
	}
	complete(&w->done);
	return 0;
}

/* n threads, one per CPU, all started before any runs far. */
static void concurrent_run(unsigned int n, unsigned long *shared)
{
	struct worker *w = kcalloc(n, sizeof(*w), GFP_KERNEL);
	struct tally sum = { 0 };
	unsigned int i, cpu, started = 0;
	u64 start;

	if (!w) {
		say("concurrent threads=%u skipped=no-memory", n);
		return;
	}
	for (i = 0; i < n; i++) {
		w[i].own = alloc_pages(GFP_KERNEL, 2);
		if (!w[i].own)
			goto out;
		init_completion(&w[i].done);
		w[i].index = i;
		w[i].count = n;
		w[i].shared = shared;
	}
	start = ktime_get_ns();
	i = 0;
	for_each_online_cpu(cpu) {
		struct task_struct *task;

		if (i == n)
			break;
		task = kthread_create(worker_fn, &w[i], "cpa_exercise/%u", cpu);
		if (IS_ERR(task))
			break;
		kthread_bind(task, cpu);
		wake_up_process(task);
		i++;
		started++;
	}
	for (i = 0; i < started; i++) {
		wait_for_completion(&w[i].done);
		sum.changes += w[i].t.changes;
		sum.failed += w[i].t.failed;
		sum.checked += w[i].t.checked;
	}
	say("concurrent threads=%u started=%u changes=%lu failed=%lu checked=%lu ns=%llu", n,
	    started, sum.changes, sum.failed, sum.checked, ktime_get_ns() - start);
out:
	for (i = 0; i < n; i++)
		if (w[i].own)
			__free_pages(w[i].own, 2);
	kfree(w);
}

static int exercise_concurrent(void)
{
	unsigned int most = threads ? min(threads, num_online_cpus()) : num_online_cpus();
	unsigned long *shared = kcalloc(rounds, sizeof(*shared), GFP_KERNEL);
	unsigned int n, r;

	if (!shared)
		return -ENOMEM;
	for (n = 1; n <= most; n = n * 2 > most && n < most ? most : n * 2) {
		/* fresh 2M blocks for every count: each round splits a large page anew */
		for (r = 0; r < rounds; r++) {
			struct page *p = alloc_large(SHARED_ORDER);

			shared[r] = p ? (unsigned long)page_address(p) : 0;
			if (!p)
				break;
		}
		if (r == rounds)
			concurrent_run(n, shared);
		else
			say("concurrent threads=%u skipped=no-large-page", n);
		while (r--)
			__free_pages(virt_to_page((void *)shared[r]), SHARED_ORDER);
	}
	kfree(shared);
	return 0;
}

/*
 * Changes that need a split: one page inside a fresh 2M block, or three pages
 * across the middle of a fresh 4M block (two large pages, so a failure on the
 * second leaves the first changed: CPA does not roll back). fail-nth counts
 * down this task's fault-injection points and fails the one it reaches zero
 * on; left above zero, nothing was injected.
 */
#ifdef CONFIG_FAULT_INJECTION
static int exercise_alloc_fail(void)
{
	unsigned long injected = 0, failed = 0, absorbed = 0, partial = 0, restored = 0;
	unsigned long uninjected = 0, unreached = 0, changes = 0;
	unsigned int r;
	long uc = bits_of(_PAGE_CACHE_MODE_UC_MINUS), wb = bits_of(_PAGE_CACHE_MODE_WB);

	for (r = 0; r < rounds; r++) {
		unsigned int order = r % 2 ? 10 : SHARED_ORDER;
		int n = r % 2 ? 3 : 1;
		struct page *p = alloc_large(order);
		unsigned long addr;
		unsigned int left;
		int ret, have;

		if (!p) {
			say("alloc-fail round=%u skipped=no-large-page", r);
			continue;
		}
		addr = (unsigned long)page_address(p);
		addr += r % 2 ? (1UL << 21) - PAGE_SIZE : PAGE_SIZE;

		current->fail_nth = 1 + r / 2 % 3;	/* the 1st, 2nd, 3rd allocation */
		ret = set_memory_uc(addr, n);
		left = current->fail_nth;
		current->fail_nth = 0;
		changes++;
		if (!left)
			injected++;
		if (ret) {
			failed++;
			if (left)
				uninjected++;
			have = check("failed-uc", addr, n, uc, wb);
			if (have && have < n)
				partial++;
			say("alloc-fail round=%u pages=%d injected=%d ret=%d changed=%d", r, n, !left,
			    ret, have);
		} else {
			if (!left)
				absorbed++;
			else
				unreached++;	/* fewer allocations than fail-nth counted */
			check("uc", addr, n, uc, -1);
		}
		/* undo, with nothing injected: it must succeed and leave all WB */
		ret = set_memory_wb(addr, n);
		if (ret) {
			atomic_inc(&unclean);
			say("error call=set_memory_wb after=alloc-fail addr=0x%lx pages=%d ret=%d",
			    addr, n, ret);
		} else {
			check("wb", addr, n, wb, -1);
			restored++;
		}
		__free_pages(p, order);
	}
	say("alloc-fail changes=%lu injected=%lu failed=%lu absorbed=%lu unreached=%lu "
	    "partial=%lu restored=%lu uninjected=%lu", changes, injected, failed, absorbed,
	    unreached, partial, restored, uninjected);
	/* a failure nobody injected is the kernel's own: not a clean error path */
	if (uninjected)
		atomic_add(uninjected, &unclean);
	return 0;
}
#else
static int exercise_alloc_fail(void)
{
	say("alloc-fail unavailable=no-fault-injection");
	return -EOPNOTSUPP;
}
#endif

static int __init cpa_exercise_init(void)
{
	int ret;

	say("start mode=%s rounds=%u cpus=%u clflush=%d pat=%d", mode, rounds, num_online_cpus(),
	    boot_cpu_has(X86_FEATURE_CLFLUSH), pat_enabled());
	if (!strcmp(mode, "cache"))
		ret = exercise_cache();
	else if (!strcmp(mode, "concurrent"))
		ret = exercise_concurrent();
	else if (!strcmp(mode, "alloc-fail"))
		ret = exercise_alloc_fail();
	else
		ret = -EINVAL;
	say("done mode=%s ret=%d mismatches=%d unclean=%d", mode, ret, atomic_read(&mismatches),
	    atomic_read(&unclean));
	return ret;
}

static void __exit cpa_exercise_exit(void)
{
}

module_init(cpa_exercise_init);
module_exit(cpa_exercise_exit);
MODULE_DESCRIPTION("Drives change_page_attr's cache-attribute, concurrent and allocation-failure paths");
MODULE_LICENSE("GPL");
