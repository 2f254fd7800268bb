"""XML rendering for Open311 GeoReport v2.

GeoReport v2 makes XML the required format and names every element; the same
plain data (dicts, lists, scalars) that becomes the JSON answer is rendered
here under those names, so the two formats cannot drift apart:

    list of dicts  -> <root><item>…</item>…</root>     (services, service_requests, errors)
    dict           -> one child element per key, in order
    nested list    -> <formats><format>…</format></formats> (singular from ITEM_TAGS)
    None           -> an empty element (<zipcode/>); the spec keeps absent fields present
    bool           -> true / false

Text is escaped by ElementTree; characters XML 1.0 cannot carry at all (most
C0 controls) are dropped rather than producing a document no parser accepts.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

XML_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>\n'

#: Child element name for the items of a list-valued field.
ITEM_TAGS = {
    "endpoints": "endpoint",
    "formats": "format",
    "attributes": "attribute",
    "values": "value",
}

# XML 1.0 Char production, negated: what may not appear in a document even escaped.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    return _NOT_XML_CHAR.sub("", str(value))


def _fill(element: ET.Element, value: Any) -> None:
    """Put `value` inside `element`: children for a mapping or a list, else text."""
    if isinstance(value, Mapping):
        for key, child in value.items():
            _fill(ET.SubElement(element, key), child)
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        tag = ITEM_TAGS.get(element.tag, "item")
        for child in value:
            _fill(ET.SubElement(element, tag), child)
    else:
        element.text = _text(value)


def render(root: str, value: Any, item: str | None = None) -> bytes:
    """A UTF-8 XML document: `<root>` holding `value`; list items are named `item`."""
    element = ET.Element(root)
    if item is not None:
        for child in value:
            _fill(ET.SubElement(element, item), child)
    else:
        _fill(element, value)
    body = ET.tostring(element, encoding="unicode", short_empty_elements=True)
    return (XML_DECLARATION + body + "\n").encode("utf-8")
