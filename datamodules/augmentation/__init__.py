"""Crops, flips, RandAugment and erasing: one policy, run per sample on the CPU or batched on the device."""
