"""README's configuration table stays true: every setting of `wsd serve` is in it, with its default."""

from __future__ import annotations

import re
from pathlib import Path

from wsd.server.control.config import SETTINGS, Config

README = Path(__file__).resolve().parents[2] / "README.md"


def table_rows() -> dict[str, str]:
    """flag -> default column, for each row of the Configuration table (`--a`, `--b` rows list both)."""
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`--"):
            continue
        flags = re.findall(r"`(--[a-z-]+)", cells[0])
        defaults = [d.strip() for d in cells[1].split(",")] if len(flags) > 1 else [cells[1]]
        rows.update(zip(flags, defaults, strict=True))
    return rows


def test_every_setting_is_in_the_table_with_its_default():
    rows = table_rows()
    defaults = Config()
    for name, spec in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        assert flag in rows, f"{flag} is missing from README's configuration table"
        default = getattr(defaults, name)
        shown = rows[flag]
        if spec.default_text is not None:
            assert shown == spec.default_text, flag
        elif default is None:
            assert shown == "off", flag
        elif isinstance(default, float):
            assert float(shown) == default, flag
        else:
            assert shown == str(default), flag
    assert set(rows) == {"--" + name.replace("_", "-") for name in SETTINGS}, "a flag in the table is not a setting"
