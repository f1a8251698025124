"""Every policy module, imported so each registers itself."""

from radix_ext.policy.methods import h2o, positional, snapkv, vlcache  # noqa: F401
