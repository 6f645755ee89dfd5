"""A numpy data allocator (NEP 49) that keeps large blocks mapped for the next batch.

On these VMs the first touch of memory the process has just been given costs more than the work
done on it (the host backs freed guest pages lazily: a fresh GB takes 0.4-2 s to write, a kept one
~0.1 s). A batch allocates the same large arrays call after call, so blocks of at least THRESHOLD
bytes freed by numpy are kept (up to a limit) and handed out again instead of being unmapped;
smaller blocks go to malloc as usual. Blocks are mapped with 4 KiB pages, not transparent huge
pages: on memory the host has taken back, huge pages were 2-4x slower to fault in (measured:
0.4 s vs 1.5-2 s per GB), and once a block is kept its page size made no measurable difference. Installed only around the batch
path (kernel.api.Settler.settle_table and friends, via `installed()`), per thread context as numpy
keeps its handler in a contextvar: arrays made there return their block here when freed, whenever
and wherever that happens.
"""
from cpython.pycapsule cimport PyCapsule_New
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memset, strncpy

cimport numpy as cnp

import os

cnp.import_array()


cdef extern from "sys/mman.h" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS
    void* MAP_FAILED

cdef extern from "pthread.h" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t*, void*)
    int pthread_mutex_lock(pthread_mutex_t*)
    int pthread_mutex_unlock(pthread_mutex_t*)

cdef extern from "numpy/ndarraytypes.h":
    # numpy's allocator interface (NEP 49)
    ctypedef struct PyDataMemAllocator:
        void* ctx
        void* (*malloc)(void* ctx, size_t size) noexcept nogil
        void* (*calloc)(void* ctx, size_t nelem, size_t elsize) noexcept nogil
        void* (*realloc)(void* ctx, void* ptr, size_t new_size) noexcept nogil
        void (*free)(void* ctx, void* ptr, size_t size) noexcept nogil
    ctypedef struct PyDataMem_Handler:
        char name[127]
        uint8_t version
        PyDataMemAllocator allocator

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)
    object PyDataMem_GetHandler()
    PyObject* PyDataMem_DefaultHandler      # numpy's own allocator


# setup.py names this module kernel._pool, so Cython does not pair it with pool.pxd: cimport the types.
from pool cimport Header, HEADER, THRESHOLD, GRAIN, SLOTS

cdef void* kept_block[SLOTS]
cdef size_t kept_capacity[SLOTS]
cdef int kept_count = 0
cdef size_t kept_bytes = 0
cdef size_t kept_limit = 0
cdef size_t mapped_bytes = 0         # mapped fresh so far (each costs first-touch faults)
cdef pthread_mutex_t lock
pthread_mutex_init(&lock, NULL)


cdef inline void* data_of(void* block) noexcept nogil:
    return <char*>block + HEADER


cdef inline Header* header_of(void* ptr) noexcept nogil:
    return <Header*>(<char*>ptr - HEADER)


cdef void* take_block(size_t size, bint* fresh) noexcept nogil:
    """A mapped block of at least size + HEADER bytes: a kept one that fits (no more than twice the
    need, smallest first), else a new mapping (zero-filled)."""
    cdef size_t need = size + HEADER
    cdef size_t capacity = (need + GRAIN - 1) // GRAIN * GRAIN
    cdef int i, best = -1
    cdef void* block
    global kept_count, kept_bytes
    pthread_mutex_lock(&lock)
    for i in range(kept_count):
        if capacity <= kept_capacity[i] <= 2 * capacity and (best < 0 or kept_capacity[i] < kept_capacity[best]):
            best = i
    if best >= 0:
        block = kept_block[best]
        kept_bytes -= kept_capacity[best]
        kept_count -= 1
        kept_block[best] = kept_block[kept_count]
        kept_capacity[best] = kept_capacity[kept_count]
        pthread_mutex_unlock(&lock)
        fresh[0] = False
        return data_of(block)
    pthread_mutex_unlock(&lock)
    block = mmap(NULL, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if block == MAP_FAILED:
        return NULL
    global mapped_bytes
    mapped_bytes += capacity
    (<Header*>block).capacity = capacity
    fresh[0] = True
    return data_of(block)


cdef void give_block(void* block) noexcept nogil:
    """Keep a mapped block for the next request, or unmap it when the pool is full."""
    cdef size_t capacity = (<Header*>block).capacity
    global kept_count, kept_bytes
    pthread_mutex_lock(&lock)
    if kept_count < SLOTS and kept_bytes + capacity <= kept_limit:
        kept_block[kept_count] = block
        kept_capacity[kept_count] = capacity
        kept_count += 1
        kept_bytes += capacity
        pthread_mutex_unlock(&lock)
        return
    pthread_mutex_unlock(&lock)
    munmap(block, capacity)


cdef void* small_block(size_t size, bint zero) noexcept nogil:
    cdef void* block = calloc(1, size + HEADER) if zero else malloc(size + HEADER)
    if block == NULL:
        return NULL
    (<Header*>block).capacity = 0
    (<Header*>block).size = size
    return data_of(block)


cdef void* pool_malloc(void* ctx, size_t size) noexcept nogil:
    cdef bint fresh
    if size < THRESHOLD:
        return small_block(size, False)
    return take_block(size, &fresh)


cdef void* pool_calloc(void* ctx, size_t nelem, size_t elsize) noexcept nogil:
    cdef bint fresh
    cdef size_t size = nelem * elsize
    cdef void* ptr
    if elsize and size // elsize != nelem:
        return NULL
    if size < THRESHOLD:
        return small_block(size, True)
    ptr = take_block(size, &fresh)
    if ptr != NULL and not fresh:
        memset(ptr, 0, size)
    return ptr


cdef void pool_free(void* ctx, void* ptr, size_t size) noexcept nogil:
    if ptr == NULL:
        return
    cdef void* block = header_of(ptr)
    if (<Header*>block).capacity == 0:
        free(block)
    else:
        give_block(block)


cdef void* pool_realloc(void* ctx, void* ptr, size_t new_size) noexcept nogil:
    cdef void* block
    cdef void* moved
    cdef size_t capacity
    if ptr == NULL:
        return pool_malloc(ctx, new_size)
    block = header_of(ptr)
    capacity = (<Header*>block).capacity
    if capacity == 0:
        if new_size < THRESHOLD:
            block = realloc(block, new_size + HEADER)
            if block == NULL:
                return NULL
            (<Header*>block).size = new_size
            return data_of(block)
        moved = pool_malloc(ctx, new_size)
        if moved != NULL:
            memcpy(moved, ptr, (<Header*>block).size)
            free(block)
        return moved
    if new_size + HEADER <= capacity:
        return ptr
    moved = pool_malloc(ctx, new_size)
    if moved != NULL:
        memcpy(moved, ptr, capacity - HEADER)
        give_block(block)
    return moved


cdef PyDataMem_Handler handler
strncpy(handler.name, b"medsettle_batch_pool", 127)
handler.version = 1
handler.allocator.ctx = NULL
handler.allocator.malloc = pool_malloc
handler.allocator.calloc = pool_calloc
handler.allocator.realloc = pool_realloc
handler.allocator.free = pool_free

_capsule = PyCapsule_New(&handler, b"mem_handler", NULL)


def set_limit(size_t nbytes):
    """Keep at most nbytes of freed blocks mapped (0: keep none, unmap on free). Blocks are kept
    only as they are freed, so what is kept never exceeds the process's own peak of live blocks."""
    global kept_limit
    kept_limit = nbytes
    if nbytes == 0:
        release()


def limit() -> int:
    """The bytes of freed blocks kept mapped at most."""
    return kept_limit


def release():
    """Unmap every kept block."""
    global kept_count, kept_bytes
    cdef void* block
    cdef size_t capacity
    while True:
        pthread_mutex_lock(&lock)
        if kept_count == 0:
            pthread_mutex_unlock(&lock)
            return
        kept_count -= 1
        block = kept_block[kept_count]
        capacity = kept_capacity[kept_count]
        kept_bytes -= capacity
        pthread_mutex_unlock(&lock)
        munmap(block, capacity)


def _after_fork_in_child():
    """A forked child (resettle's worker processes) starts with a new lock and no kept blocks: they
    are its parent's pages, copy-on-write, and the child's own batches will map and keep theirs."""
    global kept_count, kept_bytes
    pthread_mutex_init(&lock, NULL)
    while kept_count:
        kept_count -= 1
        munmap(kept_block[kept_count], kept_capacity[kept_count])
    kept_bytes = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def kept() -> tuple:
    """(blocks, bytes) kept mapped now."""
    return kept_count, kept_bytes


def mapped() -> int:
    """Bytes mapped fresh since the module was loaded (not served from kept blocks)."""
    return mapped_bytes


def active() -> bool:
    """Whether numpy allocates from the pool in this thread's context."""
    return PyDataMem_GetHandler() is _capsule


class installed:
    """Context manager: numpy arrays made inside come from the pool (this thread's context only)."""

    def __enter__(self):
        self._previous = PyDataMem_SetHandler(_capsule)
        return self

    def __exit__(self, *exc):
        PyDataMem_SetHandler(self._previous)
        return False


class bypassed:
    """Context manager: numpy arrays made inside come from numpy's own allocator, even within
    installed(). For arrays that live across batches and grow (the index a chunked settle carries
    from chunk to chunk): the pool would keep each of their ever larger blocks when freed, for no
    batch to reuse."""

    def __enter__(self):
        self._previous = PyDataMem_SetHandler(<object>PyDataMem_DefaultHandler)
        return self

    def __exit__(self, *exc):
        PyDataMem_SetHandler(self._previous)
        return False
