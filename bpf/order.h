/* order.h - the memory order the datapath's publication protocols need, per architecture.
 * Contract: a writer that hands a flows entry or a flow_hot slot to another flow stores the
 * time 0 first, the fields next and the time last; a reader loads the time before the fields
 * (order_after_load) and, where it must know that the fields it copied belong to the key it
 * matched, loads the key again after them (order_fence). x86-64 keeps stores in order and loads
 * in order (TSO), so there both are compiler barriers and cost no instruction. Elsewhere (arm64,
 * and any build with -DENIPLANE_WEAK_ORDER, which the tests load on x86) both are a full fence:
 * BPF has no acquire load or release store that bcc's LLVM can emit, but its atomic
 * read-modify-writes with a fetch are fully ordered on every JIT (arm64: an LSE "al" atomic, or
 * LL/SC and a dmb), so one on a word of the program's own stack orders the accesses around it
 * without touching a line another CPU uses.
 */
#ifndef ENIPLANE_ORDER_H
#define ENIPLANE_ORDER_H

#if defined(__x86_64__) && !defined(ENIPLANE_WEAK_ORDER)
#define ENIPLANE_TSO 1
#endif

/* Accesses before it complete before accesses after it, as other CPUs see them. */
static __always_inline void order_fence(void)
{
#ifdef ENIPLANE_TSO
    asm volatile("" ::: "memory");
#else
    __u64 word = 0;
    __u64 old = __sync_fetch_and_add(&word, 0);
    asm volatile("" : : "r"(old) : "memory");
#endif
}

/* Loads after it are made after loads before it: nothing on x86-64, where the CPU keeps loads
 * in order (the compiler keeps the loads it is placed between in order by their dependencies:
 * a volatile load after the branch on the value loaded before it). */
static __always_inline void order_loads(void)
{
#ifndef ENIPLANE_TSO
    order_fence();
#endif
}

/* `p` is read through after `val` was loaded: the compiler may not move a load through `p`
 * above that load, and, on a CPU that reorders loads, neither may the CPU. The empty asm takes
 * `p` as changed by `val` and costs no instruction (a "memory" clobber would make the compiler
 * reload everything it holds). */
#ifdef ENIPLANE_TSO
#define order_after_load(p, val) asm volatile("" : "+r"(p) : "r"(val))
#else
#define order_after_load(p, val)                                                                 \
    do {                                                                                         \
        asm volatile("" : "+r"(p) : "r"(val));                                                   \
        order_fence();                                                                           \
    } while (0)
#endif

#endif /* ENIPLANE_ORDER_H */
