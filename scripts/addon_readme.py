"""Write each addon's README.rst from its readme/ fragments, as OCA's oca-gen-addon-readme does.

The fragments (DESCRIPTION.md, CONFIGURE.md, USAGE.md, ...) are the source; README.rst is made
from them and the manifest, and a test keeps it current:

    python scripts/addon_readme.py          # rewrite every addons/*/README.rst
    python scripts/addon_readme.py --check  # exit 1 when one is out of date
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ADDONS = Path(__file__).resolve().parent.parent / "addons"
SECTIONS = (
    ("DESCRIPTION", None),
    ("INSTALL", "Installation"),
    ("CONFIGURE", "Configuration"),
    ("USAGE", "Usage"),
    ("ROADMAP", "Known issues / Roadmap"),
    ("CONTRIBUTORS", "Contributors"),
)
_CODE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)]+)\)")


def markdown_to_rst(text: str) -> str:
    """The Markdown the fragments use (paragraphs, lists, `code`, *emphasis*, links) as RST."""
    text = _CODE.sub(r"``\1``", text)
    text = _LINK.sub(r"`\1 <\2>`_", text)
    return text.strip() + "\n"


def heading(title: str, underline: str) -> str:
    return f"{title}\n{underline * len(title)}\n"


def readme_of(addon: Path) -> str:
    manifest = ast.literal_eval((addon / "__manifest__.py").read_text())
    parts = [
        "=" * len(manifest["name"]) + "\n" + heading(manifest["name"], "="),
        f"{manifest['summary']}\n",
        f".. |license| replace:: {manifest['license']}\n",
        f"**Version** {manifest['version']} · **License** |license| · "
        f"**Status** {manifest.get('development_status', 'Beta')}\n",
    ]
    for fragment, title in SECTIONS:
        path = addon / "readme" / f"{fragment}.md"
        if not path.exists():
            continue
        if title:
            parts.append(heading(title, "="))
        parts.append(markdown_to_rst(path.read_text()))
    parts.append(heading("Credits", "="))
    parts.append(f"Authors: {manifest['author']}\n")
    maintainers = manifest.get("maintainers")
    if maintainers:
        parts.append("Maintainers: " + ", ".join(maintainers) + "\n")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    stale = []
    for addon in sorted(path.parent for path in ADDONS.glob("*/__manifest__.py")):
        wanted = readme_of(addon)
        target = addon / "README.rst"
        if target.exists() and target.read_text() == wanted:
            continue
        if "--check" in argv:
            stale.append(str(target))
        else:
            target.write_text(wanted)
            print(f"wrote {target}")
    if stale:
        print("out of date (run scripts/addon_readme.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
