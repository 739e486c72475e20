"""Turning encoded image bytes into uint8 tensors, in loader workers or batched on the device."""
