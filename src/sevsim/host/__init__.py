"""UNTRUSTED: the hypervisor, the VMM and the attack toolkit.

Everything here sees guests only through host-physical memory, exit information and what
guests put in shared pages.
"""
