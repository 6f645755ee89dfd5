"""Steps 2-11 of the chain (docs/design.md), visit by visit, GIL released.

Each layer is one small inline function over a Visit (inputs) and a Settlement (running amounts);
settle_visit holds the chain order; settle() checks shapes once and runs the loop without the GIL.
"""
include "layout.pxi"

from libc.stdint cimport int64_t, int32_t, int16_t, int8_t
from libc.string cimport memcpy
from money cimport rh, min64, max64, RELEASE_GIL_AT
# setup.py names this module kernel._chain, so Cython does not pair it with chain.pxd: cimport the types.
from chain cimport Visit, Settlement, BLOCK, STREAM_BYTES, PREFETCH_AHEAD

cdef extern from *:
    """
    #include <string.h>
    #define MEDSETTLE_UNLIMITED ((int64_t)1 << 62)
    #define medsettle_ctz(x) __builtin_ctzll((unsigned long long)(x))
    /* a hint to fetch the line holding p for writing; no effect on results */
    #define medsettle_prefetch(p) __builtin_prefetch((const void*)(p), 1, 3)
    #if defined(__x86_64__)
    #include <emmintrin.h>
    /* Copy with streaming (non-temporal) stores: 16 bytes at a time once dst is 16-byte aligned. */
    static inline void medsettle_stream_copy(int64_t* dst, const int64_t* src, Py_ssize_t count) {
        Py_ssize_t j = 0;
        if ((uintptr_t)dst & 7) { memcpy(dst, src, (size_t)count * 8); return; }
        if (((uintptr_t)dst & 15) && count > 0) { _mm_stream_si64((long long*)dst, (long long)src[0]); j = 1; }
        for (; j + 8 <= count; j += 8) {       /* one cache line per iteration */
            __m128i a = _mm_loadu_si128((const __m128i*)(src + j));
            __m128i b = _mm_loadu_si128((const __m128i*)(src + j + 2));
            __m128i c = _mm_loadu_si128((const __m128i*)(src + j + 4));
            __m128i d = _mm_loadu_si128((const __m128i*)(src + j + 6));
            _mm_stream_si128((__m128i*)(dst + j), a);
            _mm_stream_si128((__m128i*)(dst + j + 2), b);
            _mm_stream_si128((__m128i*)(dst + j + 4), c);
            _mm_stream_si128((__m128i*)(dst + j + 6), d);
        }
        for (; j + 2 <= count; j += 2)
            _mm_stream_si128((__m128i*)(dst + j), _mm_loadu_si128((const __m128i*)(src + j)));
        if (j < count) _mm_stream_si64((long long*)(dst + j), (long long)src[j]);
    }
    #define medsettle_fence() _mm_sfence()
    #else
    #define medsettle_stream_copy(dst, src, count) memcpy((dst), (src), (size_t)(count) * 8)
    #define medsettle_fence() ((void)0)
    #endif
    """
    # "no cap": larger than any amount, small enough that sums of two never overflow
    const int64_t UNLIMITED "MEDSETTLE_UNLIMITED"
    # index of the lowest set bit (x != 0)
    int64_t count_trailing_zeros "medsettle_ctz"(int64_t x) noexcept nogil
    # copies count int64 with stores that bypass the cache (x86-64): out columns are not read back soon
    void stream_copy "medsettle_stream_copy"(int64_t* dst, const int64_t* src, Py_ssize_t count) noexcept nogil
    # starts loading the cache line at p (for writing); changes nothing else
    void prefetch "medsettle_prefetch"(const void* p) noexcept nogil
    # orders the streaming stores before the GIL is taken back
    void store_fence "medsettle_fence"() noexcept nogil


cdef inline int64_t adjusted_ratio(const Visit* v, const Settlement* s, int64_t rate) noexcept nogil:
    cdef int64_t override = v.dis[D_OVERRIDE]
    cdef int64_t r = override if override > 0 else max64(rate + s.delta, v.dis[D_FLOOR])
    return min64(max64(r, 0), 10000)


# The disease group's floor decides the rate (F_FLOOR): a floor is set and is above the adjusted
# rate. (An override, checked by the callers, decides before any floor.)
cdef inline bint floor_decides(const Visit* v, const Settlement* s, int64_t rate) noexcept nogil:
    return v.dis[D_FLOOR] > 0 and v.dis[D_FLOOR] > rate + s.delta


cdef inline int64_t applied_ratio(const Visit* v, Settlement* s, int64_t rate) noexcept nogil:
    if s.denied:
        return 0
    if v.dis[D_OVERRIDE] > 0:
        s.flags |= 1 << F_OVERRIDE
    elif floor_decides(v, s, rate):
        s.flags |= 1 << F_FLOOR
    return adjusted_ratio(v, s, rate)


cdef inline int64_t banded_amount(const Visit* v, Settlement* s, const int64_t* band, int64_t lo,
                                  int64_t hi, bint adjust) noexcept nogil:
    # unused bands have lower edge BAND_UNUSED (2**62): they overlap nothing and end the band before them
    cdef int64_t total = 0, k, edge, upper, overlap, rate
    cdef bint floored = False
    for k in range(BAND_MAX):
        edge = band[2 * k]
        if edge >= hi:
            break
        upper = band[2 * k + 2] if k + 1 < BAND_MAX else UNLIMITED
        overlap = min64(hi, upper) - max64(lo, edge)
        if overlap > 0:
            rate = band[2 * k + 1]
            if adjust:
                floored |= floor_decides(v, s, rate)
                rate = adjusted_ratio(v, s, rate)
            total += overlap * rate
    if floored and v.dis[D_OVERRIDE] <= 0:
        s.flags |= 1 << F_FLOOR                  # as applied_ratio would, for any band paid at (one store)
    return total


cdef inline int64_t band_rate_at(const int64_t* band, int64_t at) noexcept nogil:
    cdef int64_t k, rate = band[1]
    for k in range(1, BAND_MAX):
        if band[2 * k] > at:
            break
        rate = band[2 * k + 1]
    return rate


cdef inline int64_t cap_left(int64_t cap, int64_t paid) noexcept nogil:
    # a cap < 0 is "none"
    return UNLIMITED if cap < 0 else max64(0, cap - paid)


cdef inline int64_t reported(int64_t left, bint on) noexcept nogil:
    # *_lmt: the limit left, -1 when the layer has no cap or is off
    return left if on and left != UNLIMITED else -1


cdef inline void limits(const Visit* v, Settlement* s) noexcept nogil:
    cdef const int64_t* R = v.rule
    s.cap_left = cap_left(R[R_CAP], v.acc[A_HIFP_INP + v.pool])
    s.hifp_lmt = reported(s.cap_left, True)
    s.hifob_lmt = reported(cap_left(R[R_OB_CAP], v.acc[A_HIFOB]), R[R_OB_RATIO] > 0)
    s.hifmi_lmt = reported(cap_left(R[R_MI_CAP], v.acc[A_HIFMI]), R[R_MI_FORM] > 0)
    s.cvl_lmt = reported(cap_left(R[R_CVL_CAP], v.acc[A_CVL]), (v.cats & R[R_CVL_CATS]) != 0)
    s.maf_lmt = reported(cap_left(R[R_MAF_CAP], v.acc[A_MAF]), (v.cats & R[R_MAF_CATS]) != 0)


cdef inline void ratio_adjustments(const Visit* v, Settlement* s) noexcept nogil:
    cdef const int64_t* R = v.rule
    cdef int64_t delta = 0, adj, bits
    cdef bint denied = False
    bits = v.cats & 0xFF                         # categories 0-7 carry a delta
    while bits:
        delta += R[R_CAT_DELTA_0 + count_trailing_zeros(bits)]
        bits &= bits - 1
    if v.out_area != 0:
        s.flags |= 1 << F_OUT_AREA
        adj = R[R_OA_FILED_DELTA] if v.out_area == 1 else R[R_OA_UNFILED_DELTA]
        if adj == DENY:
            denied = True
        else:
            delta += adj
    if R[R_REFERRAL_REQUIRED] != 0 and v.referral == 0:
        s.flags |= 1 << F_NO_REFERRAL
        adj = R[R_NO_REFERRAL_DELTA]
        if adj == DENY:
            denied = True
        else:
            delta += adj
    s.delta = delta
    s.denied = denied
    if denied:
        s.flags |= 1 << F_DENIED


cdef inline int64_t pool_ratio(const Visit* v, Settlement* s) noexcept nogil:
    # the ratio of step 5 as one number: the base rate, or the rate of the band where the visit starts
    cdef int64_t bandset = v.rule[R_BANDSET], start
    if bandset < 0:
        return applied_ratio(v, s, v.rule[R_BASE_RATIO])
    start = v.acc[A_ELIG_INP + v.pool] if v.rule[R_BAND_ORIGIN] != 0 else 0
    return applied_ratio(v, s, band_rate_at(v.bands + bandset * (2 * BAND_MAX), start))


cdef inline void quota(const Visit* v, Settlement* s) noexcept nogil:
    cdef const int64_t* D = v.dis
    cdef int64_t amount = D[D_QUOTA_AMOUNT] * (v.bed_days if D[D_QUOTA_MODE] == 2 else 1)
    cdef int64_t base = min64(s.inscp, amount)
    s.flags |= 1 << (F_BEDDAY if D[D_QUOTA_MODE] == 2 else F_QUOTA)
    s.hosp_part = s.inscp - base
    s.ded = min64(D[D_QUOTA_DED], base)
    s.elig = base - s.ded
    s.elig_ess = 0
    s.elig_non = s.elig
    if s.denied:
        s.ratio = 0
    elif D[D_QUOTA_RATIO] > 0:
        s.ratio = D[D_QUOTA_RATIO]
    else:
        s.ratio = pool_ratio(v, s)
    basic_cap(s, s.elig * s.ratio)


cdef inline void deductible(const Visit* v, Settlement* s) noexcept nogil:
    cdef const int64_t* R = v.rule
    cdef int64_t ded_full, n, nth, ded, ded_non, ded_ess
    if (v.cats & R[R_DED_WAIVED_CATS]) != 0:
        ded_full = 0
        s.flags |= 1 << F_DED_WAIVED
    elif (v.dis[D_DED_ONCE_A_YEAR] & v.acc[A_DED_ONCE]) != 0:
        # this group's once-a-year deductible was paid at an earlier admission this year
        ded_full = 0
        s.flags |= 1 << F_DED_ONCE
    elif R[R_DED_KIND] == 0:
        # per admission, reduced for the nth admission of the year (k = min(n, 3))
        n = v.acc[A_ADMISSIONS] + 1 if R[R_COUNTS_ADMISSION] != 0 else 1
        nth = R[R_DED_NTH_1 + min64(n, 3) - 1]
        ded_full = rh(R[R_DED_AMOUNT] * nth)
        if nth < 10000:
            s.flags |= 1 << F_DED_NTH
    else:
        # annual: what is left of the amount after this pool's deductibles earlier in the year
        ded_full = max64(0, R[R_DED_AMOUNT] - v.acc[A_DED_PAID_INP + v.pool])
    ded = min64(ded_full, s.inscp)
    ded_non = min64(ded, s.inscp - s.inscp_ess)
    ded_ess = ded - ded_non
    s.ded = ded
    s.elig = s.inscp - ded
    s.elig_ess = s.inscp_ess - ded_ess
    s.elig_non = s.elig - s.elig_ess


cdef inline void basic_fund(const Visit* v, Settlement* s) noexcept nogil:
    cdef const int64_t* R = v.rule
    cdef int64_t bandset = R[R_BANDSET], start, r, uplift, raw
    cdef const int64_t* band
    if bandset < 0:
        r = applied_ratio(v, s, R[R_BASE_RATIO])
        uplift = R[R_ESS_UPLIFT]
        raw = s.elig_non * r + s.elig_ess * min64(10000, max64(0, r + uplift))
        if s.denied:
            raw = 0
        elif s.elig_ess > 0 and uplift != 0:
            s.flags |= 1 << F_ESS_UPLIFT
    else:
        start = v.acc[A_ELIG_INP + v.pool] if R[R_BAND_ORIGIN] != 0 else 0
        band = v.bands + bandset * (2 * BAND_MAX)
        r = applied_ratio(v, s, band_rate_at(band, start))
        raw = 0
        if not s.denied:
            s.flags |= 1 << F_BANDED
            raw = banded_amount(v, s, band, start, start + s.elig, True)
    s.ratio = r
    basic_cap(s, raw)


cdef inline void basic_cap(Settlement* s, int64_t raw) noexcept nogil:
    cdef int64_t pay = rh(raw)
    if pay > s.cap_left:
        s.flags |= 1 << F_HIFP_CAPPED
        pay = s.cap_left
    s.hifp = pay


cdef inline void large_amount(const Visit* v, Settlement* s) noexcept nogil:
    cdef const int64_t* R = v.rule
    cdef int64_t r = s.ratio, covered, overflow, pay, left
    if R[R_OB_RATIO] <= 0 or not (s.flags & (1 << F_HIFP_CAPPED)) or r <= 0:
        return
    # the eligible cost the basic fund covered at its cap: round_half_up(cap_left * 10000 / r)
    covered = (s.cap_left * 10000 + r // 2) // r
    overflow = max64(0, s.elig - covered)
    if overflow <= 0:
        return
    s.flags |= 1 << F_HIFOB
    pay = rh(overflow * R[R_OB_RATIO])
    left = cap_left(R[R_OB_CAP], v.acc[A_HIFOB])
    if pay > left:
        s.flags |= 1 << F_HIFOB_CAPPED
        pay = left
    s.hifob = pay


cdef inline void serious_illness(const Visit* v, Settlement* s) noexcept nogil:
    cdef const int64_t* R = v.rule
    cdef int64_t form = R[R_MI_FORM], all_self, thr, before, after, raw = 0, x, left
    cdef const int64_t* band
    all_self = s.medfee - s.hosp_part - s.hifp - s.hifob
    if form <= 0:
        return
    s.mi_base = s.scope_self if R[R_MI_BASE] == 0 else all_self
    thr = R[R_MI_THRESHOLD]
    if form == 1:
        band = v.bands + R[R_MI_BANDSET] * (2 * BAND_MAX)
        if R[R_MI_TRIGGER] == 0:
            # per admission: the visit's total strictly above the threshold; base occupies [0, base)
            if s.medfee > thr:
                s.flags |= 1 << F_MI_TRIGGERED
                raw = rh(banded_amount(v, s, band, 0, s.mi_base, False))
        else:
            # annual: only the cumulative base above the threshold counts
            before = v.acc[A_MI_BASE]
            after = before + s.mi_base
            if after > thr:
                s.flags |= 1 << F_MI_TRIGGERED
                raw = rh(banded_amount(v, s, band, max64(0, before - thr), after - thr, False))
    else:
        # effective ratio: all funds together reach x of the total
        if all_self > thr:
            s.flags |= (1 << F_MI_TRIGGERED) | (1 << F_MI_EFFECTIVE)
            x = R[R_MI_EFF_CAT_RATIO] if (v.cats & R[R_MI_EFF_CATS]) != 0 else R[R_MI_EFF_RATIO]
            raw = min64(all_self, max64(0, rh(s.medfee * x) - s.hifp - s.hifob))
    left = cap_left(R[R_MI_CAP], v.acc[A_HIFMI])
    if raw > left:
        s.flags |= 1 << F_MI_CAPPED
        raw = left
    s.hifmi = raw


cdef inline void civil_servant(const Visit* v, Settlement* s) noexcept nogil:
    cdef const int64_t* R = v.rule
    cdef int64_t pay, left
    if (v.cats & R[R_CVL_CATS]) == 0:
        return
    pay = rh(max64(0, s.scope_self - s.hifmi) * R[R_CVL_RATIO])
    left = cap_left(R[R_CVL_CAP], v.acc[A_CVL])
    if pay > left:
        s.flags |= 1 << F_CVL_CAPPED
        pay = left
    s.cvl = pay


cdef inline void assistance(const Visit* v, Settlement* s) noexcept nogil:
    cdef const int64_t* R = v.rule
    cdef int64_t rest, pay, left
    if (v.cats & R[R_MAF_CATS]) == 0:
        return
    rest = max64(0, s.scope_self - s.hifmi - s.cvl)
    pay = rh(max64(0, rest - R[R_MAF_DED]) * R[R_MAF_RATIO])
    left = cap_left(R[R_MAF_CAP], v.acc[A_MAF])
    if pay > left:
        s.flags |= 1 << F_MAF_CAPPED
        pay = left
    s.maf = pay


cdef inline void guaranteed_minimum(const Visit* v, Settlement* s) noexcept nogil:
    cdef int64_t gm = v.rule[R_GM_RATIO], funds, target, topup
    if gm <= 0 or s.denied:
        return
    funds = s.hifp + s.hifob + s.hifmi + s.cvl + s.maf
    target = min64(rh(s.medfee * gm), s.medfee - s.hosp_part)
    topup = min64(max64(0, target - funds), s.cap_left - s.hifp)
    if topup > 0:
        s.flags |= 1 << F_GM_TOPUP
        s.hifp += topup


cdef inline void account(const Visit* v, Settlement* s, int64_t* balance) noexcept nogil:
    cdef int64_t pay = 0
    s.fund = s.hifp + s.hifob + s.hifmi + s.cvl + s.maf      # hifes_pay and oth_pay are 0
    s.psn_part = s.medfee - s.hosp_part - s.fund
    if v.rule[R_ACCT] != 0 and v.acct_used != 0:
        pay = min64(s.psn_part, balance[0])
        if pay > 0:
            s.flags |= 1 << F_ACCT
            balance[0] -= pay
    s.acct_pay = pay
    s.psn_cash = s.psn_part - pay
    s.balc = balance[0]


cdef inline void commit(const Visit* v, const Settlement* s, int64_t* acc) noexcept nogil:
    # every value read before the first store: a store through acc may alias any int64 (no strict aliasing)
    cdef int64_t admission = v.rule[R_COUNTS_ADMISSION] != 0
    cdef int64_t once = v.dis[D_DED_ONCE_A_YEAR] & -admission
    cdef int64_t* pool = acc + v.pool
    cdef int64_t ded = s.ded, hifp = s.hifp, elig = s.elig, hifob = s.hifob, mi_base = s.mi_base
    cdef int64_t hifmi = s.hifmi, cvl = s.cvl, maf = s.maf
    pool[A_DED_PAID_INP] += ded
    pool[A_HIFP_INP] += hifp
    pool[A_ELIG_INP] += elig
    acc[A_ADMISSIONS] += admission
    acc[A_DED_ONCE] |= once
    acc[A_HIFOB] += hifob
    acc[A_MI_BASE] += mi_base
    acc[A_HIFMI] += hifmi
    acc[A_CVL] += cvl
    acc[A_MAF] += maf


cdef inline void settle_visit(const Visit* v, Settlement* s, int64_t* acc, int64_t* balance,
                              int mode) noexcept nogil:
    cdef const int64_t* R = v.rule
    cdef bint pending = (R[R_PENDING_CAUSES] >> v.cause) & 1
    cdef bint settled = R[R_COVERED] != 0
    s.status = S_OK
    s.flags = 0
    s.ded = s.elig = s.ratio = s.hifp = s.hifob = s.hifmi = s.cvl = s.maf = 0
    s.hosp_part = s.mi_base = 0
    limits(v, s)
    # step 2: exclusions and status
    if pending:
        if mode == MODE_SETTLE:
            # refused: nothing paid, nothing committed
            s.status = S_REFUSED
            s.fund = s.acct_pay = 0
            s.psn_part = s.psn_cash = s.medfee
            s.balc = balance[0]
            return
        s.status = S_PROVISIONAL                 # computed as if the cause were "none"
    elif (R[R_EXCLUDED_CAUSES] >> v.cause) & 1:
        s.status = S_EXCLUDED
        settled = False
    elif not settled:
        s.status = S_NOT_COVERED
    if settled:
        ratio_adjustments(v, s)
        if v.dis[D_QUOTA_MODE] != 0:
            quota(v, s)                          # step 3, replacing steps 4-5
        else:
            deductible(v, s)                     # step 4
            basic_fund(v, s)                     # step 5
        large_amount(v, s)                       # step 6
        s.scope_self = s.inscp - s.hosp_part - s.hifp - s.hifob
        serious_illness(v, s)                    # step 7
        civil_servant(v, s)                      # step 8
        assistance(v, s)                         # step 9
        guaranteed_minimum(v, s)                 # step 10
        commit(v, s, acc)
    account(v, s, balance)                       # step 11


cdef inline void write_out(const Settlement* s, int64_t* out, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    out[O_MEDFEE_SUMAMT * n + i] = s.medfee
    out[O_FULAMT_OWNPAY_AMT * n + i] = s.fulamt
    out[O_OVERLMT_SELFPAY * n + i] = s.overlmt
    out[O_PRESELFPAY_AMT * n + i] = s.preselfpay
    out[O_INSCP_SCP_AMT * n + i] = s.inscp
    out[O_ACT_PAY_DEDC * n + i] = s.ded
    out[O_HIFP_PAY * n + i] = s.hifp
    out[O_POOL_PROP_SELFPAY * n + i] = s.ratio
    out[O_CVLSERV_PAY * n + i] = s.cvl
    out[O_HIFES_PAY * n + i] = 0
    out[O_HIFMI_PAY * n + i] = s.hifmi
    out[O_HIFOB_PAY * n + i] = s.hifob
    out[O_MAF_PAY * n + i] = s.maf
    out[O_OTH_PAY * n + i] = 0
    out[O_FUND_PAY_SUMAMT * n + i] = s.fund
    out[O_PSN_PART_AMT * n + i] = s.psn_part
    out[O_ACCT_PAY * n + i] = s.acct_pay
    out[O_PSN_CASH_PAY * n + i] = s.psn_cash
    out[O_HOSP_PART_AMT * n + i] = s.hosp_part
    out[O_BALC * n + i] = s.balc
    out[O_HIFP_LMT * n + i] = s.hifp_lmt
    out[O_HIFOB_LMT * n + i] = s.hifob_lmt
    out[O_HIFMI_LMT * n + i] = s.hifmi_lmt
    out[O_CVLSERV_LMT * n + i] = s.cvl_lmt
    out[O_MAF_LMT * n + i] = s.maf_lmt



cdef inline void flush_block(const int64_t* block, int64_t* out, Py_ssize_t n, Py_ssize_t i0,
                             Py_ssize_t count, bint streaming) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(N_OUT):
        if streaming:
            stream_copy(out + c * n + i0, block + c * BLOCK, count)
        else:
            memcpy(out + c * n + i0, block + c * BLOCK, count * sizeof(int64_t))


cdef struct Rows:
    # settle()'s arrays as raw pointers
    const int64_t* rules
    const int64_t* dis
    const int64_t* bands
    int64_t groups
    const int64_t* item
    const int32_t* rule
    const int16_t* group
    const int16_t* cats
    const int8_t* cause
    const int8_t* out_area
    const int8_t* referral
    const int32_t* bed_days
    const int8_t* acct_used
    const int32_t* acc_slot
    const int32_t* psn_slot
    int64_t* acc
    int64_t* balance
    int64_t* out
    int8_t* status
    int32_t* flags


cdef void settle_rows(const Rows* a, Py_ssize_t n, int mode) noexcept nogil:
    """settle()'s loop over n visits. The pointers are copied into locals, which the compiler keeps
    in registers (a struct's or memoryview's fields would be reloaded after every store, since any
    int64 store might alias them)."""
    cdef const int64_t* rules_p = a.rules
    cdef const int64_t* dis_p = a.dis
    cdef const int64_t* bands_p = a.bands
    cdef int64_t groups = a.groups
    cdef const int64_t* item_p = a.item
    cdef const int32_t* rule_p = a.rule
    cdef const int16_t* group_p = a.group
    cdef const int16_t* cats_p = a.cats
    cdef const int8_t* cause_p = a.cause
    cdef const int8_t* out_area_p = a.out_area
    cdef const int8_t* referral_p = a.referral
    cdef const int32_t* bed_days_p = a.bed_days
    cdef const int8_t* acct_used_p = a.acct_used
    cdef const int32_t* acc_slot_p = a.acc_slot
    cdef const int32_t* psn_slot_p = a.psn_slot
    cdef int64_t* acc_p = a.acc
    cdef int64_t* balance_p = a.balance
    cdef int64_t* out_p = a.out
    cdef int8_t* status_p = a.status
    cdef int32_t* flags_p = a.flags
    cdef int64_t* acc_row
    cdef const int64_t* ahead
    cdef int64_t r
    cdef Py_ssize_t i, i0, j, count
    cdef Visit v
    cdef Settlement s
    cdef int64_t block[N_OUT * BLOCK]
    # a large batch's out columns bypass the cache; a small one (real time) stays cached for the caller
    cdef bint streaming = n * N_OUT * 8 > STREAM_BYTES
    v.bands = bands_p
    i0 = 0
    while i0 < n:
        count = min(<Py_ssize_t>BLOCK, n - i0)
        for j in range(count):
            i = i0 + j
            if i + PREFETCH_AHEAD < n:
                # in settlement-time order each visit reaches a random accumulator row: start
                # loading the row (and balance) of a later visit now, so DRAM latency overlaps work;
                # a row of N_ACC * 8 > 64 bytes may touch three cache lines: its first, +64, last
                ahead = acc_p + <Py_ssize_t>acc_slot_p[i + PREFETCH_AHEAD] * N_ACC
                prefetch(ahead)
                prefetch(ahead + 8)
                prefetch(ahead + N_ACC - 1)
                prefetch(balance_p + psn_slot_p[i + PREFETCH_AHEAD])
            r = rule_p[i]
            acc_row = acc_p + <Py_ssize_t>acc_slot_p[i] * N_ACC
            v.rule = rules_p + r * N_RULE
            v.dis = dis_p + (r * groups + group_p[i]) * N_DIS
            v.acc = acc_row
            v.cats = <int64_t>cats_p[i] & 0xFFFF
            v.cause = cause_p[i]
            v.out_area = out_area_p[i]
            v.referral = referral_p[i]
            v.bed_days = bed_days_p[i]
            v.acct_used = acct_used_p[i]
            v.pool = v.rule[R_POOL] != 0
            s.medfee = item_p[I_MEDFEE * n + i]
            s.fulamt = item_p[I_FULAMT * n + i]
            s.overlmt = item_p[I_OVERLMT * n + i]
            s.preselfpay = item_p[I_PRESELFPAY * n + i]
            s.inscp = item_p[I_INSCP * n + i]
            s.inscp_ess = item_p[I_INSCP_ESS * n + i]
            settle_visit(&v, &s, acc_row, balance_p + psn_slot_p[i], mode)
            write_out(&s, block, BLOCK, j)
            status_p[i] = s.status
            flags_p[i] = s.flags
        flush_block(block, out_p, n, i0, count, streaming)
        i0 += BLOCK
    if streaming:
        store_fence()


def settle(const int64_t[:, ::1] rules, const int64_t[:, ::1] diseases, const int64_t[:, ::1] bands,
           Py_ssize_t n_groups, const int64_t[:, ::1] item, const int32_t[::1] rule,
           const int16_t[::1] group, const int16_t[::1] cats, const int8_t[::1] cause,
           const int8_t[::1] out_area, const int8_t[::1] referral, const int32_t[::1] bed_days,
           const int8_t[::1] acct_used, const int32_t[::1] acc_slot, const int32_t[::1] psn_slot,
           int64_t[:, ::1] acc, int64_t[::1] balance, int mode, int64_t[:, ::1] out,
           int8_t[::1] status, int32_t[::1] flags):
    """Steps 2-11 for n visits in array order: every out column, status and flags; acc and balance in place.

    Visit i uses rule row rule[i], disease row rule[i] * n_groups + group[i], accumulator row
    acc[acc_slot[i]] and balance[psn_slot[i]]. Shapes are checked here; indices and values were
    validated by Python. A pending cause under MODE_SETTLE is REFUSED and touches nothing.
    """
    cdef Py_ssize_t n = rule.shape[0]
    if rules.shape[1] != N_RULE:
        raise ValueError(f"rules: needs {N_RULE} columns, got {rules.shape[1]}")
    if diseases.shape[1] != N_DIS:
        raise ValueError(f"diseases: needs {N_DIS} columns, got {diseases.shape[1]}")
    if bands.shape[1] != 2 * BAND_MAX:
        raise ValueError(f"bands: needs {2 * BAND_MAX} columns, got {bands.shape[1]}")
    if n_groups < 1 or diseases.shape[0] != rules.shape[0] * n_groups:
        raise ValueError(f"diseases: needs n_rules * n_groups = {rules.shape[0]} * {n_groups} rows, "
                         f"got {diseases.shape[0]}")
    if acc.shape[1] != N_ACC:
        raise ValueError(f"acc: needs {N_ACC} columns, got {acc.shape[1]}")
    if mode != MODE_SETTLE and mode != MODE_PRESETTLE:
        raise ValueError(f"mode: must be MODE_SETTLE ({MODE_SETTLE}) or MODE_PRESETTLE "
                         f"({MODE_PRESETTLE}), got {mode}")
    if item.shape[0] != N_ITEM or item.shape[1] != n:
        raise ValueError(f"item: shape must be ({N_ITEM}, {n}), got ({item.shape[0]}, {item.shape[1]})")
    if out.shape[0] != N_OUT or out.shape[1] != n:
        raise ValueError(f"out: shape must be ({N_OUT}, {n}), got ({out.shape[0]}, {out.shape[1]})")
    for name, length in (("group", group.shape[0]), ("cats", cats.shape[0]), ("cause", cause.shape[0]),
                         ("out_area", out_area.shape[0]), ("referral", referral.shape[0]),
                         ("bed_days", bed_days.shape[0]), ("acct_used", acct_used.shape[0]),
                         ("acc_slot", acc_slot.shape[0]), ("psn_slot", psn_slot.shape[0]),
                         ("status", status.shape[0]), ("flags", flags.shape[0])):
        if length != n:
            raise ValueError(f"{name}: needs one entry per visit ({n}), got {length}")
    if n == 0:
        return

    cdef Rows a
    a.rules, a.dis, a.bands = &rules[0, 0], &diseases[0, 0], &bands[0, 0] if bands.shape[0] > 0 else NULL
    a.groups, a.item, a.rule, a.group, a.cats = n_groups, &item[0, 0], &rule[0], &group[0], &cats[0]
    a.cause, a.out_area, a.referral, a.bed_days = &cause[0], &out_area[0], &referral[0], &bed_days[0]
    a.acct_used, a.acc_slot, a.psn_slot, a.acc = &acct_used[0], &acc_slot[0], &psn_slot[0], &acc[0, 0]
    a.balance, a.out, a.status, a.flags = &balance[0], &out[0, 0], &status[0], &flags[0]
    # a batch only gives up the GIL: for a real-time call's one visit, giving it up hands it to
    # gRPC's poller thread and taking it back costs the event loop a thread switch, many times the work
    if n >= RELEASE_GIL_AT:
        with nogil:
            settle_rows(&a, n, mode)
    else:
        settle_rows(&a, n, mode)


def settle_one(const int64_t[:, ::1] rules, const int64_t[:, ::1] diseases, const int64_t[:, ::1] bands,
               Py_ssize_t n_groups, item, Py_ssize_t rule, Py_ssize_t group, int64_t cats,
               int64_t cause, int64_t out_area, int64_t referral, int64_t bed_days, int64_t acct_used,
               acc, int64_t balance, int mode):
    """settle() of one visit with Python ints in and out (the real-time path): no arrays to make.

    item: N_ITEM ints (layout.ITEM_COLS); acc: the person's N_ACC totals (layout.ACC_COLS).
    Returns (out: N_OUT ints in layout.OUT_COLS order, status, flags, acc after: list, balance after).
    The visit runs through settle_rows, the loop settle() runs, as a batch of one.
    """
    if rules.shape[1] != N_RULE or diseases.shape[1] != N_DIS or bands.shape[1] != 2 * BAND_MAX:
        raise ValueError("rules, diseases or bands: wrong number of columns")
    if n_groups < 1 or diseases.shape[0] != rules.shape[0] * n_groups:
        raise ValueError(f"diseases: needs n_rules * n_groups = {rules.shape[0]} * {n_groups} rows, "
                         f"got {diseases.shape[0]}")
    if not 0 <= rule < rules.shape[0]:
        raise ValueError(f"rule: must be a row of rules (0 to {rules.shape[0] - 1}), got {rule}")
    if not 0 <= group < n_groups:
        raise ValueError(f"group: must be 0 to {n_groups - 1}, got {group}")
    if mode != MODE_SETTLE and mode != MODE_PRESETTLE:
        raise ValueError(f"mode: must be MODE_SETTLE ({MODE_SETTLE}) or MODE_PRESETTLE "
                         f"({MODE_PRESETTLE}), got {mode}")
    if len(item) != N_ITEM:
        raise ValueError(f"item: needs {N_ITEM} amounts, got {len(item)}")
    if len(acc) != N_ACC:
        raise ValueError(f"acc: needs {N_ACC} totals, got {len(acc)}")
    cdef int64_t item_c[N_ITEM]
    cdef int64_t acc_c[N_ACC]
    cdef int64_t out_c[N_OUT]
    cdef int64_t balance_c = balance
    cdef int32_t rule_c = <int32_t>rule, bed_days_c = <int32_t>bed_days, slot = 0, flags_c = 0
    cdef int16_t group_c = <int16_t>group, cats_c = <int16_t>cats
    cdef int8_t cause_c = <int8_t>cause, out_area_c = <int8_t>out_area, referral_c = <int8_t>referral
    cdef int8_t acct_used_c = <int8_t>acct_used, status_c = 0
    cdef Py_ssize_t k
    for k in range(N_ITEM):
        item_c[k] = item[k]
    for k in range(N_ACC):
        acc_c[k] = acc[k]
    cdef Rows a
    a.rules, a.dis, a.bands = &rules[0, 0], &diseases[0, 0], &bands[0, 0] if bands.shape[0] > 0 else NULL
    a.groups, a.item, a.rule, a.group, a.cats = n_groups, item_c, &rule_c, &group_c, &cats_c
    a.cause, a.out_area, a.referral, a.bed_days = &cause_c, &out_area_c, &referral_c, &bed_days_c
    a.acct_used, a.acc_slot, a.psn_slot, a.acc = &acct_used_c, &slot, &slot, acc_c
    a.balance, a.out, a.status, a.flags = &balance_c, out_c, &status_c, &flags_c
    settle_rows(&a, 1, mode)
    return ([out_c[k] for k in range(N_OUT)], status_c, flags_c, [acc_c[k] for k in range(N_ACC)],
            balance_c)
