"""DIT deviation adaptive normalization (paper eq. 2): reference, torch path, Triton kernels."""
from .op import DeviationAdaNormFunction, deviation_adanorm
from .reference import deviation_adanorm_reference

__all__ = ["DeviationAdaNormFunction", "deviation_adanorm", "deviation_adanorm_reference"]
