"""The SGLang surface the plugin relies on (`radix_ext.sglang.upstream`) resolves against the installed
SGLang: every hook target, method (with the parameter names the plugin calls or overrides with), field and
private name. After an SGLang upgrade the first test fails once, printing a checklist of what moved."""

import dataclasses
import functools
import importlib
import inspect
import pkgutil
import re

import pytest
from sglang.srt.plugins.hook_registry import HookType

from radix_ext.sglang import hooks, registration, upstream


def _resolve(path: str):
    return pkgutil.resolve_name(path)


@functools.cache
def _source(klass) -> str:
    try:
        return inspect.getsource(klass)
    except (OSError, TypeError):
        return ""


def _has_member(cls, name: str) -> bool:
    """A method, property, class attribute, dataclass/annotated field, or an attribute some class of the
    MRO assigns as `self.<name> = ...` (instance fields set in `__init__` or later)."""
    if hasattr(cls, name):
        return True
    assigned = re.compile(rf"self\.{re.escape(name)}\b\s*(:[^=\n]*)?=(?!=)")
    for klass in inspect.getmro(cls) if isinstance(cls, type) else (cls,):
        if name in getattr(klass, "__annotations__", {}):
            return True
        if dataclasses.is_dataclass(klass) and name in {f.name for f in dataclasses.fields(klass)}:
            return True
        if assigned.search(_source(klass)):
            return True
    return False


def _signature_problem(method: upstream.Method) -> str | None:
    fn = getattr(_resolve(method.owner), method.name)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None if not method.params else "its signature cannot be read"
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    names = [n for n, p in sig.parameters.items() if p.kind not in kinds and n not in ("self", "cls")]
    head = list(method.params[: method.positional])
    if names[: len(head)] != head:
        return f"expects positional {head}, SGLang has {names[: len(head)]}"
    rest = iter(names)
    if not all(name in rest for name in method.params):  # every name, in this order
        return f"expects parameters {list(method.params)} in this order, SGLang has {names}"
    return None


def _problems() -> list[str]:
    out = []

    def check(label, probe):
        try:
            problem = probe()
        except (ImportError, AttributeError, ValueError) as error:
            problem = f"does not resolve ({type(error).__name__}: {error})"
        if problem:
            out.append(f"{label}: {problem}")

    for hook in upstream.HOOKS:
        check(f"hook target {hook.target}", lambda h=hook: _hook_problem(h))
    for method in upstream.METHODS:
        check(f"method {method.owner}.{method.name}", lambda m=method: _signature_problem(m))
    for fields in upstream.FIELDS:
        for name in fields.names:
            check(
                f"field {fields.owner}.{name} ({fields.access})",
                lambda f=fields, n=name: None if _has_member(_resolve(f.owner), n) else "gone",
            )
    for private in upstream.PRIVATE:
        check(
            f"private {private.owner}.{private.name}",
            lambda p=private: None if _has_member(_resolve(p.owner), p.name) else "gone",
        )
    for attr in upstream.PLUGIN_ATTRS:
        check(
            f"plugin attribute {attr.base}.{attr.name}",
            lambda a=attr: (
                "SGLang's class now has this name: the plugin's would shadow it"
                if _has_member(_resolve(a.base), a.name)
                else None
            ),
        )
    return out


def _hook_problem(hook: upstream.Hook) -> str | None:
    target = _resolve(hook.target)
    if hook.kind not in HookType.__members__:
        return f"HookType has no {hook.kind}"
    if not callable(getattr(hooks, hook.hook, None)):
        return f"radix_ext.sglang.hooks has no {hook.hook}"
    if hasattr(target, "__wrapped__"):  # `registration.missing_hooks` could not tell ours applied
        return "the stock target already carries __wrapped__"
    return None


def test_every_sglang_name_the_plugin_relies_on_resolves():
    problems = _problems()
    assert not problems, (
        f"{len(problems)} SGLang name(s) the plugin relies on moved (radix_ext/sglang/upstream.py):\n"
        + "\n".join(f"  [ ] {p}" for p in problems)
    )


def test_the_private_list_is_every_private_name_in_the_inventory():
    used = {(m.owner, m.name) for m in upstream.METHODS if m.name.startswith("_") and not m.name.startswith("__")}
    used |= {(f.owner, n) for f in upstream.FIELDS for n in f.names if n.startswith("_")}
    used |= {(h.target.rsplit(".", 1)[0], h.target.rsplit(".", 1)[1]) for h in upstream.HOOKS}
    used = {u for u in used if u[1].startswith("_")}
    listed = {(p.owner, p.name) for p in upstream.PRIVATE}
    # Listed beyond the leading-underscore names: the stock counter `evictable_size_` (stock-internal).
    assert used - listed == set() and listed - used <= {(upstream._RADIX, "evictable_size_")}, (used, listed)


def test_attributes_on_objects_sglang_creates_carry_the_prefix():
    created_by_sglang = {"sglang.srt.mem_cache.radix_cache.TreeNode"}
    for attr in upstream.PLUGIN_ATTRS:
        if attr.base in created_by_sglang:
            assert attr.name.startswith(upstream.ATTR_PREFIX), attr


def test_registration_registers_exactly_the_inventoried_hooks():
    assert registration.HOOKS is upstream.HOOKS
    assert len({h.target for h in upstream.HOOKS}) == len(upstream.HOOKS)


def test_missing_hooks_reads_whether_sglang_wrapped_each_target(monkeypatch):
    assert registration.missing_hooks() == [h.target for h in upstream.HOOKS]  # nothing applied in this process
    target = upstream.HOOKS[3].target  # Scheduler._add_request_to_queue
    owner_path, name = target.rsplit(".", 1)
    owner, original = _resolve(owner_path), getattr(_resolve(owner_path), name)
    monkeypatch.setattr(owner, name, functools.wraps(original)(lambda *a, **k: original(*a, **k)))
    assert target not in registration.missing_hooks()
    with pytest.raises(RuntimeError, match="did not apply the plugin's hooks"):
        registration.verify_hooks_applied()


def test_the_inventory_module_imports_no_sglang():
    module = importlib.import_module("radix_ext.sglang.upstream")
    assert "import sglang" not in inspect.getsource(module) and "from sglang" not in inspect.getsource(module)
