from deploy_tools import rendered  # noqa: F401  (the session fixture of every deploy check)
