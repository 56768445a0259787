# C-level atomic operations on raw shared-memory pointers (GCC/Clang __atomic builtins).
# Other ext modules `cimport` these; they work across processes mapping the same file because they
# compile to plain lock-free instructions on the mapped memory. Pointers must be naturally aligned.

from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef extern from *:
    """
    #include <stdint.h>
    static inline uint64_t wsd_load_acquire_u64(const void *p) {
        return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE);
    }
    static inline void wsd_store_release_u64(void *p, uint64_t v) {
        __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE);
    }
    static inline uint32_t wsd_load_acquire_u32(const void *p) {
        return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE);
    }
    static inline void wsd_store_release_u32(void *p, uint32_t v) {
        __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE);
    }
    static inline uint32_t wsd_exchange_u32(void *p, uint32_t v) {
        return __atomic_exchange_n((uint32_t *)p, v, __ATOMIC_SEQ_CST);
    }
    static inline uint32_t wsd_add_fetch_u32(void *p, uint32_t v) {
        return __atomic_add_fetch((uint32_t *)p, v, __ATOMIC_SEQ_CST);
    }
    static inline uint8_t wsd_load_acquire_u8(const void *p) {
        return __atomic_load_n((const uint8_t *)p, __ATOMIC_ACQUIRE);
    }
    static inline void wsd_store_release_u8(void *p, uint8_t v) {
        __atomic_store_n((uint8_t *)p, v, __ATOMIC_RELEASE);
    }
    static inline void wsd_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    static inline void wsd_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
    static inline void wsd_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    static inline void wsd_cpu_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }
    """
    uint64_t wsd_load_acquire_u64(const void *p) nogil
    void wsd_store_release_u64(void *p, uint64_t v) nogil
    uint32_t wsd_load_acquire_u32(const void *p) nogil
    void wsd_store_release_u32(void *p, uint32_t v) nogil
    uint32_t wsd_exchange_u32(void *p, uint32_t v) nogil
    uint32_t wsd_add_fetch_u32(void *p, uint32_t v) nogil
    uint8_t wsd_load_acquire_u8(const void *p) nogil
    void wsd_store_release_u8(void *p, uint8_t v) nogil
    void wsd_fence_seq_cst() nogil
    void wsd_fence_acquire() nogil
    void wsd_fence_release() nogil
    void wsd_cpu_relax() nogil
