"""DIT deviation adaptive normalization (paper eq. 2): reference, fast path, Triton kernels."""
from .module import DeviationAdaNorm
from .op import DeviationAdaNormFunction, deviation_adanorm
from .reference import deviation_adanorm_reference

__all__ = ["DeviationAdaNorm", "DeviationAdaNormFunction", "deviation_adanorm",
           "deviation_adanorm_reference"]
