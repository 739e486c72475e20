"""Monitoring callbacks: training throughput and a progress bar that never waits for the GPU."""
