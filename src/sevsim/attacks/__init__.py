"""The untrusted side's attacks: the attacker toolkit and the catalog of published attacks.

`toolkit` holds the primitives of a malicious hypervisor and a physical attacker; `catalog`
has one module per published attack, each with its victim program in `victims/`; `runner`
runs an attack at a setting and judges the outcome against the victim's ground truth.
"""
