"""Step 1, itemize (docs/design.md): per-line scope split summed per visit, GIL released."""
include "layout.pxi"

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, int32_t, int8_t
from money cimport rh, RELEASE_GIL_AT
# setup.py names this module kernel._itemize, so Cython does not pair it with itemize.pxd: cimport the types.
from itemize cimport Catalogue, Lines, ItemTotals


cdef inline void itemize_visit(const Lines* lines, const Catalogue* cat, int64_t start, int64_t stop,
                               ItemTotals* t) noexcept nogil:
    cdef int64_t medfee = 0, fulamt = 0, overlmt = 0, preselfpay = 0, inscp = 0, inscp_ess = 0
    cdef int64_t j, c, ci, a, q, p, ceil, over, allowed, pre, in_scope, keep, klass
    for j in range(start, stop):
        c = lines.code[j]
        a = lines.amount[j]
        q = lines.qty[j]
        p = lines.price[j]
        # an unknown code (-1) reads catalogue entry 0 and is then masked out as self-paid
        ci = c & ~(c >> 63)
        klass = cat.klass[ci]
        ceil = cat.ceiling[ci]
        keep = (c >= 0) & (klass != 2)                      # 0 for class C / unknown: all self-paid
        over = (ceil > 0) & (p > ceil)                      # over the ceiling price (超限价)
        allowed = ceil * q if over else a
        pre = rh(allowed * cat.prepay[ci] * (klass == 1))   # class B pre-pay share (先行自付)
        in_scope = allowed - pre
        medfee += a
        fulamt += a * (1 - keep)
        overlmt += (a - allowed) * keep
        preselfpay += pre * keep
        inscp += in_scope * keep
        inscp_ess += in_scope * (keep & (cat.essential[ci] != 0))
    t.medfee = medfee
    t.fulamt = fulamt
    t.overlmt = overlmt
    t.preselfpay = preselfpay
    t.inscp = inscp
    t.inscp_ess = inscp_ess


cdef void itemize_rows(const Lines* lines, const Catalogue* cat, const int64_t* offsets, int64_t* o,
                       Py_ssize_t n) noexcept nogil:
    """itemize()'s loop: each visit's totals into column i of the (N_ITEM, n) out block."""
    cdef ItemTotals t
    cdef Py_ssize_t i
    for i in range(n):
        itemize_visit(lines, cat, offsets[i], offsets[i + 1], &t)
        o[I_MEDFEE * n + i] = t.medfee
        o[I_FULAMT * n + i] = t.fulamt
        o[I_OVERLMT * n + i] = t.overlmt
        o[I_PRESELFPAY * n + i] = t.preselfpay
        o[I_INSCP * n + i] = t.inscp
        o[I_INSCP_ESS * n + i] = t.inscp_ess


# A catalogue of one class-C entry stands in when there is none (every code is then -1).
cdef int8_t NO_CLASS = 2, NO_FLAG = 0
cdef int64_t NO_AMOUNT = 0


cdef Catalogue catalogue_of(const int8_t[::1] cat_class, const int64_t[::1] cat_prepay,
                            const int64_t[::1] cat_ceiling, const int8_t[::1] cat_essential) except *:
    """The catalogue columns as a Catalogue (pointers into the caller's buffers), lengths checked."""
    cdef Py_ssize_t k = cat_class.shape[0]
    if cat_prepay.shape[0] != k or cat_ceiling.shape[0] != k or cat_essential.shape[0] != k:
        raise ValueError(f"catalogue columns: class, prepay, ceiling, essential need one length, got "
                         f"{k}, {cat_prepay.shape[0]}, {cat_ceiling.shape[0]}, {cat_essential.shape[0]}")
    cdef Catalogue cat
    if k > 0:
        cat.klass, cat.prepay = &cat_class[0], &cat_prepay[0]
        cat.ceiling, cat.essential = &cat_ceiling[0], &cat_essential[0]
    else:
        cat.klass, cat.prepay, cat.ceiling, cat.essential = &NO_CLASS, &NO_AMOUNT, &NO_AMOUNT, &NO_FLAG
    return cat


def itemize(const int64_t[::1] line_offsets, const int32_t[::1] code, const int64_t[::1] qty,
            const int64_t[::1] price, const int64_t[::1] amount, const int8_t[::1] cat_class,
            const int64_t[::1] cat_prepay, const int64_t[::1] cat_ceiling,
            const int8_t[::1] cat_essential, int64_t[:, ::1] out):
    """Step 1 for n visits: out[I_MEDFEE..I_INSCP_ESS, i] from lines line_offsets[i]:line_offsets[i+1].

    code -1 is an unknown code (self-paid); class 0 = A, 1 = B, 2 = C. Shapes are checked here;
    values (codes in range, amount == qty * price, offsets ascending) were validated by Python.
    """
    cdef Py_ssize_t n = line_offsets.shape[0] - 1
    cdef Py_ssize_t m = code.shape[0]
    if n < 0:
        raise ValueError("line_offsets: needs n_visits + 1 entries, got 0")
    if qty.shape[0] != m or price.shape[0] != m or amount.shape[0] != m:
        raise ValueError(f"line columns: code, qty, price, amount need one length, got "
                         f"{m}, {qty.shape[0]}, {price.shape[0]}, {amount.shape[0]}")
    cdef Catalogue cat = catalogue_of(cat_class, cat_prepay, cat_ceiling, cat_essential)
    if out.shape[0] != N_ITEM or out.shape[1] != n:
        raise ValueError(f"out: shape must be ({N_ITEM}, {n}), got ({out.shape[0]}, {out.shape[1]})")
    if n == 0:
        return
    if line_offsets[0] < 0 or line_offsets[n] > m:
        raise ValueError(f"line_offsets: must lie in [0, {m}], got {line_offsets[0]}..{line_offsets[n]}")

    cdef Lines lines
    if m > 0:
        lines.code, lines.qty, lines.price, lines.amount = &code[0], &qty[0], &price[0], &amount[0]
    else:
        lines.code = NULL
        lines.qty = lines.price = lines.amount = NULL

    if n >= RELEASE_GIL_AT:             # a batch only (money.pxd says why)
        with nogil:
            itemize_rows(&lines, &cat, &line_offsets[0], &out[0, 0], n)
    else:
        itemize_rows(&lines, &cat, &line_offsets[0], &out[0, 0], n)


def itemize_one(list code, list qty, list price, list amount, const int8_t[::1] cat_class,
                const int64_t[::1] cat_prepay, const int64_t[::1] cat_ceiling,
                const int8_t[::1] cat_essential):
    """Step 1 for one visit's lines given as Python lists of ints (the real-time path): its N_ITEM
    totals as a list (layout.ITEM_COLS), by the loop itemize() runs for each visit of a batch.
    No arrays to make per call. Values were validated by Python, as for itemize()."""
    cdef Py_ssize_t m = len(code), k = cat_class.shape[0], j
    if len(qty) != m or len(price) != m or len(amount) != m:
        raise ValueError(f"line columns: code, qty, price, amount need one length, got "
                         f"{m}, {len(qty)}, {len(price)}, {len(amount)}")
    cdef Catalogue cat = catalogue_of(cat_class, cat_prepay, cat_ceiling, cat_essential)
    cdef int32_t* c = <int32_t*>PyMem_Malloc(max(m, 1) * sizeof(int32_t))
    cdef int64_t* columns = <int64_t*>PyMem_Malloc(3 * max(m, 1) * sizeof(int64_t))
    cdef Lines lines
    cdef ItemTotals t
    if c == NULL or columns == NULL:
        PyMem_Free(c)
        PyMem_Free(columns)
        raise MemoryError()
    try:
        for j in range(m):
            if not -1 <= code[j] < k:
                raise ValueError(f"code: line {j + 1} is {code[j]}, not -1 or a catalogue entry")
            c[j] = code[j]
            columns[j] = qty[j]
            columns[m + j] = price[j]
            columns[2 * m + j] = amount[j]
        lines.code, lines.qty, lines.price, lines.amount = c, columns, columns + m, columns + 2 * m
        itemize_visit(&lines, &cat, 0, m, &t)
    finally:
        PyMem_Free(c)
        PyMem_Free(columns)
    out = [0] * N_ITEM
    out[I_MEDFEE], out[I_FULAMT], out[I_OVERLMT] = t.medfee, t.fulamt, t.overlmt
    out[I_PRESELFPAY], out[I_INSCP], out[I_INSCP_ESS] = t.preselfpay, t.inscp, t.inscp_ess
    return out
