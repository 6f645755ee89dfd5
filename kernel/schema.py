"""Arrow schemas of the visit, line-item and result tables (documented in docs/data.md).

Field names follow the national medical-insurance platform where it has one, so a hospital
system's developer recognises them. Money is int64 fen, dates are date32, times timestamp[s].
"""
import pyarrow as pa

from .layout import OUT_COLS

# One row per visit (就诊). Person and institution attributes are carried on the visit.
VISIT_FIELDS = [
    # name, type, required, meaning
    ("mdtrt_id", pa.string(), True, "visit id, unique in the file"),
    ("psn_no", pa.string(), True, "person number"),
    ("insutype", pa.string(), True, "scheme code of the pack (e.g. rural, employee, resident)"),
    ("psn_cats", pa.string(), False, "comma-separated person categories (retired,low_income,...)"),
    ("brdy", pa.date32(), False, "birth date (for disease groups with age conditions)"),
    ("insu_admdvs", pa.string(), False, "insured region (参保地), one of the pack's regions; default: its region"),
    ("acct_balc", pa.int64(), False, "personal-account balance before the person's first visit in the file"),
    ("fixmedins_code", pa.string(), False, "institution code"),
    ("fixmedins_type", pa.string(), False, "institution kind, one of the pack's institution_kinds "
                                            "(e.g. hospital, pharmacy)"),
    ("psn_fst_medins_code", pa.string(), False, "the person's first-visit / contracted institution "
                                                 "(首诊/签约机构): a visit there needs no referral"),
    ("medins_lv", pa.string(), True, "institution level code of the pack"),
    ("mdtrt_admdvs", pa.string(), False, "treatment region (就医地), a 6-digit code; default: the insured region"),
    ("out_filing_flag", pa.bool_(), False, "out-of-area treatment was filed (异地备案)"),
    ("med_type", pa.string(), True, "med type code of the pack"),
    ("begndate", pa.date32(), False, "admission or visit date; default: enddate"),
    ("enddate", pa.date32(), True, "discharge date"),
    ("setl_time", pa.timestamp("s"), True, "settlement time: a person's visits are settled in this order"),
    ("dise_codg", pa.string(), False, "main diagnosis, ICD-10 (then secondary diagnoses, comma-separated)"),
    ("refl_flag", pa.bool_(), False, "referred (转诊)"),
    ("inj_cause", pa.string(), False, "injury cause code of the pack; default none"),
    ("ipt_days", pa.int32(), False, "bed days (per-bed-day quota)"),
    ("acct_used_flag", pa.bool_(), False, "pay the patient's share from the personal account"),
    ("medfee_sumamt", pa.int64(), False, "declared total in fen; must equal the sum of the lines"),
]

# Visit-level amounts, given instead of line items (the result of step 1 computed elsewhere).
PRECOMPUTED_FIELDS = [
    ("fulamt_ownpay_amt", pa.int64(), True, "class C and not-in-catalogue amount"),
    ("overlmt_selfpay", pa.int64(), True, "over-ceiling amount"),
    ("preselfpay_amt", pa.int64(), True, "class B pre-pay share"),
    ("inscp_scp_amt", pa.int64(), True, "in-scope amount"),
    ("inscp_essential_amt", pa.int64(), False, "in-scope amount of essential drugs (part of inscp_scp_amt)"),
]

# One row per line item (费用明细).
LINE_FIELDS = [
    ("mdtrt_id", pa.string(), True, "the visit this line belongs to"),
    ("line_no", pa.int32(), True, "line number, unique within the visit"),
    ("hilist_code", pa.string(), True, "catalogue code (医保目录编码)"),
    ("cnt", pa.int64(), True, "quantity, a whole number"),
    ("pric", pa.int64(), True, "unit price in fen"),
    ("det_item_fee_sumamt", pa.int64(), True, "amount in fen = cnt x pric"),
]

VISIT_SCHEMA = pa.schema([pa.field(n, t) for n, t, _, _ in VISIT_FIELDS])
LINE_SCHEMA = pa.schema([pa.field(n, t) for n, t, _, _ in LINE_FIELDS])

# Result table: the visit id, status, every section 7 amount, flags and the policy version.
RESULT_SCHEMA = pa.schema(
    [pa.field("mdtrt_id", pa.string()), pa.field("psn_no", pa.string()),
     pa.field("status", pa.string()), pa.field("reason", pa.string())]
    + [pa.field(name, pa.int64()) for name in OUT_COLS]
    + [pa.field("flags", pa.int32()), pa.field("policy_version", pa.string())]
)
