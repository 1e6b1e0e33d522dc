"""The leads service: owns leads, touches, campaigns."""
