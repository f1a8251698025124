"""Everything the gateway does with a request's VL-Cache options, in one place.

Contract (the names, the budget rule and the key come from `radix_ext.contract`, shared with the
plugin):
- what a client may send: `VLCacheOptions` (the chat body's `vl_cache` object) or the `policy` /
  `budget` form fields of `/v1/generate`; types are checked by the schema, values by `resolve`;
- `resolve(options, settings)`: the options checked and completed with the server defaults
  (`VLCACHE_DEFAULT_POLICY`, `VLCACHE_DEFAULT_BUDGET`), or None (then the plugin's own default
  applies); a wrong value is a 400 `invalid_policy` / `invalid_budget` / `invalid_vl_cache` saying
  what is allowed; extra scalar keys are policy options, passed through for the plugin to check;
- `error_code(validation_error)`: the same 400 codes for schema errors inside these options (the API
  promises 400 for a bad policy or budget, whatever is wrong with it);
- `custom_params(options)`: what SGLang's `sampling_params.custom_params` carries.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictFloat

from radix_ext.contract import BUDGET_MAX, BUDGET_MIN, OPTION_BUDGET, OPTION_POLICY, POLICIES, REQUEST_KEY, check_budget
from service.errors import InvalidRequest

__all__ = ["POLICIES", "REQUEST_KEY", "VLCacheOptions", "custom_params", "default_options", "error_code", "resolve"]

BUDGET_SCHEMA = {"exclusiveMinimum": BUDGET_MIN, "maximum": BUDGET_MAX}


class VLCacheOptions(BaseModel):
    """Per-request KV compression, forwarded to the plugin as `custom_params["vl_cache"]`.

    `policy`: one of the server's allowed policies (default: the server's); `budget`: the fraction of
    prompt tokens kept, 0 < budget <= 1. Further scalar options (e.g. `renormalize`) pass through to
    the plugin. Any error in here is a 400 (`invalid_policy`, `invalid_budget`, `invalid_vl_cache`).
    """

    model_config = ConfigDict(extra="allow")

    policy: str | None = Field(default=None, description="VL-Cache policy, e.g. vlcache, full, snapkv")
    budget: StrictFloat | None = Field(  # strict: `true` or "0.1" is a bad budget, not 1.0 or 0.1
        default=None, description="kept fraction of prompt tokens", json_schema_extra=BUDGET_SCHEMA
    )


def default_options(settings) -> dict | None:
    """The options of requests that carry none (None: the SGLang plugin's own server default)."""
    options: dict = {}
    if settings.default_policy is not None:
        options[OPTION_POLICY] = settings.default_policy
    if settings.default_budget is not None:
        options[OPTION_BUDGET] = settings.default_budget
    return options or None


def resolve(options: dict | None, settings) -> dict | None:
    """The request's options checked and completed with the server defaults (400 if wrong).

    `options` is what the client sent (`vl_cache` of the chat body; `policy` / `budget` of a
    multipart form), None when it sent nothing: then the server default applies (or none at all).
    """
    if options is None:
        return default_options(settings)
    options = {key: value for key, value in options.items() if value is not None}
    for key, value in options.items():
        # custom_params must stay JSON-safe and small: nested objects are refused.
        if not isinstance(value, (str, int, float, bool)):
            raise InvalidRequest(
                f"vl_cache.{key} must be a string, number or boolean", param=f"vl_cache.{key}", code="invalid_vl_cache"
            )
    policy = options.get(OPTION_POLICY, settings.default_policy)
    if policy is not None:
        if policy not in settings.allowed_policies:
            raise InvalidRequest(
                f"vl_cache.policy {policy!r} is not one of {', '.join(settings.allowed_policies)}",
                param="vl_cache.policy",
                code="invalid_policy",
            )
        options[OPTION_POLICY] = policy
    budget = options.get(OPTION_BUDGET, settings.default_budget)
    if budget is not None:
        try:
            options[OPTION_BUDGET] = check_budget(budget)
        except ValueError as exc:
            raise InvalidRequest(f"vl_cache.{exc}", param="vl_cache.budget", code="invalid_budget") from None
    return options


def custom_params(options: dict | None) -> dict | None:
    return {REQUEST_KEY: options} if options is not None else None


_CODES = {OPTION_POLICY: "invalid_policy", OPTION_BUDGET: "invalid_budget"}


def error_code(error: dict) -> str | None:
    """`invalid_policy` / `invalid_budget` / `invalid_vl_cache` for a schema error in VL-Cache options
    (pydantic's error dict), else None."""
    if error.get("type") == "extra_forbidden":
        return None
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    if loc[:1] == [REQUEST_KEY]:
        return _CODES.get(loc[1] if len(loc) > 1 else "", "invalid_vl_cache")
    if len(loc) == 1 and loc[0] in _CODES:  # the form fields of /v1/generate
        return _CODES[loc[0]]
    return None
