"""The medical safety guard: red-flag categories, normalisation, speech acts, a learned stage, the guard.

`from wenzhen import safety` gives the public API (`Guard`, `GuardVerdict`, `SafetyConfig`, `check`,
`get_guard`, `apply`, `answer_prefix`, `answer_suffix`, `with_system_prompt`, `DISCLAIMER`, `SYSTEM_PROMPT`,
`CATEGORIES`); see `guard.py` for the design.
"""

from wenzhen.safety.categories import CATEGORIES, RedFlagCategory
from wenzhen.safety.guard import (
    DISCLAIMER,
    EMERGENCY_FOOTER,
    EMERGENCY_HEADER,
    SYSTEM_PROMPT,
    ExtraRule,
    Guard,
    GuardVerdict,
    SafetyConfig,
    answer_prefix,
    answer_suffix,
    apply,
    check,
    get_guard,
    with_system_prompt,
)
from wenzhen.safety.normalise import normalise

__all__ = [
    "CATEGORIES",
    "DISCLAIMER",
    "EMERGENCY_FOOTER",
    "EMERGENCY_HEADER",
    "SYSTEM_PROMPT",
    "ExtraRule",
    "Guard",
    "GuardVerdict",
    "RedFlagCategory",
    "SafetyConfig",
    "answer_prefix",
    "answer_suffix",
    "apply",
    "check",
    "get_guard",
    "normalise",
    "with_system_prompt",
]
