from .meta_arch import SAMMI

__all__ = ["SAMMI"]
