"""The relying party: what a guest owner runs to decide whether to trust a platform and a VM.

Depends only on sevsim.abi, sevsim.errors and crypto libraries, so the same code checks
chains and measurements from real AMD hardware.
"""
