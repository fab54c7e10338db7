"""Text that is safe to print: no terminal control sequences from the server or the manifest."""

from __future__ import annotations

import re

# C0 controls but TAB and LF, DEL, and the C1 controls (CSI, OSC... as single bytes).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe_text(text: str) -> str:
    """`text` with every control character (ESC, CR, BEL...) but TAB and LF shown as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def first_few(items: list, shown: int = 20) -> str:
    """`a, b, c and 17 more`: a list that stays one readable line however long it is."""
    text = ", ".join(str(i) for i in items[:shown])
    return text + (f" and {len(items) - shown} more" if len(items) > shown else "")
