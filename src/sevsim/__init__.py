"""sevsim: AMD SEV confidential VMs in software."""

from sevsim.errors import SevsimError
from sevsim.host.machine import Host

__all__ = ["Host", "SevsimError"]
__version__ = "0.1.0"
