"""vlcache-serve's gateway side: starts or attaches to an SGLang server and serves apps over REST.

It talks to SGLang over HTTP only and never imports SGLang or reaches into KV internals.
"""
