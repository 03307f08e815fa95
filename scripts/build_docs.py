"""Build the API reference: HTML from the docstrings of the public modules, with pdoc.

    python scripts/build_docs.py [OUT]      # OUT defaults to docs/api/ (not committed: it is generated)

Documents `etcdlock` (what its ``__all__`` exports), `etcdlock.testing` and its pytest plugin, and nothing
of the private packages (``etcdlock._core`` ...) but what the public names are. A member whose docstring
says ``@private`` is an internal hook on a public class and is left out. The build fails (exit 1) on:

- any warning while building (pdoc's: a module that does not import, an annotation it cannot resolve ...);
- a public class, function, method or property of `etcdlock` without a docstring;
- a private module's name on a page: a docstring, a signature or a base class that points into
  ``etcdlock._*``, where a reader can neither follow the link nor import the name.
"""

from __future__ import annotations

import argparse
import functools
import html
import inspect
import re
import sys
import typing
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pdoc.doc
import pdoc.extract
import pdoc.render

import etcdlock
from etcdlock._core.client import CoreClient
from etcdlock._recipes.state import RecipeClient

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("etcdlock", "etcdlock.testing", "etcdlock.testing.pytest_plugin")
# Where every public class, function, method and property must have a docstring.
DOCSTRINGS_REQUIRED = ("etcdlock",)
PRIVATE_NAME = re.compile(r"\betcdlock(?:\.\w+)*\._[A-Za-z]\w*(?:\.\w+)*")
# Private classes that public signatures take, shown as the public class a caller passes there: a Session or
# a Lock takes the client as the CoreClient it needs, and every Client is one.
SHOWN_AS: dict[type, str] = {CoreClient: "etcdlock.Client", RecipeClient: "etcdlock.Client"}

Member = pdoc.doc.Doc[Any]


def is_private_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "etcdlock" and any(part.startswith("_") for part in parts)


def resolve(module: str, qualname: str) -> Any:
    obj: Any = sys.modules[module]
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def public_name(obj: object) -> str | None:
    """The documented name of obj ("etcdlock.Client"), or None if it has none (a private class)."""
    module = getattr(obj, "__module__", "")
    if not is_private_module(module):
        return f"{module}.{getattr(obj, '__qualname__', '')}"
    for m in MODULES:
        for name, value in vars(sys.modules[m]).items():
            if value is obj and not name.startswith("_"):
                return f"{m}.{name}"
    return None


# ---- shaping pdoc's model of the API ---------------------------------------------------------------------
# pdoc documents a class's own members and links inherited ones to their class's page. A public class that
# inherits from a private one (Client from CoreClient) would then show none of what it inherits, and name
# its private base. So such members count as the class's own, and such a base is not shown.


def _pdoc_property(name: str) -> Callable[[pdoc.doc.Class], Any]:
    prop = vars(pdoc.doc.Class)[name]
    assert isinstance(prop, functools.cached_property), f"pdoc.doc.Class.{name} changed"
    return prop.func


_pdoc_own_members = _pdoc_property("own_members")
_pdoc_bases = _pdoc_property("bases")
_inspect_format_annotation: Callable[..., str] = inspect.formatannotation


def _own_members(self: pdoc.doc.Class) -> list[Member]:
    members: list[Member] = list(_pdoc_own_members(self))
    for (module, _), inherited in self.inherited_members.items():
        if module.split(".")[0] == "etcdlock" and module not in MODULES:
            members += inherited
    # A constructor that takes a private object is the library's (a KeepAlive is made by keep_alive(), a
    # Compare by its class methods): not for callers.
    members = [m for m in members if not (m.name == "__init__" and _takes_private(m))]
    # The constructor first, as pdoc does for a class's own members.
    return sorted(members, key=lambda m: m.name != "__init__")


def _takes_private(init: Member) -> bool:
    assert isinstance(init, pdoc.doc.Function)
    return any(
        isinstance(p.annotation, type) and p.annotation not in SHOWN_AS and public_name(p.annotation) is None
        for p in init.signature_without_self.parameters.values()
    )


def _bases(self: pdoc.doc.Class) -> list[tuple[str, str, str]]:
    """The bases a reader can look up, by their public names: a private base that is not exported is left
    out (Client's CoreClient: its members are shown as Client's own)."""
    bases = []
    for module, qualname, text in _pdoc_bases(self):
        if is_private_module(module):
            name = public_name(resolve(module, qualname))
            if name is None:
                continue
            text = name
        bases.append((module, qualname, text))
    return bases


def _format_annotation(annotation: object, base_module: str | None = None) -> str:
    if isinstance(annotation, type) and annotation in SHOWN_AS:
        return SHOWN_AS[annotation]
    if typing.get_origin(annotation) is typing.Unpack:
        # **options typed by a private TypedDict (get()'s): the docstring lists the options.
        (options,) = typing.get_args(annotation)
        if public_name(options) is None:
            return "Any"
    return _inspect_format_annotation(annotation, base_module)


def shape_pdoc() -> None:
    for name, func in (("own_members", _own_members), ("bases", _bases)):
        prop = functools.cached_property(func)
        prop.__set_name__(pdoc.doc.Class, name)
        setattr(pdoc.doc.Class, name, prop)
    # pdoc formats parameters with str(inspect.Parameter), which goes through inspect's module global, and
    # variables and return values with its own import of it.
    inspect.formatannotation = _format_annotation
    pdoc.doc.formatannotation = _format_annotation  # type: ignore[attr-defined]


# ---- checks ----------------------------------------------------------------------------------------------


def is_public(doc: Member, module: pdoc.doc.Module) -> bool:
    """pdoc's rule (its default template's is_public) for the members this build documents."""
    if "@private" in doc.docstring:
        return False
    if doc.name == "__init__":
        assert isinstance(doc, pdoc.doc.Function)
        return bool(doc.docstring or doc.signature_without_self.parameters)
    if doc.name.startswith("_"):
        return doc.qualname in getattr(module.obj, "__all__", ())
    return True


def public_members(module: pdoc.doc.Module) -> Iterator[Member]:
    def walk(members: list[Member]) -> Iterator[Member]:
        for m in members:
            if is_public(m, module):
                yield m
                if isinstance(m, pdoc.doc.Class):
                    yield from walk(m.own_members)

    yield from walk(module.own_members)


def is_property(doc: Member) -> bool:
    owner, _, name = doc.qualname.rpartition(".")
    if not owner:
        return False
    try:
        attr = inspect.getattr_static(resolve(doc.modulename, owner), name)
    except AttributeError:
        return False
    return isinstance(attr, property | functools.cached_property)


def missing_docstrings(modules: dict[str, pdoc.doc.Module]) -> list[str]:
    missing = []
    for module in modules.values():
        if module.fullname not in DOCSTRINGS_REQUIRED:
            continue
        if not module.docstring:
            missing.append(f"module {module.fullname}")
        for m in public_members(module):
            needs_one = isinstance(m, pdoc.doc.Class) or (
                isinstance(m, pdoc.doc.Function) and m.name != "__init__"
            )
            if (needs_one or is_property(m)) and not m.docstring.strip():
                missing.append(f"{m.kind} {module.fullname}.{m.qualname}")
    return missing


def private_names(out: Path) -> list[str]:
    """Private dotted names in the text of the pages, as a reader sees it."""
    found = []
    for page in sorted(out.rglob("*.html")):
        text = re.sub(r"<(script|style)\b.*?</\1>", "", page.read_text(), flags=re.DOTALL)
        text = html.unescape(re.sub(r"<[^>]+>", "", text))
        for match in sorted(set(PRIVATE_NAME.findall(text))):
            found.append(f"{page.relative_to(out)}: {match}")
    return found


# ---- build -----------------------------------------------------------------------------------------------


def build(out: Path) -> list[str]:
    """Render every page into `out`; returns what is wrong (empty: a clean build)."""
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shape_pdoc()
        pdoc.render.configure(docformat="google", show_source=False, search=True)
        modules = {name: pdoc.doc.Module.from_name(name) for name in pdoc.extract.walk_specs(list(MODULES))}
        out.mkdir(parents=True, exist_ok=True)
        for old in [*out.rglob("*.html"), *out.rglob("*.js")]:
            old.unlink()
        for module in modules.values():
            page = out / f"{module.fullname.replace('.', '/')}.html"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(pdoc.render.html_module(module, modules))
        (out / "index.html").write_text(pdoc.render.html_index(modules))
        (out / "search.js").write_text(pdoc.render.search_index(modules))
        problems += [f"no docstring: {what}" for what in missing_docstrings(modules)]
    problems += [f"warning: {w.category.__name__}: {w.message}" for w in caught]
    problems += [f"private name on a page: {where}" for where in private_names(out)]
    if sorted(modules) != sorted(MODULES):
        problems.append(f"documented modules {sorted(modules)}, expected {sorted(MODULES)}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "docs" / "api", help="output directory")
    args = parser.parse_args()
    problems = build(args.out)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"API reference: {len(problems)} problem(s), listed above", file=sys.stderr)
        return 1
    print(f"API reference of etcdlock {etcdlock.__version__}: {args.out}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
