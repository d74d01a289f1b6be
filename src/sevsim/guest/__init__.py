"""Trusted by the guest owner: the guest kernel and the C SDK. Never imports host/."""
