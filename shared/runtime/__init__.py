"""Where kernels run: the tier (GPU or Numba's simulator, chosen before numba loads) and the launch path."""
