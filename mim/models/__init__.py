"""The stage-1 renderer and its parts."""

from mim.models.dit import DeviationImageTransformer, standardize_motion
from mim.models.encoders import AppearanceExtractor, ImageEncoder, MotionEncoder
from mim.models.lmdd import ImageDecoder, LatentMotionDeviationDecoder
from mim.models.renderer import Renderer, SourceState

__all__ = ["Renderer", "SourceState", "ImageEncoder", "AppearanceExtractor", "MotionEncoder",
           "DeviationImageTransformer", "LatentMotionDeviationDecoder", "ImageDecoder",
           "standardize_motion"]
