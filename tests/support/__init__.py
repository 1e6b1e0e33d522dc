"""Helpers shared by the test layers: free ports, waiting for conditions, reading topics."""
