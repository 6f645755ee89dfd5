"""Amounts in words at C speed: fen() and a fund text's rendering, for the real-time path.

A settlement over gRPC writes about ten amounts into its fund rows' texts (kernel/detail.py); the
interpreter's divmod and format spec took more than a microsecond an amount. The batch path writes
the same format vectorised (kernel.detail.fen_text); tests/test_detail.py holds the two together.
"""
from cpython.unicode cimport PyUnicode_DecodeASCII


cdef str _fen(long long v):
    # written backwards from the end of buf: cents, point, yuan grouped by three, sign
    cdef char buf[40]
    cdef char* end = buf + 40
    cdef char* p = end
    cdef unsigned long long m = (<unsigned long long>0 - <unsigned long long>v) if v < 0 \
        else <unsigned long long>v                     # the magnitude, LLONG_MIN included
    cdef unsigned long long yuan = m // 100
    cdef unsigned long long cents = m % 100
    cdef int digits = 0
    p -= 1
    p[0] = <char>(48 + cents % 10)
    p -= 1
    p[0] = <char>(48 + cents // 10)
    p -= 1
    p[0] = c'.'
    while True:
        if digits and digits % 3 == 0:
            p -= 1
            p[0] = c','
        p -= 1
        p[0] = <char>(48 + yuan % 10)
        yuan //= 10
        digits += 1
        if yuan == 0:
            break
    if v < 0:
        p -= 1
        p[0] = c'-'
    return PyUnicode_DecodeASCII(p, end - p, NULL)


def fen(v) -> str:
    """Fen as yuan with two decimals, thousands grouped: 4522000 -> '45,220.00', -5 -> '-0.05'.
    Any integer of int64's range (a numpy or Arrow integer too)."""
    return _fen(v if type(v) is int else int(v))


def render(tuple before, tuple used, tuple slots, str tail, dict amounts) -> str:
    """before[k] + fen(amounts[slots[k]]) where used[k] (before[k] alone where not), ..., + tail."""
    cdef Py_ssize_t k, n = len(before)
    cdef list parts = []
    for k in range(n):
        parts.append(before[k])
        if used[k]:
            parts.append(_fen(amounts[slots[k]]))
    parts.append(tail)
    return "".join(parts)
