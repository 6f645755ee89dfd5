"""Errors for bad input (SETTLEMENT.md section 9): each names the field, the line, the rule and the value."""


class InputError(ValueError):
    """Input the kernel refuses; nothing is written and no accumulator is touched.

    field: the column or message field; row: the visit row (1-based) or None; line: the line-item
    number or None; rule: what the value breaks; value: the offending value (as given).
    """

    def __init__(self, field, rule, value=None, *, row=None, line=None, mdtrt_id=None, source=None):
        self.field, self.rule, self.value = field, rule, value
        self.row, self.line, self.mdtrt_id, self.source = row, line, mdtrt_id, source
        where = []
        if source:
            where.append(str(source))
        if mdtrt_id is not None:
            where.append(f"visit {mdtrt_id}")
        if row is not None:
            where.append(f"row {row}")
        if line is not None:
            where.append(f"line {line}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(f"{prefix}{field}: {rule} (value: {value!r})")
