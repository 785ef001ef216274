"""napari dock widgets of MetSeg (the only package, with ``_napari`` and ``cli``, that imports Qt).

napari creates its OpenGL canvas before it imports a plugin's widgets. With
software rendering (Mesa llvmpipe: virtual machines, remote desktops, Xvfb),
loading PyTorch's optional triton package after that point crashes the
process, because triton's bundled LLVM clashes with Mesa's. The widgets never
compile kernels, so triton is marked unavailable for this process unless
something already imported it.
"""

import sys

sys.modules.setdefault("triton", None)
