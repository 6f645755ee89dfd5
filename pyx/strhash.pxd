# Numbering the distinct strings of an Arrow string column (kernel._strhash), GIL released.
from libc.stdint cimport int32_t, int64_t, uint64_t, uint8_t

cdef enum:
    INLINE = 16                 # bytes of a string kept in its table entry (ids, person numbers fit)
    AHEAD = 16                  # rows whose table line is fetched ahead of the probe
    FEW = 8                     # distinct strings compared one by one before a hash table is built


# A hash-table entry: the string's hash, its first 16 bytes (zero-padded), its length and its code.
# Strings up to INLINE bytes are compared on the entry alone; longer ones also with their first row.
ctypedef struct Entry:
    uint64_t hash               # 0: empty (a string hashing to 0 is stored as 1)
    uint64_t key0
    uint64_t key1
    int32_t length
    int32_t code


# Rows from 0 while at most FEW distinct strings appear, each compared with those seen so far;
# returns the row at which a further one appears (n: none did).
cdef int64_t number_few(const int32_t* offsets, const uint8_t* data, const uint8_t* valid, int64_t bit0,
                        int64_t n, int32_t* codes, int64_t* first_rows, Entry* few,
                        int64_t* distinct) noexcept nogil

# Rows begin..n-1 through the hash table; returns the row at which it would pass half full (n: done).
cdef int64_t number_hashed(const int32_t* offsets, const uint8_t* data, int64_t begin, int64_t n,
                           const uint64_t* hashes, int32_t* codes, int64_t* first_rows,
                           Entry* table, uint64_t mask, int64_t* distinct) noexcept nogil

# Whether n nonzero hashes are pairwise different (an open-addressing set of them in table).
cdef bint hashes_distinct(const uint64_t* hashes, int64_t n, uint64_t* table, uint64_t mask) noexcept nogil
