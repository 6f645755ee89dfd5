"""Numbering the distinct strings of an Arrow string column, GIL released.

The batch adapter numbers persons (psn_no) and checks visit ids (mdtrt_id) for duplicates; Arrow's
general hash kernels (dictionary_encode, unique) spent ~80 ms each on 1M ids. Here: one 64-bit hash
per string (8 bytes at a time), an open-addressing table of (hash, first row), and an exact byte
comparison whenever two hashes are equal, so a hash collision never merges two strings. The codes
are numbered in order of first occurrence, as Arrow's dictionary_encode numbers them.
"""
from libc.stdint cimport int32_t, int64_t, uint64_t, uint8_t
from libc.string cimport memcmp, memcpy
# setup.py names this module kernel._strhash, so Cython does not pair it with strhash.pxd: cimport the types.
from strhash cimport Entry, INLINE, AHEAD, FEW

import numpy as np
import pyarrow as pa


cdef extern from *:
    """
    #define medsettle_prefetch_read(p) __builtin_prefetch((const void*)(p), 0, 3)
    """
    void prefetch_read "medsettle_prefetch_read"(const void* p) noexcept nogil


cdef inline uint64_t mix(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h


cdef inline uint64_t load_tail(const uint8_t* p, int64_t count) noexcept nogil:
    """count (0..8) bytes at p as a little-endian word, zero-padded."""
    cdef uint64_t word = 0
    cdef int64_t j
    for j in range(count):
        word |= (<uint64_t>p[j]) << (8 * j)
    return word


cdef inline void head_words(const uint8_t* p, int64_t length, uint64_t* k0, uint64_t* k1) noexcept nogil:
    """The first 16 bytes of the string, zero-padded, as two words."""
    if length >= 8:
        memcpy(k0, p, 8)
        if length >= 16:
            memcpy(k1, p + 8, 8)
        else:
            k1[0] = load_tail(p + 8, length - 8)
    else:
        k0[0] = load_tail(p, length)
        k1[0] = 0


cdef inline uint64_t hash_bytes(const uint8_t* p, int64_t length) noexcept nogil:
    cdef uint64_t h = <uint64_t>length * 0x9e3779b97f4a7c15ULL
    cdef uint64_t word
    cdef int64_t j = 0
    while j + 8 <= length:
        memcpy(&word, p + j, 8)
        h = (h ^ word) * 0x9e3779b97f4a7c15ULL
        h ^= h >> 29
        j += 8
    if j < length:
        h = (h ^ load_tail(p + j, length - j)) * 0x9e3779b97f4a7c15ULL
    h = mix(h)
    return h if h else 1


cdef inline bint is_null(const uint8_t* valid, int64_t bit) noexcept nogil:
    return valid != NULL and not (valid[bit >> 3] >> (bit & 7)) & 1


cdef inline bint same_string(const Entry* e, const int32_t* offsets, const uint8_t* data,
                             const int64_t* first_rows, int64_t start, int64_t length,
                             uint64_t k0, uint64_t k1) noexcept nogil:
    """Whether the row's string (start, length, first 16 bytes k0 k1) is the entry's, exactly."""
    if e.length != length or e.key0 != k0 or e.key1 != k1:
        return False
    if length <= INLINE:
        return True
    return memcmp(data + offsets[first_rows[e.code]] + INLINE, data + start + INLINE, length - INLINE) == 0


cdef int64_t number_few(const int32_t* offsets, const uint8_t* data, const uint8_t* valid, int64_t bit0,
                        int64_t n, int32_t* codes, int64_t* first_rows, Entry* few,
                        int64_t* distinct) noexcept nogil:
    """Rows from 0 while the column holds at most FEW distinct strings (code columns: a handful),
    each compared with those seen so far, no hashing; returns the row at which a string beyond
    FEW appears (n: none did). few[k] is string k's entry (hash not set)."""
    cdef int64_t i, k, start, length
    cdef uint64_t k0, k1
    for i in range(n):
        if is_null(valid, bit0 + i):
            codes[i] = -1
            continue
        start = offsets[i]
        length = offsets[i + 1] - start
        head_words(data + start, length, &k0, &k1)
        for k in range(distinct[0]):
            if same_string(&few[k], offsets, data, first_rows, start, length, k0, k1):
                codes[i] = few[k].code
                break
        else:
            if distinct[0] == FEW:
                return i
            k = distinct[0]
            few[k].key0 = k0
            few[k].key1 = k1
            few[k].length = <int32_t>length
            few[k].code = <int32_t>k
            first_rows[k] = i
            codes[i] = <int32_t>k
            distinct[0] += 1
    return n


cdef void insert(Entry* table, uint64_t mask, const Entry* entry) noexcept nogil:
    """A string known to be new into the table."""
    cdef uint64_t pos = entry.hash & mask
    while table[pos].hash != 0:
        pos = (pos + 1) & mask
    table[pos] = entry[0]


cdef void hash_rows(const int32_t* offsets, const uint8_t* data, const uint8_t* valid, int64_t bit0,
                    int64_t begin, int64_t n, uint64_t* hashes) noexcept nogil:
    """hashes[i] of rows begin..n-1, 0 for a null."""
    cdef int64_t i
    for i in range(begin, n):
        hashes[i] = 0 if is_null(valid, bit0 + i) else hash_bytes(data + offsets[i], offsets[i + 1] - offsets[i])


cdef int64_t number_hashed(const int32_t* offsets, const uint8_t* data, int64_t begin, int64_t n,
                           const uint64_t* hashes, int32_t* codes, int64_t* first_rows,
                           Entry* table, uint64_t mask, int64_t* distinct) noexcept nogil:
    """Rows begin..n-1 through the hash table, the table line of the row AHEAD rows on fetched in
    advance; returns the row at which the table would pass half full (n: all done)."""
    cdef int64_t i, start, length, limit = <int64_t>((mask + 1) // 2)
    cdef uint64_t h, pos, k0, k1
    cdef Entry* e
    for i in range(begin, n):
        if i + AHEAD < n:
            prefetch_read(&table[hashes[i + AHEAD] & mask])
        h = hashes[i]
        if h == 0:
            codes[i] = -1
            continue
        start = offsets[i]
        length = offsets[i + 1] - start
        head_words(data + start, length, &k0, &k1)
        pos = h & mask
        while True:
            e = &table[pos]
            if e.hash == 0:
                if distinct[0] >= limit:
                    return i
                e.hash = h
                e.key0 = k0
                e.key1 = k1
                e.length = <int32_t>length
                e.code = <int32_t>distinct[0]
                first_rows[distinct[0]] = i
                codes[i] = <int32_t>distinct[0]
                distinct[0] += 1
                break
            if e.hash == h and same_string(e, offsets, data, first_rows, start, length, k0, k1):
                codes[i] = e.code
                break
            pos = (pos + 1) & mask
    return n


cdef void rehash(const Entry* old, uint64_t old_size, Entry* table, uint64_t mask) noexcept nogil:
    cdef uint64_t k
    for k in range(old_size):
        if old[k].hash != 0:
            insert(table, mask, &old[k])


cdef bint hashes_distinct(const uint64_t* hashes, int64_t n, uint64_t* table, uint64_t mask) noexcept nogil:
    """Whether the n hashes (none 0) are pairwise different, by an open-addressing set of them."""
    cdef int64_t i
    cdef uint64_t h, pos
    for i in range(n):
        if i + AHEAD < n:
            prefetch_read(&table[hashes[i + AHEAD] & mask])
        h = hashes[i]
        pos = h & mask
        while table[pos] != 0:
            if table[pos] == h:
                return False
            pos = (pos + 1) & mask
        table[pos] = h
    return True


def all_distinct(arr):
    """Whether every string of a pa.string() Array without nulls is different from the others.

    Different 64-bit hashes prove different strings; only when two hashes are equal (a duplicate,
    or a collision) are the strings numbered exactly (encode)."""
    if not isinstance(arr, pa.Array) or arr.type != pa.string() or arr.null_count:
        raise TypeError("all_distinct takes a pa.string() Array without nulls")
    cdef int64_t n = len(arr)
    if n < 2:
        return True
    _, offsets_buf, data_buf = arr.buffers()
    offsets_np = np.frombuffer(offsets_buf, np.int32, count=n + 1, offset=arr.offset * 4)
    data_np = np.frombuffer(data_buf, np.uint8) if data_buf is not None and data_buf.size else np.zeros(1, np.uint8)
    cdef const int32_t[::1] offsets = offsets_np
    cdef const uint8_t[::1] data = data_np
    cdef uint64_t size = 16
    while size < 2 * <uint64_t>n:
        size *= 2
    hashes_np = np.empty(n, np.uint64)
    table_np = np.zeros(size, np.uint64)
    cdef uint64_t[::1] hashes = hashes_np
    cdef uint64_t[::1] table = table_np
    cdef bint distinct
    with nogil:
        hash_rows(&offsets[0], &data[0], NULL, 0, 0, n, &hashes[0])
        distinct = hashes_distinct(&hashes[0], n, &table[0], size - 1)
    del hashes, table, hashes_np, table_np
    return True if distinct else len(encode(arr)[1]) == n


def encode(arr):
    """(codes int32 per row, -1 for null; first row of each distinct string, int64) of a
    pa.string() Array: the indices and dictionary order of arr.dictionary_encode()."""
    if not isinstance(arr, pa.Array) or arr.type != pa.string():
        raise TypeError("encode takes a pa.string() Array")
    if len(arr) >= 2**31 - 1:
        raise ValueError("encode takes fewer than 2**31 - 1 strings")
    cdef int64_t n = len(arr), bit0 = arr.offset, stop, k
    codes_np = np.empty(n, np.int32)
    if n == 0 or arr.null_count == n:
        codes_np.fill(-1)
        return codes_np, np.zeros(0, np.int64)
    valid_buf, offsets_buf, data_buf = arr.buffers()
    offsets_np = np.frombuffer(offsets_buf, np.int32, count=n + 1, offset=bit0 * 4)
    data_np = np.frombuffer(data_buf, np.uint8) if data_buf is not None and data_buf.size else np.zeros(1, np.uint8)
    valid_np = np.frombuffer(valid_buf, np.uint8) if arr.null_count else np.zeros(1, np.uint8)
    first_np = np.empty(n, np.int64)
    cdef const int32_t[::1] offsets = offsets_np
    cdef const uint8_t[::1] data = data_np
    cdef const uint8_t[::1] valid_view = valid_np
    cdef const uint8_t* valid = &valid_view[0] if arr.null_count else NULL
    cdef int32_t[::1] codes = codes_np
    cdef int64_t[::1] first = first_np
    cdef Entry few[FEW]
    cdef int64_t distinct = 0
    with nogil:
        stop = number_few(&offsets[0], &data[0], valid, bit0, n, &codes[0], &first[0], few, &distinct)
    if stop == n:
        return codes_np, first_np[:distinct].copy()
    # more than FEW strings: a hash table, entries zero = empty, from numpy's allocator (the batch
    # pool when installed), of at most 4096 entries at first, doubled whenever half full
    hashes_np = np.empty(n, np.uint64)
    cdef uint64_t[::1] hashes = hashes_np
    cdef uint64_t size = 16
    while size < 4096 and size < 2 * <uint64_t>(n - stop + FEW):
        size *= 2
    table_np = np.zeros(4 * size, np.uint64)
    cdef uint64_t[::1] table = table_np
    cdef uint64_t[::1] old_table
    with nogil:
        hash_rows(&offsets[0], &data[0], valid, bit0, stop, n, &hashes[0])
        for k in range(distinct):
            few[k].hash = hash_bytes(&data[0] + offsets[first[k]], offsets[first[k] + 1] - offsets[first[k]])
            insert(<Entry*>&table[0], size - 1, &few[k])
    while stop < n:
        with nogil:
            stop = number_hashed(&offsets[0], &data[0], stop, n, &hashes[0], &codes[0], &first[0],
                                 <Entry*>&table[0], size - 1, &distinct)
        if stop < n:
            old_table = table
            table_np = np.zeros(8 * size, np.uint64)
            table = table_np
            with nogil:
                rehash(<Entry*>&old_table[0], size, <Entry*>&table[0], 2 * size - 1)
            size *= 2
            old_table = None
    del table, table_np, hashes, hashes_np
    return codes_np, first_np[:distinct].copy()
