"""Payload text shown to a person is data, never markup.

Two rules, each in one place:

- :func:`neutralise` runs once on every payload value a formatter shows, whatever the format. It
  replaces the few characters that let a reader's software turn plain text into a link or a
  mention by look-alikes no linkifier or mention parser takes: ``@`` (mentions, e-mail addresses),
  ``:`` (``https:``, ``javascript:``, ``:emoji:``), a dot before a letter or inside dotted digits
  (``www.``, domains, IP addresses), ``#`` (Mattermost hashtags) and ``~`` (channel links); ``//``
  and ``<!`` (``<!channel>``) get a word joiner. It also folds line breaks and control characters
  into spaces and drops bidirectional overrides, so a value stays on its line and reads in the
  order it was typed.
- :func:`escape_markdown` and :func:`escape_html` run in the renderer of each format on every label,
  title and value, so that nothing in them is read as Markdown or HTML.

The bus's own link into Odoo is the only link a message carries; it is added by the renderer.
"""

from __future__ import annotations

import html
import re

# Look-alikes outside ASCII: each reads as the original, and none is a URL, mention or e-mail
# character to Mattermost, to e-mail clients' linkifiers or to linkify-it.
_LOOKALIKES = {
    "@": "\uff20",  # FULLWIDTH COMMERCIAL AT
    ":": "\u2236",  # RATIO
    "#": "\uff03",  # FULLWIDTH NUMBER SIGN
    "~": "\uff5e",  # FULLWIDTH TILDE
    "\uff1a": "\u2236",  # FULLWIDTH COLON, which some clients map back to ":"
}
_ONE_DOT_LEADER = "\u2024"
# Every full stop a browser's IDNA mapping reads as a domain dot, when a letter follows it (a
# domain) or when more dotted digits do (an IP address); "1,250.50" keeps its decimal point.
_DOMAIN_DOT = re.compile("[.\u3002\uff0e\uff61](?=[^\\W\\d_]|\\d+[.\u3002\uff0e\uff61]\\d)")
# "//host" and Slack's "<!channel>" (which Mattermost's webhooks still expand) get a word joiner.
_JOINED = re.compile("/(?=/)|<(?=!)")
_WORD_JOINER = "\u2060"
_LINE_BREAKS_AND_CONTROLS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_LOOKALIKE_TABLE = str.maketrans(_LOOKALIKES)
# CommonMark: any ASCII punctuation character may be backslash-escaped and is then literal.
_MARKDOWN_PUNCTUATION = re.compile(r"""([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])""")


def neutralise(value: str) -> str:
    """``value`` on one line with nothing a reader's software would take for a link or a mention."""
    value = _BIDI_CONTROLS.sub("", value)
    value = _LINE_BREAKS_AND_CONTROLS.sub(" ", value)
    value = _DOMAIN_DOT.sub(_ONE_DOT_LEADER, value.translate(_LOOKALIKE_TABLE))
    return _JOINED.sub(lambda match: match.group() + _WORD_JOINER, value)


def escape_markdown(value: str) -> str:
    """``value`` as literal text in Markdown (Mattermost): every ASCII punctuation escaped."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", value)


def escape_html(value: str) -> str:
    """``value`` as literal text in HTML (e-mail), quotes included."""
    return html.escape(value, quote=True)
