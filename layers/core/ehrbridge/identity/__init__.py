"""Patient identity resolution (EMPI): Fellegi–Sunter matching, real-time index, review, merge/unmerge.

Import the submodules directly; this package stays empty so the handler's cold start stays small.
"""
