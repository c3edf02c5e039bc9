import importlib
import importlib.abc
import inspect
import io
import sys
import textwrap
import tokenize

__version__ = "0.1.0"


def _public_names() -> dict:
    "{name: module} for every public function and class the notebooks export (from nbdev's index, no imports)."
    try:
        from ._modidx import d
    except ImportError:  # mid-export (nbdev rewrites the index): no lazy names, everything else works
        return {}
    names = {}
    for mod, syms in d["syms"].items():
        for full in syms:
            name = full[len(mod) + 1:]
            if "." not in name and not name.startswith("_"):
                names.setdefault(name, mod)
    return names


_NAMES = _public_names()
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    "`from diffusion_book import X` imports X's module on first use: importing the package itself costs nothing."
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'diffusion_book' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NAMES))


def _models_getattr(name: str):
    "The same for `diffusion_book.models`: `from diffusion_book.models import UNet`."
    mod = _NAMES.get(name)
    if mod is not None and mod.startswith(__name__ + ".models."):
        return getattr(importlib.import_module(mod), name)
    raise AttributeError(f"module 'diffusion_book.models' has no attribute {name!r}")


def _param_comments(fn) -> dict:
    "Docments: {parameter: the comment after it} in `fn`'s signature (or a dataclass's fields)."
    try:
        src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return {}
    out, depth, current, prev, started = {}, 0, None, None, False
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.NAME and tok.string in ("def", "class") and not started:
                started = True
            elif not started:
                continue
            elif tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
            elif tok.type == tokenize.OP and tok.string == ":" and depth == 0:
                break
            elif tok.type == tokenize.NAME and depth == 1 and prev in ("(", ",", "*", "**"):
                current = tok.string
            elif tok.type == tokenize.COMMENT and depth == 1 and current is not None:
                out[current] = tok.string.lstrip("#").strip()
            if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
                prev = tok.string
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return {}
    return out


def _field_comments(cls) -> dict:
    "Docments of a dataclass: {field: the comment after it} in the class body."
    try:
        lines = textwrap.dedent(inspect.getsource(cls)).splitlines()
    except (OSError, TypeError):
        return {}
    fields = getattr(cls, "__dataclass_fields__", {})
    out = {}
    for line in lines[1:]:
        head, _, comment = line.partition("  # ")
        name = head.strip().split(":")[0].strip()
        if comment and name in fields and head.startswith("    ") and not head.startswith("     "):
            out[name] = comment.strip()
    return out


def _with_params(doc: str | None, params: dict) -> str | None:
    if not params or (doc and "\nParameters\n" in doc):
        return doc
    width = max(len(k) for k in params)
    rows = "\n".join(f"    {k.ljust(width)}  {v}" for k, v in params.items())
    return f"{doc or ''}\n\nParameters\n----------\n{rows}\n"


def _add_param_docs(module) -> None:
    "Append each exported function's and class's docments to its `__doc__`, so `help()` shows them."
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name, None)
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            obj.__doc__ = _with_params(obj.__doc__, _param_comments(obj))
        elif inspect.isclass(obj):
            params = _field_comments(obj) if hasattr(obj, "__dataclass_fields__") else \
                _param_comments(obj.__init__) if inspect.isfunction(obj.__dict__.get("__init__")) else {}
            try:
                obj.__doc__ = _with_params(obj.__doc__, params)
            except AttributeError:
                pass
            for attr, member in list(vars(obj).items()):
                fn = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
                if inspect.isfunction(fn) and not attr.startswith("__") and fn.__module__ == module.__name__:
                    fn.__doc__ = _with_params(fn.__doc__, _param_comments(fn))


class _DocmentsFinder(importlib.abc.MetaPathFinder):
    "Runs `_add_param_docs` on every `diffusion_book.*` module right after it is imported."

    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith(__name__ + ".") or fullname.endswith("._modidx"):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is not None and hasattr(loader, "exec_module") and not getattr(loader, "_docments", False):
            run = loader.exec_module

            def exec_module(module, run=run):
                run(module)
                _add_param_docs(module)

            loader.exec_module, loader._docments = exec_module, True
        return spec


if not any(isinstance(f, _DocmentsFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _DocmentsFinder())

from . import models as _models  # noqa: E402  (an empty package: costs nothing)

_models.__getattr__ = _models_getattr
