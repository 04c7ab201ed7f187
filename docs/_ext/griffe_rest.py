"""A griffe extension: lmdeq's reST-flavoured docstrings, rendered by mkdocstrings as Markdown.

lmdeq's docstrings are read by people in an editor first, so they use reST's roles (``:func:`x```,
``:class:`~a.b.C```, ``:meth:``, ``:mod:``, ``:data:``, ...) and reST's ``text::`` before a literal block.
Markdown has neither. Once griffe has loaded the package (statically: nothing is imported, so the docs build
needs neither torch nor the C++ extension), this extension rewrites every docstring:

* a role becomes an mkdocs-autorefs cross-reference to the object's canonical path, resolved the way Python
  would resolve the name in the docstring's scope (the module's imports, the class's members, inherited
  members, ...). It is a link where the docs render the target, plain code where they do not (a private
  helper, lmdeq.app). A role naming something under ``lmdeq`` that does not exist becomes a *required*
  cross-reference, which mkdocs-autorefs reports as a warning ("Could not find cross-reference target") on
  every page that renders that docstring: ``mkdocs build --strict`` fails on a broken reference in a rendered
  docstring as it does on a broken link in a page, and a docstring the site does not show cannot fail it.
  Names outside lmdeq (``torch.Tensor``) are shown as code and not checked.
* in an indented block (a code block in Markdown, shown verbatim) a role becomes its plain name and
  ````code```` plain ``code``;
* ``a, b: text`` in an ``Args:`` section (one description for two parameters) becomes an entry for each;
* ``text::`` before an indented block becomes ``text:`` (the indented block is a Markdown code block already),
  and a ``::`` alone on its line is dropped.

Option (mkdocs.yml, ``extensions: - docs/_ext/griffe_rest.py:RestRoles: {known_broken: [...]}``):
``known_broken``, entries ``"<object path>: <target>"`` shown as plain code and reported at INFO instead (a
known bug in a docstring the docs cannot fix; keep the list short).
"""
from __future__ import annotations

import html
import logging
import re
from typing import Any, Iterable, Optional

import griffe

_log = logging.getLogger("mkdocs.plugins.lmdeq_docs.griffe_rest")

_ROLE = re.compile(r":(?:py:)?(?P<role>func|class|mod|meth|data|attr|exc|obj|const):`(?P<body>[^`]+)`")
_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Returns|Return|Yields|Raises|Exceptions|Warns|"
                      r"Attributes|Examples?|Notes?|Warnings?|See Also|Other Parameters|Receives):\s*$")
_LIST_ITEM = re.compile(r"^(?:[*+-]|\d+[.)])\s+")
_DOUBLE_TICKS = re.compile(r"``([^`]+)``")
_TITLED = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")


# What the prose rewriting leaves alone: code spans (which may cross lines), and the cross-reference HTML this
# extension writes.
_PROTECTED = re.compile(r"(``.+?``|`[^`]+`|<autoref [^>]*>.*?</autoref>|<code>[^<]*</code>)", re.S)


def _escape_prose(text: str) -> str:
    """Markdown-escape what docstring prose means literally: ``z*`` and ``**kwargs`` are not emphasis,
    ``<name>`` is not an HTML tag, ``[a][b]`` is not a link. Code spans and a line's leading bullet are kept."""
    parts = _PROTECTED.split(text)
    for i in range(0, len(parts), 2):  # the even parts are outside code spans and cross-references
        part = parts[i].replace("\\", "\\\\").replace("[", "\\[")
        part = re.sub(r"(?m)^(\s*)\*(?=\s)|\*", lambda m: m.group(0) if m.group(1) is not None else "\\*", part)
        parts[i] = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", part)
    return "".join(parts)


_PARAM_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Other Parameters|Attributes):\s*$")
_SHARED_ENTRY = re.compile(r"^(?P<indent>\s+)(?P<names>\w+(?:\s*,\s*\w+)+)(?P<rest>\s*(?:\([^)]*\))?:(?:\s.*)?)$")


def _split_shared_entries(text: str) -> str:
    """``a, b: text`` in an Args section (one description for several parameters, a common style that
    Google-style parsers read as one parameter named "a, b") becomes one entry per name, each with the text."""
    lines = text.split("\n")
    out, i, in_params = [], 0, False
    while i < len(lines):
        line = lines[i]
        if line.strip() and not line.startswith(" "):
            in_params = bool(_PARAM_SECTION.match(line))
        entry = _SHARED_ENTRY.match(line) if in_params else None
        if not entry:
            out.append(line)
            i += 1
            continue
        depth = len(entry["indent"])
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip(" ")) > depth:
            body.append(lines[i])
            i += 1
        for name in re.split(r"\s*,\s*", entry["names"]):
            out.extend([entry["indent"] + name + entry["rest"], *body])
    return "\n".join(out)


def _walk(obj) -> Iterable:
    yield obj
    for member in list(obj.members.values()):
        if member.is_alias:
            continue
        yield from _walk(member)


class RestRoles(griffe.Extension):
    def __init__(self, known_broken: Optional[list] = None) -> None:
        super().__init__()
        self.known_broken = set(known_broken or ())

    # ---- resolution ---------------------------------------------------------------------------------------
    def _lookup(self, pkg, path: str):
        """The object at a full dotted path inside ``pkg``, or None."""
        if path == pkg.path:
            return pkg
        if not path.startswith(pkg.path + "."):
            return None
        try:
            return pkg[path[len(pkg.path) + 1:]]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError, ValueError):
            return None

    def _resolve(self, pkg, obj, name: str) -> tuple:
        """(canonical path or None, external?) of ``name`` as written in ``obj``'s docstring."""
        name = name.strip().rstrip("()")
        root = name.split(".")[0]
        if root == pkg.path:
            found = self._lookup(pkg, name)
            return (self._canonical(found), False) if found is not None else (None, False)
        head, _, rest = name.partition(".")
        try:  # the docstring's scope, then its parents' (griffe climbs them), as Python would
            base = obj.resolve(head)
        except (griffe.NameResolutionError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            base = self._inherited(obj, head)
        if not base:
            if not rest and self._assigned_at_top(obj, head):
                return None, True  # `A, B = ...`: a module constant griffe does not model; exists, no page
            return None, False
        full = f"{base}.{rest}" if rest else base
        if full.split(".")[0] != pkg.path:
            return None, True  # torch.Tensor and friends: shown as code, not checked
        found = self._lookup(pkg, full)
        return (self._canonical(found), False) if found is not None else (None, False)

    @staticmethod
    def _inherited(obj, name: str) -> Optional[str]:
        """``name`` as a member a class in ``obj``'s scope inherits (``:meth:`run``` in a subclass)."""
        scope = obj
        while scope is not None:
            if scope.is_class:
                try:
                    member = scope.all_members.get(name)
                except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                    member = None
                if member is not None:
                    return member.path
            scope = scope.parent
        return None

    @staticmethod
    def _assigned_at_top(obj, name: str) -> bool:
        """Whether ``name`` is a target of a module-level tuple assignment (``RUN, BEST = "run", "best"``)."""
        target = re.compile(rf"^(?:\w+\s*,\s*)*{re.escape(name)}\s*(?:,\s*\w+\s*)*=(?!=)")
        return any(target.match(line) for line in obj.module.lines)

    @staticmethod
    def _canonical(found) -> str:
        try:
            return found.final_target.path if found.is_alias else found.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return found.path

    # ---- rewriting ----------------------------------------------------------------------------------------
    def _rewrite(self, pkg, obj) -> None:
        doc = obj.docstring
        if doc is None:
            return
        text = doc.value

        def role(match: re.Match) -> str:
            body = match["body"].strip()
            titled = _TITLED.match(body)
            if titled:
                title, target = titled["title"], titled["target"]
            else:
                target = body
                title = target[1:].split(".")[-1] if target.startswith("~") else target
            target = re.sub(r"\s+", "", target.lstrip("~"))  # a role wrapped across two lines
            if f"{obj.path}: {target}" in self.known_broken:
                _log.info("known broken reference %s in the docstring of %s", match.group(0), obj.path)
                return f"<code>{html.escape(title)}</code>"
            path, external = self._resolve(pkg, obj, target)
            code = f"<code>{html.escape(title)}</code>"
            if path:
                return f'<autoref identifier="{path}" optional>{code}</autoref>'
            if external:
                return code
            # Broken: a required reference, reported by autorefs wherever this docstring is rendered.
            where = f"{obj.relative_filepath}:{doc.lineno or obj.lineno}" if obj.filepath else obj.path
            _log.debug("%s: broken reference %s in the docstring of %s", where, match.group(0), obj.path)
            return f'<autoref identifier="{html.escape(target)} (broken reference in {obj.path})">{code}</autoref>'

        def plain(match: re.Match) -> str:  # inside an indented (code) block: the name as text, no markup
            body = match["body"].strip()
            titled = _TITLED.match(body)
            target = titled["title"] if titled else body
            return target[1:].split(".")[-1] if target.startswith("~") else target

        text = _split_shared_entries(text)
        # A role wrapped across two lines is one role: join it (reST allows the break, Markdown lines do not).
        text = _ROLE.sub(lambda m: re.sub(r"\s*\n\s*", "", m.group(0)), text)
        lines, prose = [], []
        in_section = False  # a Google-style section (Args:, Returns:, ...): its indented lines are prose
        # A list item's text: reST aligns its continuation with the text (2 spaces after "* "), Markdown wants 4,
        # and 4 more for a code block inside it.
        item_indent = 0     # the text column of the current top-level list item (0: not in a list)
        loose = False       # the current item has a blank line inside: the next item needs one before it
        for line in text.split("\n"):
            if line.strip() and not line.startswith(" "):
                in_section = bool(_SECTION.match(line))
                item = _LIST_ITEM.match(line)
                if item and loose and prose and prose[-1].strip():
                    prose.append("")  # else Markdown reads the new item as the old one's lazy continuation
                loose = False
                item_indent = item.end() if item else 0
            elif item_indent and not line.strip():
                loose = True
            indent = len(line) - len(line.lstrip(" "))
            if item_indent and item_indent < 4 and line.strip() and indent >= item_indent:
                line = " " * (4 - item_indent) + line
                indent += 4 - item_indent
            code_at = 8 if item_indent else 4
            if line.strip() and not in_section and indent >= code_at:  # a Markdown code block
                if prose:
                    lines.append(_escape_prose(_ROLE.sub(role, "\n".join(prose))))
                    prose = []
                lines.append(_DOUBLE_TICKS.sub(r"\1", _ROLE.sub(plain, line)))
            else:
                prose.append(line)
        if prose:
            lines.append(_escape_prose(_ROLE.sub(role, "\n".join(prose))))
        text = "\n".join(lines)
        lines = []
        for line in text.split("\n"):
            if line.rstrip().endswith("::"):
                stripped = line.rstrip()[:-2].rstrip()
                if not stripped.strip():
                    continue
                line = stripped + ":"
            lines.append(line)
        doc.value = "\n".join(lines)

    def on_package(self, *, pkg, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            self._rewrite(pkg, obj)
