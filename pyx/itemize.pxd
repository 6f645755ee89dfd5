# Step 1 of the chain (docs/design.md "Step 1: itemize"): line items -> the visit's scope split.
from libc.stdint cimport int64_t, int32_t, int8_t


# The catalogue columns, indexed by interned code (kernel.catalogue); read-only.
ctypedef struct Catalogue:
    const int8_t* klass         # 0 class A (甲), 1 class B (乙), 2 class C (丙)
    const int64_t* prepay       # bp of the allowed amount a class-B line pre-pays (先行自付)
    const int64_t* ceiling      # ceiling price (限价) in fen per unit, 0 = none
    const int8_t* essential     # 1 for essential drugs (基本药物)


# The line-item columns of a batch; read-only.
ctypedef struct Lines:
    const int32_t* code         # interned catalogue code, -1 = unknown (self-paid)
    const int64_t* qty          # quantity
    const int64_t* price        # unit price, fen
    const int64_t* amount       # amount = qty * price, fen (validated by Python)


# The six totals of one visit, in the order of layout.ITEM_COLS.
ctypedef struct ItemTotals:
    int64_t medfee              # medfee_sumamt
    int64_t fulamt              # fulamt_ownpay_amt: class C and unknown codes
    int64_t overlmt             # overlmt_selfpay: the part of the price above the ceiling
    int64_t preselfpay          # preselfpay_amt: class-B pre-pay share
    int64_t inscp               # inscp_scp_amt: in policy scope
    int64_t inscp_ess           # in-scope amount of essential drugs (part of inscp)


# Sums lines [start, stop) of one visit into t; t is overwritten.
cdef void itemize_visit(const Lines* lines, const Catalogue* cat, int64_t start, int64_t stop,
                        ItemTotals* t) noexcept nogil
