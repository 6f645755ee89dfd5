# Money arithmetic shared by the kernels: int64 fen, int basis points, one rounding per layer.
# (docs/design.md "Notation"; SETTLEMENT.md section 2.) Inline bodies live here so every unit inlines them.
from libc.stdint cimport int64_t, uint64_t

# The running total of a layer in fen*bp, rounded half-up to fen: rh(x) = (x + 5000) // 10000, x >= 0.
# Unsigned division because x >= 0 always: the compiler emits a multiply-shift with no sign fix-up.
cdef inline int64_t rh(int64_t x) noexcept nogil:
    return <int64_t>(<uint64_t>(x + 5000) // <uint64_t>10000)


# The smaller of two amounts.
cdef inline int64_t min64(int64_t a, int64_t b) noexcept nogil:
    return a if a < b else b


# The larger of two amounts.
cdef inline int64_t max64(int64_t a, int64_t b) noexcept nogil:
    return a if a > b else b


# Both kernels give up the GIL for batches of at least this many visits only: for a real-time call's
# one visit, giving it up hands it to gRPC's poller thread and taking it back costs a thread switch.
cdef enum:
    RELEASE_GIL_AT = 64
