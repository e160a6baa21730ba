"""Mask operators over Arrow arrays and content detectors (the second net).

``operators``: parse the policy spelling of a mask, combine masks by strength, and apply
one to an Arrow array, vectorised. ``detectors``: find and mask e-mail addresses, card
numbers, SSNs, IBANs, phone numbers and secrets in string columns that lineage left
unclassified.
"""

from warden.masking.detectors import DETECTORS, Finding, scan_and_mask
from warden.masking.operators import (
    CLEAR,
    KINDS,
    PARTIAL_KINDS,
    STRENGTH,
    MaskOperator,
    escalate_for_transform,
    is_partial,
    mask_array,
    parse_operator,
    render_sql,
    strongest,
)

__all__ = [
    "CLEAR",
    "DETECTORS",
    "KINDS",
    "PARTIAL_KINDS",
    "STRENGTH",
    "Finding",
    "MaskOperator",
    "escalate_for_transform",
    "is_partial",
    "mask_array",
    "parse_operator",
    "render_sql",
    "scan_and_mask",
    "strongest",
]
