"""Close reasons: defined once, and the README's table lists exactly those."""

from __future__ import annotations

import re
from pathlib import Path

from trio_echo import _reasons

README = Path(__file__).parent.parent / "README.md"


def readme_table_reasons() -> list[str]:
    text = README.read_text()
    section = text.split("### Close reasons", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z-]+)` \|", section, flags=re.MULTILINE)


def test_readme_table_lists_every_close_reason_once_in_order() -> None:
    assert readme_table_reasons() == list(_reasons.ALL)


def test_every_reason_constant_is_in_all() -> None:
    constants = {
        value
        for name, value in vars(_reasons).items()
        if name.isupper() and isinstance(value, str)
    }
    assert constants == set(_reasons.ALL)
    assert set(_reasons.REFUSED) <= constants
    assert len(_reasons.ALL) == len(set(_reasons.ALL))
