# Steps 2-11 of the chain (docs/design.md): one visit through every fund layer; a batch runs without the GIL.
from libc.stdint cimport int64_t, int32_t, int16_t, int8_t

cdef enum:
    BLOCK = 64                  # visits settled into a cached block before their out columns are written
    STREAM_BYTES = 1 << 22      # out arrays larger than this are written with streaming stores
    PREFETCH_AHEAD = 16         # visits ahead whose accumulator row is prefetched (random rows in time order)


# One visit's inputs, gathered once before the chain runs; the layers only read it.
ctypedef struct Visit:
    const int64_t* rule         # its rule row (layout.RULE_COLS)
    const int64_t* dis          # its disease row (layout.DISEASE_COLS); group 0 is all zero
    const int64_t* bands        # the bands table, row-major, 2 * BAND_MAX entries a row
    const int64_t* acc          # its accumulator row as it stands before the visit (layout.ACC_COLS)
    int64_t cats                # category bitmask (bit i = pack.categories[i])
    int64_t cause               # injury-cause index (bit of the cause masks)
    int64_t out_area            # 0 local, 1 out of area and filed (异地备案), 2 not filed
    int64_t referral            # 1 if referred (转诊)
    int64_t bed_days            # bed days, for the per-bed-day quota (按床日)
    int64_t acct_used           # 1 if the patient asked to pay from the personal account
    int64_t pool                # R_POOL (0 inpatient, 1 outpatient): the pool's column is A_*_INP + pool


# The running amounts of one visit (fen; ratios bp), written to the out columns in one pass at the end.
ctypedef struct Settlement:
    int64_t medfee              # T, medfee_sumamt
    int64_t fulamt              # F, fulamt_ownpay_amt
    int64_t overlmt             # O, overlmt_selfpay
    int64_t preselfpay          # P, preselfpay_amt
    int64_t inscp               # I, inscp_scp_amt
    int64_t inscp_ess           # E, in-scope essential drugs (part of I)
    int64_t ded                 # act_pay_dedc, deductible charged (起付线)
    int64_t elig                # in-scope amount the basic fund pays a ratio of (after deductible / quota)
    int64_t elig_ess            # essential-drug part of elig
    int64_t elig_non            # non-essential part of elig
    int64_t delta               # summed ratio adjustments, bp (DENY never summed)
    int64_t denied              # 1 if an adjustment is DENY: the basic fund pays 0
    int64_t ratio               # pool_prop_selfpay, the ratio applied, bp
    int64_t cap_left            # basic cap left before the visit; UNLIMITED if none
    int64_t hifp                # hifp_pay, basic pooled fund (统筹基金)
    int64_t hifob               # hifob_pay, large-amount subsidy (大额医疗补助)
    int64_t hifmi               # hifmi_pay, serious-illness layer (大病保险)
    int64_t cvl                 # cvlserv_pay, civil-servant subsidy (公务员医疗补助)
    int64_t maf                 # maf_pay, medical assistance (医疗救助)
    int64_t hosp_part           # hosp_part_amt, in scope above a quota, borne by the hospital
    int64_t scope_self          # S, in-scope self-pay after the basic fund and large-amount layers
    int64_t mi_base             # serious-illness base this visit adds to A_MI_BASE
    int64_t fund                # fund_pay_sumamt
    int64_t psn_part            # psn_part_amt
    int64_t acct_pay            # acct_pay, personal account (个人账户)
    int64_t psn_cash            # psn_cash_pay
    int64_t balc                # balc, account balance after the visit
    int64_t hifp_lmt            # remaining basic-fund limit before the visit, -1 none
    int64_t hifob_lmt           # remaining large-amount limit, -1 none or off
    int64_t hifmi_lmt           # remaining serious-illness limit, -1 none or off
    int64_t cvl_lmt             # remaining civil-servant limit, -1 none or off
    int64_t maf_lmt             # remaining assistance limit, -1 none or off
    int32_t flags               # F_* bits: what happened, for the trace
    int8_t status               # S_* code


# f(x) of step 5: a base rate with the visit's adjustments, floor or override, clamped to [0, 10000].
cdef int64_t adjusted_ratio(const Visit* v, const Settlement* s, int64_t rate) noexcept nogil

# adjusted_ratio of a rate the visit pays at: sets F_FLOOR / F_OVERRIDE when they decide it; 0 if denied.
cdef int64_t applied_ratio(const Visit* v, Settlement* s, int64_t rate) noexcept nogil

# Sum over the bands of overlap([lo, hi), band) * rate in fen*bp; when adjust, rates through f(x) and
# F_FLOOR set if the floor decided the rate of a band paid at.
cdef int64_t banded_amount(const Visit* v, Settlement* s, const int64_t* band, int64_t lo,
                           int64_t hi, bint adjust) noexcept nogil

# The rate of the band containing the amount at.
cdef int64_t band_rate_at(const int64_t* band, int64_t at) noexcept nogil

# The remaining annual limit of every layer before the visit (setldetail crt_payb_lmt_amt).
cdef void limits(const Visit* v, Settlement* s) noexcept nogil

# Step 5's ratio adjustments: categories, out of area, missing referral; DENY sets denied.
cdef void ratio_adjustments(const Visit* v, Settlement* s) noexcept nogil

# Step 3: single-disease quota (单病种定额) or per bed-day (按床日), replacing steps 4-5.
cdef void quota(const Visit* v, Settlement* s) noexcept nogil

# Step 4: the deductible (起付线), consumed first from non-essential in-scope amounts.
cdef void deductible(const Visit* v, Settlement* s) noexcept nogil

# Step 5: the basic pooled fund (统筹基金), unbanded or banded.
cdef void basic_fund(const Visit* v, Settlement* s) noexcept nogil

# Step 5's annual cap: hifp = min(rh(raw), cap_left).
cdef void basic_cap(Settlement* s, int64_t raw) noexcept nogil

# Step 6: the large-amount subsidy on the eligible amount the capped basic fund did not cover.
cdef void large_amount(const Visit* v, Settlement* s) noexcept nogil

# Step 7: the serious-illness layer, bands (form 1) or effective ratio (form 2).
cdef void serious_illness(const Visit* v, Settlement* s) noexcept nogil

# Step 8: the civil-servant subsidy on the remaining in-scope self-pay.
cdef void civil_servant(const Visit* v, Settlement* s) noexcept nogil

# Step 9: medical assistance for listed categories, on what is left in scope.
cdef void assistance(const Visit* v, Settlement* s) noexcept nogil

# Step 10: the guaranteed minimum (兜底), a top-up from the basic fund within its cap.
cdef void guaranteed_minimum(const Visit* v, Settlement* s) noexcept nogil

# Step 11: totals, the personal account and the balance after.
cdef void account(const Visit* v, Settlement* s, int64_t* balance) noexcept nogil

# The accumulator updates of a settled, non-excluded visit.
cdef void commit(const Visit* v, const Settlement* s, int64_t* acc) noexcept nogil

# The chain, in order (steps 2-11): the only place the order is written.
cdef void settle_visit(const Visit* v, Settlement* s, int64_t* acc, int64_t* balance,
                       int mode) noexcept nogil

# Every out column of visit i of n, in one pass (into the block: n = BLOCK).
cdef void write_out(const Settlement* s, int64_t* out, Py_ssize_t n, Py_ssize_t i) noexcept nogil

# Copies count visits of the block to out[:, i0:i0 + count], streaming past the cache if asked.
cdef void flush_block(const int64_t* block, int64_t* out, Py_ssize_t n, Py_ssize_t i0,
                      Py_ssize_t count, bint streaming) noexcept nogil
