"""Palette: colour palettes by clustering pixels, rendering and segmentation."""
