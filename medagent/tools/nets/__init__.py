"""Network building blocks shared by medagent's automatic segmenters (torch only, no tool logic).

- `blocks`: padding to a multiple of 2**depth and back, conv blocks.
- `unet`: the plain 2D UNet used by `unet` and `ifunet`.
- `fuzzy`: the intuitionistic fuzzy input module of IF-UNet.
- `kan`: B-spline bases, SaKAN layers (three candidate forms), Grad-Free Spline, the directly stacked
  efficient-kan-style reference layer and KAonv (KA convolution).
- `allukan`: the U-shaped network whose every linear and conv layer is a KA layer.
"""
