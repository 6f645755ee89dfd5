# A numpy data allocator (NEP 49) that keeps large blocks mapped between batches (kernel._pool).
cdef enum:
    HEADER = 64                 # bytes before a block's data: its Header, then 64-byte aligned data
    THRESHOLD = 1 << 20         # blocks from 1 MiB are mapped and kept; smaller ones are malloc'd
    GRAIN = 2 << 20             # mapped blocks are multiples of 2 MiB (fewer sizes to match)
    SLOTS = 256                 # kept blocks at most


# The start of every block.
ctypedef struct Header:
    size_t capacity             # mapped bytes, header included; 0: a malloc block
    size_t size                 # a malloc block's data bytes (for realloc)
