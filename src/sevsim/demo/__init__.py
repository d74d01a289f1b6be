"""The demo: a scripted tour of sevsim (scenario) and its HTML report (html)."""
