"""Wiki markup to clean text: templates, references, tables and media links removed.

Built on mwparserfromhell's node tree rather than its ``strip_code`` so that the
pieces a reader does not see on the rendered page (references, tables, images,
categories, interlanguage links, trailing reference sections) go, while the
words that inline templates put into a sentence (``{{仮リンク|...}}``,
``{{lang|en|...}}``, ``{{convert|...}}``) stay.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

# Tags whose content is not running text (or not visible at all).
DROP_TAGS = frozenset(
    (
        "ref references table gallery imagemap timeline math chem ce score graph "
        "syntaxhighlight source templatedata templatestyles mapframe maplink inputbox "
        "categorytree section includeonly hiero poem-notes indicator style script"
    ).split()
)

# Section headings after which an article holds lists of sources and links, not prose.
DROP_SECTIONS = frozenset(
    (
        "references|external links|see also|notes|further reading|bibliography|sources|"
        "citations|footnotes|notes and references|works cited|"
        "脚注|出典|参考文献|関連項目|外部リンク|注釈|参考資料|関連文献|注|"
        "脚注・出典|出典・脚注|注釈・出典|参照"
    ).split("|")
)

# Link prefixes that are media, categories or meta pages, not text (namespace names of
# the dump's siteinfo for -2, 6 and 14 are added per dump).
DROP_LINK_PREFIXES = frozenset(
    {"file", "image", "media", "category", "ファイル", "画像", "メディア", "カテゴリ"}
)

_INTERLANG = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]+)*$")
_MAGIC = re.compile(r"__[A-Z]+__")
_EMPTY_PARENS = re.compile(r"[(（][\s,，、;；:：]*[)）]")
_LEFTOVER = re.compile(r"\{\{|\}\}|\[\[|\]\]|\{\||\|\}|'''?")
# Layout tags the parser leaves as text when they are unbalanced.
_STRAY_TAG = re.compile(r"</?(?:div|span|center|font|small|big|table|tr|td|th)\b[^<>]*>", re.I)
_BLANK_LINES = re.compile(r"\n{3,}")
_SPACES = re.compile(r"[ \t]{2,}")
_REDIRECT = re.compile(r"^\s*#\s*(redirect|転送|リダイレクト)", re.IGNORECASE)
_TEMPLATE_NAMES = re.compile(r"\{\{\s*([^|{}\n]{1,80}?)\s*(?=[|}])")
_TEMPLATE_HEAD = re.compile(r"\{\{\s*([^|{}]*)")
_BRACES = re.compile(r"\{\{|\}\}")
_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_REF = re.compile(r"<ref\b[^>]*?/>|<ref\b[^>]*>.*?</ref\s*>", re.S | re.I)
# A line of table-cell attributes left over from a table whose opening line was in a
# removed template, e.g. `| colspan="2" style="padding: 0;"|`.
_CELL_ATTRIBUTES = re.compile(
    r"""^[|!](?:\s*[\w-]+\s*=\s*(?:"[^"]*"|'[^']*'|[^\s|"']+))+\s*\|?\s*$"""
)
_PLACEHOLDER = "\ue000"  # a private-use character (NUL would end the C tokenizer)

# Templates that mark a disambiguation page (normalised: lower case, "_" -> " ").
DISAMBIGUATION_TEMPLATES = frozenset(
    (
        "disambig|disambiguation|dab|disamb|aimai|曖昧さ回避|人名の曖昧さ回避|地名の曖昧さ回避|geodis|hndis|"
        "numberdis|letter disambiguation|shipindex|surname|given name|set index article"
    ).split("|")
)


def template_name(raw: str) -> str:
    """Normalise a template name for lookups: no namespace prefix, lower case, spaces."""
    name = raw.strip().replace("_", " ")
    if ":" in name:
        prefix, rest = name.split(":", 1)
        if prefix.strip().lower() in {"template", "テンプレート", "t"}:
            name = rest
    return " ".join(name.split()).lower()


def is_redirect(markup: str) -> bool:
    """True for a redirect page's text (``#REDIRECT [[...]]``, ``#転送 [[...]]``)."""
    return bool(_REDIRECT.match(markup))


def is_disambiguation(markup: str) -> bool:
    """True if the page transcludes a disambiguation template.

    Checked on the raw text with a regular expression: cheap, and it runs before
    the (slower) full parse. ``{{要曖昧さ回避}}`` ("link needs disambiguating")
    is an inline maintenance tag, not a disambiguation page, so names are matched
    exactly, plus the ``... disambiguation`` and ``...の曖昧さ回避`` families.
    """
    for m in _TEMPLATE_NAMES.finditer(markup):
        name = template_name(m.group(1))
        if (
            name in DISAMBIGUATION_TEMPLATES
            or name.endswith(" disambiguation")
            or name.endswith("の曖昧さ回避")
        ):
            return True
    return False


def _param(tpl, key: str | int) -> str | None:
    key = str(key)
    if tpl.has(key):
        return str(tpl.get(key).value)
    return None


def _first(tpl) -> str | None:
    return _param(tpl, 1)


def _second(tpl) -> str | None:
    return _param(tpl, 2)


def _convert(tpl) -> str | None:
    value, unit = _param(tpl, 1), _param(tpl, 2)
    if value is None:
        return None
    return f"{value.strip()} {unit.strip()}" if unit else value


def _ruby(tpl) -> str | None:
    base, reading = _param(tpl, 1), _param(tpl, 2)
    if base is None:
        return None
    return f"{base.strip()}（{reading.strip()}）" if reading else base


# Inline templates whose output is part of the sentence: name -> wikitext to render.
# Everything else (infoboxes, navboxes, citations, maintenance tags) is dropped.
INLINE_TEMPLATES: dict[str, Callable] = {
    "仮リンク": _first,
    "ill": _first,
    "interlanguage link": _first,
    "interlang": _second,
    "lang": _second,
    "nihongo": _first,
    "nowrap": _first,
    "nobr": _first,
    "small": _first,
    "smaller": _first,
    "big": _first,
    "font": lambda tpl: _param(tpl, "text") or _first(tpl),
    "convert": _convert,
    "cvt": _convert,
    "ruby": _ruby,
    "読み仮名": _ruby,
    "読み仮名 ruby不使用": _ruby,
    "visible anchor": _first,
    "transl": _second,
    "transliteration": _second,
    "nbsp": lambda tpl: " ",
    "snd": lambda tpl: " – ",
    "ndash": lambda tpl: "–",
    "mdash": lambda tpl: "—",
    "en dash": lambda tpl: "–",
    "·": lambda tpl: " · ",
    "midot": lambda tpl: " · ",
}


def _inline_template(name: str) -> Callable | None:
    fn = INLINE_TEMPLATES.get(name)
    if fn is None and name.startswith("lang-"):
        fn = _first
    return fn


class WikiTextConverter:
    """Turn one page's wikitext into plain text.

    Args:
        drop_link_prefixes: extra namespace names (lower case) whose links are
            removed, e.g. the dump's local names of File and Category.
    """

    def __init__(self, drop_link_prefixes: Iterable[str] = ()):
        self.drop_prefixes = DROP_LINK_PREFIXES | {p.lower() for p in drop_link_prefixes}

    def __call__(self, markup: str) -> str:
        import mwparserfromhell

        code = mwparserfromhell.parse(prestrip(markup), skip_style_tags=False)
        out: list[str] = []
        self._emit(code, out, top=True)
        return _tidy("".join(out))

    def _emit(self, code, out: list[str], *, top: bool = False, depth: int = 0) -> None:
        from mwparserfromhell import nodes

        skip_level = 0  # > 0 while inside a dropped trailing section (top level only)
        for node in code.nodes:
            if top and isinstance(node, nodes.Heading):
                title = _plain(node.title).strip().lower()
                if skip_level and node.level > skip_level:
                    continue
                skip_level = node.level if title in DROP_SECTIONS else 0
                if not skip_level:
                    # The heading's own line break follows in the next text node.
                    out.append("\n")
                    self._emit(node.title, out, depth=depth + 1)
                continue
            if skip_level:
                continue
            if isinstance(node, nodes.Text):
                out.append(node.value)
            elif isinstance(node, nodes.Wikilink):
                self._link(node, out, depth)
            elif isinstance(node, nodes.Template):
                self._template(node, out, depth)
            elif isinstance(node, nodes.Tag):
                tag = str(node.tag).strip().lower()
                if tag in DROP_TAGS:
                    continue
                if tag == "br":
                    out.append("\n")
                elif node.contents is not None and not node.self_closing:
                    self._emit(node.contents, out, depth=depth + 1)
            elif isinstance(node, nodes.HTMLEntity):
                out.append(node.normalize())
            elif isinstance(node, nodes.ExternalLink):
                if node.brackets:
                    if node.title is not None:
                        self._emit(node.title, out, depth=depth + 1)
                else:
                    out.append(str(node.url))
            elif isinstance(node, nodes.Heading):  # nested heading (inside a tag)
                out.append("\n")
                self._emit(node.title, out, depth=depth + 1)
                out.append("\n")
            # Comments, template arguments ({{{1}}}) and anything else: not visible text.

    def _link(self, node, out: list[str], depth: int) -> None:
        title = str(node.title).strip()
        colon = title.startswith(":")
        title = title.lstrip(":").strip()
        if ":" in title:
            prefix = title.split(":", 1)[0].strip().lower()
            if prefix in self.drop_prefixes:
                # [[:Category:X|text]] is a visible link; keep its text if it has one.
                if colon and node.text is not None:
                    self._emit(node.text, out, depth=depth + 1)
                return
            if not colon and _INTERLANG.match(prefix):
                return  # interlanguage link: rendered in the sidebar, not the text
        if node.text is not None:
            self._emit(node.text, out, depth=depth + 1)
        else:
            out.append(_plain(node.title).lstrip(":"))

    def _template(self, node, out: list[str], depth: int) -> None:
        fn = _inline_template(template_name(str(node.name)))
        if fn is None or depth > 20:
            return
        rendered = fn(node)
        if not rendered:
            return
        import mwparserfromhell

        self._emit(mwparserfromhell.parse(rendered), out, depth=depth + 1)


def prestrip(markup: str) -> str:
    """Cut comments, references and non-inline templates before the full parse.

    The parser spends most of its time building trees for citation templates and
    infoboxes that are dropped anyway; cutting them with a brace matcher first
    makes conversion about twice as fast on English articles. A removed template
    leaves a placeholder (removed in ``_tidy``) so that quote runs around it such
    as ``''{{x}}''`` do not merge into different bold/italic markup.
    """
    markup = _COMMENT.sub("", markup)
    markup = _REF.sub("", markup)
    out: list[str] = []
    last = 0
    stack: list[int] = []
    for m in _BRACES.finditer(markup):
        if m.group() == "{{":
            stack.append(m.start())
        elif stack:
            start = stack.pop()
            if not stack:
                name = _TEMPLATE_HEAD.match(markup, start).group(1)
                if _inline_template(template_name(name)) is None:
                    out.append(markup[last:start])
                    out.append(_PLACEHOLDER)
                    last = m.end()
    out.append(markup[last:])
    return strip_tables("".join(out))


def strip_tables(markup: str) -> str:
    """Remove wiki tables (``{|`` ... ``|}`` lines, nested ones included).

    Tables are not running text and are dropped anyway; cutting them by line
    before the parse also drops tables that mwparserfromhell leaves as text
    (e.g. a caption with unclosed bold markup). An unclosed table runs to the
    end of the page, as MediaWiki renders it.
    """
    if "{|" not in markup:
        return markup
    out: list[str] = []
    depth = 0
    for line in markup.split("\n"):
        s = line.lstrip()
        if s.startswith("{|"):
            depth += 1
        elif depth:
            if s.startswith("|}"):
                depth -= 1
        else:
            out.append(line)
    return "\n".join(out)


def _plain(code) -> str:
    return code.strip_code(normalize=True, collapse=True)


def _tidy(text: str) -> str:
    text = text.replace(_PLACEHOLDER, "")
    text = _MAGIC.sub("", text)
    text = _LEFTOVER.sub("", text)
    text = _STRAY_TAG.sub("", text)
    text = _EMPTY_PARENS.sub("", text)
    lines = []
    for line in text.split("\n"):
        line = _SPACES.sub(" ", line).strip()
        # Remnants of list and table markup with nothing left to say.
        if line and not line.strip("*#:;|!-=—– ").strip():
            continue
        if _CELL_ATTRIBUTES.match(line):
            continue
        lines.append(line)
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
